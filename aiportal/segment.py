"""AI Segment as a job: the one entry point every face uses to segment a volume.

The model computes on a snapshot of the voxels in a child process started by
:class:`~aiportal.models.runner.ChildRunner` with the model environment's Python (isolated from
Slicer's packages; cancel and time-out kill it), watched by a worker thread; the segmentation
node is created on the caller's thread by :meth:`SegmentationJob.finish`. A GUI polls
:meth:`SegmentationJob.poll` from a timer; a batch caller uses :meth:`SegmentationJob.run`::

    job = SegmentationJob(volume_node, "classic-ct")
    result = job.run(progress=lambda fraction, stage: print(f"{fraction:.0%} {stage}"))
    result.segmentation_node   # segments with terminology, colours and provenance
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aiportal.background import BackgroundJob, JobState, JobStatus  # noqa: F401 - JobStatus is part of this API
from aiportal.errors import AIPortalError, InputError
from aiportal.io.finite import refuse_non_finite_in_scene
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import Catalog, ModelEntry, get_catalog
from aiportal.models.devices import DEVICES, check_device, resolve_device  # noqa: F401 - DEVICES is part of this API
from aiportal.progress import ProgressCallback, no_progress
from aiportal.provenance import Provenance, now_iso
from aiportal.runtime import SlicerRuntime, get_runtime
from aiportal.segmentation import import_label_map, label_value, segment_ids

Executor = Literal["process", "thread"]  # "thread": in this process, for debugging and pure-numpy models


@dataclass
class SegmentationResult:
    segmentation_node: Any  # vtkMRMLSegmentationNode
    model: ModelEntry
    provenance: Provenance
    elapsed_s: float
    absent_labels: list[str] = field(default_factory=list)  # labels the model found nowhere
    notes: list[str] = field(default_factory=list)


def _volume_snapshot(volume_node) -> tuple[np.ndarray, np.ndarray]:
    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix

    return array_from_volume(volume_node), ijk_to_ras_matrix(volume_node)


def _transform_notes(volume_node) -> list[str]:
    """The model sees a volume's voxels before any parent transform: say so when there is one (Slicer's
    DICOM module puts a gantry-tilted or unevenly spaced series under an acquisition-geometry transform)."""
    transform = volume_node.GetParentTransformNode()
    if transform is None:
        return []
    return [f"{volume_node.GetName()} is under transform {transform.GetName()}: the model ran on its voxels before "
            "that transform (for a gantry-tilted or unevenly spaced DICOM series: as stacked, not where they were "
            "acquired); harden the transform first (Data module), or load the series with the portal's loader, "
            "which resamples it onto a regular grid"]


class SegmentationJob(BackgroundJob):
    """One model run on one volume: start, poll, cancel, finish — or run to completion."""

    def __init__(
        self,
        volume_node,
        model_id: str = "classic-ct",
        *,
        params: dict[str, Any] | None = None,
        device: str = "auto",
        segmentation_node=None,
        modality: str | None = None,
        input_name: str | None = None,
        runtime: SlicerRuntime | None = None,
        catalog: Catalog | None = None,
        executor: Executor = "process",
        timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        if volume_node is None or volume_node.GetImageData() is None:
            raise AIPortalError("No input volume with image data", "select or load a CT/MR volume first")
        self.runtime = runtime or get_runtime()
        catalog = catalog or get_catalog()
        self.model = catalog.get(model_id)
        _check_dimensions(volume_node, self.model, input_name or volume_node.GetName())
        refuse_non_finite_in_scene(volume_node, input_name or volume_node.GetName())  # a volume Slicer loaded
        self._backend_ref = catalog.backend_ref(model_id)
        self.executor, self.timeout_s = executor, timeout_s
        self.requested_device = check_device(device)
        self.notes: list[str] = []
        from aiportal.models.envs import python_for

        # Finding a model environment's Python may import torch in a child (seconds): the worker thread
        # does it for a process run, so a desktop's main thread never waits for it.
        self._python = python_for(self.model.environment) if executor == "thread" else None
        if executor == "thread" and self._python != sys.executable:
            self.executor = "process"  # its libraries live in another environment: only a child can import them
        if self.executor == "process":
            self.device = device  # the child resolves "auto" and reports the device it used
        else:
            self.device, device_note = resolve_device(device, self.model.devices)
            self.notes += [device_note] if device_note else []
        self.params = dict(params or {})
        self.notes += _transform_notes(volume_node)
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        array, ijk_to_ras = _volume_snapshot(volume_node)
        self._input = ModelInput(
            array=array,
            ijk_to_ras=ijk_to_ras,
            modality=modality or volume_node.GetAttribute("DICOM.Modality") or None,
            name=input_name or volume_node.GetName(),
        )
        self._started = self._finished = ""
        self._t0 = 0.0

    def _compute(self) -> LabelMapResult:
        try:
            return self._run_model()
        finally:
            self._finished = now_iso()

    def _run_model(self) -> LabelMapResult:
        if self.executor == "thread":
            backend = self._backend_ref.build()
            return backend.run(self._input, dict(self.params, device=self.device), self._report, self._cancel)
        from aiportal.models.envs import python_for
        from aiportal.models.runner import ChildRun, ChildRunner

        report = ChildRun()
        self._python = self._python or python_for(self.model.environment)
        try:
            return ChildRunner(python=self._python, timeout_s=self.timeout_s).run(
                self._backend_ref, self._input, self.params, self._report, self._cancel, model_id=self.model.id,
                device=self.requested_device, devices=self.model.devices,
                memory_bytes=int(self.model.memory_gb * 2**30), report=report)
        finally:
            self.device = report.device
            self.notes += report.notes

    def start(self) -> None:
        """Start the model (a child process watched by a worker thread); returns at once."""
        self._started, self._t0 = now_iso(), time.monotonic()
        super().start(f"starting {self.model.id}")

    def finish(self) -> SegmentationResult:
        """Create the segmentation from the finished run (call on the scene's thread)."""
        computed: LabelMapResult = self._computed()
        self.notes += [w for w in computed.warnings if w not in self.notes]  # the model's own doubts, loud
        provenance = Provenance(
            model_id=self.model.id,
            model_version=self.model.version,
            weights_sha256=self.model.weights_sha256 or "none",
            parameters=self.params,
            device=self.device,
            started=self._started,
            finished=self._finished,
        )
        node = import_label_map(
            computed,
            self.model.labels,
            self.volume_node,
            provenance,
            segmentation_node=self.segmentation_node,
            runtime=self.runtime,
        )
        segmentation = node.GetSegmentation()
        present = {label_value(segmentation.GetSegment(segment_id)) for segment_id in segment_ids(node)}
        absent = [label.name for label in self.model.labels if label.value not in present]
        return SegmentationResult(node, self.model, provenance, time.monotonic() - self._t0, absent, self.notes)

    def run(self, progress: ProgressCallback = no_progress, poll_interval: float = 0.05) -> SegmentationResult:
        """Run to completion, reporting progress on the calling thread; Ctrl-C cancels."""
        return super().run(progress, poll_interval)


def show_segmentation_3d(segmentation_node, show: bool = True) -> None:
    """Show (building the closed surfaces first) or hide a segmentation in 3D views."""
    if show:
        segmentation_node.CreateClosedSurfaceRepresentation()
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(show)


MIN_SLICES_3D = 3  # a 3D model's neighbourhood (3x3x3 kernels, morphology, sliding windows) needs at least this


def _check_dimensions(volume_node, model: ModelEntry, label: str) -> None:
    """A 3D model given one or two slices makes a 3D answer of no meaning (a "body" of 73 mL from the two
    lungmask slices): refused, unless the catalog says the model works slice by slice."""
    dimensions = volume_node.GetImageData().GetDimensions()
    thin = [size for size in dimensions if size < MIN_SLICES_3D]
    if not thin or (model.single_slice and len(thin) == 1):
        return
    shape = " x ".join(str(size) for size in dimensions)
    what = "a single 2D slice" if min(dimensions) == 1 else f"only {min(dimensions)} slices"
    raise InputError(f"{label} is {what} ({shape} voxels) but {model.id} is a 3D model that needs at least "
                     f"{MIN_SLICES_3D} slices", "give the whole series (all its slices: the DICOM folder or the "
                     "3D file), or a model that works slice by slice")
