"""What the workspace's Planning panel runs for a trajectory and a virtual resection.

Coordinates are typed RAS millimetres ("R A S", commas allowed); the numbers come from the same
:class:`~aiportal.planning.desktop.PlanningSession` the desktop panel uses, kept on the workspace so
the structures are precomputed once per segmentation.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiportal.errors import InputError

if TYPE_CHECKING:
    from aiportal.planning.desktop import PlanningSession
    from aiportal.workspace.app import Workspace


def parse_point(text: str, label: str) -> list[float]:
    """``"R A S"`` (spaces or commas) → three floats; a clear error otherwise."""
    parts = [p for p in re.split(r"[\s,;]+", (text or "").strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise InputError(f"{label} {text!r} is not three numbers", "type R A S in millimetres, e.g. -20 150 120")
    return values


def parse_number(text: str, label: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise InputError(f"{label} {text!r} is not a number", "type millimetres, e.g. 5") from None


def parse_points(text: str, label: str) -> list[list[float]]:
    """One ``R A S`` point per line."""
    return [parse_point(line, label) for line in (text or "").splitlines() if line.strip()]


def _session(workspace: Workspace) -> PlanningSession:
    from aiportal.planning.desktop import PlanningSession

    session = getattr(workspace, "planning_session", None) or PlanningSession()
    workspace.planning_session = session
    return session


def _inputs(workspace: Workspace):
    node, loaded = workspace.session.segmentation_node, workspace.session.loaded
    if node is None or loaded is None:
        raise InputError("No segmentation", "run AI Segment (or draw segments) first")
    return node, loaded.node


def run_trajectory(workspace: Workspace, entry: str, target: str, radius: str, threshold: str) -> None:
    """Fill ``plan_path_rows`` with every segment's clearance from the path entry → target."""
    workspace.clear_error("plan")
    try:
        node, volume = _inputs(workspace)
        entry_ras, target_ras = parse_point(entry, "entry"), parse_point(target, "target")
        radius_mm, threshold_mm = parse_number(radius or "0", "tool radius"), parse_number(threshold, "alert threshold")
        report = _session(workspace).trajectory_points(node, volume, entry_ras, target_ras, threshold_mm, radius_mm)
    except Exception as error:
        workspace.show_error(error, "plan")
        return
    with workspace.state:
        workspace.state.plan_path_length = f"{report.length_mm:.1f}"
        workspace.state.plan_path_rows = [
            {"structure": r.structure, "clearance_mm": f"{r.clearance_mm:.1f}", "alert": r.alert,
             "inside": f"{r.length_inside_mm:.1f} mm from {r.first_entry_mm:.1f} mm" if r.entered else ""}
            for r in report.structures]


def run_resection(workspace: Workspace, organ_id: str, plane_point: str, plane_normal: str, surface: str,
                  target_id: str | None) -> None:
    """Resect the organ by the plane (point + normal towards the removed part) or the drawn surface points
    (the side holding the target segment is removed); fill ``plan_resection``."""
    from aiportal.planning.resection import Plane
    from aiportal.planning.surface_cut import CutSurface

    workspace.clear_error("plan")
    try:
        node, volume = _inputs(workspace)
        if not organ_id:
            raise InputError("No organ to resect", "pick the organ")
        session, points = _session(workspace), parse_points(surface, "surface point")
        planes, cut = None, None
        if points:
            if not target_id:
                raise InputError("a drawn surface needs the side to remove", "pick the target segment (removed side)")
            cut = CutSurface(points, session.centre_ras(node, volume, target_id))
        else:
            planes = [Plane(tuple(parse_point(plane_point, "plane point")),
                            tuple(parse_point(plane_normal, "plane normal")))]
        result, _ = session.resect(node, volume, organ_id, planes=planes, surface=cut, target_id=target_id or None)
    except Exception as error:
        workspace.show_error(error, "plan")
        return
    with workspace.state:
        workspace.state.plan_resection = {
            "organ": result.organ, "method": result.method, "organ_ml": f"{result.organ_ml:.1f}",
            "resected_ml": f"{result.resected_ml:.1f}", "remnant_ml": f"{result.remnant_ml:.1f}",
            "remnant_percent": f"{result.remnant_percent:.1f}", "warnings": result.warnings,
            "target_margin_mm": None if result.target_margin_mm is None else f"{result.target_margin_mm:.1f}"}
