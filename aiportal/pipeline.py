"""One segmentation run from a file or DICOM folder to exported results: `aiportal segment` and every server job.

Load → refuse early what cannot be exported → :class:`~aiportal.segment.SegmentationJob` (the model
in its child process) → audit → export, all-or-nothing into the output folder. Progress and cancel
are plain callables so a terminal, a thread pool or a Celery worker can drive it. Each run gets its
own headless scene unless one is given; the steps that touch a scene take a process-wide lock (VTK's
readers and the terminology logic are not thread-safe), while the model runs outside the lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiportal.errors import CancelledError
from aiportal.export.exporter import ExportOptions
from aiportal.progress import ProgressCallback, no_progress, scaled

SCENE_LOCK = threading.RLock()


@dataclass
class PipelineRequest:
    input_path: Path
    model_id: str
    out_dir: Path  # written all or nothing
    options: ExportOptions = field(default_factory=ExportOptions)
    params: dict[str, Any] = field(default_factory=dict)
    boxes: list[list[int]] = field(default_factory=list)  # voxel boxes (i0 j0 k0 i1 j1 k1), checked on the volume
    boxes_ras: list[list[float]] = field(default_factory=list)  # two RAS corners each (mm)
    box_labels: list[int] = field(default_factory=list)  # the structure of each box; empty: 1, 2, 3 ...
    series_uid: str | None = None
    executor: str = "process"
    timeout_s: float | None = None
    device: str = "auto"
    overwrite: bool = False
    user: str = ""  # who asked (an API key id or token subject); default: the provenance's user
    input_label: str = ""  # how run.json and the audit name the input (a server never records a client's file name)
    via: str = "cli"  # the face that ran it, kept in the audit record
    nan_as: float | None = None  # NaN/Inf voxels: refused (None) or replaced by this value, with a warning
    geometry: str = "regular"  # DICOM: "regular" resamples tilted / unevenly spaced series; "acquired" keeps them


@dataclass
class PipelineResult:
    run_id: str
    model_id: str
    model_version: str
    volumes_ml: dict[str, float | None]  # None: not measurable on the geometry the run used
    absent_labels: list[str]
    files: list[dict[str, Any]]
    notes: list[str]  # the loader's warnings, the model's notes (device fallback...), the export's notes
    elapsed_s: float
    model_elapsed_s: float = 0.0
    study_uid: str = ""
    series_uid: str = ""
    geometry: dict[str, Any] = field(default_factory=dict)  # which grid the outputs are on (DICOM input)
    warnings: list[str] = field(default_factory=list)  # the run's warnings, as run.json records them

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _model_params(request: PipelineRequest, volume_node) -> dict[str, Any]:
    from aiportal.prompts import box_from_ras_corners, box_prompt_params, check_box
    from aiportal.segmentation import shape_kji

    params = dict(request.params)
    boxes = [check_box(box, shape_kji(volume_node), request.input_label or str(request.input_path))
             for box in request.boxes]
    boxes += [box_from_ras_corners(volume_node, box[:3], box[3:]) for box in request.boxes_ras]
    return params | box_prompt_params(boxes, request.box_labels)


def _check_measurable(loaded, label: str, options: ExportOptions) -> None:
    """Refuse statistics and surfaces on unevenly spaced slices kept as acquired (they would be wrong)."""
    from aiportal.errors import InputError

    measured = [fmt for fmt in options.formats if fmt in ("json", "csv", "sr", "stl", "obj")]
    if not loaded.measurable and measured:
        raise InputError(
            f"{label} has unevenly spaced slices, and the acquired geometry places them at the mean step, so the "
            f"{', '.join(measured)} output(s) would have wrong volumes and distances",
            "drop --acquired-geometry (the default resamples onto a regular grid), or export only --formats nrrd",
        )


def run_segmentation(request: PipelineRequest, progress: ProgressCallback = no_progress,
                     cancelled: Callable[[], bool] = lambda: False, runtime=None) -> PipelineResult:
    """Load, segment, audit and export; raises AIPortalError (or CancelledError) with the reason."""
    from aiportal.audit import AuditLog, ai_run_fields
    from aiportal.export.exporter import check_export_possible, export_to_folder
    from aiportal.io.volumes import ijk_to_ras_matrix, load_volume
    from aiportal.runtime import build_headless_runtime
    from aiportal.segment import SegmentationJob
    from aiportal.segmentation import segment_voxel_counts
    from aiportal.settings import Settings

    started = time.monotonic()
    label = request.input_label or str(request.input_path)
    own_runtime = runtime is None
    if own_runtime:
        with SCENE_LOCK:
            runtime = build_headless_runtime()
    try:
        progress(0.0, f"loading {label}")
        with SCENE_LOCK:
            loaded = load_volume(request.input_path, runtime, series_uid=request.series_uid, nan_as=request.nan_as,
                                 geometry=request.geometry)  # type: ignore[arg-type]
            _check_measurable(loaded, label, request.options)
            check_export_possible(loaded.source, loaded.node, request.options)  # before a model that may run long
            modality = loaded.source.modality if loaded.source else None
            job = SegmentationJob(loaded.node, request.model_id, params=_model_params(request, loaded.node),
                                  device=request.device, input_name=label, modality=modality, runtime=runtime,
                                  executor=request.executor, timeout_s=request.timeout_s)  # type: ignore[arg-type]
        model_progress = scaled(progress, 0.02, 0.8)
        job.start()
        last = None
        try:
            while (status := job.wait(0.1)).state == "running":
                if cancelled():
                    job.cancel()
                if (status.fraction, status.stage) != last:
                    last = (status.fraction, status.stage)
                    model_progress(status.fraction, status.stage)
        except KeyboardInterrupt:  # Ctrl-C in a terminal: stop the model's process tree, then report it
            job.cancel()
            job.wait()
            raise CancelledError(f"{request.model_id} on {label}") from None
        if cancelled() and status.state != "done":
            raise CancelledError(f"{request.model_id} on {label}")
        with SCENE_LOCK:
            result = job.finish()
            node = result.segmentation_node
            # |det|, not the product of the column norms: a tilted stack kept as acquired has a
            # non-orthogonal IJK→RAS whose k column is longer than the slice spacing
            voxel_ml = abs(float(np.linalg.det(ijk_to_ras_matrix(loaded.node)[:3, :3]))) / 1000.0
            segmentation = node.GetSegmentation()
            # None: not measured (unevenly spaced slices kept as acquired have no true voxel size)
            volumes = {segmentation.GetSegment(segment_id).GetName(): round(count * voxel_ml, 3) if loaded.measurable
                       else None for segment_id, count in segment_voxel_counts(node).items()}
        reference = loaded.source.reference() if loaded.source else {}
        provenance = asdict(result.provenance)
        warnings = loaded.warnings + result.notes
        run_record = {"input": label, "source": reference or None, "geometry": loaded.geometry or None,
                      "model": result.model.id,
                      "provenance": provenance, "elapsed_s": round(result.elapsed_s, 3), "volumes_ml": volumes,
                      "absent_labels": result.absent_labels, "warnings": warnings}
        fields = ai_run_fields(result, label, reference)
        AuditLog(Settings.from_environment().audit_log).append(
            "ai_run", **fields | {"user": request.user or fields["user"], "via": request.via})
        if cancelled():
            raise CancelledError(f"{request.model_id} on {label}")
        with SCENE_LOCK:
            exported = export_to_folder(node, loaded.node, loaded.source, request.out_dir, request.options,
                                        overwrite=request.overwrite, modality=modality,
                                        extra_files={"run.json": json.dumps(run_record, indent=2)},
                                        progress=scaled(progress, 0.8, 1.0))
        return PipelineResult(
            run_id=provenance["run_id"], model_id=result.model.id, model_version=result.model.version,
            volumes_ml=volumes, absent_labels=result.absent_labels,
            files=[{"kind": f.kind, "name": f.name, "sop_instance_uid": f.sop_instance_uid,
                    "series_uid": f.series_uid} for f in exported.files],
            notes=loaded.warnings + result.notes + exported.notes, elapsed_s=round(time.monotonic() - started, 3),
            model_elapsed_s=round(result.elapsed_s, 3),
            study_uid=reference.get("study_uid", ""), series_uid=reference.get("series_uid", ""),
            geometry=loaded.geometry, warnings=warnings)
    finally:
        if own_runtime:
            with SCENE_LOCK:
                runtime.scene.Clear(1)
