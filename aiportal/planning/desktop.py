"""What the desktop Planning section (AIMeasure) calls: scene nodes in, text and markups out.

A :class:`PlanningSession` keeps the label grid and the trajectory planner of the current
segmentation, rebuilt only when the segmentation or the volume changes, so that dragging a
trajectory line's end point re-checks it in milliseconds.
"""

from __future__ import annotations

import numpy as np

from aiportal.planning.grid import LabelGrid, grid_from_segmentation
from aiportal.planning.proximity import Proximity, proximity_table
from aiportal.planning.resection import Resection, resect
from aiportal.planning.trajectory import TrajectoryPlanner, TrajectoryReport


class PlanningSession:
    def __init__(self) -> None:
        self._key: tuple | None = None
        self._grid: LabelGrid | None = None
        self._planner: TrajectoryPlanner | None = None

    def grid(self, segmentation_node, volume_node) -> LabelGrid:
        key = (segmentation_node.GetID(), segmentation_node.GetSegmentation().GetMTime(), volume_node.GetID(),
               volume_node.GetMTime())
        if key != self._key:
            self._grid, self._planner, self._key = grid_from_segmentation(segmentation_node, volume_node), None, key
        return self._grid

    def proximity(self, segmentation_node, volume_node, segment_id: str, threshold_mm: float) -> list[Proximity]:
        """The picked segment against every other segment, nearest first; alerts below ``threshold_mm``."""
        grid = self.grid(segmentation_node, volume_node)
        target = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        return proximity_table(grid, target, default_threshold_mm=threshold_mm or None)

    def trajectory(self, segmentation_node, volume_node, line_node, threshold_mm: float,
                   tool_radius_mm: float = 0.0) -> TrajectoryReport:
        """The line (first point: entry, second: target) against every segment."""
        entry, target = (list(line_node.GetNthControlPointPositionWorld(i)) for i in (0, 1))
        return self.trajectory_points(segmentation_node, volume_node, entry, target, threshold_mm, tool_radius_mm)

    def trajectory_points(self, segmentation_node, volume_node, entry_ras, target_ras, threshold_mm: float,
                          tool_radius_mm: float = 0.0) -> TrajectoryReport:
        """The path entry → target (RAS) against every segment."""
        grid = self.grid(segmentation_node, volume_node)
        if self._planner is None:
            self._planner = TrajectoryPlanner(grid, default_threshold_mm=threshold_mm or None)
        self._planner.thresholds = {name: threshold_mm or None for name in self._planner.structures}
        return self._planner.check(entry_ras, target_ras, tool_radius_mm)

    def resect(self, segmentation_node, volume_node, organ_id: str, *, planes=None, surface=None,
               target_id: str | None = None) -> tuple[Resection, object]:
        """Virtual resection of the segment ``organ_id`` by planes or a drawn surface (see :func:`resect`)."""
        grid = self.grid(segmentation_node, volume_node)
        name = segmentation_node.GetSegmentation().GetSegment(organ_id).GetName()
        target = segmentation_node.GetSegmentation().GetSegment(target_id).GetName() if target_id else None
        return resect(grid, name, planes=planes, surface=surface, target=target)

    def resect_by_markups(self, segmentation_node, volume_node, organ_id: str, cut_node) -> Resection:
        """Resect ``organ_id`` by a markups plane (its normal points at the removed part) or a point list drawn
        on a curved cut, one point labelled ``remove`` on the side to cut away (see :func:`cut_from_markups`)."""
        planes, surface = cut_from_markups(cut_node)
        result, _ = self.resect(segmentation_node, volume_node, organ_id, planes=planes, surface=surface)
        return result

    def export_bundle(self, segmentation_node, volume_node, folder, segment_id: str, threshold_mm: float, *,
                      line_node=None, cut_node=None, dicom_volume=None, dicom_options: dict | None = None,
                      runtime=None) -> dict:
        """The plan bundle of the panel's plan: proximity to the picked segment, the trajectory line (if placed)
        and, with a cut, its resection (see :func:`aiportal.planning.scene_plan.bundle_from_scene`)."""
        from aiportal.planning.scene_plan import bundle_from_scene, line_points

        grid = self.grid(segmentation_node, volume_node)
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        placed = line_node is not None and line_node.GetNumberOfDefinedControlPoints() >= 2
        planes, surface = cut_from_markups(cut_node) if cut_node is not None else (None, None)
        return bundle_from_scene(grid, folder, target=name, threshold_mm=threshold_mm,
                                 trajectories=[line_points(line_node)] if placed else [],
                                 organ=name if cut_node is not None else None, planes=planes, surface=surface,
                                 dicom_volume=dicom_volume, dicom_options=dicom_options, runtime=runtime)

    def outcome(self, segmentation_node, volume_node, actual_segmentation, actual_volume, *, mode: str = "auto",
                planned_line=None, actual_line=None, planned_cut=None, actual_plane=None, planned_source=None,
                actual_source=None) -> dict:
        """Plan vs outcome (see :func:`~aiportal.planning.scene_plan.outcome_from_nodes`); the lines and planes
        are compared when both of a pair are given (the planned cut only when it is a markups plane)."""
        from aiportal.planning.scene_plan import line_points, outcome_from_nodes, plane_of

        deviations = {}
        if planned_line is not None and actual_line is not None:
            deviations.update(planned_trajectory=line_points(planned_line), actual_trajectory=line_points(actual_line))
        if planned_cut is not None and planned_cut.IsA("vtkMRMLMarkupsPlaneNode") and actual_plane is not None:
            deviations.update(planned_plane=plane_of(planned_cut), actual_plane=plane_of(actual_plane))
        return outcome_from_nodes(self.grid(segmentation_node, volume_node), volume_node, actual_segmentation,
                                  actual_volume, mode=mode, planned_source=planned_source,
                                  actual_source=actual_source, **deviations)

    def centre_ras(self, segmentation_node, volume_node, segment_id: str):
        """The centroid (RAS) of a segment's voxels: the side a drawn surface removes."""
        grid = self.grid(segmentation_node, volume_node)
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        return grid.ijk_to_ras_points(np.argwhere(grid.mask(name))).mean(axis=0)


REMOVE_LABEL = "remove"  # the point list's point that marks the side a drawn surface cuts away


def cut_from_markups(cut_node) -> tuple[list | None, object]:
    """([Plane], None) for a markups plane node, (None, CutSurface) for a point list; a clear error otherwise."""
    from aiportal.errors import InputError
    from aiportal.planning.resection import Plane
    from aiportal.planning.surface_cut import CutSurface

    if cut_node is None:
        raise InputError("no cut selected", "pick a markups plane or a point list drawn on the cut")
    if cut_node.IsA("vtkMRMLMarkupsPlaneNode"):
        origin, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        cut_node.GetOriginWorld(origin)
        cut_node.GetNormalWorld(normal)
        return [Plane(tuple(origin), tuple(normal))], None
    points, side = [], None
    for index in range(cut_node.GetNumberOfControlPoints()):
        point = list(cut_node.GetNthControlPointPositionWorld(index))
        if cut_node.GetNthControlPointLabel(index).strip().lower() == REMOVE_LABEL:
            side = point
        else:
            points.append(point)
    if side is None:
        raise InputError(f"no point of {cut_node.GetName()} is labelled '{REMOVE_LABEL}'",
                         f"rename one point '{REMOVE_LABEL}' and place it on the side to cut away")
    return None, CutSurface(points, side)


def resection_text(result: Resection) -> str:
    lines = [f"{result.organ} ({result.method}): {result.organ_ml:.1f} ml",
             f"resected {result.resected_ml:.1f} ml, remnant {result.remnant_ml:.1f} ml "
             f"= {result.remnant_percent:.1f} %"]
    return "\n".join(lines + [f"WARNING: {w}" for w in result.warnings])


def add_closest_lines(scene, rows: list[Proximity], only_alerts: bool = True) -> list:
    """A line markup per closest approach (alerts only by default), named 'target ↔ structure'."""
    lines = []
    for row in rows:
        if (only_alerts and not row.alert) or row.centre_distance_mm == 0:
            continue
        line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{row.target} ↔ {row.structure}")
        for point in (row.target_point_ras, row.structure_point_ras):
            line.AddControlPointWorld(*point)
        lines.append(line)
    return lines


def proximity_text(rows: list[Proximity]) -> str:
    lines = [f"{'⚠ ' if row.alert else ''}{row.structure}: {row.gap_mm:.1f} mm" for row in rows]
    alerts = sum(row.alert for row in rows)
    return (f"ALERT: {alerts} structure(s) below the threshold\n" if alerts else "") + "\n".join(lines)


def trajectory_text(report: TrajectoryReport) -> str:
    lines = [f"Path {report.length_mm:.1f} mm"]
    for row in report.structures[:8]:
        inside = f", inside {row.length_inside_mm:.1f} mm from {row.first_entry_mm:.1f} mm" if row.entered else ""
        lines.append(f"{'⚠ ' if row.alert else ''}{row.structure}: clearance {row.clearance_mm:.1f} mm{inside}")
    return "\n".join(lines)
