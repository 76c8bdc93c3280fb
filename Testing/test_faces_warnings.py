"""A run's warnings reach every face: the CLI (local and `--server`), run.json, the server's job, the panels' helpers.

Real processes: `aiportal segment` as a subprocess, the inference server under uvicorn; the input is a real CT
series with slices taken out (a change of slice spacing, resampled onto a regular grid by default: a warning of
issue 14's true-geometry work).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pydicom
import pytest
from server_fixtures import REPO, ApiServer

from aiportal.server.client import ServerClient

EVEN = "totalseg/example_ct_dicom"  # 20 slices, 2 mm


@pytest.fixture(scope="module")
def respaced_series(shared_data, tmp_path_factory):
    """The series with 2 mm then 4 mm slices: the loader resamples it and says so."""
    files = sorted((shared_data / EVEN).iterdir(),
                   key=lambda path: float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
    folder = tmp_path_factory.mktemp("respaced") / "series"
    folder.mkdir()
    for index in [*range(10), 11, 13, 15, 17, 19]:
        shutil.copy(files[index], folder / files[index].name)
    return str(folder)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    api = ApiServer(tmp_path_factory.mktemp("warnings-server"), args=["--executor", "thread", "--workers", "1"])
    key = api.key("cli", "read,submit")
    api.start()
    yield api, key
    api.stop()


def _segment(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "segment", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _warning_lines(stderr: str) -> list[str]:
    return [line[len("warning: "):] for line in stderr.splitlines() if line.startswith("warning: ")]


def test_local_and_server_runs_print_and_record_the_same_warnings(server, respaced_series, tmp_path):
    api, key = server
    series = respaced_series
    local = _segment(series, "--formats", "nrrd,json", "--out", str(tmp_path / "local"))
    recorded = json.loads((tmp_path / "local" / "run.json").read_text())["warnings"]
    assert any(warning.startswith("Resampled from 15 unevenly spaced slices") for warning in recorded), recorded
    assert _warning_lines(local.stderr) == recorded
    count = f"{len(recorded)} warning{'s' if len(recorded) != 1 else ''}"
    assert "segments in " in local.stdout and f", {count}" in local.stdout.splitlines()[0]

    remote = _segment(series, "--formats", "nrrd,json", "--out", str(tmp_path / "remote"), "--server", api.url,
                      "--consent", env={"AIPORTAL_API_KEY": key})
    remote_recorded = json.loads((tmp_path / "remote" / "run.json").read_text())["warnings"]
    assert _warning_lines(remote.stderr) == remote_recorded
    # the server names the input itself ("server job ..."); the warnings say the same otherwise
    assert len(remote_recorded) == len(recorded) and any(w.startswith("Resampled from 15") for w in remote_recorded)
    assert f", {count}" in remote.stdout.splitlines()[0]
    job_id = remote.stdout.split("job ")[-1].split()[0]
    job = ServerClient(api.url, api_key=key).status(job_id)
    assert job["warnings"] == remote_recorded == job["result"]["warnings"]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == sorted(p.name for p in (tmp_path / "local")
                                                                              .iterdir())


def test_server_run_refuses_without_consent_and_what_it_cannot_send(server, respaced_series, tmp_path):
    api, key = server
    series = respaced_series
    for extra, message in ((["--server", api.url], "needs consent"),
                           (["--server", api.url, "--consent", "--box-ras", "0", "0", "0", "1", "1", "1"],
                            "--box-ras needs the volume's geometry")):
        done = subprocess.run([sys.executable, "-m", "aiportal.cli", "segment", series, "--out", str(tmp_path / "x"),
                               *extra], capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "AIPORTAL_API_KEY": key})
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_box_labels_must_match_the_boxes():
    from aiportal.errors import InputError
    from aiportal.prompts import box_labels_for, box_prompt_params

    box = [1, 2, 3, 4, 5, 3]
    assert box_prompt_params([box, box], box_labels_for(2, one_structure=True)) == {
        "boxes": [box, box], "box_labels": [1, 1]}
    assert box_prompt_params([box, box], box_labels_for(2, one_structure=False))["box_labels"] == [1, 2]
    assert box_prompt_params([]) == {}
    with pytest.raises(InputError, match="1 box label"):
        box_prompt_params([box, box], [1])
    with pytest.raises(InputError, match="1 or more"):
        box_prompt_params([box], [0])
