"""One segmentation run from a file or DICOM folder to exported results — what a server job does.

The same steps as ``aiportal segment`` (load → :class:`SegmentationJob` → audit → export), with
progress and cancel as plain callables so that any worker (thread pool or Celery) can drive it.
Each run gets its own headless scene; the steps that touch a scene take a process-wide lock
(VTK's reader state and the terminology logic are not thread-safe), while the model itself runs
outside the lock, in its child process or thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiportal.errors import CancelledError
from aiportal.progress import ProgressCallback, no_progress, scaled

SCENE_LOCK = threading.RLock()


@dataclass
class PipelineRequest:
    input_path: Path
    model_id: str
    out_dir: Path  # created by the export (all or nothing); must not exist
    formats: tuple[str, ...] = ("nrrd", "json")
    params: dict[str, Any] = field(default_factory=dict)
    series_uid: str | None = None
    assign_missing_uids: bool = False
    executor: str = "process"
    timeout_s: float | None = None
    device: str = "auto"
    user: str = ""  # who asked (an API key id or token subject), recorded in the audit trail
    input_label: str = ""  # how the audit names the input (never a client's file name)


@dataclass
class PipelineResult:
    run_id: str
    model_id: str
    model_version: str
    volumes_ml: dict[str, float]
    absent_labels: list[str]
    files: list[dict[str, Any]]
    notes: list[str]
    elapsed_s: float
    study_uid: str = ""
    series_uid: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_segmentation(request: PipelineRequest, progress: ProgressCallback = no_progress,
                     cancelled: Callable[[], bool] = lambda: False) -> PipelineResult:
    """Load, segment, audit and export; raises AIPortalError (or CancelledError) with the reason."""
    from aiportal.audit import AuditLog
    from aiportal.export.exporter import ExportOptions, check_export_possible, export_to_folder
    from aiportal.io.volumes import load_volume
    from aiportal.runtime import build_headless_runtime
    from aiportal.segment import SegmentationJob
    from aiportal.segmentation import segment_voxel_counts
    from aiportal.settings import Settings

    started = time.monotonic()
    options = ExportOptions(formats=tuple(request.formats), assign_missing_uids=request.assign_missing_uids)
    with SCENE_LOCK:
        runtime = build_headless_runtime()
    try:
        progress(0.02, "loading the image")
        with SCENE_LOCK:
            loaded = load_volume(request.input_path, runtime, series_uid=request.series_uid)
            check_export_possible(loaded.source, loaded.node, options)  # refuse before the model runs
            modality = loaded.source.modality if loaded.source else None
            job = SegmentationJob(loaded.node, request.model_id, params=request.params, device=request.device,
                                  input_name=request.input_label or "upload", modality=modality, runtime=runtime,
                                  executor=request.executor, timeout_s=request.timeout_s)  # type: ignore[arg-type]
        model_progress = scaled(progress, 0.05, 0.8)
        job.start()
        last = None
        while (status := job.wait(0.2)).state == "running":
            if cancelled():
                job.cancel()
            if (status.fraction, status.stage) != last:
                last = (status.fraction, status.stage)
                model_progress(status.fraction, status.stage)
        if cancelled() and status.state != "done":
            raise CancelledError(f"{request.model_id} job")
        with SCENE_LOCK:
            result = job.finish()
            node = result.segmentation_node
            spacing = loaded.node.GetSpacing()
            voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
            segmentation = node.GetSegmentation()
            volumes = {segmentation.GetSegment(segment_id).GetName(): round(count * voxel_ml, 3)
                       for segment_id, count in segment_voxel_counts(node).items()}
        reference = loaded.source.reference() if loaded.source else {}
        provenance = asdict(result.provenance)
        run_record = {"input": request.input_label, "model": result.model.id, "provenance": provenance,
                      "elapsed_s": round(result.elapsed_s, 3), "volumes_ml": volumes,
                      "absent_labels": result.absent_labels, "warnings": loaded.warnings + result.notes}
        AuditLog(Settings.from_environment().audit_log).append(
            "ai_run", run_id=provenance["run_id"], input=request.input_label,
            study_uid=reference.get("study_uid", ""), series_uid=reference.get("series_uid", ""),
            model_id=provenance["model_id"], model_version=provenance["model_version"],
            weights_sha256=provenance["weights_sha256"], parameters=provenance["parameters"],
            device=provenance["device"], user=request.user or provenance["user"], started=provenance["started"],
            finished=provenance["finished"], via="server")
        if cancelled():
            raise CancelledError(f"{request.model_id} job")
        with SCENE_LOCK:
            exported = export_to_folder(node, loaded.node, loaded.source, request.out_dir, options,
                                        modality=modality, extra_files={"run.json": json.dumps(run_record, indent=2)},
                                        progress=scaled(progress, 0.8, 0.99))
        return PipelineResult(
            run_id=provenance["run_id"], model_id=result.model.id, model_version=result.model.version,
            volumes_ml=volumes, absent_labels=result.absent_labels,
            files=[{"kind": f.kind, "name": f.name, "sop_instance_uid": f.sop_instance_uid,
                    "series_uid": f.series_uid} for f in exported.files],
            notes=loaded.warnings + result.notes + exported.notes, elapsed_s=round(time.monotonic() - started, 3),
            study_uid=reference.get("study_uid", ""), series_uid=reference.get("series_uid", ""))
    finally:
        with SCENE_LOCK:
            runtime.scene.Clear(1)

