"""Opening a study replaces the one shown only once the new one has loaded: a failed OPEN keeps it."""

from __future__ import annotations

_DATA_CLASSES = ("vtkMRMLStorableNode", "vtkMRMLDisplayNode", "vtkMRMLStorageNode")


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _remove_data_nodes(scene, ids) -> None:
    for node_id in ids:
        node = scene.GetNodeByID(node_id)
        if node is not None and not node.GetSingletonTag() and any(node.IsA(name) for name in _DATA_CLASSES):
            scene.RemoveNode(node)


def drop_partial_load(scene, before: set[str]) -> None:
    """Remove what a failed read added (half a DICOM series), leaving the open study as it was."""
    _remove_data_nodes(scene, node_ids(scene) - before)


def drop_previous_study(scene, before: set[str]) -> None:
    """Remove the previous study's data (volumes, segmentations, markups), keeping the new one."""
    _remove_data_nodes(scene, before)
