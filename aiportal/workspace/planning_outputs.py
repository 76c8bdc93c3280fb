"""The workspace Planning panel's plan bundle (written into the export folder, offered as a zip) and plan vs
outcome (a post-operative segmentation and CT on the workspace's machine, registered, compared per structure).

The numbers come from :mod:`aiportal.planning.scene_plan`, the functions the desktop panel calls, which go
through the CLI's own (``aiportal plan bundle`` / ``plan outcome``).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VDivider, VSelect, VTable, VTextField

from aiportal.errors import InputError
from aiportal.workspace.planning_actions import _inputs, _session, parse_number, parse_point, parse_points

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

OUTCOME_STATE = {"plan_bundle_busy": False, "plan_bundle_message": "", "plan_post_segmentation": "",
                 "plan_post_image": "", "plan_register": "auto", "plan_actual_entry": "",
                 "plan_actual_target": "", "plan_actual_plane_point": "", "plan_actual_plane_normal": "",
                 "plan_outcome_rows": [], "plan_outcome_lines": [], "plan_outcome_busy": False}

# the bundle's inputs as the page sends them with the click (the panel's current fields)
BUNDLE_ARGUMENTS = ("[plan_target, plan_threshold, plan_entry, plan_target_point, plan_radius, plan_organ, "
                    "plan_plane_point, plan_plane_normal, plan_surface, export_assign_uids]")
OUTCOME_ARGUMENTS = ("[plan_post_segmentation, plan_post_image, plan_register, plan_entry, plan_target_point, "
                     "plan_actual_entry, plan_actual_target, plan_plane_point, plan_plane_normal, "
                     "plan_actual_plane_point, plan_actual_plane_normal]")


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def _typed(*texts: str) -> bool:
    return any((text or "").strip() for text in texts)


def _name(node, segment_id: str | None) -> str | None:
    """The segment's name; a clear error when it is gone (picked before another volume was opened)."""
    segment = node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment_id and segment is None:
        raise InputError("a picked segment is not in this segmentation", "pick the target and the organ again")
    return segment.GetName() if segment is not None else None


def _resection_cut(session, node, volume, organ_id, target_id, plane_point, plane_normal, surface):
    """(planes, drawn surface) of the panel's resection fields, or (None, None) when no cut is typed."""
    from aiportal.planning.resection import Plane
    from aiportal.planning.surface_cut import CutSurface

    points = parse_points(surface, "surface point")
    if points:
        if not target_id:
            raise InputError("a drawn surface needs the side to remove", "pick the target segment (removed side)")
        return None, CutSurface(points, session.centre_ras(node, volume, target_id))
    if _typed(plane_point, plane_normal):
        return [Plane(tuple(parse_point(plane_point, "plane point")),
                      tuple(parse_point(plane_normal, "plane normal")))], None
    return None, None


async def export_plan_bundle(workspace: Workspace, target_id, threshold, entry, target_point, radius, organ_id,
                             plane_point, plane_normal, surface, assign_uids) -> dict | None:
    """Write the plan bundle into the export folder and return it as a zip for the browser: every segment as
    STL, the proximity to the target, the trajectory (when typed), the resection (when the organ has a cut)."""
    from aiportal.export.surfaces import safe_file_stem
    from aiportal.planning.plan_export import new_bundle_folder, zip_folder
    from aiportal.planning.scene_plan import bundle_from_scene

    with workspace.state:
        workspace.clear_error("plan")
        workspace.state.plan_bundle_busy, workspace.state.plan_bundle_message = True, "Writing the plan bundle…"
    await asyncio.sleep(0)
    folder = None
    try:
        node, volume = _inputs(workspace)
        session, loaded = _session(workspace), workspace.session.loaded
        trajectories = []
        if _typed(entry, target_point):
            trajectories = [(parse_point(entry, "entry"), parse_point(target_point, "target"))]
        planes, cut = (None, None) if not organ_id else _resection_cut(
            session, node, volume, organ_id, target_id, plane_point, plane_normal, surface)
        organ = _name(node, organ_id) if planes or cut is not None else None
        grid = session.grid(node, volume)
        folder = new_bundle_folder(workspace.export_dir, safe_file_stem(volume.GetName().split(".")[0]))
        manifest = bundle_from_scene(
            grid, folder, target=_name(node, target_id), threshold_mm=parse_number(threshold, "alert threshold"),
            trajectories=trajectories, tool_radius_mm=parse_number(radius or "0", "tool radius"), organ=organ,
            planes=planes, surface=cut, dicom_volume=loaded if loaded.source is not None else None,
            dicom_options={"assign_missing_uids": bool(assign_uids)}, runtime=workspace.runtime)
        notes = [f"WARNING: {w}" for w in manifest["warnings"]] + list(manifest["notes"]) + (
            [] if loaded.source is not None else ["no DICOM SEG/SR: the volume was not opened from DICOM"])
        message = "\n".join([*notes, f"Plan bundle: {len(manifest['files']) + 1} files in {folder}"])
        download = {"name": f"{folder.name}.zip", "type": "application/zip", "content": zip_folder(folder)}
    except Exception as error:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays in the export folder
        workspace.show_error(error, "plan")
        message, download = "", None
    with workspace.state:
        workspace.state.plan_bundle_busy, workspace.state.plan_bundle_message = False, message
    return download


async def run_outcome(workspace: Workspace, segmentation_path, image_path, mode, planned_entry, planned_target,
                      actual_entry, actual_target, planned_plane_point, planned_plane_normal, actual_plane_point,
                      actual_plane_normal) -> None:
    """Fill ``plan_outcome_rows``: the post-operative files registered to the open CT, compared per structure;
    the trajectory / cut plane deviations when the actual ones are typed (post-operative RAS)."""
    from aiportal.planning.scene_plan import OUTCOME_COLUMNS, deviation_text, outcome_from_files

    with workspace.state:
        workspace.clear_error("plan")
        workspace.state.plan_outcome_busy = True
    await asyncio.sleep(0)  # the page shows the button busy before the (blocking) registration
    try:
        node, volume = _inputs(workspace)
        deviations = {}
        if _typed(actual_entry, actual_target):
            deviations.update(planned_trajectory=(parse_point(planned_entry, "planned entry"),
                                                  parse_point(planned_target, "planned target")),
                              actual_trajectory=(parse_point(actual_entry, "actual entry"),
                                                 parse_point(actual_target, "actual target")))
        if _typed(actual_plane_point, actual_plane_normal):
            deviations.update(planned_plane=(parse_point(planned_plane_point, "planned plane point"),
                                             parse_point(planned_plane_normal, "planned plane normal")),
                              actual_plane=(parse_point(actual_plane_point, "actual plane point"),
                                            parse_point(actual_plane_normal, "actual plane normal")))
        if not _typed(segmentation_path, image_path):
            raise InputError("no post-operative files", "type the paths of the post-operative segmentation and CT")
        result = outcome_from_files(
            _session(workspace).grid(node, volume), volume, Path(segmentation_path.strip()).expanduser(),
            Path(image_path.strip()).expanduser(), mode=mode or "auto", planned_source=workspace.session.loaded.source,
            runtime=workspace.runtime, **deviations)
    except Exception as error:
        workspace.show_error(error, "plan")
        workspace.state.plan_outcome_busy = False
        return
    with workspace.state:
        workspace.state.plan_outcome_busy = False
        workspace.state.plan_outcome_rows = [
            {key: row[key] if key == "structure" else f"{row[key]:.2f}" for key, _, _ in OUTCOME_COLUMNS}
            for row in result["structures"]]
        workspace.state.plan_outcome_lines = deviation_text(result).splitlines()


def _field(model: str, label: str, testid: str) -> None:
    VTextField(v_model=(model,), label=label, density="compact", hide_details=True, classes="mt-2",
               raw_attrs=_testid(testid))


def bundle_section(workspace: Workspace) -> None:
    export = workspace.server.trigger_name(lambda *a: export_plan_bundle(workspace, *a))
    VDivider(classes="my-3")
    html.Div("Plan bundle (navigation, 3D printing)", classes="text-subtitle-2")
    VBtn("Export plan bundle", size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-package-down",
         loading=("plan_bundle_busy",), raw_attrs=_testid("plan-bundle"),
         click=(f"trigger('{export}', {BUNDLE_ARGUMENTS})"
                ".then(f => f && utils.download(f.name, f.content, f.type))"))
    html.Div("{{ plan_bundle_message }}", v_if=("plan_bundle_message",), classes="text-caption mt-2",
             style="white-space: pre-line", raw_attrs=_testid("plan-bundle-message"))


def outcome_section(workspace: Workspace) -> None:
    from aiportal.planning.scene_plan import OUTCOME_COLUMNS

    VDivider(classes="my-3")
    html.Div("Plan vs outcome", classes="text-subtitle-2")
    _field("plan_post_segmentation", "Post-op segmentation (.seg.nrrd or label map, path)", "plan-post-segmentation")
    _field("plan_post_image", "Post-op CT (file or DICOM folder, path)", "plan-post-image")
    VSelect(v_model=("plan_register",), items=(["auto", "yes", "no"],), label="Register the post-op CT (rigid)",
            density="compact", hide_details=True, classes="mt-2", raw_attrs=_testid("plan-register"))
    _field("plan_actual_entry", "Actual entry R A S (post-op, optional)", "plan-actual-entry")
    _field("plan_actual_target", "Actual target R A S", "plan-actual-target")
    _field("plan_actual_plane_point", "Actual cut plane point R A S (optional)", "plan-actual-plane-point")
    _field("plan_actual_plane_normal", "Actual cut plane normal", "plan-actual-plane-normal")
    VBtn("Compare with outcome", size="small", variant="tonal", classes="mt-2", prepend_icon="mdi-compare",
         loading=("plan_outcome_busy",), raw_attrs=_testid("plan-outcome"),
         click=(lambda *a: run_outcome(workspace, *a), OUTCOME_ARGUMENTS))
    with html.Div(v_if=("plan_outcome_lines.length",), classes="text-body-2 mt-2",
                  raw_attrs=_testid("plan-outcome-summary")):
        html.Div("{{ line }}", v_for="line in plan_outcome_lines", key="line")
    with VTable(density="compact", classes="text-caption mt-2", v_if=("plan_outcome_rows.length",),
                raw_attrs=_testid("plan-outcome-table")):
        with html.Thead(), html.Tr():
            for _, title, unit in OUTCOME_COLUMNS:
                html.Th(f"{title} {unit}".strip())
        with html.Tbody(), html.Tr(v_for="row in plan_outcome_rows", key="row.structure"):
            for key, _, _ in OUTCOME_COLUMNS:
                html.Td(f"{{{{ row.{key} }}}}", raw_attrs=[f':data-testid="`outcome-{key}-${{row.structure}}`"'])
