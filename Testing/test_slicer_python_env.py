"""The extension inside Slicer 5.12's own Python: Python 3.12 with exactly the packages Slicer bundles.

scripts/slicer_python_env.py builds (and caches under ~/.cache/aiportal/envs) an environment holding Slicer
5.12's pinned packages, installs the modules' Resources/requirements.txt with those pins as constraints and
fails if any bundled package would change; slicer-core stands in for Slicer's own MRML. The DICOM export tests
(pydicom, highdicom, pillow, JPEG codecs: the bundled stack) then run in it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from slicer_reference import REPO

spec = importlib.util.spec_from_file_location("slicer_python_env", REPO / "scripts" / "slicer_python_env.py")
slicer_python_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slicer_python_env)

LOGIC_TESTS = ["Testing/test_dicom_export.py"]
# What Slicer ships beside its pip pins (its own builds): the MRML core (slicer-core stands in), VTK, numpy,
# scipy, SimpleITK; and what the environment holds only to run the tests
SLICER_BUILT = {"slicer-core", "vtk", "numpy", "scipy", "simpleitk"}
TEST_ONLY = {"pytest", "pluggy", "iniconfig", "pygments"}
# the distribution of every third-party top-level module that importing the given modules loaded
LOADED_DISTRIBUTIONS = """
import importlib, importlib.metadata, json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
owners = importlib.metadata.packages_distributions()
loaded = {m.split(".")[0] for m in set(sys.modules) - before}
print(json.dumps(sorted({d for m in loaded for d in owners.get(m, [])})))
"""


@pytest.fixture(scope="module")
def slicer_python() -> Path:
    return slicer_python_env.build("5.12", logic=True)  # BundledPackageChanged when a requirement moves a pin


def test_requirements_leave_every_bundled_package_as_slicer_ships_it(slicer_python):
    pins = slicer_python_env.slicer_pins("5.12")
    installed = slicer_python_env.installed(slicer_python)
    assert slicer_python_env.changed_bundled(pins, installed) == {}
    assert installed["highdicom"] == pins["highdicom"] and installed["pydicom"] == pins["pydicom"]
    for requirements in slicer_python_env.extension_requirements():
        for line in requirements.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                requirement = Requirement(line)
                name = slicer_python_env.canonical(requirement.name)
                assert name in installed, f"{requirements.relative_to(REPO)}: {name} not installed"
                assert requirement.specifier.contains(installed[name]), (line, installed[name])
    version = subprocess.run([str(slicer_python), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "(3, 12)"


def test_a_requirement_that_moves_a_bundled_package_is_refused(slicer_python):
    """The guard itself: a requirement contradicting a pin (what highdicom>=0.28 was) does not resolve."""
    constraints = slicer_python.parent.parent / "slicer-pins.txt"
    run = subprocess.run([str(slicer_python), "-m", "pip", "install", "--dry-run", "--quiet", "-c", str(constraints),
                          "highdicom>=0.28"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "ResolutionImpossible" in run.stderr + run.stdout


def test_logic_runs_in_slicers_python(slicer_python):
    import trame_slicer

    # Slicer ships its standard terminology files; outside Slicer they come with trame-slicer
    terminologies = Path(trame_slicer.__file__).parent / "resources" / "terminologies"
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIPORTAL_TERMINOLOGY_DIR": str(terminologies)}
    run = subprocess.run([str(slicer_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *LOGIC_TESTS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.splitlines()[-1]


def _aiportal_imports(module: str) -> list[str]:
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    return sorted({node.module for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aiportal")})


@pytest.mark.parametrize("module", ["AISegmentPortal", "AIMeasure", "AIRegister"])
def test_modules_import_only_what_slicer_ships_or_their_requirements_add(slicer_python, module):
    """Importing a module's aiportal packages in Slicer's Python loads nothing that Slicer lacks and the
    modules' Resources/requirements.txt do not install (else the module fails to load in Slicer)."""
    pins = slicer_python_env.slicer_pins("5.12")
    from aiportal.desktop_requirements import FEATURES

    required = {slicer_python_env.canonical(Requirement(line).name)
                for path in slicer_python_env.extension_requirements()
                for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
    # what the modules install on first use (aiportal.desktop_requirements), and aiportal itself, which the
    # extension ships in its module folders
    required |= {slicer_python_env.canonical(Requirement(candidate.requirement).name)
                 for needs in FEATURES.values() for need in needs for candidate in need.candidates}
    required |= {"slicer-aiportal"}
    run = subprocess.run([str(slicer_python), "-c", LOADED_DISTRIBUTIONS, *_aiportal_imports(module)],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = {slicer_python_env.canonical(name) for name in json.loads(run.stdout.splitlines()[-1])}
    unknown = loaded - set(pins) - required - SLICER_BUILT - TEST_ONLY
    assert not unknown, f"{module} needs {sorted(unknown)}, which Slicer 5.12 lacks and no requirements.txt lists"
