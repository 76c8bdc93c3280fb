"""The workspace application: trame-slicer's viewer and segment editor, plus the AI portal panels.

Built from trame-slicer's parts rather than by patching its app: the Slicer core app
(:class:`trame_slicer.core.SlicerApp`), its remote views (with an **AI Segment** button added to
the 3D view's toolbar), its segment editor, layout and volume-property logic, and its page layout.
Everything the AI portal adds only calls aiportal logic (see :mod:`aiportal.workspace`).

All scene work happens on the server's event loop thread; a model runs inside its
:class:`~aiportal.segment.SegmentationJob` and is polled from an asyncio task, so the page stays
live (progress, Cancel) while it runs.
"""

from __future__ import annotations

import asyncio
import getpass
import io
import shutil
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer
from trame.app import TrameApp
from trame_server.utils.asynchronous import create_task

from aiportal.audit import AuditLog
from aiportal.errors import AIPortalError, CancelledError
from aiportal.runtime import SlicerRuntime
from aiportal.settings import Settings
from aiportal.workspace import ui

BOX_PROMPT_NAME = "AI box prompt"
DEFAULT_BOX_RADIUS_MM = 20.0  # a box placed by one click: 40 mm wide, flat on its slice; its handles resize it
POLL_INTERVAL_S = 0.25  # how often the page's progress follows a running model
STATISTICS_DELAY_S = 0.6  # statistics follow edits once painting pauses this long


def runtime_of(slicer_app) -> SlicerRuntime:
    """The aiportal runtime on trame-slicer's scene and module logics: one scene for both."""
    return SlicerRuntime(
        scene=slicer_app.scene,
        app_logic=slicer_app.app_logic,
        colors=slicer_app.color_logic,
        volumes=slicer_app.volumes_logic,
        segmentations=slicer_app.segmentations_logic,
        terminologies=slicer_app.terminologies_logic,
        markups=slicer_app.markups_logic._logic,  # trame-slicer wraps the vtkSlicerMarkupsLogic it registered
        transforms=slicer_app.register_module_logic(slicer.vtkSlicerTransformLogic()),
        subject_hierarchy=slicer_app.subject_hierarchy_logic,
    )


@dataclass
class Session:
    """What the reader is working on: one volume, its AI segmentation, the model run."""

    loaded: Any = None  # aiportal.io.volumes.LoadedVolume
    input_name: str = ""
    segmentation_node: Any = None
    job: Any = None  # aiportal.segment.SegmentationJob while a model runs
    upload_dir: Path | None = None  # files the browser sent, kept while their volume is open


class Workspace(TrameApp):
    def __init__(self, server=None, *, export_dir: Path, open_path: Path | None = None) -> None:
        super().__init__(server)
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import SegmentationAppLogic
        from trame_slicer.core import SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server.enable_module(trame_slicer_module)
        self.export_dir = Path(export_dir)
        self.session = Session()
        self.slicer_app = SlicerApp()
        self.runtime = runtime_of(self.slicer_app)
        # registered before the stock factories, so these make the views: the 3D view gets our button
        register_rca_factories(self.slicer_app.view_manager, self.server,
                               three_d_view_ui_f=ui.three_d_view_toolbar(self.open_ai_panel))
        self.logic = SegmentationAppLogic(self.server, self.slicer_app)
        self.page = ui.WorkspacePage(self.server, self.logic.layout_manager, self)
        self.logic.set_ui(self.page)
        # uploads go through aiportal's loader (DICOM sources kept for SEG/SR), not trame-slicer's
        self.page.load_volume_items_buttons.on_load_volume.disconnect_all()
        self.page.load_volume_items_buttons.on_load_volume.connect(self.load_uploaded_files)
        self._volume_loaded_signal = self.logic._load_files_logic.volume_loaded  # tells the stock panels
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._on_segmentation_edited)
        self._statistics_task: asyncio.Task | None = None
        self._init_state()
        self.server.controller.on_server_bind.add(_answer_session_manager)
        if open_path is not None:
            self.server.controller.on_server_ready.add(lambda **_: create_task(self.load_path(str(open_path))))

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self):
        return self.server.state

    def _init_state(self) -> None:
        from aiportal.models.catalog import get_catalog

        state = self.state
        state.trame__title = "AI Portal workspace"
        state.trame__favicon = ui.FAVICON  # the stock one is on the internet: no network calls from the page
        state.trame__template_error = ui.CONNECTION_LOST_TEMPLATE
        state.trame__template_error_reconnect = ui.CONNECTION_LOST_TEMPLATE
        state.ai_models = [{"id": m.id, "title": f"{m.title} ({m.id})", "prompts": list(m.prompts),
                            "modality": m.modality, "description": m.description, "limitations": m.limitations}
                           for m in get_catalog().models]
        state.ai_model_id = "classic-ct" if any(m["id"] == "classic-ct" for m in state.ai_models) else (
            state.ai_models[0]["id"] if state.ai_models else None)
        state.update({
            "ws_volume_name": "", "ws_loading": False, "ws_error": "", "ws_error_fix": "", "ws_message": "",
            "load_path": "", "ai_running": False, "ai_progress": 0, "ai_stage": "", "ai_error": "",
            "ai_error_fix": "", "ai_summary": "", "ai_segments": [], "ai_pending": 0, "ai_boxes": [],
            "ai_boxes_one_structure": False,
            "stats_rows": [], "stats_busy": False, "stats_error": "", "export_busy": False,
            "export_message": "", "export_error": "", "export_assign_uids": False,
            "export_key_images": False, "export_models": False, "export_rtstruct": False,
        })

    def show_error(self, error: BaseException, key: str = "ws") -> None:
        """An error in the page: the message and, for errors a user can act on, the fix."""
        if isinstance(error, AIPortalError):
            message, fix = error.message, error.fix or ""
        else:  # our bug: still shown, with the details in the server log
            traceback.print_exception(error)
            message, fix = f"Internal error: {type(error).__name__}: {error}", "see the workspace server's log"
        with self.state:
            self.state[f"{key}_error"] = message
            self.state[f"{key}_error_fix"] = fix

    def clear_error(self, key: str = "ws") -> None:
        self.state[f"{key}_error"] = ""
        self.state[f"{key}_error_fix"] = ""

    # -- panels ----------------------------------------------------------------------------------
    def open_tool(self, name: str) -> None:
        data = self.page.data
        show = not data.is_drawer_visible or data.active_tool != name
        data.is_drawer_visible, data.active_tool = show, (name if show else None)

    def open_ai_panel(self) -> None:
        self.page.data.is_drawer_visible, self.page.data.active_tool = True, ui.AI_PANEL

    # -- loading ---------------------------------------------------------------------------------
    async def load_uploaded_files(self, files: list[dict]) -> None:
        """Files from the page's upload buttons: one volume file, or the files of a DICOM folder."""
        from trame_slicer.utils import write_client_files_to_dir

        if not files:
            return
        folder = Path(tempfile.mkdtemp(prefix="aiportal-upload-"))
        written = [Path(p) for p in write_client_files_to_dir(files, folder)]
        name = written[0].name if len(written) == 1 else f"{len(written)} files"
        await self._load(written[0] if len(written) == 1 else folder, name, upload_dir=folder)

    async def load_path(self, path: str | None = None) -> None:
        """A volume file or DICOM folder on the workspace's machine (typed into the page or --open)."""
        text = (path if path is not None else self.state.load_path or "").strip()
        if not text:
            self.show_error(AIPortalError("No path given", "type the path of a volume file or DICOM folder"))
            return
        await self._load(Path(text).expanduser(), text)

    async def _load(self, path: Path, name: str, upload_dir: Path | None = None) -> None:
        from aiportal.io.volumes import load_volume
        from aiportal.workspace.scene_swap import check_openable

        with self.state:
            self.clear_error()
            self.state.ws_loading = True
            self.state.ws_message = f"Loading {name}…"
        await asyncio.sleep(0)  # let the page show it before the (blocking) read
        try:
            check_openable(path)  # a failed OPEN keeps the open study: checked before the scene is cleared
            self.cancel_ai()
            self.slicer_app.scene.Clear()
            self._reset_session()
            loaded = load_volume(path, self.runtime)
        except Exception as error:
            if upload_dir is not None:
                shutil.rmtree(upload_dir, ignore_errors=True)
            self.show_error(error)
            with self.state:
                self.state.ws_loading, self.state.ws_message = False, ""
            return
        self.session.loaded, self.session.input_name, self.session.upload_dir = loaded, name, upload_dir
        self.slicer_app.display_manager.show_volume(loaded.node, do_reset_views=True)
        self._volume_loaded_signal(loaded.node)  # segment editor, volume properties, layout buttons follow
        with self.state:
            self.state.ws_loading = False
            self.state.ws_volume_name = loaded.node.GetName()
            self.state.ws_message = "; ".join(loaded.warnings)
            self.open_ai_panel()

    def _reset_session(self) -> None:
        if self.session.upload_dir is not None:
            shutil.rmtree(self.session.upload_dir, ignore_errors=True)
        self.session = Session()
        self.state.update({"ws_volume_name": "", "ai_segments": [], "ai_pending": 0, "ai_summary": "",
                           "stats_rows": [], "ai_error": "", "ai_error_fix": "", "export_message": "",
                           "export_error": "", "ai_boxes": [], "measure_rows": [], "measure_summary": "",
                           "measure_warnings": "", "vessel_summary": "", "vessel_warnings": "",
                           "reg_method": "", "reg_checks": "", "reg_motion": "", "reg_warnings": "",
                           "reg_propagated": ""})

    # -- AI Segment ------------------------------------------------------------------------------
    def run_ai(self) -> None:
        from aiportal.segment import SegmentationJob

        loaded = self.session.loaded
        if self.session.job is not None:
            return
        self.clear_error("ai")
        try:
            if loaded is None:
                raise AIPortalError("No volume loaded", "open a CT or MR volume first")
            params = self._prompt_parameters()
            modality = loaded.source.modality if loaded.source else None
            job = SegmentationJob(loaded.node, self.state.ai_model_id, params=params, runtime=self.runtime,
                                  input_name=self.session.input_name, modality=modality)
            job.start()
        except Exception as error:
            self.show_error(error, "ai")
            return
        self.session.job = job
        self.state.update({"ai_running": True, "ai_progress": 0, "ai_stage": f"starting {job.model.id}"})
        create_task(self._follow_job(job))

    def _prompt_parameters(self) -> dict[str, Any]:
        """Prompts the chosen model asks for (its catalog entry's ``prompts``); none for classic models."""
        model = next((m for m in self.state.ai_models if m["id"] == self.state.ai_model_id), None)
        if model is None:
            raise AIPortalError("No model chosen", "pick a model in the list")
        if "box" in model["prompts"]:
            from aiportal.prompts import boxes_from_roi_nodes

            if not self._box_rois():
                raise AIPortalError(f"{model['title']} needs a box around the structure",
                                    "press 'Add box' and draw it in a slice view")
            # what `--box ... --box-labels` gives the CLI's model: each ROI's bounds as read now (after any
            # handle drags), one structure each or all of them one structure (the slices between filled)
            return boxes_from_roi_nodes(self.session.loaded.node, self._box_rois(),
                                        bool(self.state.ai_boxes_one_structure))
        return {}

    def _box_rois(self) -> list:
        scene = self.slicer_app.scene
        rois = [scene.GetNthNodeByClass(n, "vtkMRMLMarkupsROINode")
                for n in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"))]
        return [roi for roi in rois if roi.GetName().startswith(BOX_PROMPT_NAME)]

    def add_box(self) -> None:
        """One more box prompt (LiteMedSAM-style models): an ROI markup the reader places in a slice view."""
        scene = self.slicer_app.scene
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{BOX_PROMPT_NAME} {len(self._box_rois()) + 1}")
        roi.CreateDefaultDisplayNodes()
        roi.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, lambda *_: self._box_placed(roi))
        self.slicer_app.markups_logic.place_node(roi)

    def clear_boxes(self) -> None:
        """Remove every box prompt (their ROI markups too)."""
        for roi in self._box_rois():
            self.slicer_app.scene.RemoveNode(roi)
        with self.state:
            self.state.ai_boxes = []

    def _box_placed(self, roi) -> None:
        # one click (the remote view sends no hover moves to size it): a flat box around it
        if max(roi.GetSize()[:2]) <= 0:
            roi.SetRadiusXYZ(DEFAULT_BOX_RADIUS_MM, DEFAULT_BOX_RADIUS_MM, 0.0)
        with self.state:
            self.state.ai_boxes = [r.GetName() for r in self._box_rois() if r.GetNumberOfDefinedControlPoints()]

    def cancel_ai(self) -> None:
        if self.session.job is not None:
            self.session.job.cancel()
            self.state.ai_stage = "cancelling…"

    async def _follow_job(self, job) -> None:
        try:
            while (status := job.poll()).state in ("queued", "running"):
                with self.state:
                    self.state.ai_progress = round(100 * status.fraction)
                    self.state.ai_stage = status.stage
                await asyncio.sleep(POLL_INTERVAL_S)
            result = job.finish()  # on this (the scene's) thread
            if job is not self.session.job:  # another volume was opened meanwhile
                return
            self._show_result(result)
        except CancelledError:
            with self.state:
                self.state.ai_summary = "Cancelled: nothing was added."
        except Exception as error:
            self.show_error(error, "ai")
        finally:
            if job is self.session.job:
                self.session.job = None
            with self.state:
                self.state.ai_running = False
                self.state.ai_stage = ""

    def _show_result(self, result) -> None:
        from aiportal.audit import ai_run_fields
        from aiportal.review import remember_suggestions

        node = result.segmentation_node
        loaded = self.session.loaded
        remember_suggestions(node)
        source = loaded.source.reference() if loaded.source else None
        AuditLog(Settings.from_environment().audit_log).append(
            "ai_run", **ai_run_fields(result, self.session.input_name, source), via="workspace")
        editor = self.slicer_app.segmentation_editor
        previous = editor.active_segmentation_node
        if previous is not None and previous is not node and not previous.GetSegmentation().GetNumberOfSegments():
            self.slicer_app.scene.RemoveNode(previous)  # the editor's empty starter segmentation
        self.session.segmentation_node = node
        editor.set_active_segmentation(node, loaded.node)
        _see_through_enclosing_segments(node, result.model)
        editor.set_surface_representation_enabled(True)
        vr_display = self.slicer_app.volume_rendering.get_vr_display_node(loaded.node)
        if vr_display is not None:  # the segments, not the volume rendering, are what the reader checks in 3D
            vr_display.SetVisibility(False)
        absent = f"; not found: {', '.join(result.absent_labels)}" if result.absent_labels else ""
        warnings = "".join(f"\nwarning: {note}" for note in result.notes)  # e.g. a propagation that stopped early
        with self.state:
            self.state.ai_summary = (f"{result.model.title}: {node.GetSegmentation().GetNumberOfSegments()} "
                                     f"suggested segments in {result.elapsed_s:.1f} s{absent}{warnings}")
            self.state.ai_progress = 100
        self.refresh_statistics()

    # -- review ----------------------------------------------------------------------------------
    def review(self, segment_id: str, decision: str) -> None:
        from aiportal.review import review_segment

        node = self.session.segmentation_node
        if node is None:
            return
        self.clear_error("ai")
        try:
            outcome = review_segment(node, segment_id, decision, user=getpass.getuser(),
                                     log=AuditLog(Settings.from_environment().audit_log))
        except Exception as error:
            self.show_error(error, "ai")
            return
        with self.state:
            self.state.ws_message = f"{outcome.segment_name}: {outcome.decision}"
        self.refresh_statistics()

    def select_segment(self, segment_id: str) -> None:
        self.slicer_app.segmentation_editor.set_active_segment_id(segment_id)

    # -- statistics ------------------------------------------------------------------------------
    def _on_segmentation_edited(self, *_) -> None:
        if self.session.segmentation_node is None:
            return
        if self._statistics_task is not None and not self._statistics_task.done():
            self._statistics_task.cancel()
        self._statistics_task = create_task(self._refresh_statistics_later())

    async def _refresh_statistics_later(self) -> None:
        await asyncio.sleep(STATISTICS_DELAY_S)
        self.refresh_statistics()

    def refresh_statistics(self) -> None:
        """Statistics of the shown segmentation (the export layer's numbers) and the review list."""
        from aiportal.export.statistics import compute_statistics
        from aiportal.review import review_state

        node, loaded = self.session.segmentation_node, self.session.loaded
        if node is None or loaded is None or node.GetScene() is None:
            return
        try:
            rows = compute_statistics(node, loaded.node, modality=loaded.source.modality if loaded.source else None)
        except Exception as error:
            self.show_error(error, "stats")
            return
        segmentation = node.GetSegmentation()
        table, review_rows = [], []
        for row in rows:
            segment = segmentation.GetSegment(row.segment_id)
            state = review_state(node, row.segment_id) or "manual"
            values = row.values
            table.append({"segment_id": row.segment_id, "name": row.name, "review": state,
                          "color": ui.hex_color(segment.GetColor()),
                          **{key: ui.number(values.get(key), digits) for key, digits in ui.STATISTICS_COLUMNS}})
            review_rows.append({"segment_id": row.segment_id, "name": row.name, "review": state,
                                "color": ui.hex_color(segment.GetColor()),
                                "volume_ml": ui.number(values.get("volume_ml"), 2)})
        with self.state:
            self.state.stats_error = ""
            self.state.stats_rows = table
            self.state.ai_segments = review_rows
            self.state.ai_pending = sum(1 for r in review_rows if r["review"] == "suggested")

    # -- export ----------------------------------------------------------------------------------
    def _export_inputs(self):
        node, loaded = self.session.segmentation_node, self.session.loaded
        if node is None or loaded is None or not node.GetSegmentation().GetNumberOfSegments():
            raise AIPortalError("Nothing to export", "run AI Segment (or draw segments) first")
        return node, loaded

    async def download(self, kind: str, segment_id: str = "") -> dict | None:
        """A file for the browser: ``stl`` / ``obj`` surfaces (of one segment, or all in a zip) or the
        statistics table (``csv``). Written by the export layer's one entry point, which audits it."""
        from aiportal.export.exporter import ExportOptions, export_to_folder
        from aiportal.segmentation import segment_ids

        self.clear_error("export")
        try:
            node, loaded = self._export_inputs()
            stem = _file_stem(loaded.node.GetName())
            with tempfile.TemporaryDirectory(prefix="aiportal-download-") as folder:
                out = Path(folder) / "export"
                result = export_to_folder(node, loaded.node, loaded.source, out, ExportOptions(formats=(kind,)),
                                          modality=loaded.source.modality if loaded.source else None)
                files = [out / f.name for f in result.files if f.kind == kind]
                if kind == "csv":
                    return {"name": f"{stem}-statistics.csv", "type": "text/csv", "content": files[0].read_bytes()}
                if kind == "stl" and segment_id:  # one file per segment, in segment order
                    chosen = files[segment_ids(node).index(segment_id)]
                    return {"name": chosen.name, "type": "model/stl", "content": chosen.read_bytes()}
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                    for file in files:
                        archive.write(file, file.name)
                return {"name": f"{stem}-{kind}.zip", "type": "application/zip", "content": buffer.getvalue()}
        except Exception as error:
            self.show_error(error, "export")
            return None

    async def save_dicom(self, key_images: bool | None = None, models: bool | None = None,
                         rtstruct: bool | None = None, assign_uids: bool | None = None) -> None:
        """DICOM SEG + TID 1500 SR of the shown segmentation, with its key images (Secondary Capture), 3D
        models (Encapsulated STL) and RT Structure Set when ticked, into the export folder (PACS push comes later).
        The ticks come with the click (the page's values then); without them, the state's."""
        ticks = {"export_key_images": key_images, "export_models": models, "export_rtstruct": rtstruct,
                 "export_assign_uids": assign_uids}
        ticks = {name: bool(self.state[name] if value is None else value) for name, value in ticks.items()}
        from aiportal.export.exporter import ExportOptions, export_to_folder

        with self.state:
            self.clear_error("export")
            self.state.export_busy, self.state.export_message = True, "Writing DICOM SEG and SR…"
        await asyncio.sleep(0)
        try:
            node, loaded = self._export_inputs()
            formats = ("seg", "sr") + (("sc",) if ticks["export_key_images"] else ()) \
                + (("estl",) if ticks["export_models"] else ()) \
                + (("rtstruct",) if ticks["export_rtstruct"] else ())
            out = self.export_dir / f"{_file_stem(loaded.node.GetName())}-{time.strftime('%Y%m%d-%H%M%S')}"
            self.export_dir.mkdir(parents=True, exist_ok=True)
            result = export_to_folder(node, loaded.node, loaded.source, out,
                                      ExportOptions(formats=formats,
                                                    assign_missing_uids=ticks["export_assign_uids"]),
                                      modality=loaded.source.modality if loaded.source else None)
            written = ", ".join(f.name for f in result.files if f.kind in ("seg", "sr", "rtstruct"))
            counted = {kind: sum(f.kind == kind for f in result.files) for kind in ("sc", "estl")}
            extra = "".join(f", {count} {what}" for what, count in (("key image(s)", counted["sc"]),
                                                                    ("3D model(s)", counted["estl"])) if count)
            message = "\n".join([*result.notes, f"Saved {written}{extra} in {out}"])  # notes first: the folder ends it
        except Exception as error:
            self.show_error(error, "export")
            message = ""
        with self.state:
            self.state.export_busy, self.state.export_message = False, message


def _answer_session_manager(wslink_server) -> None:
    """Answer the trame page's first question, "which websocket?", asked by POST to /paraview/.

    Unanswered it is a 405 in the browser's console before the page falls back to /ws; answered,
    the page connects at once and its console stays clean.
    """
    from aiohttp import web

    async def session(request: web.Request) -> web.Response:
        scheme = "wss" if request.secure else "ws"
        return web.json_response({"sessionURL": f"{scheme}://{request.host}/ws"})

    wslink_server.app.router.add_post("/paraview/", session)


def _see_through_enclosing_segments(segmentation_node, model) -> None:
    """Show segments that enclose others (a model's lower label layers, e.g. the body) faintly, so the
    organs inside stay visible in 3D and the CT stays readable under them in the slice views."""
    from aiportal.segmentation import label_value, segment_ids

    layers = {label.value: label.layer for label in model.labels}
    if len(set(layers.values())) < 2:
        return
    top = max(layers.values())
    display = segmentation_node.GetDisplayNode()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        if layers.get(label_value(segmentation.GetSegment(segment_id)), top) < top:
            display.SetSegmentOpacity3D(segment_id, 0.15)
            display.SetSegmentOpacity2DFill(segment_id, 0.1)


def _file_stem(name: str) -> str:
    from aiportal.export.surfaces import safe_file_stem

    return safe_file_stem(name.replace(".nii", "").replace(".nrrd", ""))
