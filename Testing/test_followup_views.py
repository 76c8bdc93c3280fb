"""The follow-up shown in a real Slicer-core scene (what AIMeasure's 'Follow over time points' and the
browser workspace show): three studies of a real CT crop, the priors moved by known rigid motions onto
their own frames, real lesion shapes shrunk, removed, grown and added. One linked axial view per time
point, each prior under its registration transform (the known motion, within 1 mm), the delta table and
the per-lesion chart holding what the tracking computed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import vtk

sys.path.insert(0, str(Path(__file__).parent))
from test_followup_pacs import DATES, _study, three_time_points  # noqa: E402
from test_recist import _segmentation  # noqa: E402

from aiportal.errors import InputError  # noqa: E402
from aiportal.followup.outputs import track_rows  # noqa: E402
from aiportal.followup.scene import TABLE_COLUMNS, series_job, show_series  # noqa: E402
from aiportal.followup.tracking import BASELINE, GONE, NEW, PRESENT  # noqa: E402
from aiportal.io.volumes import ijk_to_ras_matrix, load_volume  # noqa: E402


@pytest.fixture(scope="module")
def studies(shared_data, tmp_path_factory):
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    root = tmp_path_factory.mktemp("views")
    by_date, motion_by_date = three_time_points(shared_data)
    masks, motions = list(by_date.values()), list(motion_by_date.values())
    points = []
    for date, motion, lesions in zip(DATES, motions, masks, strict=True):
        folder = _study(shared_data / "totalseg" / "example_ct_dicom", root / date, date=date, motion=motion)
        volume = load_volume(folder, runtime).node
        volume.SetName(date)
        labels = sum(m.astype(np.uint8) * (n + 1) for n, m in enumerate(lesions))
        points.append((date, _segmentation(runtime, labels, volume), volume))
    yield runtime, points, motions
    runtime.scene.Clear(1)


def test_linked_views_transforms_table_and_chart(studies):
    runtime, points, motions = studies
    job = series_job(points)
    job.start()
    job.wait()
    result = job.finish()
    assert result.labels == list(DATES)
    assert [[s.status if s else None for s in t.states] for t in result.tracks] == [
        [BASELINE, PRESENT, PRESENT], [BASELINE, GONE, GONE], [None, None, NEW]]
    scene = runtime.scene
    view = show_series(scene, result, {label: (seg, vol) for label, seg, vol in points})

    # each prior under its registration: the known motion recovered (corners of the current volume)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # the motions are in LPS
    corners = ijk_to_ras_matrix(points[-1][2]) @ np.array(
        [[i, j, k, 1.0] for i in (0, 179) for j in (0, 179) for k in (0, 19)]).T
    for (label, segmentation, volume), motion, transform in zip(points[:2], motions[:2], view.transforms[:2],
                                                               strict=True):
        assert volume.GetParentTransformNode() is transform and segmentation.GetParentTransformNode() is transform
        matrix4 = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToParent(matrix4)
        matrix = np.array([[matrix4.GetElement(r, c) for c in range(4)]
                           for r in range(4)])
        known = flip @ motions[2] @ np.linalg.inv(motion) @ flip
        assert np.linalg.norm((matrix @ corners - known @ corners)[:3], axis=0).max() < 1.0, label
    assert view.transforms[2] is None and points[2][2].GetParentTransformNode() is None

    # one linked axial view per time point, each showing its own study and lesions, all at one position
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == view.layout_id
    offsets = []
    for tag, (label, segmentation, volume) in zip(view.slice_tags, points, strict=True):
        composite = scene.GetSingletonNode(tag, "vtkMRMLSliceCompositeNode")
        slice_node = scene.GetSingletonNode(tag, "vtkMRMLSliceNode")
        assert composite.GetBackgroundVolumeID() == volume.GetID() and composite.GetLinkedControl()
        assert slice_node.GetOrientation() == "Axial"
        display = segmentation.GetDisplayNode()
        assert display.IsDisplayableInView(slice_node.GetID())
        others = [t for t in view.slice_tags if t != tag]
        assert not any(display.IsDisplayableInView(scene.GetSingletonNode(t, "vtkMRMLSliceNode").GetID())
                       for t in others), label
        offsets.append(slice_node.GetSliceOffset())
    assert len(set(offsets)) == 1
    largest = max((t.states[-1].measurement for t in result.tracks if t.states[-1].measurement),
                  key=lambda m: m.reported_mm)
    assert offsets[0] == pytest.approx(np.mean(np.asarray(largest.long_axis_endpoints_ras)[:, 2]), abs=1e-6)

    # the delta table is followup.csv's rows; the chart has each lesion's diameter over time
    rows = track_rows(result)
    table = view.table.GetTable()
    assert table.GetNumberOfRows() == len(rows) == 7  # 3 + 3 (present, then gone) + 1 (new)
    columns = [name for name, _ in TABLE_COLUMNS]
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            value = table.GetValue(r, c)
            if isinstance(row[name], str):
                assert value.ToString() == row[name]
            elif math.isnan(row[name]):
                assert math.isnan(value.ToDouble())
            else:
                assert value.ToDouble() == pytest.approx(row[name])
    assert "Partial response" in view.summary and "Progressive disease" in view.summary
    assert view.chart.GetNumberOfPlotSeriesNodes() == len(result.tracks)
    for n, track in enumerate(result.tracks):
        series = view.chart.GetNthPlotSeriesNode(n)
        values = series.GetTableNode().GetTable().GetColumnByName(series.GetYColumnName())
        for t, state in enumerate(track.states):
            expected = state.reported_mm if state is not None else math.nan
            assert (math.isnan(values.GetValue(t)) if math.isnan(expected)
                    else values.GetValue(t) == pytest.approx(expected))
    assert scene.GetSingletonNode("FollowUpTable", "vtkMRMLTableViewNode").GetTableNodeID() == view.table.GetID()
    assert scene.GetSingletonNode("FollowUpPlot", "vtkMRMLPlotViewNode").GetPlotChartNodeID() == view.chart.GetID()


def test_bad_time_points_refused(studies):
    runtime, points, _ = studies
    with pytest.raises(InputError, match="at least one prior"):
        series_job(points[-1:])
    with pytest.raises(InputError, match="'x' has no volume"):
        series_job([("x", points[0][1], None), points[-1]])
    for _, segmentation, volume in points:  # the views test left the priors under their registrations
        segmentation.SetAndObserveTransformNodeID(None)
        volume.SetAndObserveTransformNodeID(None)
    assert series_job(points) is not None
    transform = runtime.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    points[0][2].SetAndObserveTransformNodeID(transform.GetID())
    try:
        with pytest.raises(InputError, match="under a transform"):
            series_job(points)
    finally:
        points[0][2].SetAndObserveTransformNodeID(None)
