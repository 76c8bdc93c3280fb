"""A volume Slicer's own reader loaded (the desktop's: `slicer.util.loadVolume` is the volumes logic's
AddArchetypeVolume) with NaN/Inf voxels is refused by the segment job, as the CLI's loader refuses the file:
ITK's NIfTI reader has already set them to 0, so the job reads the file again; an NRRD keeps them in memory."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest

from aiportal.errors import InputError
from aiportal.io.volumes import load_volume
from aiportal.segment import SegmentationJob


def _slicer_load(runtime, path):
    node = runtime.volumes.AddArchetypeVolume(str(path), path.name.split(".")[0], 0)
    assert node is not None and node.GetImageData() is not None
    return node


def test_a_nan_nifti_loaded_by_slicer_is_refused_by_the_segment_job(shared_data, runtime, tmp_path):
    source = nibabel.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    data = np.asarray(source.dataobj).astype(np.float32)
    data[60, 50, 10:13] = np.nan
    path = tmp_path / "ct_nan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, source.affine), path)
    node = _slicer_load(runtime, path)
    with pytest.raises(InputError, match=r"ct_nan has 3 of 369660 voxels that are not numbers") as refused:
        SegmentationJob(node, "classic-ct", runtime=runtime)
    assert "set those voxels to a number" in refused.value.fix and "\n" not in str(refused.value)
    clean = _slicer_load(runtime, shared_data / "totalseg" / "example_ct_sm.nii.gz")
    SegmentationJob(clean, "classic-ct", runtime=runtime)  # made, not run: the check passes a clean volume
    replaced = load_volume(path, runtime, nan_as=-1024).node  # the CLI's --nan-as: replaced, checked, accepted
    SegmentationJob(replaced, "classic-ct", runtime=runtime)


def test_a_nan_nrrd_loaded_by_slicer_is_refused_too(runtime, tmp_path):
    import SimpleITK as sitk

    array = np.zeros((6, 7, 8), np.float32)
    array[1, 2, 3] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "inf.nrrd"))
    with pytest.raises(InputError, match="inf has 1 of 336 voxels"):
        SegmentationJob(_slicer_load(runtime, tmp_path / "inf.nrrd"), "classic-ct", runtime=runtime)
