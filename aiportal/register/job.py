"""Registration as a background job: the AIRegister panel stays responsive, shows progress, can cancel.

The same start / poll / cancel / finish shape as :class:`aiportal.segment.SegmentationJob`: the
optimisation runs in a worker thread on copies of the two volumes made when the job is created, and
:meth:`RegistrationJob.finish` puts the transform and the fusion review into the scene on the
caller's thread. A cancelled or failed run adds nothing to the scene.
"""

from __future__ import annotations

from typing import Any

from aiportal.background import BackgroundJob
from aiportal.register.registration import RegistrationResult, apply_to_scene, register_volumes
from aiportal.runtime import private_scene_copies


class RegistrationJob(BackgroundJob):
    """One registration of ``moving_node`` to ``fixed_node``; ``options`` go to :func:`register_volumes`."""

    def __init__(self, fixed_node, moving_node, **options: Any) -> None:
        super().__init__()
        self.fixed_node, self.moving_node, self.options = fixed_node, moving_node, options
        # the worker reads private copies made here, on the scene's thread: never the scene's nodes
        self._copies, self._fixed, self._moving = private_scene_copies(fixed_node, moving_node)

    def _compute(self) -> RegistrationResult:
        return register_volumes(self._fixed, self._moving, progress=self._report, cancel=self._cancel,
                                **self.options)

    def finish(self, runtime, fusion_mode: str | None = "fade"):
        """The transform node (moving under it) and, with ``fusion_mode``, the slice views set for review."""
        from aiportal.register.fusion import show_fusion

        result: RegistrationResult = self._computed()
        transform_node = apply_to_scene(runtime, result, self.fixed_node, self.moving_node)
        if fusion_mode:
            show_fusion(runtime, result, self.fixed_node, self.moving_node, mode=fusion_mode)
        return transform_node, result
