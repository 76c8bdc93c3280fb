"""The workspace's Planning panel: closest approach of every segment to a picked one, with alerts.

The numbers come from :mod:`aiportal.planning` (the same session object the desktop panel uses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VCard, VCardText, VCardTitle, VChip, VSelect, VTable, VTextField

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
                                "plan_error": "", "plan_error_fix": ""})
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
