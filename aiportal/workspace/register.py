"""The workspace's Register panel: a moving volume (a file or DICOM folder on the workspace machine) aligned
to the open one, by the same background job the desktop AIRegister panel runs
(:class:`aiportal.register.job.RegistrationJob`), the page staying responsive meanwhile; then what ``auto``
picked and why, the independent checks and every warning (as ``aiportal register`` prints them), and the
moving volume faded over the fixed one in the slice views (:func:`aiportal.register.show_fusion`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VCard, VCardText, VCardTitle, VProgressLinear, VSelect, VTextField

if TYPE_CHECKING:
    from aiportal.workspace.app import Workspace

REGISTER_PANEL = "RegisterPanel"
KINDS = ["rigid", "affine", "bspline"]
METRICS = ["auto", "mean_squares", "mutual_information"]
FUSION_MODES = ["fade", "difference", "checkerboard"]
_POLL_S = 0.25


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def _remove_previous(workspace: Workspace) -> None:
    """A new registration replaces the previous one's moving volume and transform."""
    scene = workspace.slicer_app.scene
    for node in [*getattr(workspace, "registration_nodes", []), getattr(workspace, "registration_board", None)]:
        if node is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)
    workspace.registration_nodes, workspace.registration_board, workspace.registration = [], None, None


async def run_registration(workspace: Workspace, moving_path: str, kind: str, metric: str,
                           segmentation_path: str = "") -> None:
    """Load the moving volume, register it to the open one in a worker thread, show the result and fusion;
    with ``segmentation_path`` (a .seg.nrrd made on the moving volume) warp it onto the open volume."""
    from aiportal.errors import InputError
    from aiportal.io.volumes import load_volume
    from aiportal.register.job import RegistrationJob
    from aiportal.register.report import checks_line, method_line, motion_line, warning_lines

    workspace.clear_error("reg")
    state = workspace.state
    with state:
        state.update({"reg_running": True, "reg_progress": 0, "reg_stage": "loading the moving volume",
                      "reg_method": "", "reg_checks": "", "reg_motion": "", "reg_matrix": [], "reg_warnings": "",
                      "reg_fusion_views": "", "reg_propagated": ""})
    await asyncio.sleep(0)  # let the page show it before the (blocking) read
    try:
        loaded = workspace.session.loaded
        if loaded is None:
            raise InputError("No fixed volume open", "open the volume to register to first")
        if not (moving_path or "").strip():
            raise InputError("No moving volume given", "type the path of a volume file or DICOM folder")
        if kind not in KINDS or metric not in METRICS:
            raise InputError(f"Unknown registration {kind}/{metric}", f"use one of {KINDS} and {METRICS}")
        _remove_previous(workspace)
        moving = load_volume(Path(moving_path.strip()).expanduser(), workspace.runtime)
        workspace.registration_nodes = [moving.node]
        moving_segmentation = None
        if (segmentation_path or "").strip():  # read before registering, so a bad file fails fast
            from aiportal.segmentation import load_segmentation

            moving_segmentation = load_segmentation(Path(segmentation_path.strip()).expanduser(), workspace.runtime)
            moving_segmentation.SetDisplayVisibility(False)
            workspace.registration_nodes.append(moving_segmentation)
        job = RegistrationJob(loaded.node, moving.node, kind=kind, metric=metric)
        job.start()
        while (status := job.poll()).state in ("queued", "running"):
            with state:
                state.reg_progress, state.reg_stage = round(100 * status.fraction), status.stage
            await asyncio.sleep(_POLL_S)
        transform_node, result = job.finish(workspace.runtime, fusion_mode=None)  # on the scene's thread
        workspace.registration_nodes.append(transform_node)
        workspace.registration = (result, loaded.node, moving.node)
        show_fusion_mode(workspace, state.reg_fusion)
        if moving_segmentation is not None:
            _propagate(workspace, result, moving_segmentation, loaded.node, moving.node)
        warnings = [*(f"WARNING: {w}" for w in moving.warnings), *warning_lines(result)]
        with state:
            state.reg_method = method_line(result)
            state.reg_checks = checks_line(result)
            state.reg_motion = motion_line(result)
            state.reg_matrix = [[float(v) for v in row] for row in result.matrix_ras]
            state.reg_warnings = "\n".join(warnings)
            state.reg_progress = 100
    except Exception as error:
        workspace.show_error(error, "reg")
    finally:
        with state:
            state.reg_running, state.reg_stage = False, ""


def _propagate(workspace: Workspace, result, moving_segmentation, fixed_node, moving_node) -> None:
    """The moving volume's segmentation warped onto the open volume, made the workspace's segmentation (editor,
    statistics, review, Measure and export all work on it)."""
    from aiportal.register import propagate_segmentation
    from aiportal.segmentation import segment_ids

    node = propagate_segmentation(workspace.runtime, result, moving_segmentation, fixed_node, moving_node)
    editor = workspace.slicer_app.segmentation_editor
    previous = editor.active_segmentation_node
    if previous is not None and not previous.GetSegmentation().GetNumberOfSegments():
        workspace.slicer_app.scene.RemoveNode(previous)  # the editor's empty starter segmentation
    workspace.session.segmentation_node = node
    editor.set_active_segmentation(node, fixed_node)
    names = [node.GetSegmentation().GetSegment(s).GetName() for s in segment_ids(node)]
    lost = len(segment_ids(moving_segmentation)) - len(names)
    with workspace.state:
        workspace.state.reg_propagated = (f"{len(names)} segment(s) warped onto {fixed_node.GetName()}: "
                                          f"{', '.join(names)}" + (f"; {lost} fell outside it" if lost else ""))
    workspace.refresh_statistics()


def show_fusion_mode(workspace: Workspace, mode: str) -> None:
    """The last registration reviewed in ``mode``; ``reg_fusion_views`` says what the slice views show (read
    back from the scene). A checkerboard replaces the previous one."""
    from aiportal.register import show_fusion

    registration = getattr(workspace, "registration", None)
    scene = workspace.slicer_app.scene
    if registration is None or not all(scene.IsNodePresent(node) for node in registration[1:]):
        return
    board = getattr(workspace, "registration_board", None)
    if board is not None and scene.IsNodePresent(board):
        scene.RemoveNode(board)
    try:
        workspace.registration_board = show_fusion(workspace.runtime, *registration, mode=mode)
    except Exception as error:
        workspace.show_error(error, "reg")
        return
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    names = [(scene.GetNodeByID(node_id or "") or None) for node_id in (composite.GetBackgroundVolumeID(),
                                                                      composite.GetForegroundVolumeID())]
    background, foreground = (node.GetName() if node is not None else "" for node in names)
    over = f"{foreground} ({round(100 * composite.GetForegroundOpacity())} %) over " if foreground else ""
    with workspace.state:
        workspace.state.reg_fusion_views = f"Slice views ({mode}): {over}{background}"


class RegisterPanel(VCard):
    def __init__(self, workspace: Workspace, **kwargs) -> None:
        super().__init__(variant="flat", raw_attrs=_testid("register-panel"), **kwargs)
        workspace.state.update({"reg_moving": "", "reg_kind": "rigid", "reg_metric": "auto", "reg_running": False,
                                "reg_progress": 0, "reg_stage": "", "reg_method": "", "reg_checks": "",
                                "reg_motion": "", "reg_matrix": [], "reg_warnings": "", "reg_error": "",
                                "reg_error_fix": "", "reg_fusion": "fade", "reg_fusion_views": "",
                                "reg_segmentation": "", "reg_propagated": ""})
        workspace.state.change("reg_fusion")(lambda reg_fusion, **_: show_fusion_mode(workspace, reg_fusion))
        with self:
            VCardTitle("Register")
            with VCardText():
                html.Div("Aligns a moving volume (a file or DICOM folder on the workspace machine) to the open one. "
                         "Metric auto picks mean squares for a shared contrast, else mutual information, and every "
                         "result is checked from a perturbed start.", classes="text-caption text-grey")
                VTextField(v_model=("reg_moving",), label="Moving volume (file or DICOM folder)", density="compact",
                           hide_details=True, raw_attrs=_testid("reg-moving"))
                VTextField(v_model=("reg_segmentation",), label="Its segmentation (.seg.nrrd, optional): warped "
                           "onto the open volume", density="compact", hide_details=True, classes="mt-2",
                           raw_attrs=_testid("reg-segmentation"))
                with html.Div(classes="d-flex mt-2"):
                    VSelect(v_model=("reg_kind",), items=("reg_kinds", KINDS), label="Type", density="compact",
                            hide_details=True, raw_attrs=_testid("reg-kind"))
                    VSelect(v_model=("reg_metric",), items=("reg_metrics", METRICS), label="Metric",
                            density="compact", hide_details=True, classes="ml-2", raw_attrs=_testid("reg-metric"))
                VBtn("Register", click=(lambda *values: asyncio.ensure_future(run_registration(workspace, *values)),
                                        "[reg_moving, reg_kind, reg_metric, reg_segmentation]"),
                     loading=("reg_running",), disabled=("!ws_volume_name",), size="small", color="primary",
                     classes="mt-2", prepend_icon="mdi-vector-combine", raw_attrs=_testid("reg-run"))
                VProgressLinear(v_if=("reg_running",), model_value=("reg_progress",), classes="mt-2")
                html.Div("{{ reg_stage }}", v_if=("reg_running",), classes="text-caption mt-1",
                         raw_attrs=_testid("reg-stage"))
                with html.Div(v_if=("reg_error",), classes="text-body-2 text-red mt-2", raw_attrs=_testid("reg-error")):
                    html.Div("{{ reg_error }}", classes="font-weight-bold")
                    html.Div("{{ reg_error_fix }}", classes="text-caption")
                html.Div("{{ reg_method }}", v_if=("reg_method",), classes="text-body-2 mt-2",
                         raw_attrs=_testid("reg-method"))
                html.Div("{{ reg_motion }}", v_if=("reg_motion",), classes="text-body-2 mt-1",
                         raw_attrs=[*_testid("reg-motion"), ':data-matrix="JSON.stringify(reg_matrix)"'])
                html.Div("{{ reg_checks }}", v_if=("reg_checks",), classes="text-caption mt-1",
                         raw_attrs=_testid("reg-checks"))
                html.Div("{{ reg_propagated }}", v_if=("reg_propagated",), classes="text-body-2 mt-1",
                         raw_attrs=_testid("reg-propagated"))
                html.Div("{{ reg_warnings }}", v_if=("reg_warnings",), classes="text-body-2 text-amber mt-1",
                         style="white-space: pre-line", raw_attrs=_testid("reg-warnings"))
                VSelect(v_model=("reg_fusion",), items=("reg_fusion_modes", FUSION_MODES), label="Fusion view",
                        v_if=("reg_method",), density="compact", hide_details=True, classes="mt-2",
                        raw_attrs=_testid("reg-fusion-mode"))
                html.Div("{{ reg_fusion_views }}", v_if=("reg_method",), classes="text-caption text-grey mt-1",
                         raw_attrs=_testid("reg-fusion"))
