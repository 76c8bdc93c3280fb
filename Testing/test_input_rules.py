"""Numeric input that cannot be right is refused by the one loader / job, on every face (here: the CLI and
the shared functions the server and workspace call): NaN/Inf voxels (or --nan-as with a warning), one or
two slices given to a 3D model, a segmentation measured on a volume of another grid. And `aiportal measure`
on a real multi-lesion label: one entry per lesion, said in the CLI line and measurements.json."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pytest
from test_recist import _pyradiomics

from aiportal.cli import main
from aiportal.errors import InputError
from aiportal.io.volumes import array_from_volume, load_volume
from aiportal.segment import SegmentationJob
from aiportal.segmentation import save_segmentation


@pytest.fixture(scope="module")
def nan_ct(shared_data, tmp_path_factory):
    """TotalSegmentator's small example CT as float32 with 5 NaN and 1 Inf voxels (known places)."""
    source = nibabel.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    data = np.asarray(source.dataobj).astype(np.float32)
    data[60, 50, 10:15] = np.nan
    data[0, 0, 0] = np.inf
    path = tmp_path_factory.mktemp("nan") / "ct_nan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, source.affine), path)
    return path


def test_nan_voxels_are_refused_by_the_loader(nan_ct, runtime):
    with pytest.raises(InputError, match=r"ct_nan.nii.gz has 6 of 369660 voxels that are not numbers.*--nan-as"):
        load_volume(nan_ct, runtime)  # ITK's reader alone would have read them as 0
    assert not runtime.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()


def test_nan_as_replaces_exactly_those_voxels_with_a_warning(nan_ct, shared_data, runtime):
    loaded = load_volume(nan_ct, runtime, nan_as=-999)  # a value the CT does not hold
    assert loaded.warnings == [f"6 of 369660 voxels of {nan_ct} were not numbers (NaN or Inf): set to -999 "
                               "(--nan-as)"]
    original = array_from_volume(load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime).node)
    replaced = array_from_volume(loaded.node)
    changed = np.argwhere(replaced != original)
    assert len(changed) == 6 and (replaced[tuple(changed.T)] == -999).all()


def test_nan_nrrd_is_refused_too(runtime, tmp_path):
    """NRRD keeps NaN through ITK: the same rule catches it in the node."""
    import SimpleITK as sitk

    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="1 of 120 voxels"):
        load_volume(tmp_path / "nan.nrrd", runtime)


def test_cli_segment_refuses_nan_and_warns_with_nan_as(nan_ct, tmp_path, capsys):
    assert main(["segment", str(nan_ct), "--out", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aiportal: error: ") and "--nan-as VALUE" in error
    assert not (tmp_path / "refused").exists()
    assert main(["segment", str(nan_ct), "--nan-as", "-1024", "--out", str(tmp_path / "out")]) == 0
    warning = "6 of 369660 voxels"
    assert warning in capsys.readouterr().err
    assert any(warning in w for w in json.loads((tmp_path / "out" / "run.json").read_text())["warnings"])


def test_single_slices_are_refused_for_a_3d_model(shared_data, runtime, tmp_path, capsys):
    source = nibabel.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    one = tmp_path / "one_slice.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.asarray(source.dataobj)[:, :, 15:16], source.affine), one)
    with pytest.raises(InputError, match=r"is a single 2D slice \(122 x 101 x 1 voxels\) but classic-ct is a 3D"):
        SegmentationJob(load_volume(one, runtime).node, "classic-ct", runtime=runtime, input_name=str(one))
    # the lungmask test data: two unrelated real chest CT slices (it used to give a 73 mL "body")
    assert main(["segment", str(shared_data / "lungmask" / "testdata"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is only 2 slices (512 x 512 x 2 voxels) but classic-ct is a 3D model" in error
    assert not (tmp_path / "out").exists()


@pytest.fixture
def brain1_seg(runtime, shared_data, tmp_path):
    image, _, node, _ = _pyradiomics(runtime, shared_data, "brain1")
    return save_segmentation(node, tmp_path / "brain1.seg.nrrd")


def test_measure_refuses_a_volume_of_another_grid_as_export_does(brain1_seg, shared_data, tmp_path, capsys):
    other = shared_data / "pyradiomics" / "brain2_image.nrrd"
    assert main(["measure", str(brain1_seg), "--volume", str(other), "--out", str(tmp_path / "m")]) == 1
    measure_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert measure_error == (f"aiportal: error: {brain1_seg} was not made on the image grid of {other} — give the "
                             "series or file the segmentation was made from (or resample the segmentation onto "
                             "this volume first)")
    assert main(["export", str(brain1_seg), "--source", str(other), "--formats", "json",
                 "--out", str(tmp_path / "e")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == measure_error
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_cli_measure_reports_each_lesion_and_follows_them(brain1_seg, shared_data, tmp_path, capsys):
    volume = shared_data / "pyradiomics" / "brain1_image.nrrd"
    out = tmp_path / "m"
    assert main(["measure", str(brain1_seg), "--volume", str(volume), "--prior", str(brain1_seg),
                 "--prior-volume", str(volume), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 lesion(s) measured in 1 segment(s)" in captured.out
    assert "Label_1 lesion 1" in captured.out and "Label_1 lesion 2" in captured.out
    assert "warning: segment Label_1 holds 2 separate lesions" in captured.err
    document = json.loads((out / "measurements.json").read_text())
    assert document["lesions"] == 2 and document["warnings"]
    assert sorted(p.name for p in (out / "axes").iterdir())[0] == "Label_1 lesion 1 long axis.mrk.json"
    follow_up = json.loads((out / "followup.json").read_text())
    assert [(row["lesion"], row["status"]) for row in follow_up["lesions"]] == [
        ("Label_1 lesion 1", "matched"), ("Label_1 lesion 2", "matched")]
    assert follow_up["response"]["response"] == "SD"


def test_the_server_pipeline_refuses_the_same_inputs(nan_ct, shared_data, tmp_path):
    """Every server job (upload or PACS) runs aiportal.pipeline: the rules hold there without the CLI."""
    from aiportal.pipeline import PipelineRequest, run_segmentation

    with pytest.raises(InputError, match="not numbers"):
        run_segmentation(PipelineRequest(nan_ct, "classic-ct", tmp_path / "a", executor="thread", via="server"))
    with pytest.raises(InputError, match="is only 2 slices"):
        run_segmentation(PipelineRequest(shared_data / "lungmask" / "testdata", "classic-ct", tmp_path / "b",
                                         executor="thread", via="server"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
