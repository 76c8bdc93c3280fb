"""Opening a study replaces the one shown: check first that the new one can be opened, so that a
failed OPEN (a wrong path, a file that is no image, a folder without DICOM) keeps the open study.

The check reads headers only (ITK's image information, pydicom without pixels); the scene is
cleared (Slicer's close events reset the views and the segment editor) only once it passed.
"""

from __future__ import annotations

from pathlib import Path

from aiportal.errors import InputError
from aiportal.io.completeness import check_nifti_complete

_MAX_FILES_PROBED = 200


def check_openable(path: Path) -> None:
    """Raise :class:`InputError` naming ``path`` when it cannot be a volume or DICOM series."""
    if not path.exists():
        raise InputError(f"{path} does not exist", "check the path of the volume file or DICOM folder")
    if path.is_dir():
        files = [item for item in sorted(path.rglob("*")) if item.is_file()][:_MAX_FILES_PROBED]
        if not any(_is_dicom(item) or _is_image(item) for item in files):
            raise InputError(f"{path} holds no DICOM file or volume", "open the folder of one DICOM series")
        return
    if not (_is_dicom(path) or _is_image(path)):
        raise InputError(f"{path.name} is not a readable volume or DICOM file",
                         "open a NIfTI, NRRD or MetaImage volume, or a DICOM folder")
    check_nifti_complete(path)  # a truncated NIfTI has a good header: its end is checked before the scene goes


def _is_dicom(path: Path) -> bool:
    import pydicom

    try:
        pydicom.dcmread(path, stop_before_pixels=True)
        return True
    except Exception:
        return False


def _is_image(path: Path) -> bool:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return reader.GetDimension() >= 2
    except RuntimeError:
        return False
