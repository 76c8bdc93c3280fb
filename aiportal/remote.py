"""AI Segment on the inference server, with the interface of a local :class:`~aiportal.segment.SegmentationJob`.

``start / poll / cancel / wait / finish / run`` behave the same, so the desktop poller, the browser
workspace and batch code run a model locally or remotely without knowing which. The volume leaves
this computer only with ``consent=True`` (the server refuses uploads without it, too); the result
comes back as the server's seg.nrrd (terminology, colours, provenance tags) and is loaded into the
scene by :meth:`RemoteSegmentationJob.finish`, on the caller's thread.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from aiportal.background import BackgroundJob
from aiportal.errors import AIPortalError, CancelledError, ModelError
from aiportal.segment import SegmentationResult

CONSENT_FIX = ("confirm that this image may be sent to the server (the desktop asks once), or run the model "
               "on this computer")


class RemoteSegmentationJob(BackgroundJob):
    """One model run on the inference server for one volume of this scene."""

    def __init__(self, volume_node, model_id: str, client, *, consent: bool, params: dict[str, Any] | None = None,
                 deidentify: bool = False, runtime=None, timeout_s: float | None = None) -> None:
        from aiportal.runtime import get_runtime

        super().__init__()
        if volume_node is None or volume_node.GetImageData() is None:
            raise AIPortalError("No input volume with image data", "select or load a CT/MR volume first")
        if not consent:
            raise AIPortalError(f"Sending {volume_node.GetName()} to {client.base_url} needs consent", CONSENT_FIX)
        self.runtime = runtime or get_runtime()
        self.volume_node, self.model_id, self.client = volume_node, model_id, client
        self.params, self.deidentify, self.timeout_s = dict(params or {}), deidentify, timeout_s
        self.notes: list[str] = []
        self._folder = Path(tempfile.mkdtemp(prefix="aiportal-remote-"))
        self._upload = self._folder / "upload.nrrd"
        self._job_id: str | None = None
        self._final: dict[str, Any] = {}
        self._t0 = 0.0

    def _report(self, fraction: float, stage: str) -> None:
        super()._report(fraction, f"server: {stage}")

    def _compute(self) -> Path:
        try:
            job = self.client.submit_file(self._upload, self.model_id, consent=True, params=self.params,
                                          formats="nrrd,json", deidentify=self.deidentify)
        finally:
            self._upload.unlink(missing_ok=True)
        self._job_id = job["id"]
        final = self._final = self.client.wait(job["id"], progress=self._report, timeout_s=self.timeout_s,
                                               cancel=self._cancel)
        if final["state"] == "cancelled" or self._cancel.cancelled:
            raise CancelledError(f"{self.model_id} on the server")
        if final["state"] != "done":
            raise ModelError(f"The server's {self.model_id} job failed: {final.get('error')}",
                             final.get("fix") or "see the server's log for the job " + job["id"])
        return self.client.download(job["id"], "segmentation.seg.nrrd", self._folder / "segmentation.seg.nrrd")

    def start(self) -> None:
        """Write the volume to a temporary file (on this thread: it reads the scene), then submit it."""
        from aiportal.io.volumes import save_volume

        self._t0 = time.monotonic()
        save_volume(self.volume_node, self._upload)
        super().start(f"uploading to {self.client.base_url}")

    def finish(self) -> SegmentationResult:
        """Load the server's segmentation into the scene (call on the scene's thread)."""
        from aiportal.models.catalog import get_catalog
        from aiportal.provenance import Provenance
        from aiportal.segmentation import load_segmentation, segment_ids

        try:
            node = load_segmentation(self._computed(), runtime=self.runtime)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        node.SetName(f"{self.volume_node.GetName()} {self.model_id} (server)")
        segmentation = node.GetSegmentation()
        provenance = next((p for p in (Provenance.of_segment(segmentation.GetSegment(s)) for s in segment_ids(node))
                           if p is not None), None)
        if provenance is None:
            raise ModelError(f"The server's result for {self.model_id} carries no provenance",
                             "update the server to the same aiportal version")
        return SegmentationResult(node, get_catalog().get(self.model_id), provenance, time.monotonic() - self._t0,
                                  notes=[*self.notes, *self._final.get("warnings", []),  # the run's, loud here too
                                         f"computed on {self.client.base_url}, job {self._job_id}"])
