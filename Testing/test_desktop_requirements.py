"""The desktop modules' Python packages, checked against Slicer 5.10's and 5.12's own code and pins.

No Slicer application runs here; ``../shared/slicer-reference`` holds Slicer's own pure-Python
``slicer`` package (``util``, and ``packaging`` from 5.12) and its bundled pins. The module's
``ensurePythonRequirements`` is taken from AISegmentPortal.py as written and run, in a child process,
against that real ``slicer.util`` / ``slicer.packaging``: only what would start pip or open a dialog
is replaced by a recorder.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from aiportal.desktop_requirements import BUNDLED_PACKAGES, FEATURES, plan_feature

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "slicer-reference"
VERSIONS = ("5.10", "5.12")


def slicer_pins(version: str) -> dict[str, str]:
    """The packages (name -> version) Slicer ``version`` installs from its SuperBuild requirement files."""
    pins = {}
    for path in sorted((REFERENCE / f"slicer-{version}" / "SuperBuild").glob("External_python-*-requirements.cmake")):
        for name, pinned in re.findall(r"^\s*([A-Za-z0-9_.\-]+)==([^\s\\]+)", path.read_text(), re.M):
            pins[name] = pinned
    return pins


@pytest.fixture(scope="module", autouse=True)
def reference_present():
    if not (REFERENCE / "slicer-5.12" / "Base" / "Python" / "slicer" / "packaging.py").is_file():
        pytest.skip(f"Slicer reference sources not found in {REFERENCE}")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_package_slicer_bundles_is_known_as_bundled(version):
    pins = slicer_pins(version)
    assert "pydicom" in pins and "requests" in pins
    assert {canonicalize_name(name) for name in pins} <= BUNDLED_PACKAGES


def test_slicer_5_12_exports_dicom_with_its_own_highdicom_and_gets_only_psutil():
    pins = slicer_pins("5.12")
    assert pins["highdicom"] == "0.27.0" and pins["pydicom"] == "3.0.2"
    dicom = plan_feature("dicom-export", pins)
    assert dicom.refused is None and dicom.install == ()  # the bundled highdicom 0.27 is used, never replaced
    segment = plan_feature("segment", pins)
    assert segment.install == ("psutil>=5.9",) and segment.refused is None
    assert "highdicom==0.27.0\n" in segment.constraints_text() and "pydicom==3.0.2\n" in segment.constraints_text()


def test_slicer_5_10_refuses_dicom_export_rather_than_upgrade_its_pydicom():
    pins = slicer_pins("5.10")
    assert pins["pydicom"] == "2.4.4" and "highdicom" not in pins
    dicom = plan_feature("dicom-export", pins)
    assert dicom.install == ()
    assert "pydicom 2.4.4" in dicom.refused and "pydicom>=3.0.1" in dicom.refused and "5.12" in dicom.refused
    segment = plan_feature("segment", pins)
    assert segment.install == ("psutil>=5.9",) and "pydicom==2.4.4\n" in segment.constraints_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_features_that_need_only_bundled_packages_install_nothing(version):
    pins = slicer_pins(version)
    for feature in ("export", "measure", "register", "remote"):
        plan = plan_feature(feature, pins)
        assert plan.install == () and plan.refused is None, feature
    assert set(FEATURES) == {"segment", "export", "dicom-export", "measure", "vessels", "register", "remote"}
    vessels = plan_feature("vessels", pins)  # scikit-image is not bundled: installed, the bundled ones pinned
    assert vessels.install == ("scikit-image>=0.22",) and vessels.refused is None
    assert "pydicom==" in vessels.constraints_text()


_PROBE = r'''
import json, sys, types
reference, module_file, feature, missing, testing = sys.argv[1:6]
slicer = types.ModuleType("slicer")
slicer.__path__ = [reference + "/Base/Python/slicer"]
sys.modules["slicer"] = slicer
import slicer.util  # Slicer's own
try:
    import slicer.packaging  # Slicer's own, 5.12 and later
except ImportError:
    pass
calls = []


class App:
    applicationVersion = "reference"

    def testingEnabled(self):
        return testing == "testing"

    def translate(self, context, text):
        return text


slicer.app = App()
slicer.util.confirmOkCancelDisplay = lambda text, *args, **kwargs: calls.append(["ask", text]) or True
# what would start pip: 5.10: pip_install -> _executePythonModule("pip", args); 5.12: pip_ensure -> pip_install
slicer.util._executePythonModule = lambda module, args: calls.append(
    ["pip", module, list(args), open(args[args.index("-c") + 1]).read() if "-c" in args else ""])
if hasattr(slicer, "packaging"):
    slicer.packaging.pip_install = lambda requirements, constraints=None, **kwargs: calls.append(
        ["pip", "pip", ["install", "-c", str(constraints), *requirements], open(constraints).read()])

import aiportal.desktop_requirements as requirements
if missing:  # a package this Python lacks, to see the install path run
    requirements.FEATURES[feature] = (requirements.Need(missing, (requirements.Candidate(missing + ">=1.0"),), "test"),)
import ast
source = ast.parse(open(module_file).read())
function = next(node for node in source.body if isinstance(node, ast.FunctionDef)
                and node.name == "ensurePythonRequirements")
namespace = {"slicer": slicer, "_": lambda text: text, "ensure_feature": requirements.ensure_feature}
exec(compile(ast.Module([function], []), module_file, "exec"), namespace)
try:
    namespace["ensurePythonRequirements"](feature)
    outcome = "ok"
except Exception as error:
    outcome = f"{type(error).__name__}: {error}"
print(json.dumps({"outcome": outcome, "calls": calls}))
'''


def run_module_function(version: str, feature: str, missing: str = "", testing: bool = False) -> dict:
    """AISegmentPortal.ensurePythonRequirements(feature) on Slicer ``version``'s own util/packaging code."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(REFERENCE / f"slicer-{version}"),
                           str(REPO / "AISegmentPortal" / "AISegmentPortal.py"), feature, missing,
                           "testing" if testing else ""],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", VERSIONS)
def test_module_installs_a_missing_package_once_asked_keeping_the_bundled_ones(version):
    result = run_module_function(version, "segment", missing="aiportal-absent-test-package")
    assert result["outcome"] == "ok", result
    kinds = [call[0] for call in result["calls"]]
    assert kinds == ["ask", "pip"]  # asked once, then one pip call
    _, module, args, constraints = result["calls"][1]
    assert module == "pip" and args[0] == "install" and args[-1] == "aiportal-absent-test-package>=1.0"
    # every package Slicer bundles that this Python has stays at its version
    assert "-c" in args and "numpy==" in constraints and "requests==" in constraints


@pytest.mark.parametrize("version", VERSIONS)
def test_a_test_run_never_changes_slicers_python(version):
    result = run_module_function(version, "segment", missing="aiportal-absent-test-package", testing=True)
    assert result == {"outcome": "ok", "calls": []}


@pytest.mark.parametrize("version", VERSIONS)
def test_module_asks_nothing_when_everything_is_installed(version):
    result = run_module_function(version, "segment")  # psutil is installed here
    assert result == {"outcome": "ok", "calls": []}


def test_module_calls_its_requirements_per_entry_point():
    """Segment, remote, export (+ DICOM), measure and register each ensure their own packages first."""
    calls = {}
    for module in ("AISegmentPortal", "AIMeasure", "AIRegister"):
        text = (REPO / module / f"{module}.py").read_text()
        calls[module] = set(re.findall(r'ensure(?:Dependencies|PythonRequirements|_feature)\(\s*"([a-z-]+)"', text))
        for pair in re.findall(r'ensureDependencies\("(remote)" if server is not None else "(segment)"\)', text):
            calls[module] |= set(pair)
    assert calls["AISegmentPortal"] >= {"segment", "remote", "export", "dicom-export"}
    assert calls["AIMeasure"] == {"measure", "vessels"} and calls["AIRegister"] == {"register"}
    tree = ast.parse((REPO / "AISegmentPortal" / "AISegmentPortal.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value == "requirements.txt"]
