"""`aiportal doctor`: every line ok / PROBLEM with the fix, on this machine and on GPU set-ups it cannot have.

The GPU cases run the doctor's real torch probe command against stand-in interpreters that answer what
torch says on such machines (no GPU here): a CPU build beside an NVIDIA driver, a GPU newer than torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiportal.weights.doctor import torch_findings

REPO = Path(__file__).resolve().parent.parent


def fake_python(folder: Path, answer: dict | None) -> str:
    """An executable that answers the torch probe like a Python whose torch reports ``answer`` (None: no torch)."""
    script = folder / "python"
    body = f"echo '{json.dumps(answer)}'" if answer is not None else "echo 'No module named torch' >&2; exit 1"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(os.name == "nt", reason="shell stand-in interpreters")
def test_torch_and_gpu_findings(tmp_path):
    (none,) = torch_findings("x", fake_python(tmp_path, None), None)
    assert none.ok and "no torch here" in none.detail
    cpu_build = {"torch": "2.5.1+cpu", "cuda_build": None, "cuda": False}
    (cpu,) = torch_findings("torch", fake_python(tmp_path, cpu_build), "NVIDIA H100, 550.54")
    assert not cpu.ok and "sees no GPU, but the machine has NVIDIA H100" in cpu.detail
    assert "pip install torch --index-url https://download.pytorch.org/whl/cu" in cpu.fix
    (laptop,) = torch_findings("torch", fake_python(tmp_path, cpu_build), None)
    assert laptop.ok and "models run on the CPU" in laptop.detail
    too_new = {"torch": "2.3.0", "cuda_build": "12.1", "cuda": True, "gpu": "NVIDIA RTX 5090", "capability": "sm_120",
               "memory_gb": 32.0, "arch_list": ["sm_50", "sm_80", "sm_90"]}
    seen, problem = torch_findings("torch", fake_python(tmp_path, too_new), "NVIDIA RTX 5090, 570.1")
    assert seen.ok and "GPU NVIDIA RTX 5090 sm_120, 32 GiB; driver NVIDIA RTX 5090, 570.1" in seen.detail
    assert not problem.ok and "built for sm_50, sm_80, sm_90, not for this GPU's sm_120" in problem.detail
    fits = dict(too_new, arch_list=["sm_80", "sm_90", "sm_120"])
    assert [f.ok for f in torch_findings("torch", fake_python(tmp_path, fits), None)] == [True]


def test_doctor_on_this_machine(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIPORTAL_WEIGHTS_DIR": str(tmp_path / "weights"),
           "TOTALSEG_HOME_DIR": str(tmp_path / "totalseg")}
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "doctor", "--json"], capture_output=True, text=True,
                          env=env, timeout=300)
    findings = {f["topic"]: f for f in json.loads(done.stdout)}
    assert findings["python"]["ok"] and findings["env main"]["ok"] and "disk (weights)" in findings
    assert "GiB available" in findings["memory"]["detail"]
    totalseg = findings["TotalSegmentator"]
    assert not totalseg["ok"] and totalseg["detail"].startswith("0 of 14 tasks have weights")
    assert "models install totalseg-total-fast" in totalseg["fix"]
    assert done.returncode == 1  # a problem: the exit code says so
    text = subprocess.run([sys.executable, "-m", "aiportal.cli", "doctor", "--quick"], capture_output=True, text=True,
                          env=env, timeout=300).stdout
    assert "PROBLEM TotalSegmentator" in text and "fix: `aiportal models install totalseg-total-fast`" in text
