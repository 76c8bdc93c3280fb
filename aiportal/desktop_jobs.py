"""The desktop's running jobs, tied to the scene they were started for.

A desktop job (segmentation, registration, export, measurement, a server check) computes in a
worker thread or a child process; its result is applied on the main thread when a timer polls it.
Three rules keep a job from outliving its scene:

- closing the scene cancels every job started for it (a segmentation's child process tree is
  killed) and bumps the scene's *generation*: a result of an older generation is never applied;
- quitting the application cancels every job and waits until it has stopped, so no model process
  (started in a session of its own) is left running;
- MRML is read before the job starts and written in ``finish``, both on the main thread.

GUI-free: the modules drive :meth:`JobFollower.poll` from a ``qt.QTimer`` and call
:func:`desktop_jobs` with ``slicer.mrmlScene``; the tests use a headless scene.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from aiportal.background import BackgroundJob

logger = logging.getLogger(__name__)

#: How long quitting waits for a cancelled job (a child process tree is killed within 2 s).
QUIT_WAIT_S = 10.0


class SceneJobs:
    """Every job started for one MRML scene; observes the scene's close to cancel them."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.generation = 0
        self._jobs: list[Any] = []
        self._lock = threading.Lock()
        self._observer = scene.AddObserver(scene.StartCloseEvent, self._on_scene_closing)

    def track(self, job) -> int:
        """Remember a started job; returns the scene generation it belongs to."""
        with self._lock:
            self._jobs = [known for known in self._jobs if _running(known)] + [job]
            return self.generation

    def is_current(self, generation: int) -> bool:
        """False once the scene the job was started for has been closed."""
        return generation == self.generation

    def running(self) -> list:
        with self._lock:
            return [job for job in self._jobs if _running(job)]

    def cancel_all(self, wait_s: float | None = 0.0) -> None:
        """Cancel every running job; with ``wait_s`` > 0 wait (each) until it has stopped."""
        jobs = self.running()
        for job in jobs:
            job.cancel()
        if wait_s:
            for job in jobs:
                job.wait(wait_s)

    def _on_scene_closing(self, caller=None, event=None) -> None:
        self.generation += 1
        self.cancel_all()

    def application_quitting(self) -> None:
        """Cancel every job and wait for it: no model process may survive the application."""
        self.generation += 1
        self.cancel_all(QUIT_WAIT_S)

    def close(self) -> None:
        self.scene.RemoveObserver(self._observer)


def _running(job) -> bool:
    return job.poll().state in ("queued", "running")


_registries: dict[int, SceneJobs] = {}


def desktop_jobs(scene) -> SceneJobs:
    """The one registry of the jobs of ``scene`` (shared by every module and the 3D-view button)."""
    key = id(scene)
    registry = _registries.get(key)
    if registry is None or registry.scene is not scene:
        registry = _registries[key] = SceneJobs(scene)
    return registry


class JobFollower:
    """Follows one job from the main thread: progress, then its result applied once, or nothing.

    ``finish(job)`` (default ``job.finish()``) turns the computed value into scene objects; it is
    called only when the job is done and its scene was not closed meanwhile. ``on_done(result,
    error)``: the result on success, the error text on failure, both None when cancelled or stale.
    """

    def __init__(self, job: BackgroundJob, jobs: SceneJobs, on_progress: Callable[[float, str], None],
                 on_done: Callable[[Any, str | None], None],
                 finish: Callable[[Any], Any] | None = None) -> None:
        self.job, self.jobs = job, jobs
        self.generation = jobs.track(job)
        self._on_progress, self._on_done = on_progress, on_done
        self._finish = finish or (lambda started: started.finish())
        self.done = False
        self._timer = None

    @property
    def running(self) -> bool:
        return not self.done

    def cancel(self) -> None:
        """Ask the job to stop; on_done(None, None) follows once it has."""
        self.job.cancel()

    def drive(self, timer, interval_ms: int = 100) -> JobFollower:
        """Poll from ``timer`` (the modules pass a ``qt.QTimer``): started now, stopped once the job was handled."""
        self._timer = timer
        timer.setInterval(interval_ms)
        timer.connect("timeout()", self._tick)
        timer.start()
        return self

    def _tick(self) -> None:
        if not self.poll():
            self._timer.stop()

    def poll(self) -> bool:
        """One timer tick; True while the job runs (keep polling), False once it was handled."""
        if self.done:
            return False
        status = self.job.poll()
        if status.state in ("queued", "running") and self.jobs.is_current(self.generation):
            self._on_progress(status.fraction, status.stage)
            return True
        if status.state in ("queued", "running"):
            self.job.cancel()  # its scene is gone: stop it, apply nothing
        self.done = True
        if status.state not in ("done", "failed") or not self.jobs.is_current(self.generation):
            self._on_done(None, None)  # cancelled, or made for a scene that was closed
            return False
        try:
            result = self._finish(self.job)  # re-raises the worker's error (with its traceback) when failed
        except Exception as error:  # shown to the user by on_done
            logger.exception("desktop job failed")
            self._on_done(None, str(error) or type(error).__name__)
            return False
        self._on_done(result, None)
        return False


def follow(job, scene, timer, on_progress: Callable[[float, str], None], on_done: Callable[[Any, str | None], None],
           finish: Callable[[Any], Any] | None = None, interval_ms: int = 100) -> JobFollower:
    """Follow a started ``job`` of ``scene`` from ``timer`` (a ``qt.QTimer`` in the modules)."""
    return JobFollower(job, desktop_jobs(scene), on_progress, on_done, finish).drive(timer, interval_ms)
