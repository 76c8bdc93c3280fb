"""Gantry-tilted and unevenly spaced DICOM series: the regular grid against dcm2niix's tilt correction
on a real tilted CT, gap descriptions, volumes on series re-spaced from real slices with a known
answer, the acquired geometry, and a DICOM SEG that references the acquired slices."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from scipy import ndimage

from aiportal.cli import geometry_line
from aiportal.errors import InputError
from aiportal.export.dicom_seg import write_seg
from aiportal.export.dicom_source import export_source
from aiportal.export.exporter import ExportOptions
from aiportal.io.dicom_series import read_dicom_series
from aiportal.io.geometry import describe_spacing
from aiportal.io.volumes import array_from_volume, load_volume
from aiportal.models.backend import LabelMapResult
from aiportal.models.catalog import ANATOMICAL_STRUCTURE, Code, LabelSpec
from aiportal.pipeline import PipelineRequest, run_segmentation
from aiportal.provenance import Provenance, now_iso
from aiportal.segmentation import import_label_map

TILTED = "dcm_qa_ct/Philips-tilt-minus18.5"
UNEVEN = "monai-ct-dicom/CT_DICOM"
EVEN = "totalseg/example_ct_dicom"  # 20 slices, 2 mm: the source of the re-spaced series
BODY = LabelSpec(value=1, name="body", category=ANATOMICAL_STRUCTURE, type=Code("SCT", "38266002", "Entire body"))


def body(array: np.ndarray) -> np.ndarray:
    """The body: the largest connected region above -300 HU."""
    labels, _ = ndimage.label(array > -300)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def volume_ml(mask: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    return float(mask.sum()) * abs(float(np.linalg.det(ijk_to_ras[:3, :3]))) / 1000.0


def corners_ras(shape_kji: tuple[int, ...], ijk_to_ras: np.ndarray) -> np.ndarray:
    k, j, i = (n - 1 for n in shape_kji)
    ijk = np.array([[a, b, c, 1.0] for a in (0, i) for b in (0, j) for c in (0, k)])
    return (ijk_to_ras @ ijk.T).T[:, :3]


def dcm2niix_tilt_corrected(folder: Path, out: Path):
    """dcm2niix's tilt-corrected NIfTI of ``folder`` (nibabel image); fails without dcm2niix."""
    import nibabel as nib

    executable = shutil.which("dcm2niix")
    if executable is None:
        pytest.fail("dcm2niix not found: install the Debian package dcm2niix (scripts/system-packages)")
    out.mkdir()
    subprocess.run([executable, "-o", str(out), "-f", "tilt", "-z", "n", str(folder)], check=True,
                   capture_output=True, timeout=120)
    corrected = sorted(out.glob("*_Tilt_*.nii"))
    assert corrected, f"dcm2niix wrote no tilt-corrected volume: {sorted(p.name for p in out.iterdir())}"
    return nib.load(corrected[0])


def test_tilted_series_on_a_regular_grid_matches_dcm2niix(shared_data, tmp_path):
    image = read_dicom_series(shared_data / TILTED)
    reference = dcm2niix_tilt_corrected(shared_data / TILTED, tmp_path / "dcm2niix")
    theirs = np.asanyarray(reference.dataobj).transpose(2, 1, 0)  # NIfTI (i, j, k) -> (k, j, i)

    assert image.geometry["grid"] == "regular" and image.geometry["tilt_degrees"] == -18.5
    resampled = "Resampled from 54 tilted slices at -18.5° onto a regular grid"
    assert any(note.startswith(resampled) for note in image.warnings)
    axes = image.ijk_to_ras[:3, :3] / np.linalg.norm(image.ijk_to_ras[:3, :3], axis=0)
    assert np.allclose(axes.T @ axes, np.eye(3), atol=1e-6)  # orthogonal: no shear left
    # same grid as dcm2niix's within a voxel: every corner, and the same size
    assert image.array.shape == theirs.shape
    ours, dcm2niix = corners_ras(image.array.shape, image.ijk_to_ras), corners_ras(theirs.shape, reference.affine)
    voxel = float(np.linalg.norm(image.ijk_to_ras[:3, :3], axis=0).min())
    assert np.linalg.norm(ours[:, None] - dcm2niix[None], axis=2).min(axis=1).max() < voxel
    ours_ml, theirs_ml = volume_ml(body(image.array), image.ijk_to_ras), volume_ml(body(theirs), reference.affine)
    assert abs(ours_ml / theirs_ml - 1) < 0.01, (ours_ml, theirs_ml)

    # the acquired slices stay reachable: every voxel where it was acquired (non-orthogonal k axis)
    acquired = read_dicom_series(shared_data / TILTED, geometry="acquired")
    assert acquired.array.shape == (54, 512, 512) and acquired.geometry["grid"] == "acquired"
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ acquired.ijk_to_ras
    for k, header in enumerate(acquired.source.headers):
        assert np.allclose(lps @ [0, 0, k, 1], [*map(float, header.ImagePositionPatient), 1], atol=1e-3)
    assert abs(volume_ml(body(acquired.array), acquired.ijk_to_ras) / theirs_ml - 1) < 0.01


def test_gap_descriptions():
    assert describe_spacing(np.full(30, 2.5)) == []
    missing = describe_spacing(np.array([2.0] * 5 + [4.0] + [2.0] * 5 + [6.0] + [2.0] * 3))
    assert missing == ["Missing slices: about 3 slice(s) missing in 2 gap(s): 4 mm between slices 6 and 7 where "
                       "the spacing is 2 mm; 6 mm between slices 12 and 13 where the spacing is 2 mm"]
    changed = describe_spacing(np.array([4.0] * 19 + [7.0] * 14))
    assert changed == ["Slice spacing changes: 4 mm between slices 1–20, then 7 mm between slices 20–34"]
    both = describe_spacing(np.array([4.0] * 9 + [8.0] + [4.0] * 9 + [7.0] * 14))
    assert both[0].startswith("Missing slices: about 1 slice(s) missing in 1 gap(s): 8 mm between slices 10 and 11")
    assert both[1] == "Slice spacing changes: 4 mm between slices 1–20, then 7 mm between slices 20–34"
    irregular = describe_spacing(np.array([1.1, 3.0, 7.0, 2.2, 5.0, 1.3, 4.4]))
    assert len(irregular) == 1
    assert irregular[0].startswith("Irregular slice spacing: 7 runs of different gaps from 1.1 to 7")


def test_real_uneven_series_is_resampled_loudly(shared_data):
    image = read_dicom_series(shared_data / UNEVEN)  # 4 slices: 202.5 mm, then 1.25 mm, 1.25 mm
    assert image.array.shape == (165, 16, 16) and image.geometry["spacing_mm"][2] == 1.25
    assert image.warnings[0].startswith("Missing slices: about 161 slice(s) missing in 1 gap(s): 202.5 mm")
    assert any(note.startswith("161 of the 165 slices of the regular grid lie in gaps") for note in image.warnings)
    raw = read_dicom_series(shared_data / UNEVEN, geometry="acquired")
    assert raw.array.shape == (4, 16, 16) and raw.geometry["measurable"] is False
    assert any("volumes, distances and statistics measured on it are wrong" in note for note in raw.warnings)
    # acquired slices are kept exactly where the regular grid passes through them
    assert np.array_equal(image.array[[0, 162, 163, 164]], raw.array)


def _respaced_copy(shared_data: Path, folder: Path, keep: list[int]) -> Path:
    """A copy of the 20-slice series with only the slices ``keep`` (0-based, in position order)."""
    files = sorted((shared_data / EVEN).iterdir(),
                   key=lambda path: float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
    folder.mkdir()
    for index in keep:
        shutil.copy(files[index], folder / files[index].name)
    return folder


@pytest.mark.parametrize("case, keep, description", [
    ("spacing change", [*range(10), 11, 13, 15, 17, 19],
     "Slice spacing changes: 2 mm between slices 1–10, then 4 mm between slices 10–15"),
    ("missing slices", [i for i in range(20) if i not in (6, 13, 14)],
     "Missing slices: about 3 slice(s) missing in 2 gap(s): 4 mm between slices 6 and 7 where the spacing is 2 mm; "
     "6 mm between slices 12 and 13 where the spacing is 2 mm"),
])
def test_respaced_real_slices_keep_their_true_volume(shared_data, tmp_path, case, keep, description):
    truth = read_dicom_series(shared_data / EVEN)  # every slice: the true body volume
    true_ml = volume_ml(body(truth.array), truth.ijk_to_ras)
    image = read_dicom_series(_respaced_copy(shared_data, tmp_path / "series", keep))
    assert image.warnings[0] == description
    assert image.array.shape == truth.array.shape and np.allclose(image.ijk_to_ras, truth.ijk_to_ras, atol=1e-6)
    assert np.array_equal(image.array[keep], truth.array[keep])  # acquired slices untouched
    assert abs(volume_ml(body(image.array), image.ijk_to_ras) / true_ml - 1) < 0.01


def test_seg_of_a_tilted_series_references_the_acquired_slices(runtime, shared_data, tmp_path):
    loaded = load_volume(shared_data / TILTED, runtime)
    provenance = Provenance(model_id="classic-ct", model_version="1.0", weights_sha256="none", parameters={},
                            device="cpu", started=now_iso(), finished=now_iso())
    on_grid = body(array_from_volume(loaded.node))
    segmentation = import_label_map(LabelMapResult(layers=[on_grid.astype(np.uint8)]), [BODY], loaded.node,
                                    provenance, runtime=runtime)
    source = export_source(loaded.source, loaded.node)
    assert source.regular_grid is not None and "mapped back" in source.changes[0]
    path = write_seg(segmentation, loaded.node, source, tmp_path / "seg.dcm").path
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    frames = seg.get_pixels_by_source_instance(source.sop_instance_uids, segment_numbers=[1])[..., 0] > 0
    on_acquired = body(read_dicom_series(shared_data / TILTED, geometry="acquired").array)
    dice = 2 * (frames & on_acquired).sum() / (frames.sum() + on_acquired.sum())
    assert dice > 0.98, dice

    acquired = load_volume(shared_data / TILTED, runtime, geometry="acquired")  # not the grid it was made on
    with pytest.raises(InputError, match="not the regular grid"):
        export_source(loaded.source, acquired.node)
    # on the acquired (non-orthogonal) grid itself, a SEG holds the labels exactly as segmented
    segmentation = import_label_map(LabelMapResult(layers=[on_acquired.astype(np.uint8)]), [BODY], acquired.node,
                                    provenance, runtime=runtime)
    source = export_source(acquired.source, acquired.node)
    path = write_seg(segmentation, acquired.node, source, tmp_path / "acquired.dcm").path
    frames = hd.seg.segread(path).get_pixels_by_source_instance(source.sop_instance_uids, segment_numbers=[1])
    assert np.array_equal(frames[..., 0] > 0, on_acquired)


def test_run_record_and_cli_line_say_which_grid(shared_data, tmp_path):
    series = _respaced_copy(shared_data, tmp_path / "series", [*range(10), 11, 13, 15, 17, 19])
    result = run_segmentation(PipelineRequest(series, "classic-ct", tmp_path / "out", executor="thread"))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["geometry"]["grid"] == "regular" and record["geometry"]["shape_ijk"] == [512, 512, 20]
    assert any(w.startswith("Resampled from 15 unevenly spaced slices") for w in record["warnings"])
    assert geometry_line(result.geometry).startswith(
        "geometry: resampled from 15 unevenly spaced slices onto a regular grid of 512x512x20 voxels")
    with pytest.raises(InputError, match="unevenly spaced slices"):  # acquired geometry: not fit to measure
        run_segmentation(PipelineRequest(series, "classic-ct", tmp_path / "acquired", executor="thread",
                                         options=ExportOptions(formats=("json",)), geometry="acquired"))


def test_a_volume_under_a_transform_is_noted_by_the_model_run(runtime, shared_data):
    """Slicer's DICOM module puts a tilted series under an acquisition transform: the run says what it saw."""
    from aiportal.segment import SegmentationJob

    loaded = load_volume(shared_data / TILTED, runtime, geometry="acquired")
    assert SegmentationJob(loaded.node, "classic-ct", runtime=runtime, executor="thread").notes == []
    transform = runtime.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Acquisition transform")
    loaded.node.SetAndObserveTransformNodeID(transform.GetID())
    (note,) = SegmentationJob(loaded.node, "classic-ct", runtime=runtime, executor="thread").notes
    assert "under transform Acquisition transform: the model ran on its voxels before that transform" in note


def test_rounding_is_no_tilt():
    """A shift far below a pixel over the stack (rounded positions) keeps the acquired grid; a real tilt does not."""
    from aiportal.io.geometry import SliceStack

    def stack(shift_per_slice: float) -> SliceStack:
        positions = np.array([[0.0, shift_per_slice * k, 2.0 * k] for k in range(40)])
        return SliceStack(positions, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.9, 0.9), 64, 64)

    assert not stack(0.0005).is_tilted and not stack(0.0005).needs_regular_grid()
    tilted = stack(2.0 * np.tan(np.radians(5.0)))
    assert tilted.is_tilted and tilted.needs_regular_grid() and abs(tilted.tilt_degrees - 5.0) < 1e-6
