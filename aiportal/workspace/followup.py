"""The workspace's Follow-up panel: the current study and its priors (folders on the workspace machine, or
found on a configured PACS as `aiportal followup --pacs` finds them), tracked by :mod:`aiportal.followup`,
shown side by side — one linked axial view per time point, each prior under its registration — with the
delta table and each lesion's diameter/volume plot.
"""

from __future__ import annotations

import asyncio
import base64
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VCard, VCardText, VCardTitle, VChip, VTable, VTextarea, VTextField

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

FOLLOWUP_PANEL = "FollowUpPanel"
LAYOUT_ID = "Follow-up"
POLL_INTERVAL_S = 0.25
#: (row key, title, decimals) of the page's delta table (followup.csv's columns)
COLUMNS = (("tracking_id", "Lesion", None), ("time_point", "Study", None), ("status", "Status", None),
           ("reported_mm", "Diameter mm", 1), ("volume_ml", "Volume mL", 2),
           ("reported_change_from_baseline_pct", "Δ diam. %", 1), ("volume_change_from_baseline_ml", "Δ vol. mL", 2))


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def _cell(value, digits: int | None) -> str:
    if digits is None:
        return str(value)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_rows(result) -> list[dict]:
    """The delta table as the page shows it: followup.csv's rows, numbers rounded."""
    from aiportal.followup.outputs import track_rows

    return [{"key": f"{row['tracking_id']}-{row['index']}", **{name: _cell(row[name], digits)
                                                               for name, _, digits in COLUMNS}}
            for row in track_rows(result)]


def _time_point_folders(current: str, priors: str) -> tuple[Path, list[Path]]:
    from aiportal.errors import InputError

    if not (current or "").strip():
        raise InputError("No current study given", "type the folder of the current study (DICOM images + SEG)")
    folders = [Path(line.strip()).expanduser() for line in (priors or "").splitlines() if line.strip()]
    if not folders:
        raise InputError("No prior study given", "type one prior study folder a line")
    for folder in [Path(current.strip()).expanduser(), *folders]:
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder", "give the folder of a study's DICOM images and SEG")
    return Path(current.strip()).expanduser(), folders


async def run_follow_up(workspace: Workspace, current: str, priors: str, pacs: str = "", study: str = "") -> None:
    """Load the time points into the workspace's scene, track in a worker thread, show the result."""
    from aiportal.followup.load import NoSegmentation, load_time_point
    from aiportal.followup.scene import series_job, show_series

    workspace.clear_error("fu")
    state = workspace.state
    with state:
        state.fu_running, state.fu_stage, state.fu_rows, state.fu_summary = True, "loading the studies", [], ""
    await asyncio.sleep(0)
    work = Path(tempfile.mkdtemp(prefix="aiportal-followup-"))
    try:
        skipped: dict[str, str] = {}
        if (pacs or "").strip():
            current_folder, prior_folders, skipped = _pull(pacs.strip(), (study or "").strip(), work)
        else:
            current_folder, prior_folders = _time_point_folders(current, priors)
        workspace.cancel_ai()
        workspace.slicer_app.scene.Clear()
        workspace._reset_session()  # noqa: SLF001 - the follow-up replaces the open study, as Open does
        now = load_time_point(current_folder, workspace.runtime)
        points = []
        for folder in prior_folders:
            try:
                points.append(load_time_point(folder, workspace.runtime))
            except NoSegmentation as error:
                skipped[folder.name] = str(error)
        if not points:
            from aiportal.errors import InputError

            raise InputError("No prior study could be followed: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                             "give at least one prior study folder with its SEG")
        points.sort(key=lambda point: point.label)
        if now.label in {p.label for p in points}:
            now.label += "-current"
        ordered = [*points, now]
        job = series_job([(p.label, p.segmentation, p.volume) for p in ordered])
        job.start()
        with state:
            state.fu_stage = f"registering {len(points)} prior(s) to the current study and tracking the lesions"
        while job.poll().state in ("queued", "running"):
            await asyncio.sleep(POLL_INTERVAL_S)
        result = job.finish()
        result.excluded.update(skipped)
        _show(workspace, result, {p.label: (p.segmentation, p.volume) for p in ordered}, work, show_series)
    except Exception as error:
        workspace.show_error(error, "fu")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with state:
            state.fu_running, state.fu_stage = False, ""


def _pull(pacs: str, study: str, work: Path) -> tuple[Path, list[Path], dict[str, str]]:
    from aiportal.errors import InputError
    from aiportal.followup.priors import pull_current_and_priors
    from aiportal.pacs.config import get_endpoint

    if not study:
        raise InputError(f"PACS {pacs} needs the current study's UID", "type its StudyInstanceUID")
    pulled = pull_current_and_priors(get_endpoint(pacs), study, work)
    return pulled.current, pulled.priors, pulled.skipped


def _show(workspace: Workspace, result, nodes: dict, work: Path, show_series) -> None:
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    from aiportal.followup.outputs import write_plot
    from aiportal.followup.scene import VIEW_TAG, view_tags

    tags = view_tags(len(result.labels))
    shown = result.labels[-len(tags):]
    layout = Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.slice_view("Axial", label=tag)
                                                 for tag in tags])
    manager = workspace.logic.layout_manager
    manager.register_layout(LAYOUT_ID, layout)  # makes the views (slice nodes named by the tags)
    manager.set_layout(LAYOUT_ID)
    view = show_series(workspace.slicer_app.scene, result, nodes, set_layout=False)
    scene = workspace.slicer_app.scene
    views = []
    for n, label in enumerate(shown):  # read back from the scene: what each view really shows
        composite = scene.GetSingletonNode(VIEW_TAG.format(index=n), "vtkMRMLSliceCompositeNode")
        volume = scene.GetNodeByID(composite.GetBackgroundVolumeID() or "")
        transform = volume.GetParentTransformNode() if volume else None
        views.append({"tag": VIEW_TAG.format(index=n), "label": label, "volume": volume.GetName() if volume else "",
                      "linked": bool(composite.GetLinkedControl()), "registered": transform is not None})
    png = write_plot(result, work / "followup.png")
    with workspace.state:
        workspace.state.fu_rows = table_rows(result)
        workspace.state.fu_summary = view.summary
        workspace.state.fu_views = views
        workspace.state.fu_plot = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        workspace.state.ws_volume_name = " · ".join(shown)


class FollowUpPanel(VCard):
    def __init__(self, workspace: Workspace, **kwargs) -> None:
        super().__init__(variant="flat", raw_attrs=_testid("followup-panel"), **kwargs)
        workspace.state.update({"fu_current": "", "fu_priors": "", "fu_pacs": "", "fu_study": "", "fu_rows": [],
                                "fu_summary": "", "fu_views": [], "fu_plot": "", "fu_running": False,
                                "fu_stage": "", "fu_error": "", "fu_error_fix": ""})
        with self:
            VCardTitle("Follow-up")
            with VCardText():
                html.Div("Folders on the workspace machine (DICOM images + their SEG), or a PACS and the "
                         "current study's UID (its priors are found by Patient ID).", classes="text-caption text-grey")
                VTextField(v_model=("fu_current",), label="Current study folder", density="compact",
                           hide_details=True, raw_attrs=_testid("fu-current"))
                VTextarea(v_model=("fu_priors",), label="Prior study folders (one a line)", density="compact",
                          hide_details=True, rows=2, classes="mt-2", raw_attrs=_testid("fu-priors"))
                with html.Div(classes="d-flex mt-2"):
                    VTextField(v_model=("fu_pacs",), label="or PACS", density="compact", hide_details=True,
                               raw_attrs=_testid("fu-pacs"))
                    VTextField(v_model=("fu_study",), label="Study UID", density="compact", hide_details=True,
                               classes="ml-2", raw_attrs=_testid("fu-study"))
                VBtn("Follow up", click=(lambda *values: asyncio.ensure_future(run_follow_up(workspace, *values)),
                                         "[fu_current, fu_priors, fu_pacs, fu_study]"),
                     loading=("fu_running",), size="small", color="primary", classes="mt-2",
                     prepend_icon="mdi-chart-timeline-variant", raw_attrs=_testid("fu-run"))
                html.Div("{{ fu_stage }}", v_if=("fu_running",), classes="text-caption mt-1",
                         raw_attrs=_testid("fu-stage"))
                with html.Div(v_if=("fu_error",), classes="text-body-2 text-red mt-2", raw_attrs=_testid("fu-error")):
                    html.Div("{{ fu_error }}", classes="font-weight-bold")
                    html.Div("{{ fu_error_fix }}", classes="text-caption")
                html.Div("{{ fu_summary }}", v_if=("fu_summary",), classes="text-body-2 mt-2",
                         style="white-space: pre-line", raw_attrs=_testid("fu-summary"))
                with html.Div(v_if=("fu_views.length",), classes="mt-1", raw_attrs=_testid("fu-views")):
                    VChip("{{ v.label }}{{ v.registered ? ' (registered)' : '' }}{{ v.linked ? ' · linked' : '' }}",
                          v_for="v in fu_views", key="v.tag", size="x-small", classes="mr-1",
                          raw_attrs=[':data-testid="`fu-view-${v.label}`"'])
                with VTable(density="compact", classes="text-caption mt-2", v_if=("fu_rows.length",),
                            raw_attrs=_testid("fu-table")):
                    with html.Thead(), html.Tr():
                        for _, title, _digits in COLUMNS:
                            html.Th(title)
                    with html.Tbody(), html.Tr(v_for="row in fu_rows", key="row.key",
                                               raw_attrs=[':data-testid="`fu-row-${row.key}`"']):
                        for name, _, _digits in COLUMNS:
                            html.Td(f"{{{{ row.{name} }}}}", raw_attrs=[f':data-testid="`fu-{name}-${{row.key}}`"'])
                html.Img(v_if=("fu_plot",), src=("fu_plot",), style="width: 100%;", classes="mt-2",
                         raw_attrs=_testid("fu-plot"))
