"""The workspace's Planning panel: closest approach of every segment to a picked one, with alerts; a
trajectory's clearances; a virtual resection by a plane or a drawn surface (:mod:`planning_actions`); the
plan bundle and plan vs outcome (:mod:`planning_outputs`).

The numbers come from :mod:`aiportal.planning` (the same session object the desktop panel uses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import (
    VBtn,
    VCard,
    VCardText,
    VCardTitle,
    VChip,
    VDivider,
    VSelect,
    VTable,
    VTextarea,
    VTextField,
)

from aiportal.workspace.planning_actions import run_resection, run_trajectory
from aiportal.workspace.planning_outputs import OUTCOME_STATE, bundle_section, outcome_section

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

PLANNING_PANEL = "PlanningPanel"


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def run_proximity(workspace: Workspace, target_id: str, threshold: str) -> None:
    """Fill ``plan_rows`` with every other segment's closest approach to ``target_id``, nearest first."""
    from aiportal.errors import InputError
    from aiportal.planning.desktop import PlanningSession

    workspace.clear_error("plan")
    node, loaded = workspace.session.segmentation_node, workspace.session.loaded
    try:
        if node is None or loaded is None or not target_id:
            raise InputError("No target segment", "run AI Segment (or draw segments) and pick the target")
        try:
            threshold_mm = float(threshold)
        except (TypeError, ValueError):
            raise InputError(f"alert threshold {threshold!r} is not a number", "type millimetres, e.g. 5") from None
        session = getattr(workspace, "planning_session", None) or PlanningSession()
        workspace.planning_session = session
        rows = session.proximity(node, loaded.node, target_id, threshold_mm)
    except Exception as error:
        workspace.show_error(error, "plan")
        return
    with workspace.state:
        workspace.state.plan_rows = [{"structure": r.structure, "gap_mm": f"{r.gap_mm:.1f}",
                                      "centre_mm": f"{r.centre_distance_mm:.1f}", "alert": r.alert} for r in rows]
        workspace.state.plan_alerts = sum(r.alert for r in rows)


class PlanningPanel(VCard):
    def __init__(self, workspace: Workspace, **kwargs) -> None:
        super().__init__(variant="flat", raw_attrs=_testid("planning-panel"), **kwargs)
        workspace.state.update({"plan_target": None, "plan_threshold": "5", "plan_rows": [], "plan_alerts": 0,
                                "plan_error": "", "plan_error_fix": "", "plan_entry": "", "plan_target_point": "",
                                "plan_radius": "0", "plan_path_rows": [], "plan_path_length": "",
                                "plan_organ": None, "plan_plane_point": "", "plan_plane_normal": "",
                                "plan_surface": "", "plan_resection": None, **OUTCOME_STATE})
        with self:
            VCardTitle("Planning")
            with VCardText():
                VSelect(v_model=("plan_target",), items=("ai_segments",), item_title="name", item_value="segment_id",
                        label="Target segment", density="compact", hide_details=True, raw_attrs=_testid("plan-target"))
                VTextField(v_model=("plan_threshold",), label="Alert below (mm)", density="compact",
                           hide_details=True, classes="mt-2", raw_attrs=_testid("plan-threshold"))
                VBtn("Proximity", click=(lambda target, threshold: run_proximity(workspace, target, threshold),
                                         "[plan_target, plan_threshold]"),
                     size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-ruler",
                     disabled=("!plan_target",), raw_attrs=_testid("plan-proximity"))
                html.Div("ALERT: {{ plan_alerts }} structure(s) below the threshold", v_if=("plan_alerts",),
                         classes="text-body-2 text-red mt-2", raw_attrs=_testid("plan-alerts"))
                with html.Div(v_if=("plan_error",), classes="text-body-2 text-red mt-2",
                              raw_attrs=_testid("plan-error")):
                    html.Div("{{ plan_error }}", classes="font-weight-bold")
                    html.Div("{{ plan_error_fix }}", classes="text-caption")
                with VTable(density="compact", classes="text-caption mt-2", v_if=("plan_rows.length",),
                            raw_attrs=_testid("plan-table")):
                    with html.Thead(), html.Tr():
                        for title in ("Structure", "Gap mm", "Centres mm", ""):
                            html.Th(title)
                    with html.Tbody(), html.Tr(v_for="row in plan_rows", key="row.structure",
                                               raw_attrs=[':data-testid="`plan-${row.structure}`"']):
                        html.Td("{{ row.structure }}")
                        html.Td("{{ row.gap_mm }}", raw_attrs=[':data-testid="`plan-gap-${row.structure}`"'])
                        html.Td("{{ row.centre_mm }}")
                        with html.Td():
                            VChip("alert", v_if=("row.alert",), size="x-small", color="red")
                _trajectory_section(workspace)
                _resection_section(workspace)
                bundle_section(workspace)
                outcome_section(workspace)


def _field(model: str, label: str, testid: str) -> None:
    VTextField(v_model=(model,), label=label, density="compact", hide_details=True, classes="mt-2",
               raw_attrs=_testid(testid))


def _trajectory_section(workspace: Workspace) -> None:
    VDivider(classes="my-3")
    html.Div("Trajectory (RAS mm)", classes="text-subtitle-2")
    _field("plan_entry", "Entry R A S", "plan-entry")
    _field("plan_target_point", "Target R A S", "plan-target-point")
    _field("plan_radius", "Tool radius (mm)", "plan-radius")
    VBtn("Check path", click=(lambda *a: run_trajectory(workspace, *a),
                              "[plan_entry, plan_target_point, plan_radius, plan_threshold]"),
         size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-vector-line",
         raw_attrs=_testid("plan-path-check"))
    with VTable(density="compact", classes="text-caption mt-2", v_if=("plan_path_rows.length",),
                raw_attrs=_testid("plan-path-table")):
        with html.Thead(), html.Tr():
            for title in ("Structure", "Clearance mm", "Inside", ""):
                html.Th(title)
        with html.Tbody(), html.Tr(v_for="row in plan_path_rows", key="row.structure"):
            html.Td("{{ row.structure }}")
            html.Td("{{ row.clearance_mm }}", raw_attrs=[':data-testid="`plan-clearance-${row.structure}`"'])
            html.Td("{{ row.inside }}")
            with html.Td():
                VChip("alert", v_if=("row.alert",), size="x-small", color="red")


def _resection_section(workspace: Workspace) -> None:
    VDivider(classes="my-3")
    html.Div("Virtual resection", classes="text-subtitle-2")
    VSelect(v_model=("plan_organ",), items=("ai_segments",), item_title="name", item_value="segment_id",
            label="Organ", density="compact", hide_details=True, classes="mt-2", raw_attrs=_testid("plan-organ"))
    _field("plan_plane_point", "Cut plane point R A S", "plan-plane-point")
    _field("plan_plane_normal", "Normal towards the removed part", "plan-plane-normal")
    VTextarea(v_model=("plan_surface",), label="…or drawn surface points, one R A S per line (removes the "
              "target's side)", density="compact", hide_details=True, rows=3, classes="mt-2",
              raw_attrs=_testid("plan-surface"))
    VBtn("Resect", click=(lambda *a: run_resection(workspace, *a),
                          "[plan_organ, plan_plane_point, plan_plane_normal, plan_surface, plan_target]"),
         size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-content-cut", disabled=("!plan_organ",),
         raw_attrs=_testid("plan-resect"))
    with html.Div(v_if=("plan_resection",), classes="text-body-2 mt-2", raw_attrs=_testid("plan-resection")):
        html.Div("{{ plan_resection.organ }} ({{ plan_resection.method }}): {{ plan_resection.organ_ml }} ml")
        with html.Div():
            html.Span("resected {{ plan_resection.resected_ml }} ml, remnant ")
            html.Span("{{ plan_resection.remnant_ml }}", raw_attrs=_testid("plan-remnant-ml"))
            html.Span(" ml = ")
            html.Span("{{ plan_resection.remnant_percent }}", raw_attrs=_testid("plan-remnant-percent"))
            html.Span(" %")
        html.Div("WARNING: {{ w }}", v_for="w in plan_resection.warnings", classes="text-red")
