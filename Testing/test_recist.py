"""RECIST 1.1 axes on real lesion and organ labels against a brute force over every boundary voxel
pair, the Markups lines placed from them, and the RECIST 1.1 response rules."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
from scipy import ndimage

from aiportal.errors import InputError
from aiportal.export.statistics import compute_statistics
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, volume_node_from_array
from aiportal.measure.recist import (
    SEGMENT_ID_ATTRIBUTE,
    SEGMENTATION_ID_ATTRIBUTE,
    RecistMeasurement,
    add_axis_lines,
    measure_segment,
)
from aiportal.measure.response import Response, classify_response, sum_of_diameters
from aiportal.segmentation import ijk_to_ras_vtk, oriented_image, segment_ids, segment_mask

# TotalSegmentator "total" label values: spleen, right and left kidney, liver, vertebra L1
TOTALSEG_LABELS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 31: "vertebrae_L1"}


def _segmentation(runtime, labels_kji: np.ndarray, volume, ijk_to_ras: np.ndarray | None = None):
    """A segmentation holding one segment per label value of the map, through Slicer's own import."""
    node = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    grid = ijk_to_ras_vtk(volume) if ijk_to_ras is None else _vtk(ijk_to_ras)
    image = oriented_image(labels_kji.astype(np.uint8), grid)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, node, "", "")
    return node


def _vtk(matrix: np.ndarray):
    import vtk

    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, matrix[row, column])
    return result


def _pyradiomics(runtime, shared_data: Path, case: str):
    image = load_volume(shared_data / "pyradiomics" / f"{case}_image.nrrd", runtime).node
    label = load_volume(shared_data / "pyradiomics" / f"{case}_label.nrrd", runtime).node
    labels_kji = array_from_volume(label) > 0
    runtime.scene.RemoveNode(label)
    node = _segmentation(runtime, labels_kji, image)
    return image, labels_kji, node, segment_ids(node)[0]


@pytest.fixture(scope="module")
def totalseg(shared_data):
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    ct = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime).node
    reference = load_volume(shared_data / "totalseg" / "example_seg.nii.gz", runtime).node
    labels_kji = array_from_volume(reference).astype(np.uint8)
    runtime.scene.RemoveNode(reference)
    kept = np.where(np.isin(labels_kji, list(TOTALSEG_LABELS)), labels_kji, 0)
    node = _segmentation(runtime, kept, ct)
    by_value = {node.GetSegmentation().GetSegment(s).GetLabelValue(): s for s in segment_ids(node)}
    yield runtime, ct, labels_kji, node, by_value
    runtime.scene.Clear(1)


# -- brute force, written independently of the module ----------------------------------------------
def _slice_boundary_ras(mask_kji: np.ndarray, k: int, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Every in-slice boundary voxel centre of slice k (4-neighbourhood in the slice), in RAS."""
    plane = mask_kji[k]
    boundary = plane & ~ndimage.binary_erosion(plane, border_value=0)
    ji = np.argwhere(boundary)
    ijk = np.column_stack([ji[:, 1], ji[:, 0], np.full(len(ji), k)])
    return ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def _brute_long_axis(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    best = 0.0
    for k in np.flatnonzero(mask_kji.any(axis=(1, 2))):
        points = _slice_boundary_ras(mask_kji, k, ijk_to_ras)
        best = max(best, float(((points[:, None] - points[None]) ** 2).sum(-1).max()))
    return math.sqrt(best)


def _brute_short_axis(points: np.ndarray, along: np.ndarray, normal: np.ndarray, window_mm: float) -> float:
    """Same definition as the module, over all pairs at once: largest perpendicular extent of two
    boundary centres at most one in-plane voxel apart along the long axis."""
    across = np.cross(normal, along)
    u, v = points @ along, points @ (across / np.linalg.norm(across))
    spread = v[:, None] - v[None, :]
    return float(spread[np.abs(u[:, None] - u[None, :]) <= window_mm + 1e-9].max())


def _check_against_brute_force(measurement: RecistMeasurement, mask_kji: np.ndarray, ijk_to_ras: np.ndarray):
    assert measurement.slice_axis == "k"
    assert measurement.long_axis_mm == pytest.approx(_brute_long_axis(mask_kji, ijk_to_ras), abs=1e-9)
    boundary = _slice_boundary_ras(mask_kji, measurement.slice_index, ijk_to_ras)
    p, q = (np.array(point) for point in measurement.long_axis_endpoints_ras)
    assert np.linalg.norm(q - p) == pytest.approx(measurement.long_axis_mm, abs=1e-9)
    for point in (p, q):  # the long axis joins two boundary voxel centres of the reported slice
        assert np.linalg.norm(boundary - point, axis=1).min() < 1e-9
    along = (q - p) / np.linalg.norm(q - p)
    normal = np.cross(ijk_to_ras[:3, 0], ijk_to_ras[:3, 1])
    normal /= np.linalg.norm(normal)
    window = max(np.linalg.norm(ijk_to_ras[:3, 0]), np.linalg.norm(ijk_to_ras[:3, 1]))
    expected_short = _brute_short_axis(boundary, along, normal, window)
    assert measurement.short_axis_mm == pytest.approx(expected_short, abs=1e-9)
    a, b = (np.array(point) for point in measurement.short_axis_endpoints_ras)
    assert np.linalg.norm(b - a) == pytest.approx(measurement.short_axis_mm, abs=1e-9)
    angle = math.degrees(math.acos(min(1.0, abs(float((b - a) @ along)) / np.linalg.norm(b - a))))
    assert abs(angle - 90.0) < 1.0 and abs(angle - 90.0) < 1e-6  # required 1°, exact by construction
    for point in (a, b):  # on the slice, within half a voxel (along the long axis) of a boundary centre
        assert abs(float((point - p) @ normal)) < 1e-9
        assert np.linalg.norm(boundary - point, axis=1).min() <= window / 2 + 1e-9


@pytest.mark.parametrize("case", ["brain1", "brain2", "breast1"])
def test_pyradiomics_lesions_equal_brute_force(runtime, shared_data, case):
    image, mask, node, segment_id = _pyradiomics(runtime, shared_data, case)
    ijk_to_ras = ijk_to_ras_matrix(image)
    start = time.perf_counter()
    measurement = measure_segment(node, segment_id, image)
    elapsed = time.perf_counter() - start
    _check_against_brute_force(measurement, mask, ijk_to_ras)
    assert measurement.volume_ml == pytest.approx(mask.sum() * abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000)
    feret = compute_statistics(node, image, [segment_id], modality="MR")[0].values["feret_diameter_mm"]
    assert measurement.max_3d_diameter_mm == pytest.approx(feret, abs=1e-9)
    assert measurement.long_axis_mm <= measurement.max_3d_diameter_mm + 1e-9
    assert elapsed < 1.0, f"{case}: {elapsed:.3f} s"


def test_totalsegmentator_organs_equal_brute_force(totalseg):
    _, ct, labels_kji, node, by_value = totalseg
    ijk_to_ras = ijk_to_ras_matrix(ct)
    for value in TOTALSEG_LABELS:
        measurement = measure_segment(node, by_value[value], ct)
        _check_against_brute_force(measurement, labels_kji == value, ijk_to_ras)
        assert measurement.notes and "oblique" not in " ".join(measurement.notes)


def test_axis_lines_are_placed_and_linked(totalseg):
    runtime, ct, _, node, by_value = totalseg
    segment_id = by_value[2]
    measurement = measure_segment(node, segment_id, ct)
    long_line, short_line = add_axis_lines(runtime.scene, measurement, node, segment_id, "kidney_right")
    assert long_line.GetName() == "kidney_right long axis" and short_line.GetName() == "kidney_right short axis"
    assert long_line.GetLineLengthWorld() == pytest.approx(measurement.long_axis_mm, abs=1e-6)
    assert short_line.GetLineLengthWorld() == pytest.approx(measurement.short_axis_mm, abs=1e-6)
    for line, endpoints in ((long_line, measurement.long_axis_endpoints_ras),
                            (short_line, measurement.short_axis_endpoints_ras)):
        assert line.IsA("vtkMRMLMarkupsLineNode") and line.GetNumberOfControlPoints() == 2
        for n, point in enumerate(endpoints):
            assert np.allclose(line.GetNthControlPointPositionWorld(n), point, atol=1e-6)
        assert line.GetAttribute(SEGMENTATION_ID_ATTRIBUTE) == node.GetID()
        assert line.GetAttribute(SEGMENT_ID_ATTRIBUTE) == segment_id


def test_slices_along_another_voxel_axis_and_oblique_slices(runtime, shared_data):
    """The same lesion stored with S along j, and tilted by 0.5° and 5°: same axes, honest notes."""
    image, mask, node, segment_id = _pyradiomics(runtime, shared_data, "brain2")
    reference = measure_segment(node, segment_id, image)
    matrix = ijk_to_ras_matrix(image)

    swapped = matrix[:, [0, 2, 1, 3]]  # j <-> k: the axial slices are now planes of constant j
    volume = volume_node_from_array(runtime.scene, mask.transpose(1, 0, 2), swapped, "swapped")
    swapped_node = _segmentation(runtime, mask.transpose(1, 0, 2), volume)
    measurement = measure_segment(swapped_node, segment_ids(swapped_node)[0], volume)
    assert measurement.slice_axis == "j" and measurement.slice_index == reference.slice_index
    for key in ("long_axis_mm", "short_axis_mm", "max_3d_diameter_mm", "volume_ml"):
        assert getattr(measurement, key) == pytest.approx(getattr(reference, key), abs=1e-9), key

    for degrees, oblique in ((0.5, False), (5.0, True)):
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        rotation = np.eye(4)
        rotation[1:3, 1:3] = [[c, -s], [s, c]]  # about the R axis
        tilted = volume_node_from_array(runtime.scene, mask, rotation @ matrix, f"tilted {degrees}")
        tilted_node = _segmentation(runtime, mask, tilted)
        measurement = measure_segment(tilted_node, segment_ids(tilted_node)[0], tilted)
        assert measurement.long_axis_mm == pytest.approx(reference.long_axis_mm, abs=1e-9)
        assert measurement.short_axis_mm == pytest.approx(reference.short_axis_mm, abs=1e-9)
        assert any("oblique: 5.0°" in note for note in measurement.notes) == oblique


def test_segment_partly_outside_the_volume(runtime, shared_data):
    image, mask, node, segment_id = _pyradiomics(runtime, shared_data, "brain2")
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    cut = int(slices[len(slices) // 2])
    matrix = ijk_to_ras_matrix(image)
    part = volume_node_from_array(runtime.scene, array_from_volume(image)[:cut], matrix, "upper part")
    measurement = measure_segment(node, segment_id, part)
    _check_against_brute_force(measurement, mask[:cut], matrix)
    outside = int(mask[cut:].sum())
    assert any(f"{outside} of {int(mask.sum())} voxels lie outside upper part" in note for note in measurement.notes)


def test_volume_on_another_grid_is_measured_on_slicers_resampled_mask(runtime, shared_data):
    image, mask, node, segment_id = _pyradiomics(runtime, shared_data, "brain1")
    matrix = ijk_to_ras_matrix(image)
    matrix[:3, 3] += 0.5 * matrix[:3, 0]  # half a voxel along i: no whole-voxel shift of the layer
    shifted = volume_node_from_array(runtime.scene, array_from_volume(image), matrix, "shifted")
    measurement = measure_segment(node, segment_id, shifted)
    resampled = segment_mask(node, segment_id, shifted)
    assert resampled.any()
    _check_against_brute_force(measurement, resampled, matrix)


def test_transformed_nodes_are_refused(runtime, shared_data):
    image, _, node, segment_id = _pyradiomics(runtime, shared_data, "brain2")
    transform = runtime.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="harden the transforms"):
        measure_segment(node, segment_id, image)


def test_tied_slices_take_the_longer_short_axis(runtime, shared_data):
    """A 21-voxel bar on slice 5 and a plus of the same length (with an 11-voxel cross bar) on slice 8:
    equal long axes; RECIST's largest cross-section is the plus."""
    image = load_volume(shared_data / "pyradiomics" / "brain2_image.nrrd", runtime).node
    mask = np.zeros(array_from_volume(image).shape, dtype=bool)
    mask[5, 100, 90:111] = True
    mask[8, 100, 90:111] = True
    mask[8, 95:106, 100] = True
    node = _segmentation(runtime, mask, image)
    measurement = measure_segment(node, segment_ids(node)[0], image)
    spacing = np.linalg.norm(ijk_to_ras_matrix(image)[:3, :2], axis=0)
    assert measurement.slice_index == 8
    assert measurement.long_axis_mm == pytest.approx(20 * spacing[0], abs=1e-9)
    assert measurement.short_axis_mm == pytest.approx(10 * spacing[1], abs=1e-9)
    _check_against_brute_force(measurement, mask, ijk_to_ras_matrix(image))


def test_lymph_node_mode_and_sum_of_diameters(runtime, shared_data):
    image, _, node, segment_id = _pyradiomics(runtime, shared_data, "brain2")
    lesion = measure_segment(node, segment_id, image)
    as_node = measure_segment(node, segment_id, image, lymph_node=True)
    assert as_node.reported_mm == as_node.short_axis_mm == lesion.short_axis_mm
    assert lesion.reported_mm == lesion.long_axis_mm
    assert any("lymph node short axis" in note for note in as_node.notes)
    assert sum_of_diameters([lesion, as_node]) == pytest.approx(lesion.long_axis_mm + lesion.short_axis_mm)
    assert sum_of_diameters([]) == 0.0


def test_degenerate_segments_give_clear_errors(runtime, shared_data):
    image, mask, node, segment_id = _pyradiomics(runtime, shared_data, "brain2")
    node.GetSegmentation().AddEmptySegment("empty", "empty lesion")
    with pytest.raises(InputError, match="'empty lesion'.* is empty"):
        measure_segment(node, "empty", image)
    with pytest.raises(InputError, match="'nothing' is not in lesions"):
        measure_segment(node, "nothing", image)

    single = np.zeros_like(mask)
    single[10, 100, 100] = True
    one_voxel = _segmentation(runtime, single, image)
    with pytest.raises(InputError, match="is a single voxel"):
        measure_segment(one_voxel, segment_ids(one_voxel)[0], image)

    column = np.zeros_like(mask)
    column[5:15, 100, 100] = True  # one voxel wide in every axial slice, 10 slices long
    line = _segmentation(runtime, column, image)
    with pytest.raises(InputError, match="one voxel wide in every axial slice"):
        measure_segment(line, segment_ids(line)[0], image)

    # a volume holding only the first 3 slices, where the lesion is not: the segment lies off it
    assert not mask[:3].any()
    top = volume_node_from_array(runtime.scene, array_from_volume(image)[:3], ijk_to_ras_matrix(image), "top")
    with pytest.raises(InputError, match="lies entirely outside top"):
        measure_segment(node, segment_id, top)


def test_measurement_is_plain_data(runtime, shared_data):
    image, _, node, segment_id = _pyradiomics(runtime, shared_data, "breast1")
    measurement = measure_segment(node, segment_id, image)
    assert measurement.long_axis_mm < 10 and any("non-measurable" in note for note in measurement.notes)
    values = dataclasses.asdict(measurement)
    assert all(isinstance(x, float) for pair in values["long_axis_endpoints_ras"] for x in pair)


# -- RECIST 1.1 response (Eisenhauer et al. 2009, section 4.3) -----------------------------------
RESPONSE_CASES = [
    # baseline, nadir, current, keyword arguments, expected, why
    (100.0, 100.0, 70.0, {}, Response.PR, "exactly -30 % from baseline"),
    (100.0, 100.0, 70.1, {}, Response.SD, "-29.9 %"),
    (50.3, 50.3, 50.3 * 0.7, {}, Response.PR, "-30 % of an odd sum (float rounding)"),
    (100.0, 100.0, 120.0, {}, Response.PD, "+20 % and +20 mm"),
    (100.0, 100.0, 119.9, {}, Response.SD, "+19.9 %"),
    (20.0, 20.0, 24.0, {}, Response.SD, "+20 % but only +4 mm"),
    (25.0, 25.0, 30.0, {}, Response.PD, "+20 % and exactly +5 mm"),
    (10.0, 10.0, 14.9, {}, Response.SD, "+49 % but +4.9 mm"),
    (100.0, 50.0, 60.0, {}, Response.PD, "nadir below baseline: +20 % and +10 mm from the nadir"),
    (100.0, 50.0, 59.0, {}, Response.PR, "+18 % from the nadir, still -41 % from baseline"),
    (100.0, 60.0, 72.0, {}, Response.PD, "PD from the nadir although -28 % from baseline"),
    (100.0, 100.0, 50.0, {"new_lesions": True}, Response.PD, "new lesion: PD regardless"),
    (100.0, 100.0, 0.0, {"new_lesions": True, "all_target_lesions_gone": True}, Response.PD, "new lesion beats CR"),
    (100.0, 100.0, 90.0, {"nontarget_progression": True}, Response.PD, "unequivocal non-target progression"),
    (100.0, 40.0, 0.0, {"all_target_lesions_gone": True}, Response.CR, "all gone, no nodes"),
    (100.0, 40.0, 17.0, {"all_target_lesions_gone": True, "nodes_short_axis_mm": [8.0, 9.0]}, Response.CR,
     "all gone, nodes < 10 mm (their short axes stay in the sum)"),
    (100.0, 40.0, 19.0, {"all_target_lesions_gone": True, "nodes_short_axis_mm": [9.0, 10.0]}, Response.PR,
     "a node of exactly 10 mm: not CR"),
    (30.0, 30.0, 22.0, {"all_target_lesions_gone": True, "nodes_short_axis_mm": [12.0, 10.0]}, Response.SD,
     "nodes still pathological and only -27 %"),
    (100.0, 0.0, 5.0, {}, Response.PD, "after a nadir of 0: +5 mm is PD"),
    (100.0, 0.0, 4.0, {}, Response.PR, "after a nadir of 0: +4 mm is not PD"),
]


@pytest.mark.parametrize(("baseline", "nadir", "current", "flags", "expected", "why"), RESPONSE_CASES,
                         ids=[case[-1] for case in RESPONSE_CASES])
def test_recist_response_rules(baseline, nadir, current, flags, expected, why):
    result = classify_response(baseline, nadir, current, **flags)
    assert result.response is expected, f"{why}: {result.explanation}"
    assert result.explanation
    assert result.change_from_baseline_pct == pytest.approx(100 * (current - baseline) / baseline)
    assert result.change_from_nadir_mm == pytest.approx(current - nadir)


def test_response_explains_why_not_cr_and_rejects_impossible_sums():
    result = classify_response(100.0, 40.0, 19.0, all_target_lesions_gone=True, nodes_short_axis_mm=[9.0, 10.0])
    assert "not CR" in result.explanation and "10 mm" in result.explanation
    with pytest.raises(InputError, match="Baseline sum"):
        classify_response(0.0, 0.0, 0.0)
    with pytest.raises(InputError, match="above the baseline"):
        classify_response(50.0, 60.0, 55.0)
    with pytest.raises(InputError, match="negative"):
        classify_response(50.0, 40.0, -1.0)


def test_measure_command_writes_tables_and_loadable_axis_lines(runtime, shared_data, totalseg, tmp_path):
    import json
    import subprocess
    import sys

    from aiportal.segmentation import save_segmentation

    _, ct, _, node, by_value = totalseg
    seg_path = save_segmentation(node, tmp_path / "organs.seg.nrrd")
    names = {node.GetSegmentation().GetSegment(s).GetName(): s for s in segment_ids(node)}
    spleen = next(name for name, s in names.items() if s == by_value[1])
    out = tmp_path / "measured"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "measure", str(seg_path), "--volume",
                           str(shared_data / "totalseg" / "example_ct_sm.nii.gz"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = json.loads((out / "measurements.json").read_text())
    row = next(r for r in table["measurements"] if r["segment_name"] == spleen)
    expected = measure_segment(node, by_value[1], ct)
    assert row["long_axis_mm"] == pytest.approx(expected.long_axis_mm, abs=1e-9)
    assert row["short_axis_mm"] == pytest.approx(expected.short_axis_mm, abs=1e-9)
    assert len((out / "measurements.csv").read_text().splitlines()) == len(table["measurements"]) + 1
    line = slicer.vtkMRMLMarkupsLineNode()
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    runtime.scene.AddNode(line)
    storage.SetFileName(str(out / "axes" / f"{spleen} long axis.mrk.json"))
    assert storage.ReadData(line)
    assert line.GetLineLengthWorld() == pytest.approx(expected.long_axis_mm, abs=1e-3)
    unknown = subprocess.run([sys.executable, "-m", "aiportal.cli", "measure", str(seg_path), "--volume",
                              str(shared_data / "totalseg" / "example_ct_sm.nii.gz"), "--segments", "no-such",
                              "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 1 and "no-such" in unknown.stderr and not (tmp_path / "x").exists()


def test_measure_command_follow_up_and_key_images(runtime, shared_data, totalseg, tmp_path):
    import json
    import subprocess
    import sys

    from aiportal.segmentation import save_segmentation

    _, ct, _, node, by_value = totalseg
    # current = the spleen alone; prior = the same spleen: stable disease, no change, no new lesion
    spleen_only = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "spleen")
    spleen_only.GetSegmentation().CopySegmentFromSegmentation(node.GetSegmentation(), by_value[1])
    seg_path = save_segmentation(spleen_only, tmp_path / "spleen.seg.nrrd")
    volume = str(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    out = tmp_path / "followup"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "measure", str(seg_path), "--volume", volume,
                           "--prior", str(seg_path), "--prior-volume", volume, "--key-images", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    follow_up = json.loads((out / "followup.json").read_text())
    assert follow_up["response"]["response"] == "SD", follow_up["response"]
    assert follow_up["response"]["change_from_baseline_pct"] == pytest.approx(0.0, abs=1e-9)
    assert "RECIST 1.1 response" in done.stdout
    assert [p.suffix for p in (out / "key_images").iterdir()] == [".png"]
    missing = subprocess.run([sys.executable, "-m", "aiportal.cli", "measure", str(seg_path), "--volume", volume,
                              "--prior", str(seg_path), "--out", str(tmp_path / "y")], capture_output=True, text=True)
    assert missing.returncode == 1 and "--prior-volume" in missing.stderr
