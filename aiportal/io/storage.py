"""Writing a MRML node through its storage node: the one place that turns a failed write into an error."""

from __future__ import annotations

from pathlib import Path


def write_node(node, storage, path: Path) -> Path:
    """Write ``node`` to ``path`` with the (new, unattached) storage node ``storage``; OSError if it fails."""
    path = Path(path)
    storage.SetScene(node.GetScene())
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise OSError(f"could not write {path}")
    return path
