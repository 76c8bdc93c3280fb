"""The workspace's Measure panel: RECIST 1.1 per lesion (a segment split into its separate lesions, tubes
refused) and a picked segment measured as a vessel (centreline, largest diameter perpendicular to it) or,
when it is a flat landmark disc, on its own plane; every warning of the measurement shown under it.

The numbers come from the same background jobs the desktop AIMeasure panel runs
(:mod:`aiportal.measure.jobs`), on private copies of the scene's nodes, so the page stays responsive;
the markups (axis lines, vessel centreline and diameters) are placed in the scene afterwards.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VCard, VCardText, VCardTitle, VSelect, VTable

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

MEASURE_PANEL = "MeasurePanel"
_POLL_S = 0.2


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def _inputs(workspace: Workspace):
    from aiportal.errors import InputError

    node, loaded = workspace.session.segmentation_node, workspace.session.loaded
    if node is None or loaded is None:
        raise InputError("Nothing to measure yet", "open a volume and run AI Segment (or draw segments) first")
    return node, loaded.node


async def _finish(job):
    """The job's result once its worker thread is done (polled: the server keeps answering meanwhile)."""
    job.start()
    while job.poll().state in ("queued", "running"):
        await asyncio.sleep(_POLL_S)
    return job.finish()  # on the scene's thread


async def measure_lesions(workspace: Workspace) -> None:
    """RECIST of every segment, lesion by lesion: ``measure_rows`` and ``measure_warnings``."""
    from aiportal.measure.jobs import measure_job
    from aiportal.measure.recist import add_axis_lines
    from aiportal.measure.report import measurement_warnings

    workspace.clear_error("measure")
    with workspace.state:
        workspace.state.update({"measure_busy": True, "measure_rows": [], "measure_warnings": ""})
    try:
        node, volume = _inputs(workspace)
        measurements, skipped = await _finish(measure_job(node, volume))
        for measurement in measurements:
            add_axis_lines(node.GetScene(), measurement, node)
        rows = [{"lesion": m.lesion_name, "reported_mm": f"{m.reported_mm:.1f}", "long_mm": f"{m.long_axis_mm:.1f}",
                 "short_mm": f"{m.short_axis_mm:.1f}", "volume_ml": f"{m.volume_ml:.1f}"} for m in measurements]
        warnings = measurement_warnings(measurements, skipped)
        with workspace.state:
            workspace.state.measure_rows = rows
            workspace.state.measure_warnings = "\n".join(f"warning: {w}" for w in warnings)
            workspace.state.measure_summary = f"{len(measurements)} lesion(s) measured"
    except Exception as error:
        workspace.show_error(error, "measure")
    finally:
        with workspace.state:
            workspace.state.measure_busy = False


async def measure_vessel(workspace: Workspace, segment_id: str) -> None:
    """The picked segment as a vessel (or a landmark disc): ``vessel_summary`` and ``vessel_warnings``."""
    from aiportal.errors import InputError
    from aiportal.measure.jobs import vessel_job
    from aiportal.vessels.report import add_vessel_markups

    workspace.clear_error("measure")
    with workspace.state:
        workspace.state.update({"measure_busy": True, "vessel_summary": "", "vessel_warnings": ""})
    try:
        node, volume = _inputs(workspace)
        if not segment_id:
            raise InputError("No segment picked", "pick the vessel's (or the landmark disc's) segment")
        vessel = await _finish(vessel_job(node, volume, segment_id))
        add_vessel_markups(node.GetScene(), vessel, node)
        with workspace.state:
            workspace.state.vessel_summary = vessel.summary()
            workspace.state.vessel_max_mm = round(vessel.max_diameter_mm, 2)
            workspace.state.vessel_warnings = "\n".join(f"warning: {w}" for w in vessel.warnings)
    except Exception as error:
        workspace.show_error(error, "measure")
    finally:
        with workspace.state:
            workspace.state.measure_busy = False


class MeasurePanel(VCard):
    def __init__(self, workspace: Workspace, **kwargs) -> None:
        super().__init__(variant="flat", raw_attrs=_testid("measure-panel"), **kwargs)
        workspace.state.update({"measure_busy": False, "measure_rows": [], "measure_warnings": "",
                                "measure_summary": "", "measure_error": "", "measure_error_fix": "",
                                "vessel_segment": None, "vessel_summary": "", "vessel_warnings": "",
                                "vessel_max_mm": None})
        with self:
            VCardTitle("Measure")
            with VCardText():
                html.Div("RECIST 1.1 of each lesion: a segment holding separate lesions is measured lesion by "
                         "lesion; a tubular segment is refused (measure it as a vessel).", classes="text-caption")
                VBtn("Measure lesions", click=lambda: asyncio.ensure_future(measure_lesions(workspace)),
                     size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-ruler",
                     loading=("measure_busy",), disabled=("!ai_segments.length",), raw_attrs=_testid("measure-run"))
                html.Div("{{ measure_summary }}", v_if=("measure_summary",), classes="text-body-2 mt-2",
                         raw_attrs=_testid("measure-summary"))
                html.Div("{{ measure_warnings }}", v_if=("measure_warnings",), classes="text-body-2 text-amber mt-1",
                         style="white-space: pre-line", raw_attrs=_testid("measure-warnings"))
                with VTable(density="compact", classes="text-caption mt-2", v_if=("measure_rows.length",),
                            raw_attrs=_testid("measure-table")):
                    with html.Thead(), html.Tr():
                        for title in ("Lesion", "RECIST mm", "Long", "Short", "ml"):
                            html.Th(title)
                    with html.Tbody(), html.Tr(v_for="row in measure_rows", key="row.lesion"):
                        html.Td("{{ row.lesion }}")
                        html.Td("{{ row.reported_mm }}", raw_attrs=[':data-testid="`measure-mm-${row.lesion}`"'])
                        html.Td("{{ row.long_mm }}")
                        html.Td("{{ row.short_mm }}")
                        html.Td("{{ row.volume_ml }}")
                html.Div("Vessel (or landmark disc)", classes="text-subtitle-2 mt-4")
                VSelect(v_model=("vessel_segment",), items=("ai_segments",), item_title="name",
                        item_value="segment_id", label="Segment", density="compact", hide_details=True,
                        raw_attrs=_testid("vessel-segment"))
                VBtn("Measure as vessel", click=(lambda segment: asyncio.ensure_future(measure_vessel(workspace,
                                                                                                      segment)),
                                                 "[vessel_segment]"),
                     size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-pipe",
                     loading=("measure_busy",), disabled=("!vessel_segment",), raw_attrs=_testid("vessel-run"))
                html.Div("{{ vessel_summary }}", v_if=("vessel_summary",), classes="text-body-2 mt-2",
                         raw_attrs=_testid("vessel-summary"))
                html.Div("{{ vessel_warnings }}", v_if=("vessel_warnings",), classes="text-body-2 text-amber mt-1",
                         style="white-space: pre-line", raw_attrs=_testid("vessel-warnings"))
                with html.Div(v_if=("measure_error",), classes="text-body-2 text-red mt-2",
                              raw_attrs=_testid("measure-error")):
                    html.Div("{{ measure_error }}", classes="font-weight-bold")
                    html.Div("{{ measure_error_fix }}", classes="text-caption")
