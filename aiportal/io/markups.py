"""Markups nodes to Slicer's own ``.mrk.json`` files (loadable in Slicer with Add Data)."""

from __future__ import annotations

from pathlib import Path

import slicer

from aiportal.io.storage import write_node


def write_markups_json(node, folder: Path) -> Path:
    """Write a markups node (line, curve, ...) to ``folder/<node name>.mrk.json``."""
    path = Path(folder) / (node.GetName().replace("/", "_") + ".mrk.json")
    return write_node(node, slicer.vtkMRMLMarkupsJsonStorageNode(), path)
