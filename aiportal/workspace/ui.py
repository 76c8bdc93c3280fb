"""The workspace page: trame-slicer's layout with the AI portal's toolbar buttons and panels.

Widgets only: every click calls a :class:`aiportal.workspace.app.Workspace` method, every value
shown is trame state the workspace fills. ``data-testid`` attributes name what the browser tests
(and people reading the page's HTML) look for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from trame.widgets import client, html
from trame.widgets.vuetify3 import (
    VAlert,
    VBtn,
    VCard,
    VCardText,
    VCardTitle,
    VCheckbox,
    VChip,
    VDivider,
    VIcon,
    VProgressLinear,
    VSelect,
    VTable,
    VTextField,
    VTooltip,
)
from trame_slicer.app.ui import SegmentationAppUI
from trame_slicer.app.ui.control_button import ControlButton

from aiportal.workspace.followup import FOLLOWUP_PANEL, FollowUpPanel
from aiportal.workspace.measure import MEASURE_PANEL, MeasurePanel
from aiportal.workspace.models_panel import weights_block
from aiportal.workspace.planning import PLANNING_PANEL, PlanningPanel
from aiportal.workspace.register import REGISTER_PANEL, RegisterPanel

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

AI_PANEL = "AISegmentPanel"
RESULTS_PANEL = "ResultsPanel"
# (statistics key, decimals) shown in the page's table; the CSV download has every quantity
STATISTICS_COLUMNS = (("volume_ml", 2), ("hu_mean", 1), ("feret_diameter_mm", 1))
REVIEW_COLORS = "{suggested: 'amber', accepted: 'green', modified: 'teal', rejected: 'red', manual: 'grey'}"

FAVICON = ("data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
           "<circle cx='8' cy='8' r='7' fill='%2304a94d'/></svg>")
# Shown by the trame client in place of the page when the connection to the server closes
CONNECTION_LOST_TEMPLATE = """
<div data-testid="connection-lost" style="position:fixed;inset:0;display:flex;align-items:center;
     justify-content:center;background:#1e1e1e;color:#eee;font-family:sans-serif;">
  <div style="max-width:34em;padding:2em;border:2px solid #e53935;border-radius:8px;background:#2a2a2a;">
    <h2 style="margin-top:0;color:#ef5350;">The workspace server is not reachable</h2>
    <p>The connection closed: the server stopped or restarted. Segments that were not saved or
       exported are gone with it; the audit trail keeps every recorded decision.</p>
    <p>Start the workspace again (<code>aiportal workspace</code>), then reload this page.</p>
    <button onclick="window.location.reload()" style="padding:.5em 1.5em;font-size:1em;">Reload</button>
  </div>
</div>
"""


def hex_color(rgb) -> str:
    return "#" + "".join(f"{round(255 * min(max(channel, 0.0), 1.0)):02x}" for channel in rgb)


def number(value, digits: int) -> str:
    if value is None or isinstance(value, tuple) or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def three_d_view_toolbar(open_ai_panel: Callable[[], None]):
    """trame-slicer's 3D view toolbar (reset camera) plus the AI Segment button."""
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    def ai_button(_server, _view_id, _view) -> None:
        with VBtn(size="medium", variant="text", click=open_ai_panel, raw_attrs=_testid("ai-segment-3d")):
            VIcon(icon="mdi-robot-outline", size="medium", color="white")
            VTooltip("AI Segment", activator="parent", location="right", transition="slide-x-transition")

    def fill(server, view_id, view) -> None:
        create_vertical_view_gutter_ui(server, view_id, view, ai_button)

    return fill


class WorkspacePage(SegmentationAppUI):
    """The stock segmentation page (viewer, segment editor, volume properties) plus our panels."""

    def __init__(self, server, layout_manager, workspace: Workspace) -> None:
        super().__init__(server, layout_manager)
        self._workspace = workspace
        layout = self.layout
        layout.title.set_text("AI Portal")
        with layout.appbar:
            VChip(v_if=("ws_volume_name",), text=("ws_volume_name",), prepend_icon="mdi-cube-scan",
                  classes="mx-2", raw_attrs=_testid("volume-name"))
        with layout.drawer:
            self._register_tool_ui(AISegmentPanel, workspace=workspace)
            self._register_tool_ui(ResultsPanel, workspace=workspace)
            self._register_tool_ui(PlanningPanel, workspace=workspace)
            self._register_tool_ui(FollowUpPanel, workspace=workspace)
            self._register_tool_ui(MeasurePanel, workspace=workspace)
            self._register_tool_ui(RegisterPanel, workspace=workspace)
        with layout.toolbar:
            ControlButton(name="AI Segment", icon="mdi-robot-outline", classes="mt-1",
                          click=lambda: workspace.open_tool(AI_PANEL), active=(self._is_tool_active(AISegmentPanel),),
                          raw_attrs=_testid("ai-segment-toolbar"))
            ControlButton(name="Statistics and export", icon="mdi-chart-box-outline", classes="mt-1",
                          click=lambda: workspace.open_tool(RESULTS_PANEL),
                          active=(self._is_tool_active(ResultsPanel),), disabled=("!ws_volume_name",),
                          raw_attrs=_testid("results-toolbar"))
            ControlButton(name="Planning", icon="mdi-map-marker-distance", classes="mt-1",
                          click=lambda: workspace.open_tool(PLANNING_PANEL),
                          active=(self._is_tool_active(PlanningPanel),), disabled=("!ai_segments.length",),
                          raw_attrs=_testid("planning-toolbar"))
            ControlButton(name="Follow-up", icon="mdi-chart-timeline-variant", classes="mt-1",
                          click=lambda: workspace.open_tool(FOLLOWUP_PANEL),
                          active=(self._is_tool_active(FollowUpPanel),), raw_attrs=_testid("followup-toolbar"))
            ControlButton(name="Measure (RECIST, vessels)", icon="mdi-ruler", classes="mt-1",
                          click=lambda: workspace.open_tool(MEASURE_PANEL),
                          active=(self._is_tool_active(MeasurePanel),), disabled=("!ai_segments.length",),
                          raw_attrs=_testid("measure-toolbar"))
            ControlButton(name="Register", icon="mdi-vector-combine", classes="mt-1",
                          click=lambda: workspace.open_tool(REGISTER_PANEL),
                          active=(self._is_tool_active(RegisterPanel),), disabled=("!ws_volume_name",),
                          raw_attrs=_testid("register-toolbar"))
        with layout, VAlert(v_if=("ws_error",), type="error", closable=True, click_close="ws_error = ''",
                    style="position: fixed; top: 70px; left: 50%; transform: translateX(-50%); z-index: 3000;"
                          "max-width: 60%;", raw_attrs=_testid("ws-error")):
            html.Div("{{ ws_error }}", classes="font-weight-bold")
            html.Div("{{ ws_error_fix }}")
        layout.flush_content()  # the stock layout was sent when its `with` block closed


def _error_alert(key: str) -> None:
    with VAlert(v_if=(f"{key}_error",), type="error", variant="tonal", density="compact", classes="my-2",
                raw_attrs=_testid(f"{key}-error")):
        html.Div(f"{{{{ {key}_error }}}}", classes="font-weight-bold")
        html.Div(f"{{{{ {key}_error_fix }}}}", classes="text-caption")


class AISegmentPanel(VCard):
    """Open a volume, pick a model, run it with progress and Cancel, then review each suggestion."""

    def __init__(self, workspace: Workspace, **kwargs) -> None:
        super().__init__(variant="flat", raw_attrs=_testid("ai-panel"), **kwargs)
        with self:
            VCardTitle("AI Segment")
            with VCardText():
                self._image_source(workspace)
                VDivider(classes="my-3")
                self._model_run(workspace)
                VDivider(classes="my-3")
                self._review_list(workspace)

    @staticmethod
    def _image_source(workspace: Workspace) -> None:
        # Image sources: files from this browser (toolbar upload buttons) and paths on the workspace
        # machine. The PACS study browser becomes another source here when the PACS layer lands.
        html.Div("Image", classes="text-subtitle-2")
        html.Div("Upload a file or DICOM folder with the buttons in the top bar, or open a path on the "
                 "workspace machine:", classes="text-caption text-grey")
        with html.Div(classes="d-flex align-center"):
            VTextField(v_model=("load_path",), label="Volume file or DICOM folder", density="compact",
                       hide_details=True, keyup_enter=workspace.load_path, raw_attrs=_testid("load-path"))
            VBtn("Open", click=workspace.load_path, loading=("ws_loading",), classes="ml-2", variant="tonal",
                 raw_attrs=_testid("load-open"))
        html.Div("{{ ws_message }}", v_if=("ws_message",), classes="text-caption text-amber mt-1",
                 raw_attrs=_testid("ws-message"))

    @staticmethod
    def _model_run(workspace: Workspace) -> None:
        VSelect(v_model=("ai_model_id",), items=("ai_models",), item_title="title", item_value="id",
                label="Model", density="compact", hide_details=True, disabled=("ai_running",),
                raw_attrs=_testid("ai-model"))
        workspace.weights = weights_block(workspace)  # Install weights, when the picked model's are missing
        html.Div("{{ (ai_models.find(m => m.id === ai_model_id) || {}).limitations }}",
                 classes="text-caption text-grey mt-1")
        with html.Div(v_if=("(ai_models.find(m => m.id === ai_model_id) || {prompts: []}).prompts.includes('box')",),
                      classes="my-2", raw_attrs=_testid("ai-box-prompt")):
            html.Div("This model segments what lies in the boxes you draw (2D boxes are followed through the "
                     "slices).", classes="text-caption")
            VBtn("Add box", click=workspace.add_box, size="small", variant="tonal", prepend_icon="mdi-selection",
                 raw_attrs=_testid("ai-add-box"))
            VBtn("Clear boxes", click=workspace.clear_boxes, size="small", variant="text", classes="ml-1",
                 disabled=("!ai_boxes.length",), raw_attrs=_testid("ai-clear-boxes"))
            html.Div("{{ ai_boxes.length ? ai_boxes.length + ' box(es) placed' : 'no box yet' }}",
                     classes="text-caption", raw_attrs=_testid("ai-box-count"))
            VCheckbox(v_model=("ai_boxes_one_structure",), density="compact", hide_details=True,
                      label="The boxes outline one structure (fill the slices between them)",
                      raw_attrs=_testid("ai-boxes-one-structure"))
        with html.Div(classes="d-flex align-center mt-3"):
            VBtn("Run", click=workspace.run_ai, color="primary", prepend_icon="mdi-play",
                 disabled=("ai_running || !ws_volume_name || weights_missing",), raw_attrs=_testid("ai-run"))
            VBtn("Cancel", v_if=("ai_running",), click=workspace.cancel_ai, classes="ml-2", variant="tonal",
                 prepend_icon="mdi-stop", raw_attrs=_testid("ai-cancel"))
        with html.Div(v_if=("ai_running",), classes="mt-2", raw_attrs=_testid("ai-progress")):
            VProgressLinear(model_value=("ai_progress",), height=8, color="primary", rounded=True)
            html.Div("{{ ai_progress }}% · {{ ai_stage }}", classes="text-caption", raw_attrs=_testid("ai-stage"))
        _error_alert("ai")
        html.Div("{{ ai_summary }}", v_if=("ai_summary",), classes="text-body-2 mt-2", style="white-space: pre-line",
                 raw_attrs=_testid("ai-summary"))  # pre-line: one warning a line

    @staticmethod
    def _review_list(workspace: Workspace) -> None:
        html.Div("Segments", classes="text-subtitle-2")
        html.Div("{{ ai_pending }} suggestion(s) waiting for your decision. Edit with the segment editor (brush "
                 "icon), then accept or reject each.", v_if=("ai_pending",), classes="text-caption text-grey")
        with html.Div(v_for="row in ai_segments", key="row.segment_id",
                      classes="d-flex align-center py-1", raw_attrs=[':data-testid="`segment-row-${row.name}`"']):
            VIcon("mdi-circle", color=("row.color",), size="small", classes="mr-2")
            html.Span("{{ row.name }}", classes="text-body-2", style="cursor: pointer; flex: 1;",
                      click=(workspace.select_segment, "[row.segment_id]"))
            html.Span("{{ row.volume_ml }} mL", classes="text-caption mx-2")
            VChip("{{ row.review }}", size="x-small", color=(f"({REVIEW_COLORS})[row.review]",),
                  raw_attrs=[':data-testid="`segment-state-${row.name}`"'])
            with html.Div(v_if=("row.review === 'suggested'",), classes="ml-1"):
                VBtn(icon="mdi-check", size="x-small", variant="text", color="green",
                     click=(workspace.review, "[row.segment_id, 'accepted']"),
                     raw_attrs=[':data-testid="`accept-${row.name}`"', 'title="Accept"'])
                VBtn(icon="mdi-close", size="x-small", variant="text", color="red",
                     click=(workspace.review, "[row.segment_id, 'rejected']"),
                     raw_attrs=[':data-testid="`reject-${row.name}`"', 'title="Reject"'])


class ResultsPanel(VCard):
    """The export layer's statistics of the shown segmentation, and its exports."""

    def __init__(self, workspace: Workspace, **kwargs) -> None:
        super().__init__(variant="flat", raw_attrs=_testid("results-panel"), **kwargs)
        download = workspace.server.trigger_name(workspace.download)
        with self:
            VCardTitle("Statistics and export")
            with VCardText():
                _error_alert("stats")
                with VTable(density="compact", classes="text-caption aiportal-stats", raw_attrs=_testid("statistics")):
                    client.Style(".aiportal-stats th, .aiportal-stats td { padding: 0 4px !important; }")
                    with html.Thead(), html.Tr():
                        for title in ("Segment", "Volume mL", "Mean HU", "Feret mm", "STL"):
                            html.Th(title)
                    with html.Tbody(), html.Tr(v_for="row in stats_rows", key="row.segment_id",
                                               raw_attrs=[':data-testid="`stats-${row.name}`"']):
                        html.Td("{{ row.name }}")
                        for key, _digits in STATISTICS_COLUMNS:
                            html.Td(f"{{{{ row.{key} }}}}", raw_attrs=[f':data-testid="`stats-{key}-${{row.name}}`"'])
                        with html.Td():
                            VBtn(icon="mdi-download", size="x-small", variant="text",
                                 click=(f"trigger('{download}', ['stl', row.segment_id])"
                                        ".then(f => f && utils.download(f.name, f.content, f.type))"),
                                 raw_attrs=[':data-testid="`download-stl-${row.name}`"', 'title="Surface (STL)"'])
                VDivider(classes="my-3")
                html.Div("Download", classes="text-subtitle-2")
                with html.Div(classes="d-flex flex-wrap"):
                    for kind, title in (("stl", "STL (zip)"), ("obj", "OBJ (zip)"), ("csv", "Statistics CSV")):
                        VBtn(title, size="small", variant="tonal", classes="mr-2 mb-2", prepend_icon="mdi-download",
                             disabled=("!stats_rows.length",), raw_attrs=_testid(f"download-{kind}"),
                             click=(f"trigger('{download}', ['{kind}'])"
                                    ".then(f => f && utils.download(f.name, f.content, f.type))"))
                html.Div("DICOM", classes="text-subtitle-2 mt-2")
                VCheckbox(v_model=("export_assign_uids",), density="compact", hide_details=True,
                          label="Anonymised series without UIDs: give it new UIDs (saves a corrected copy)",
                          raw_attrs=_testid("assign-uids"))
                VCheckbox(v_model=("export_key_images",), density="compact", hide_details=True,
                          label="Key images (Secondary Capture, RECIST axes drawn), listed in the SR",
                          raw_attrs=_testid("export-key-images"))
                VCheckbox(v_model=("export_models",), density="compact", hide_details=True,
                          label="3D models (Encapsulated STL, one per segment)", raw_attrs=_testid("export-models"))
                VCheckbox(v_model=("export_rtstruct",), density="compact", hide_details=True,
                          label="RT Structure Set (contours for radiotherapy planning)",
                          raw_attrs=_testid("export-rtstruct"))
                VBtn("Save DICOM",
                     # the ticks travel with the click: a box ticked just before it may not have reached the state yet
                     click=(workspace.save_dicom,
                            "[export_key_images, export_models, export_rtstruct, export_assign_uids]"),
                     loading=("export_busy",), size="small",
                     variant="tonal", prepend_icon="mdi-content-save", disabled=("!stats_rows.length",),
                     raw_attrs=_testid("save-dicom"))
                html.Div(f"Saved under {workspace.export_dir}. Sending to PACS comes with the PACS layer.",
                         classes="text-caption text-grey")
                html.Div("{{ export_message }}", v_if=("export_message",), classes="text-body-2 mt-2",
                         raw_attrs=_testid("export-message"))
                _error_alert("export")
