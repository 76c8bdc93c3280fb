"""Lesions tracked over three time points on a real CT (TotalSegmentator's example series) with real lesion
shapes (pyradiomics brain1/brain2 labels) grown, shrunk, removed and added by known amounts: persistent
tracking, RECIST response against baseline and nadir, per-lesion changes, the table, plot and one TID 1500
SR per time point that passes dciodvfy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_validation import dciodvfy_errors
from orthanc_server import ct_with_uids
from scipy import ndimage
from test_recist import _segmentation

from aiportal.export.dicom_source import export_source
from aiportal.followup.outputs import track_rows, write_plot, write_table
from aiportal.followup.sr import write_time_point_sr
from aiportal.followup.tracking import (
    BASELINE,
    GONE,
    MERGED,
    NEW,
    PRESENT,
    REAPPEARED,
    SPLIT,
    TimePoint,
    track_lesions,
)
from aiportal.io.volumes import array_from_volume, load_volume
from aiportal.measure.recist import measure_lesions
from aiportal.measure.response import Response, classify_response
from aiportal.segmentation import segment_ids

IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def real_lesion(shared_data, case: str, largest: bool = True) -> np.ndarray:
    """A real lesion's shape (kji, cropped to its box): the largest (or smallest) component of a pyradiomics label."""
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "pyradiomics" / f"{case}_label.nrrd"))) > 0
    components, count = ndimage.label(label, np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel())[1:]
    index = int(sizes.argmax() if largest else sizes.argmin()) + 1
    mask = components == index
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return mask[box]


def place(shape, lesion: np.ndarray, corner) -> np.ndarray:
    out = np.zeros(shape, bool)
    k, j, i = corner
    out[k:k + lesion.shape[0], j:j + lesion.shape[1], i:i + lesion.shape[2]] = lesion
    return out


@pytest.fixture(scope="module")
def ct(shared_data, tmp_path_factory):
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path_factory.mktemp("ct"))
    loaded = load_volume(series.folder, runtime)
    yield runtime, loaded
    runtime.scene.Clear(1)


def _measured(runtime, mask, volume):
    node = _segmentation(runtime, mask.astype(np.uint8), volume)
    (measurement,) = measure_lesions(node, segment_ids(node)[0], volume).measurements
    runtime.scene.RemoveNode(node)
    return measurement


def test_three_time_points_tracked_response_table_plot_and_sr(ct, shared_data, tmp_path):
    runtime, loaded = ct
    volume = loaded.node
    shape = array_from_volume(volume).shape
    a, b, c = (real_lesion(shared_data, "brain1"), real_lesion(shared_data, "brain2"),
               real_lesion(shared_data, "brain1", largest=False))
    lesion_a = place(shape, a, (4, 150, 120))
    lesion_b = place(shape, b, (6, 300, 330))
    shrunk_a = ndimage.binary_erosion(lesion_a, IN_PLANE, iterations=2)
    grown_a = ndimage.binary_dilation(lesion_a, IN_PLANE, iterations=3)
    lesion_c = place(shape, c, (10, 380, 150))
    masks = [[lesion_a, lesion_b], [shrunk_a], [grown_a, lesion_c]]
    points = []
    for index, lesions in enumerate(masks):
        labels = sum(m.astype(np.uint8) * (n + 1) for n, m in enumerate(lesions))
        points.append(TimePoint(f"T{index}", volume, _segmentation(runtime, labels, volume)))

    result = track_lesions(points, register=False)

    by_id = {track.tracking_id: track for track in result.tracks}
    assert sorted(by_id) == ["Lesion 1", "Lesion 2", "Lesion 3"]
    # lesion 1 = A throughout, lesion 2 = B (gone at T1 and T2), lesion 3 = C (new at T2)
    statuses = {tid: [s.status if s else None for s in t.states] for tid, t in by_id.items()}
    assert by_id["Lesion 1"].states[0].measurement.volume_ml == pytest.approx(expected_volume(volume, lesion_a))
    assert statuses == {"Lesion 1": [BASELINE, PRESENT, PRESENT], "Lesion 2": [BASELINE, GONE, GONE],
                        "Lesion 3": [None, None, NEW]}
    assert len({t.tracking_uid for t in result.tracks}) == 3

    # independent: each mask measured alone, sums and RECIST rules applied by hand
    expected = [[_measured(runtime, m, volume) for m in lesions] for lesions in masks]
    sums = [expected[0][0].long_axis_mm + expected[0][1].long_axis_mm, expected[1][0].long_axis_mm,
            expected[2][0].long_axis_mm]
    assert result.sums_mm == pytest.approx(sums, abs=1e-9)
    assert result.responses[1] == classify_response(sums[0], sums[0], sums[1])
    assert result.responses[2] == classify_response(sums[0], min(sums[:2]), sums[2], new_lesions=True)
    assert result.responses[2].response is Response.PD
    rows = track_rows(result)
    row = next(r for r in rows if r["tracking_id"] == "Lesion 1" and r["index"] == 2)
    assert row["volume_change_from_baseline_ml"] == pytest.approx(expected[2][0].volume_ml - expected[0][0].volume_ml)
    assert row["reported_change_from_baseline_mm"] == pytest.approx(sums[2] - expected[0][0].long_axis_mm)

    json_path, csv_path = write_table(result, tmp_path)
    document = json.loads(json_path.read_text())
    assert [r.get("response") for r in document["responses"]] == [None, result.responses[1].response.name, "PD"]
    assert len(list(csv.DictReader(csv_path.open()))) == len(rows) == 3 + 3 + 1
    plot = write_plot(result, tmp_path / "followup.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    source = export_source(loaded.source, volume)
    seen: dict[str, str] = {}
    for index in range(3):
        path = write_time_point_sr(result, index, source, tmp_path / f"sr{index}.dcm")
        assert dciodvfy_errors(path) == []
        sr = pydicom.dcmread(path)
        for group in _groups(sr):
            identifier, uid = _tracking(group)
            assert seen.setdefault(identifier, uid) == uid  # one UID per lesion in every report
        assert len(list(_groups(sr))) == len(masks[index])
    assert seen == {t.tracking_id: t.tracking_uid for t in result.tracks}


def test_split_and_merge(ct, shared_data):
    """A lesion cut in two is one lesion and a split fragment; two lesions joined are one and a merged one."""
    runtime, loaded = ct
    volume = loaded.node
    shape = array_from_volume(volume).shape
    a = place(shape, real_lesion(shared_data, "brain1"), (4, 150, 120))
    columns = np.nonzero(a.any(axis=(0, 1)))[0]
    middle = int(columns.mean())
    cut = a.copy()
    cut[:, :, middle - 2:middle + 2] = False  # two pieces
    node = _segmentation(runtime, cut.astype(np.uint8), volume)
    count = len(measure_lesions(node, segment_ids(node)[0], volume).measurements)
    runtime.scene.RemoveNode(node)
    assert count >= 2
    points = [TimePoint(f"T{n}", volume, _segmentation(runtime, m.astype(np.uint8), volume))
              for n, m in enumerate((a, cut, a))]
    result = track_lesions(points, register=False)
    statuses = [[s.status if s else None for s in t.states] for t in result.tracks]
    assert statuses == [[BASELINE, PRESENT, PRESENT]] + [[None, SPLIT, MERGED]] * (count - 1)
    for fragment in result.tracks[1:]:
        assert fragment.parent == "Lesion 1" and fragment.states[2].merged_into == "Lesion 1"
    # RECIST: the fragments' diameters are summed
    assert result.sums_mm[1] == pytest.approx(sum(s.reported_mm for s in (t.states[1] for t in result.tracks)))


def expected_volume(volume, mask) -> float:
    from aiportal.io.volumes import ijk_to_ras_matrix

    return float(mask.sum()) * abs(np.linalg.det(ijk_to_ras_matrix(volume)[:3, :3])) / 1000.0


def test_nadir_progression_and_a_reappeared_lesion(ct, shared_data):
    """B gone at T1 (the nadir), A grown at T2: below the baseline sum but PD from the nadir (+20 %, +5 mm);
    then B gone at T1 and back at T2: it keeps its tracking identifier and is progression."""
    runtime, loaded = ct
    volume = loaded.node
    shape = array_from_volume(volume).shape
    a = place(shape, real_lesion(shared_data, "brain1"), (4, 150, 120))
    b = place(shape, real_lesion(shared_data, "brain2"), (6, 300, 330))
    grown = ndimage.binary_dilation(a, IN_PLANE, iterations=6)
    points = [TimePoint(f"T{n}", volume, _segmentation(runtime, sum(m.astype(np.uint8) * (i + 1)
                                                                      for i, m in enumerate(ms)), volume))
              for n, ms in enumerate([[a, b], [a], [grown]])]
    result = track_lesions(points, register=False)
    sa, sb, sg = (_measured(runtime, m, volume).long_axis_mm for m in (a, b, grown))
    sums = [sa + sb, sa, sg]
    assert result.sums_mm == pytest.approx(sums, abs=1e-9)
    assert sums[2] < sums[0] and sums[2] - sums[1] >= max(5.0, 0.2 * sums[1])  # the case is what it says
    assert result.responses[2] == classify_response(sums[0], sums[1], sums[2])
    assert result.responses[2].response is Response.PD and "nadir" in result.responses[2].explanation

    points = [TimePoint(f"T{n}", volume, _segmentation(runtime, sum(m.astype(np.uint8) * (i + 1)
                                                                      for i, m in enumerate(ms)), volume))
              for n, ms in enumerate([[a, b], [a], [a, b]])]
    result = track_lesions(points, register=False)
    assert [[s.status for s in t.states] for t in result.tracks] == [[BASELINE, PRESENT, PRESENT],
                                                                     [BASELINE, GONE, REAPPEARED]]
    assert result.responses[2].response is Response.PD and result.responses[2].explanation == "new lesion(s)"


def test_organ_volumes_followed_not_tracked(ct, shared_data):
    runtime, loaded = ct
    volume = loaded.node
    shape = array_from_volume(volume).shape
    lesion = place(shape, real_lesion(shared_data, "brain1"), (4, 150, 120))
    points, organs = [], []
    for n, rows in enumerate((100, 90, 120)):  # an organ box shrinking then growing by known voxel counts
        organ = np.zeros(shape, bool)
        organ[2:12, 300:300 + rows, 300:400] = True
        organs.append(organ)
        node = _segmentation(runtime, lesion.astype(np.uint8) + 2 * organ.astype(np.uint8), volume)
        liver = next(s for s in segment_ids(node) if node.GetSegmentation().GetSegment(s).GetLabelValue() == 2)
        node.GetSegmentation().GetSegment(liver).SetName("liver")
        points.append(TimePoint(f"T{n}", volume, node))
    result = track_lesions(points, register=False, organs=("liver",))
    assert len(result.tracks) == 1
    assert result.organ_volumes_ml["liver"] == pytest.approx([expected_volume(volume, o) for o in organs])
    assert result.responses[1].response is Response.SD


def _groups(sr):
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "126010":  # Imaging Measurements
            yield from item.ContentSequence


def _tracking(group) -> tuple[str, str]:
    values = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
    return str(values["112039"].TextValue), str(values["112040"].UID)
