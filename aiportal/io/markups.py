"""Markups nodes to Slicer's own ``.mrk.json`` files (loadable in Slicer with Add Data)."""

from __future__ import annotations

from pathlib import Path

import slicer


def write_markups_json(node, folder: Path) -> Path:
    """Write a markups node (line, curve, ...) to ``folder/<node name>.mrk.json``."""
    path = Path(folder) / (node.GetName().replace("/", "_") + ".mrk.json")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    storage.SetScene(node.GetScene())
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise OSError(f"could not write {path}")
    return path
