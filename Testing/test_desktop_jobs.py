"""The desktop's background jobs on the real Slicer core scene: what the modules' timers drive.

Closing the scene cancels a running job (a model's whole process tree) and its result is applied
nowhere; quitting waits until every model process is gone; workers read private copies of the
nodes, never the scene's; the slow model-environment probe runs on the worker thread.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from processes import alive, gone_within, wait_for_pids

from aiportal.background import FunctionJob
from aiportal.desktop_jobs import JobFollower, desktop_jobs
from aiportal.errors import cli_command
from aiportal.models.catalog import BackendRef, Catalog

TESTING = Path(__file__).resolve().parent


@pytest.fixture
def test_backends(monkeypatch):
    """A catalog whose test model runs the backends of runner_backends.py in real child processes."""
    from runner_backends import ENTRY

    monkeypatch.setenv("PYTHONPATH", str(TESTING))  # the child finds aiportal by itself
    catalogs = {}
    for name in ("SleepyBackend", "ThresholdBackend"):
        catalogs[name] = Catalog()
        catalogs[name].register(ENTRY, BackendRef(f"runner_backends:{name}"))
    return catalogs


@functools.cache
def small_phantom():
    from aiportal.sample import make_ct_phantom

    return make_ct_phantom(shape=(24, 64, 64), spacing=(8.0, 5.0, 5.0))


def phantom_node(scene):
    """The project's CT phantom (small) as a volume node of ``scene``."""
    from aiportal.io.volumes import volume_node_from_array

    node = volume_node_from_array(scene, small_phantom().hu, small_phantom().ijk_to_ras, "phantom")
    node.SetAttribute("DICOM.Modality", "CT")
    return node


@pytest.fixture
def phantom_volume(runtime):
    return phantom_node(runtime.scene)


def _started_sleepy_job(runtime, volume, catalog, pid_file: Path):
    from aiportal.segment import SegmentationJob

    job = SegmentationJob(volume, "test-threshold", params={"pid_file": str(pid_file)}, runtime=runtime,
                          catalog=catalog)
    job.start()
    pids = wait_for_pids(pid_file)
    assert all(map(alive, pids))
    return job, pids


def test_closing_the_scene_cancels_the_model_and_applies_nothing(runtime, phantom_volume, test_backends, tmp_path,
                                                                 monkeypatch):
    import aiportal.models.envs as envs

    probed_on = []
    python_for = envs.python_for

    def recording_python_for(name):  # finding a model environment may import torch in a child (up to 120 s)
        probed_on.append(threading.current_thread())
        return python_for(name)

    monkeypatch.setattr(envs, "python_for", recording_python_for)
    jobs = desktop_jobs(runtime.scene)
    job, pids = _started_sleepy_job(runtime, phantom_volume, test_backends["SleepyBackend"], tmp_path / "pids")
    assert probed_on and threading.main_thread() not in probed_on  # the probe ran on the job's worker thread
    outcome = []
    follower = JobFollower(job, jobs, lambda *_: None, lambda result, error: outcome.append((result, error)))
    assert follower.poll() and not outcome  # running

    runtime.scene.Clear(0)  # File > Close scene
    assert job.wait(10).state == "cancelled"
    assert gone_within(pids, 2.0), "a process of the cancelled run is still there"
    assert not follower.poll() and outcome == [(None, None)]
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_a_result_made_for_a_closed_scene_lands_in_no_scene(runtime, phantom_volume, test_backends):
    from aiportal.segment import SegmentationJob

    jobs = desktop_jobs(runtime.scene)
    job = SegmentationJob(phantom_volume, "test-threshold", runtime=runtime, catalog=test_backends["ThresholdBackend"],
                          executor="thread")
    job.start()
    outcome = []
    follower = JobFollower(job, jobs, lambda *_: None, lambda result, error: outcome.append((result, error)))
    assert job.wait(60).state == "done"  # finished, but its timer tick comes after the scene was closed
    runtime.scene.Clear(0)
    assert not follower.poll() and outcome == [(None, None)]
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0

    # the same job shape in an open scene is applied, once
    job = SegmentationJob(phantom_node(runtime.scene), "test-threshold", runtime=runtime,
                          catalog=test_backends["ThresholdBackend"], executor="thread")
    job.start()
    follower = JobFollower(job, jobs, lambda *_: None, lambda result, error: outcome.append((result, error)))
    while follower.poll():
        time.sleep(0.05)
    assert outcome[-1][1] is None and outcome[-1][0].segmentation_node.GetScene() is runtime.scene
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_quitting_waits_until_every_model_process_is_gone(runtime, phantom_volume, test_backends, tmp_path):
    jobs = desktop_jobs(runtime.scene)
    job, pids = _started_sleepy_job(runtime, phantom_volume, test_backends["SleepyBackend"], tmp_path / "pids")
    jobs.track(job)
    jobs.application_quitting()  # what aboutToQuit() calls in the modules
    assert job.poll().state == "cancelled" and not jobs.running()
    assert gone_within(pids, 0.5), "quitting returned while a model process was still running"


def test_registration_reads_copies_made_when_the_job_is_made(runtime, phantom_volume):
    """The scene's moving volume is changed while the job waits to run: the worker never sees it."""
    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, volume_node_from_array
    from aiportal.register.job import RegistrationJob

    motion = np.eye(4)
    motion[:3, 3] = (6.0, -4.0, 0.0)  # a known shift in the moving volume's header
    moving = volume_node_from_array(runtime.scene, array_from_volume(phantom_volume),
                                    motion @ ijk_to_ras_matrix(phantom_volume), "moved")
    job = RegistrationJob(phantom_volume, moving, kind="rigid", levels=2)
    moving.GetImageData().GetPointData().GetScalars().Fill(0)  # the scene's node changes (e.g. an edit)
    moving.Modified()
    transform_node, result = job.run(runtime=runtime, fusion_mode=None)
    assert np.abs(result.matrix_ras @ motion - np.eye(4))[:3, 3].max() < 1.0
    assert moving.GetTransformNodeID() == transform_node.GetID()


def test_export_job_writes_what_the_direct_export_writes_and_leaves_the_scene_alone(runtime, phantom_volume,
                                                                                    tmp_path):
    import json

    from aiportal.export.exporter import ExportOptions, export_to_folder
    from aiportal.export.job import ExportJob
    from aiportal.segment import SegmentationJob

    result = SegmentationJob(phantom_volume, "classic-ct", runtime=runtime, executor="thread").run()
    node = result.segmentation_node
    nodes_before = runtime.scene.GetNumberOfNodes()
    options = ExportOptions(formats=("nrrd", "json", "stl"))
    job = ExportJob(node, phantom_volume, [], tmp_path / "job", options)
    job.start()
    assert runtime.scene.GetNumberOfNodes() == nodes_before  # the worker's nodes live in a scene of their own
    job.wait()
    exported = job.finish()
    assert runtime.scene.GetNumberOfNodes() == nodes_before
    direct = export_to_folder(node, phantom_volume, None, tmp_path / "direct", options)
    assert sorted(f.name for f in exported.files) == sorted(f.name for f in direct.files)
    in_job = json.loads((tmp_path / "job" / "segments.json").read_text())
    in_place = json.loads((tmp_path / "direct" / "segments.json").read_text())
    assert in_job["statistics"] == in_place["statistics"] and len(in_job["segments"]) == len(in_place["segments"])


def test_measure_compare_and_report_jobs_match_the_direct_calls(runtime, phantom_volume, tmp_path):
    from aiportal.measure.followup import compare_studies
    from aiportal.measure.jobs import compare_job, measure_job, save_report_job
    from aiportal.measure.report import measure_segmentation
    from aiportal.segment import SegmentationJob

    node = SegmentationJob(phantom_volume, "classic-ct", runtime=runtime, executor="thread").run().segmentation_node
    measurements, skipped = measure_job(node, phantom_volume).run()
    direct, direct_skipped = measure_segmentation(node, phantom_volume)
    assert [m.long_axis_mm for m in measurements] == [m.long_axis_mm for m in direct] and measurements
    assert skipped == direct_skipped
    follow_up = compare_job(node, phantom_volume, node, phantom_volume).run()
    direct_follow_up = compare_studies(node, phantom_volume, node, phantom_volume)
    assert follow_up.current_sum_mm == direct_follow_up.current_sum_mm
    assert follow_up.assessment == direct_follow_up.assessment
    written = save_report_job(tmp_path, measurements, skipped, follow_up, node, phantom_volume).run()
    assert {"measurements.csv", "measurements.json"} <= {Path(path).name for path in written}
    assert all(Path(path).is_file() for path in written)


def test_a_function_job_reports_failure_through_the_follower(runtime):
    outcome = []

    def unreachable(progress, cancel):
        raise ConnectionError("AI server https://nowhere cannot be reached")

    job = FunctionJob(unreachable, "connecting")
    job.start()
    follower = JobFollower(job, desktop_jobs(runtime.scene), lambda *_: None, lambda *args: outcome.append(args))
    job.wait(10)
    assert not follower.poll() and outcome == [(None, "AI server https://nowhere cannot be reached")]


def test_fix_texts_name_the_command_that_works_where_they_are_read(monkeypatch):
    import aiportal.models.envs as envs
    from aiportal.errors import IN_SLICER_ENV, ModelError

    monkeypatch.delenv(IN_SLICER_ENV, raising=False)
    assert cli_command("models setup litemedsam") == "aiportal models setup litemedsam"
    monkeypatch.setenv(IN_SLICER_ENV, "1")  # a Slicer session, or a model process it started
    assert cli_command("models setup litemedsam") == "PythonSlicer -m aiportal.cli models setup litemedsam"
    monkeypatch.setenv("AIPORTAL_ENVS_DIR", "/nonexistent")
    monkeypatch.setattr(envs, "_imports", lambda python, module: False)
    monkeypatch.delenv("AIPORTAL_PYTHON_LITEMEDSAM", raising=False)
    with pytest.raises(ModelError, match=r"`PythonSlicer -m aiportal.cli models setup litemedsam`"):
        envs.python_for("litemedsam")


def test_a_cancelled_export_writes_nothing(runtime, phantom_volume, tmp_path):
    from aiportal.export.exporter import ExportOptions
    from aiportal.export.job import ExportJob
    from aiportal.segment import SegmentationJob

    node = SegmentationJob(phantom_volume, "classic-ct", runtime=runtime, executor="thread").run().segmentation_node
    job = ExportJob(node, phantom_volume, [], tmp_path / "out", ExportOptions(formats=("nrrd", "json", "stl")))
    job.cancel()  # the user pressed "Cancel export" (or closed the scene) before its first step
    job.start()
    assert job.wait(60).state == "cancelled"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging folder left
