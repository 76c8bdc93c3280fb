"""Registration as a background job: the AIRegister panel stays responsive, shows progress, can cancel.

The same start / poll / cancel / finish shape as :class:`aiportal.segment.SegmentationJob`: the
optimisation runs in a worker thread (it only reads the two volumes, which the scene keeps), and
:meth:`RegistrationJob.finish` puts the transform and the fusion review into the scene on the
caller's thread. A cancelled or failed run adds nothing to the scene.
"""

from __future__ import annotations

import threading
from typing import Any

from aiportal.errors import CancelledError
from aiportal.progress import CancelToken
from aiportal.register.registration import RegistrationResult, apply_to_scene, register_volumes
from aiportal.segment import JobStatus


def mask_from_segment(segmentation_node, segment_id: str, volume_node):
    """A registration mask (boolean (k, j, i) array on ``volume_node``'s grid) from a segment."""
    from aiportal.segmentation import segment_mask

    return segment_mask(segmentation_node, segment_id, volume_node)


class RegistrationJob:
    """One registration of ``moving_node`` to ``fixed_node``; ``options`` go to :func:`register_volumes`."""

    def __init__(self, fixed_node, moving_node, **options: Any) -> None:
        self.fixed_node, self.moving_node, self.options = fixed_node, moving_node, options
        self._cancel = CancelToken()
        self._lock = threading.Lock()
        self._status = JobStatus("queued", 0.0, "queued")
        self._result: RegistrationResult | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._status = JobStatus("running", min(max(fraction, 0.0), 1.0), stage)

    def _work(self) -> None:
        try:
            result = register_volumes(self.fixed_node, self.moving_node, progress=self._report, cancel=self._cancel,
                                      **self.options)
            with self._lock:
                self._result, self._status = result, JobStatus("done", 1.0, "done")
        except CancelledError as error:
            with self._lock:
                self._error, self._status = error, JobStatus("cancelled", self._status.fraction, "cancelled")
        except BaseException as error:  # reported by finish()
            with self._lock:
                self._error, self._status = error, JobStatus("failed", self._status.fraction, "failed", str(error))

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("job already started")
        self._status = JobStatus("running", 0.0, "starting")
        self._thread = threading.Thread(target=self._work, name="aiportal-register", daemon=True)
        self._thread.start()

    def poll(self) -> JobStatus:
        with self._lock:
            return self._status

    def cancel(self) -> None:
        """Stop at the optimiser's next iteration; poll() then reports "cancelled"."""
        self._cancel.cancel()

    def wait(self, timeout: float | None = None) -> JobStatus:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def finish(self, runtime, fusion_mode: str | None = "fade"):
        """The transform node (moving under it) and, with ``fusion_mode``, the slice views set for review."""
        from aiportal.register.fusion import show_fusion

        status = self.wait()
        if status.state != "done":
            assert self._error is not None
            raise self._error
        assert self._result is not None
        transform_node = apply_to_scene(runtime, self._result, self.fixed_node, self.moving_node)
        if fusion_mode:
            show_fusion(runtime, self._result, self.fixed_node, self.moving_node, mode=fusion_mode)
        return transform_node, self._result
