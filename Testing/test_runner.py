"""The child-process runner: results, progress from tqdm, cancel that leaves no process, crashes, time-outs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from processes import alive, gone_within, wait_for_pids

from aiportal.errors import CancelledError, InputError, ModelError
from aiportal.models.backend import ModelInput
from aiportal.models.catalog import BackendRef, Catalog
from aiportal.models.runner import ChildRun, ChildRunner
from aiportal.progress import CancelToken

TESTING = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def importable_test_backends(monkeypatch):
    # the child finds aiportal by itself; the test backends live beside this file
    monkeypatch.setenv("PYTHONPATH", str(TESTING))


@pytest.fixture(scope="module")
def ct(shared_data):
    from aiportal.io.volumes import load_volume
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    loaded = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime=runtime)
    yield runtime, loaded.node
    runtime.scene.Clear(1)


def _input(ct) -> ModelInput:
    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix

    node = ct[1]
    return ModelInput(array_from_volume(node)[:8], ijk_to_ras_matrix(node), "CT", "example_ct_sm (8 slices)")


def test_child_result_equals_in_process_result_and_tqdm_is_progress(ct):
    volume = _input(ct)
    events: list[tuple[float, str]] = []
    report = ChildRun()
    result = ChildRunner().run(BackendRef("runner_backends:ThresholdBackend"), volume, {"threshold": 100},
                               lambda f, s: events.append((f, s)), model_id="test-threshold", devices=("cpu",),
                               report=report)
    expected = (volume.array > 100).astype(np.uint8)
    assert np.array_equal(result.layers[0], expected)
    assert result.confidences == {1: 0.5} and result.details == {"device": "cpu"}
    assert report.device == "cpu"
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions), "progress never goes backwards"
    bar_stages = [s for _, s in events if "slices" in s and "%" in s]
    assert bar_stages, f"tqdm bar not turned into progress: {events}"
    assert any(s.startswith("thresholding") for s in bar_stages)
    assert max(fractions) > 0.5


def test_classic_ct_in_a_child_equals_the_in_thread_run(ct):
    from aiportal.segment import SegmentationJob
    from aiportal.segmentation import export_label_map

    runtime, node = ct
    by_process = SegmentationJob(node, "classic-ct", runtime=runtime).run()
    by_thread = SegmentationJob(node, "classic-ct", runtime=runtime, executor="thread").run()
    assert by_process.provenance.device == "cpu"
    a = export_label_map(by_process.segmentation_node, node)
    b = export_label_map(by_thread.segmentation_node, node)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert a[0].any()


def test_cancel_kills_the_whole_process_tree_within_two_seconds_and_imports_nothing(ct, tmp_path):
    from aiportal.segment import SegmentationJob

    runtime, node = ct
    catalog = Catalog()
    from runner_backends import ENTRY

    catalog.register(ENTRY, BackendRef("runner_backends:SleepyBackend"))
    pid_file = tmp_path / "pids"
    segmentations_before = runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    job = SegmentationJob(node, "test-threshold", params={"pid_file": str(pid_file)}, runtime=runtime,
                          catalog=catalog)
    job.start()
    child, grandchild = wait_for_pids(pid_file)
    assert alive(child) and alive(grandchild)
    cancelled_at = time.monotonic()
    job.cancel()
    status = job.wait(10)
    assert status.state == "cancelled"
    remaining = 2.0 - (time.monotonic() - cancelled_at)
    assert gone_within((child, grandchild), remaining), "a process of the cancelled run is still there"
    with pytest.raises(CancelledError):
        job.finish()
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations_before


def test_a_crashing_child_gives_a_clear_error_with_the_tail_of_its_log(ct):
    with pytest.raises(ModelError) as raised:
        ChildRunner().run(BackendRef("runner_backends:CrashingBackend"), _input(ct), {}, model_id="test-crash")
    text = str(raised.value)
    assert "test-crash on example_ct_sm (8 slices) stopped with exit code 3" in text
    assert "CUDA error: out of memory (simulated" in text and "loading weights" in text
    log = Path(text.split("full log: ")[1].split(";")[0])
    assert log.is_file() and "out of memory" in log.read_text()


def test_user_errors_cross_the_process_boundary_unchanged(ct):
    with pytest.raises(InputError, match="is not what this model needs — choose another series"):
        ChildRunner().run(BackendRef("runner_backends:RefusingBackend"), _input(ct), {})


def test_time_out_stops_the_child(ct, tmp_path):
    t0 = time.monotonic()
    # long enough for the child to start its grandchild even on a busy machine
    with pytest.raises(ModelError, match="did not finish within 10 s"):
        ChildRunner(timeout_s=10).run(BackendRef("runner_backends:SleepyBackend"), _input(ct),
                                     {"pid_file": str(tmp_path / "pids")}, model_id="sleepy")
    child, grandchild = map(int, (tmp_path / "pids").read_text().split())
    time.sleep(0.2)
    assert not alive(child) and not alive(grandchild)
    assert time.monotonic() - t0 < 60


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(ct):
    with pytest.raises(ModelError, match=r"needs about .* GiB of memory but .* GiB is free"):
        ChildRunner().run(BackendRef("runner_backends:ThresholdBackend"), _input(ct), {},
                          memory_bytes=1 << 50)


def test_requested_gpu_falls_back_to_cpu_with_a_note_when_none_is_visible(ct):
    torch = pytest.importorskip("torch")
    report = ChildRun()
    result = ChildRunner().run(BackendRef("runner_backends:ThresholdBackend"), _input(ct), {"threshold": 0},
                               device="cuda", devices=("cpu", "cuda"), report=report)
    if torch.cuda.is_available():
        assert report.device == "cuda" and not report.notes
    else:
        assert report.device == "cpu" and result.details["device"] == "cpu"
        assert report.notes and "cuda requested but no CUDA device is visible" in report.notes[0]


def test_cancel_token_checked_while_waiting_for_a_child_from_another_thread(ct, tmp_path):
    cancel = CancelToken()
    outcome: list[BaseException] = []

    def run():
        try:
            ChildRunner().run(BackendRef("runner_backends:SleepyBackend"), _input(ct),
                              {"pid_file": str(tmp_path / "pids")}, cancel=cancel)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    while not (tmp_path / "pids").exists():
        time.sleep(0.05)
    cancel.cancel()
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome[0], CancelledError)


def test_missing_model_environment_says_how_to_create_it(monkeypatch, tmp_path):
    from aiportal.models import envs

    monkeypatch.setenv("AIPORTAL_ENVS_DIR", str(tmp_path))
    monkeypatch.setitem(envs.ENVIRONMENTS, "litemedsam",
                        envs.EnvironmentSpec("litemedsam", ("x",), "module_that_does_not_exist_here", "LiteMedSAM"))
    with pytest.raises(ModelError, match=r"`aiportal models setup litemedsam`"):
        envs.python_for("litemedsam")
    monkeypatch.setenv("AIPORTAL_PYTHON_LITEMEDSAM", "/opt/other/python")
    assert envs.python_for("litemedsam") == "/opt/other/python"
