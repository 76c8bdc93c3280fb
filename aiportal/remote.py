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
import threading
import time
from pathlib import Path
from typing import Any

from aiportal.errors import AIPortalError, CancelledError, ModelError
from aiportal.progress import CancelToken, ProgressCallback, no_progress
from aiportal.segment import JobStatus, SegmentationResult

CONSENT_FIX = ("confirm that this image may be sent to the server (the desktop asks once), or run the model "
               "on this computer")


class RemoteSegmentationJob:
    """One model run on the inference server for one volume of this scene."""

    def __init__(self, volume_node, model_id: str, client, *, consent: bool, params: dict[str, Any] | None = None,
                 deidentify: bool = False, runtime=None, timeout_s: float | None = None) -> None:
        from aiportal.runtime import get_runtime

        if volume_node is None or volume_node.GetImageData() is None:
            raise AIPortalError("No input volume with image data", "select or load a CT/MR volume first")
        if not consent:
            raise AIPortalError(f"Sending {volume_node.GetName()} to {client.base_url} needs consent", CONSENT_FIX)
        self.runtime = runtime or get_runtime()
        self.volume_node, self.model_id, self.client = volume_node, model_id, client
        self.params, self.deidentify, self.timeout_s = dict(params or {}), deidentify, timeout_s
        self.notes: list[str] = []
        self._folder = Path(tempfile.mkdtemp(prefix="aiportal-remote-"))
        self._cancel = CancelToken()
        self._lock = threading.Lock()
        self._status = JobStatus("queued", 0.0, "queued")
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._job_id: str | None = None
        self._t0 = 0.0

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._status = JobStatus("running", min(max(fraction, 0.0), 1.0), f"server: {stage}")

    def _work(self, upload: Path) -> None:
        try:
            job = self.client.submit_file(upload, self.model_id, consent=True, params=self.params,
                                          formats="nrrd,json", deidentify=self.deidentify)
            self._job_id = job["id"]
            final = self.client.wait(job["id"], progress=self._report, timeout_s=self.timeout_s, cancel=self._cancel)
            if final["state"] == "cancelled" or self._cancel.cancelled:
                raise CancelledError(f"{self.model_id} on the server")
            if final["state"] != "done":
                raise ModelError(f"The server's {self.model_id} job failed: {final.get('error')}",
                                 final.get("fix") or "see the server's log for the job " + job["id"])
            self.client.download(job["id"], "segmentation.seg.nrrd", self._folder / "segmentation.seg.nrrd")
            with self._lock:
                self._status = JobStatus("done", 1.0, "done")
        except CancelledError as error:
            with self._lock:
                self._error, self._status = error, JobStatus("cancelled", self._status.fraction, "cancelled")
        except BaseException as error:  # reported to the caller by finish()
            with self._lock:
                self._error, self._status = error, JobStatus("failed", self._status.fraction, "failed", str(error))
        finally:
            upload.unlink(missing_ok=True)

    def start(self) -> None:
        """Write the volume to a temporary file (on this thread: it reads the scene) and submit it."""
        from aiportal.io.volumes import save_volume

        if self._thread is not None:
            raise RuntimeError("job already started")
        self._t0 = time.monotonic()
        upload = save_volume(self.volume_node, self._folder / "upload.nrrd")
        self._status = JobStatus("running", 0.0, f"uploading to {self.client.base_url}")
        self._thread = threading.Thread(target=self._work, args=(Path(upload),), daemon=True,
                                        name=f"aiportal-remote-{self.model_id}")
        self._thread.start()

    def poll(self) -> JobStatus:
        with self._lock:
            return self._status

    def cancel(self) -> None:
        """Cancel on the server too (the waiting thread sends the cancel)."""
        self._cancel.cancel()

    def wait(self, timeout: float | None = None) -> JobStatus:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def finish(self) -> SegmentationResult:
        """Load the server's segmentation into the scene (call on the scene's thread)."""
        from aiportal.models.catalog import get_catalog
        from aiportal.provenance import Provenance
        from aiportal.segmentation import load_segmentation, segment_ids

        status = self.wait()
        try:
            if status.state != "done":
                assert self._error is not None
                raise self._error
            node = load_segmentation(self._folder / "segmentation.seg.nrrd", runtime=self.runtime)
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
                                  notes=[*self.notes, f"computed on {self.client.base_url}, job {self._job_id}"])

    def run(self, progress: ProgressCallback = no_progress, poll_interval: float = 0.2) -> SegmentationResult:
        self.start()
        last = None
        while (status := self.wait(poll_interval)).state == "running":
            if (status.fraction, status.stage) != last:
                last = (status.fraction, status.stage)
                progress(status.fraction, status.stage)
        return self.finish()
