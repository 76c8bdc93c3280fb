"""NaN/Inf voxels in a volume that is already in a scene (the desktop's, loaded by Slicer's own readers).

:func:`aiportal.io.volumes.load_volume` refuses them (or replaces them with ``--nan-as``) as it reads a
file and marks the node checked. A volume Slicer loaded is not checked yet, and Slicer's NIfTI reader
(ITK) has already turned a NIfTI's NaN voxels into 0 without a word, so its file is read again here.
"""

from __future__ import annotations

from pathlib import Path

from aiportal.errors import InputError

CHECKED_ATTRIBUTE = "aiportal.nonFiniteChecked"  # set on nodes whose NaN/Inf voxels were refused or replaced


def refuse_non_finite_in_scene(volume_node, label: str) -> None:
    """Refuse a volume with NaN/Inf voxels, in memory or in the NIfTI it was read from (one-line error
    naming it and the fix); a node :func:`~aiportal.io.volumes.load_volume` already checked passes."""
    from aiportal.io.volumes import _nifti_non_finite_ras, replace_non_finite

    if volume_node.GetAttribute(CHECKED_ATTRIBUTE):
        return
    storage = volume_node.GetStorageNode()
    path = Path(storage.GetFileName()) if storage is not None and storage.GetFileName() else None
    nifti = path is not None and path.name.lower().endswith((".nii", ".nii.gz")) and path.is_file()
    try:
        replace_non_finite(volume_node, label, None, _nifti_non_finite_ras(path) if nifti else None)
    except InputError as error:
        raise InputError(error.message, "fix the file, or set those voxels to a number before segmenting (on the "
                                        "command line: aiportal segment --nan-as VALUE)") from None
    volume_node.SetAttribute(CHECKED_ATTRIBUTE, "1")
