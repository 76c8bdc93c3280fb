"""Ctrl-C or SIGTERM during a model run, and an unwritable --out (issue 18): the CLI stops its
child processes, leaves no image data in the temporary folder, and says one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import gone_within, wait_for_pids

TESTING = Path(__file__).resolve().parent
CT = "totalseg/example_ct_sm.nii.gz"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_no_image_and_no_process(shared_data, tmp_path, sig):
    temp = tmp_path / "tmp"
    temp.mkdir()
    pid_file = tmp_path / "pids"
    env = dict(os.environ, TMPDIR=str(temp), PYTHONPATH=os.pathsep.join([str(TESTING.parent), str(TESTING)]))
    cli = subprocess.Popen([sys.executable, str(TESTING / "interrupt_driver.py"), "segment",
                            str(shared_data / CT), "--model", "test-threshold", "--out", str(tmp_path / "out"),
                            "--param", f"pid_file={pid_file}"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        child, grandchild = wait_for_pids(pid_file)
        assert list(temp.glob("aiportal-run-*/input.npy")), "the run did not put its input where expected"
        cli.send_signal(sig)  # a terminal's Ctrl-C reaches the CLI's process group; the child has its own
        stopped_at = time.monotonic()
        _, err = cli.communicate(timeout=30)
        assert gone_within((child, grandchild), max(0.1, 2.0 - (time.monotonic() - stopped_at))), \
            "a process of the interrupted run outlived it by 2 s"
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("aiportal:")] == [
        f"aiportal: Cancelled test-threshold on {shared_data / CT}"], err
    assert [path.relative_to(temp) for path in temp.rglob("*")] == []  # nothing left, image data least of all


def test_an_unwritable_out_is_one_line_naming_it(shared_data, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")  # (tests run as root: permissions would not stop it)
    env = dict(os.environ, PYTHONPATH=str(TESTING.parent))
    for out in (tmp_path / "a-file" / "results", tmp_path / "a-file"):
        done = subprocess.run([sys.executable, "-m", "aiportal.cli", "segment", str(shared_data / CT),
                               "--model", "classic-ct", "--out", str(out)], capture_output=True, text=True,
                              env=env, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.startswith("aiportal:")]  # after the progress
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert "internal error" not in lines[0] and str(out.parent) in lines[0] and "--out" in lines[0], lines[0]


def test_a_killed_runner_takes_its_model_child_along(shared_data, tmp_path):
    """kill -9 of the process running the model (as a Celery pool child lost to SIGKILL or the OOM
    killer): no cleanup code runs in it, yet the model child and its own child die within 2 s."""
    pid_file = tmp_path / "pids"
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=os.pathsep.join([str(TESTING.parent), str(TESTING)]))
    cli = subprocess.Popen([sys.executable, str(TESTING / "interrupt_driver.py"), "segment",
                            str(shared_data / CT), "--model", "test-threshold", "--out", str(tmp_path / "out"),
                            "--param", f"pid_file={pid_file}"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        child, grandchild = wait_for_pids(pid_file)
        cli.kill()
        cli.wait(timeout=30)
        assert gone_within((child, grandchild), 2.0), "the model child outlived its killed runner by 2 s"
        assert not list(tmp_path.glob("aiportal-run-*")), "the killed run left its image copy"
    finally:
        if cli.poll() is None:
            cli.kill()
