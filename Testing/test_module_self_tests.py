"""The modules' own self-tests, run on Slicer 5.10's and 5.12's Python sources over the slicer-core scene.

See Testing/slicer_self_tests.py for what is real and what is stubbed (qt/ctk, only so files import).
The self-tests call the same aiportal jobs as Testing/test_desktop_jobs.py on the project's phantom.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "slicer-reference"
MODULES = ["AIMeasure", "AIRegister", "AISegmentPortal"]


@pytest.mark.parametrize("version", ["5.10", "5.12"])
def test_module_self_tests_pass(version):
    reference = REFERENCE / f"slicer-{version}"
    if not (reference / "Base" / "Python" / "slicer" / "ScriptedLoadableModule.py").is_file():
        pytest.skip(f"Slicer reference sources not found in {reference}")
    done = subprocess.run([sys.executable, str(REPO / "Testing" / "slicer_self_tests.py"), str(reference), str(REPO),
                           *MODULES], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for module in MODULES:
        assert f"{module} self-test passed" in done.stdout
