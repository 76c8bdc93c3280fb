"""What each desktop feature needs from Slicer's Python, and how to get it without breaking Slicer.

3D Slicer ships its own Python with pinned packages (numpy, scipy, SimpleITK, pydicom, requests,
pillow, and on 5.12 highdicom and pyjpegls). The desktop modules need few more (psutil; highdicom
where Slicer lacks it), installed on first use. A package Slicer bundles is never replaced: installs run with a
constraints file that pins every bundled package to the version installed, and a feature whose
packages need another version of a bundled one is refused with a message that says why.

GUI-free: the modules call :func:`ensure_feature` with Slicer's own ``slicer`` module, which has
``slicer.packaging.pip_ensure`` from 5.12 and only ``slicer.util.pip_install`` before.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from aiportal.errors import AIPortalError

logger = logging.getLogger(__name__)

#: Packages Slicer 5.10 and 5.12 install into their Python (SuperBuild/External_python-*.cmake and the
#: packages built from source); never upgraded or downgraded by the extension.
BUNDLED_PACKAGES = frozenset(canonicalize_name(name) for name in (
    "numpy", "scipy", "SimpleITK", "vtk", "pip", "setuptools", "wheel", "packaging", "pyparsing",
    "pydicom", "six", "pillow", "retrying", "dicomweb-client", "dcmqi", "highdicom", "pyjpegls",
    "typing_extensions", "chardet", "couchdb", "gitdb", "smmap", "GitPython", "cryptography", "PyJWT", "wrapt",
    "Deprecated", "pycparser", "cffi", "PyNaCl", "python-dateutil", "PyGithub", "certifi", "idna",
    "charset-normalizer", "urllib3", "requests",
))


@dataclass(frozen=True)
class Candidate:
    """One release range of a package and what its releases need from the bundled packages (their metadata)."""

    requirement: str
    needs: Mapping[str, str] = field(default_factory=dict)  # bundled package -> specifier


@dataclass(frozen=True)
class Need:
    """A package a feature imports: the first candidate that fits the bundled packages is used."""

    name: str
    candidates: tuple[Candidate, ...]
    why: str


# highdicom 0.27 (bundled with Slicer 5.12) and 0.28 both work with the exporter (Testing/test_dicom_export.py
# passes with each) and need pydicom >= 3.0.1; 0.22, the last release for pydicom 2, lacks APIs it uses.
_HIGHDICOM = Need("highdicom", (Candidate("highdicom>=0.27,<0.29", {"pydicom": ">=3.0.1", "numpy": ">=1.19",
                                                                    "pillow": ">=8.3", "pyjpegls": ">=1.0"}),),
                  "DICOM SEG and SR are written with highdicom")
_PSUTIL = Need("psutil", (Candidate("psutil>=5.9"),), "a cancelled model's worker processes are found with psutil")
_SKIMAGE = Need("scikit-image", (Candidate("scikit-image>=0.22", {"numpy": ">=1.23", "scipy": ">=1.9"}),),
                "a vessel's centreline is thinned with scikit-image")

#: Each entry point of the desktop modules and what it imports beyond Slicer's bundled packages.
FEATURES: dict[str, tuple[Need, ...]] = {
    "segment": (_PSUTIL,),
    "remote": (),  # requests is bundled
    "export": (),  # seg.nrrd, JSON/CSV statistics, STL/OBJ: numpy, scipy and VTK
    "dicom-export": (_HIGHDICOM,),
    "measure": (),  # numpy, scipy, SimpleITK, pillow
    "vessels": (_SKIMAGE,),
    "register": (),  # SimpleITK
}


@dataclass(frozen=True)
class InstallPlan:
    feature: str
    install: tuple[str, ...]  # requirement strings to install
    refused: str | None = None  # why the feature cannot run here without changing a bundled package
    constraints: Mapping[str, str] = field(default_factory=dict)  # bundled package -> installed version

    def constraints_text(self) -> str:
        """A pip constraints file that keeps every bundled package at its installed version."""
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.constraints.items()))


def installed_versions(names) -> dict[str, str]:
    """The installed version of each of ``names`` that this Python has, by canonical name."""
    found = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[canonicalize_name(name)] = importlib.metadata.version(name)
    return found


def _fits(requirement: Requirement, installed: Mapping[str, str]) -> bool:
    version = installed.get(canonicalize_name(requirement.name))
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def plan_feature(feature: str, installed: Mapping[str, str] | None = None) -> InstallPlan:
    """What to install for ``feature`` in the Python whose packages are ``installed`` (name -> version)."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; one of {', '.join(FEATURES)}")
    if not FEATURES[feature]:
        return InstallPlan(feature, ())
    if installed is None:
        installed = installed_versions({need.name for need in FEATURES[feature]} | BUNDLED_PACKAGES)
    installed = {canonicalize_name(name): version for name, version in installed.items()}
    constraints = {name: version for name, version in installed.items() if name in BUNDLED_PACKAGES}
    install: list[str] = []
    for need in FEATURES[feature]:
        if any(_fits(Requirement(candidate.requirement), installed) for candidate in need.candidates):
            continue  # already there in a version that works (possibly Slicer's own)
        usable = [candidate for candidate in need.candidates
                  if all(canonicalize_name(name) not in constraints
                         or SpecifierSet(spec).contains(constraints[canonicalize_name(name)], prereleases=True)
                         for name, spec in candidate.needs.items())]
        if canonicalize_name(need.name) in constraints or not usable:
            return InstallPlan(feature, (), _refusal(need, installed), constraints)
        install.append(usable[0].requirement)
    return InstallPlan(feature, tuple(install), None, constraints)


def _refusal(need: Need, installed: Mapping[str, str]) -> str:
    """Which bundled packages stand in the way, in words."""
    have = installed.get(canonicalize_name(need.name))
    bundled = [f"{need.name} {have}"] if have else []
    wanted = []
    for candidate in need.candidates:
        clashing = [(name, spec) for name, spec in candidate.needs.items()
                    if canonicalize_name(name) in installed
                    and not SpecifierSet(spec).contains(installed[canonicalize_name(name)], prereleases=True)]
        bundled += [f"{name} {installed[canonicalize_name(name)]}" for name, _ in clashing
                    if f"{name} {installed[canonicalize_name(name)]}" not in bundled]
        wanted.append(candidate.requirement + "".join(f", which needs {name}{spec}" for name, spec in clashing))
    return (f"{need.why}: the extension needs {' or '.join(wanted)}, but this Slicer bundles "
            f"{', '.join(bundled) or 'other versions'}, and the extension never changes a package Slicer bundles — "
            "use 3D Slicer 5.12 or later for this, or the `aiportal` command line in a Python environment of its own")


def _testing(slicer_module: Any) -> bool:
    app = getattr(slicer_module, "app", None)
    return bool(app is not None and hasattr(app, "testingEnabled") and app.testingEnabled())


def slicer_version_text(slicer_module: Any) -> str:
    app = getattr(slicer_module, "app", None)
    return str(getattr(app, "applicationVersion", "") or "unknown")


def ensure_feature(feature: str, slicer_module: Any, requester: str,
                   installed: Mapping[str, str] | None = None,
                   confirm: Callable[[str, str], bool] | None = None) -> InstallPlan:
    """Install what ``feature`` lacks into Slicer's Python, asking the user once; raise when it cannot run.

    ``slicer_module`` is Slicer's ``slicer`` package: ``slicer.packaging.pip_ensure`` (5.12+) asks and
    installs; on older Slicer ``confirm(text, details)`` (default ``slicer.util.confirmOkCancelDisplay``) asks
    and ``slicer.util.pip_install`` installs. Nothing is asked when nothing is missing.
    """
    plan = plan_feature(feature, installed)
    if plan.refused:
        raise AIPortalError(f"{requester}: {feature} is not available in 3D Slicer "
                            f"{slicer_version_text(slicer_module)}", plan.refused)
    if not plan.install:
        return plan
    with tempfile.TemporaryDirectory(prefix="aiportal-pip-") as folder:
        constraints = Path(folder) / "slicer-bundled-constraints.txt"
        constraints.write_text(plan.constraints_text())
        packaging = getattr(slicer_module, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(list(plan.install), constraints=str(constraints), requester=requester)
        elif _testing(slicer_module):  # as pip_ensure does: a test run never changes Slicer's Python
            logger.info("Testing mode: not installing %s", ", ".join(plan.install))
        else:
            util = slicer_module.util
            ask = confirm or (lambda text, details: util.confirmOkCancelDisplay(text, requester,
                                                                                detailedText=details))
            text = (f"{requester} needs {len(plan.install)} Python package(s) that this 3D Slicer lacks. "
                    "They will be installed into Slicer's Python (the packages Slicer bundles stay as they are). "
                    "Continue?")
            if not ask(text, "\n".join(plan.install)):
                raise AIPortalError(f"{requester}: {feature} needs {', '.join(plan.install)}",
                                    "accept the installation when asked, or install them from Slicer's Python "
                                    "console with slicer.util.pip_install")
            util.pip_install(["-c", str(constraints), *plan.install])
    return plan
