"""The desktop Planning section's logic (aiportal.planning.desktop) on a real Slicer core scene:
a segmentation node made from TotalSegmentator's example labels, a line markup as the trajectory."""

from __future__ import annotations

import numpy as np
import pytest

from aiportal.errors import InputError
from aiportal.planning.bundle import segmentation_node_from_masks
from aiportal.planning.desktop import (
    PlanningSession,
    add_closest_lines,
    proximity_text,
    resection_text,
    trajectory_text,
)
from aiportal.planning.grid import load_label_grid
from aiportal.planning.proximity import proximity_table
from aiportal.planning.resection import Plane, resect
from aiportal.planning.surface_cut import CutSurface
from aiportal.planning.trajectory import TrajectoryPlanner

NAMES = ["liver", "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "gallbladder"]


def test_panel_logic_matches_the_cli_numbers(shared_data, runtime):
    from aiportal.io.volumes import volume_node_from_array

    folder = shared_data / "totalseg"
    grid = load_label_grid(folder / "example_seg.nii.gz", class_map=folder / "class_map_total_totalmr.json",
                           runtime=runtime)
    scene = runtime.scene
    volume = volume_node_from_array(scene, np.zeros(grid.labels.shape, np.int16), grid.ijk_to_ras, "ct")
    segmentation = segmentation_node_from_masks(scene, grid, {name: grid.mask(name) for name in NAMES})
    liver_id = next(i for i in segmentation.GetSegmentation().GetSegmentIDs()
                    if segmentation.GetSegmentation().GetSegment(i).GetName() == "liver")

    session = PlanningSession()
    rows = session.proximity(segmentation, volume, liver_id, 8.0)
    expected = {row.structure: row.centre_distance_mm for row in proximity_table(grid, "liver", NAMES[1:])}
    assert {row.structure: row.centre_distance_mm for row in rows} == pytest.approx(expected, abs=1e-6)
    assert all(row.alert == (row.gap_mm < 8.0) for row in rows) and any(row.alert for row in rows)
    lines = add_closest_lines(scene, rows)
    assert lines and all(line.GetNumberOfControlPoints() == 2 for line in lines)
    assert "ALERT" in proximity_text(rows)

    target = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver"))).mean(axis=0)
    entry = target + np.array([-60.0, 0.0, 0.0])
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "path")
    line.AddControlPointWorld(*entry)
    line.AddControlPointWorld(*target)
    report = session.trajectory(segmentation, volume, line, 5.0)
    planner = TrajectoryPlanner(grid, NAMES, default_threshold_mm=5.0)
    cli = {row.structure: row.clearance_mm for row in planner.check(entry, target).structures}
    assert {row.structure: row.clearance_mm for row in report.structures} == pytest.approx(cli, abs=1e-6)
    assert "liver: clearance 0.0 mm, inside" in trajectory_text(report)
    # moving an end point reuses the cached planner (the grid is rebuilt only when the inputs change)
    planner_before = session._planner
    line.SetNthControlPointPositionWorld(0, *(entry + np.array([0.0, 10.0, 0.0])))
    session.trajectory(segmentation, volume, line, 5.0)
    assert session._planner is planner_before

    # resection by a markups plane (normal towards the removed part) and by a point list drawn on a curved cut
    plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "cut plane")
    plane.SetOriginWorld(*target)
    plane.SetNormalWorld(1.0, 0.0, 0.0)
    result = session.resect_by_markups(segmentation, volume, liver_id, plane)
    expected, _ = resect(grid, "liver", planes=[Plane(tuple(target), (1.0, 0.0, 0.0))])
    assert result.remnant_voxels == expected.remnant_voxels and 20 < result.remnant_percent < 80
    assert f"= {expected.remnant_percent:.1f} %" in resection_text(result)
    drawn = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "cut")
    a, s = np.meshgrid([-80.0, 0.0, 80.0], [-50.0, 0.0, 50.0])
    points = np.c_[target[0] + 0.003 * a.ravel() ** 2, target[1] + a.ravel(), target[2] + s.ravel()]
    for point in points:
        drawn.AddControlPointWorld(*point)
    with pytest.raises(InputError, match="labelled 'remove'"):
        session.resect_by_markups(segmentation, volume, liver_id, drawn)
    drawn.AddControlPointWorld(*(target + np.array([-40.0, 0.0, 0.0])), "Remove")
    result = session.resect_by_markups(segmentation, volume, liver_id, drawn)
    expected, _ = resect(grid, "liver", surface=CutSurface(points, target + np.array([-40.0, 0.0, 0.0])))
    assert result.remnant_voxels == expected.remnant_voxels and result.method == "drawn surface (9 points)"
