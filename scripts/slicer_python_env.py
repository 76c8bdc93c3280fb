#!/usr/bin/env python3
"""A Python 3.12 environment holding exactly the packages Slicer bundles, plus the extension's requirements.

Slicer 5.12 ships Python 3.12 with pinned packages (its SuperBuild/External_python-*-requirements.cmake files).
An extension's Resources/requirements.txt is installed into that Python on first use, so it must resolve with
those pins held fixed: pip's resolver runs with the pins as constraints, and every bundled package's version is
compared before and after. The environment is cached under ~/.cache/aiportal/envs/ and rebuilt only when the
pins, the requirements or the interpreter change.

    scripts/slicer_python_env.py [--slicer 5.12] [--logic]    prints the environment's python

--logic adds what the logic tests need beside Slicer's pins (slicer-core in place of Slicer's own MRML, the
packages Slicer ships without a pin file here: numpy, scipy, SimpleITK; and pytest), again as constraints-held.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get("AIPORTAL_SLICER_REFERENCE", REPO.parent / "shared" / "slicer-reference"))


def find_python312() -> Path:
    """A CPython 3.12 (Slicer 5.10 and 5.12 ship 3.12.10): $AIPORTAL_PYTHON312, pyenv's 3.12.x, python3.12."""
    if os.environ.get("AIPORTAL_PYTHON312"):
        return Path(os.environ["AIPORTAL_PYTHON312"])
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.12.*/bin/python"),
                   key=lambda path: [int(part) for part in path.parent.parent.name.split(".") if part.isdigit()])
    on_path = shutil.which("python3.12")
    return pyenv[-1] if pyenv else Path(on_path or "python3.12")


PYTHON312 = find_python312()
CACHE = Path(os.environ.get("AIPORTAL_ENV_CACHE", Path.home() / ".cache/aiportal/envs"))
MODULES = ("AISegmentPortal", "AIMeasure", "AIRegister")
# what the logic tests import beside the pins; Slicer ships numpy, scipy and SimpleITK (no pin file here) and
# its own MRML, which slicer-core stands in for
LOGIC_PACKAGES = ("slicer-core==5.11.0.6", "numpy", "scipy", "SimpleITK", "pytest")


class BundledPackageChanged(RuntimeError):
    pass


def slicer_pins(version: str) -> dict[str, str]:
    """name -> version of every package in Slicer's bundled Python requirement files."""
    pins: dict[str, str] = {}
    for cmake in sorted((REFERENCE / f"slicer-{version}" / "SuperBuild").glob("External_python-*-requirements.cmake")):
        for block in re.findall(r"\[===\[(.*?)\]===\]", cmake.read_text(), re.DOTALL):
            for name, pinned in re.findall(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;\\]+)", block, re.MULTILINE):
                pins[canonical(name)] = pinned
    if not pins:
        raise FileNotFoundError(f"no Slicer {version} pins under {REFERENCE}")
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extension_requirements() -> list[Path]:
    return [REPO / module / "Resources" / "requirements.txt" for module in MODULES]


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                         text=True).stdout
    return {canonical(item["name"]): item["version"] for item in json.loads(out)}


def changed_bundled(pins: dict[str, str], now: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Bundled packages whose installed version is not Slicer's pin."""
    return {name: (pinned, now.get(name)) for name, pinned in pins.items() if now.get(name) != pinned}


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], check=True)


def require_python312() -> None:
    if not PYTHON312.is_file():
        raise FileNotFoundError("Python 3.12 not found (looked in ~/.pyenv/versions/3.12.* and for python3.12): "
                                "install it (pyenv install 3.12) or set AIPORTAL_PYTHON312")


def build(version: str = "5.12", logic: bool = False) -> Path:
    """The cached environment's python (built when absent or when its inputs changed)."""
    require_python312()
    pins = slicer_pins(version)
    requirement_files = extension_requirements()
    key = hashlib.sha256(json.dumps([sorted(pins.items()), [f.read_text() for f in requirement_files],
                                     str(PYTHON312), logic, LOGIC_PACKAGES]).encode()).hexdigest()[:12]
    env = CACHE / f"slicer-{version}-py312{'-logic' if logic else ''}-{key}"
    python = env / "bin" / "python"
    if (env / "ready").is_file():
        return python
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(PYTHON312), "-m", "venv", str(env)], check=True)
    constraints = env / "slicer-pins.txt"
    constraints.write_text("".join(f"{name}=={pinned}\n" for name, pinned in sorted(pins.items())))
    # 1. Slicer's own Python: exactly the bundled pins
    pip(python, "-r", str(constraints))
    check_unchanged(pins, python, "installing Slicer's pins")
    # 2. what the extension asks for on first use, resolved with the bundled pins held
    for requirements in requirement_files:
        try:
            pip(python, "-c", str(constraints), "-r", str(requirements))
        except subprocess.CalledProcessError as error:
            raise BundledPackageChanged(f"{requirements.relative_to(REPO)} does not resolve with Slicer {version}'s "
                                        "bundled packages held fixed (pip's message above)") from error
        check_unchanged(pins, python, f"installing {requirements.relative_to(REPO)}")
    if logic:
        pip(python, "-c", str(constraints), *LOGIC_PACKAGES)
        check_unchanged(pins, python, "installing the logic tests' packages")
    (env / "ready").write_text(json.dumps(installed(python), indent=1, sort_keys=True))
    return python


def index_tools_env() -> Path:
    """Python 3.12 with the Extensions Index's own scripts/requirements.txt (its scripts need 3.12)."""
    require_python312()
    requirements = REFERENCE / "extensions-index" / "scripts" / "requirements.txt"
    key = hashlib.sha256((requirements.read_text() + str(PYTHON312)).encode()).hexdigest()[:12]
    env = CACHE / f"extensions-index-py312-{key}"
    python = env / "bin" / "python"
    if not (env / "ready").is_file():
        shutil.rmtree(env, ignore_errors=True)
        subprocess.run([str(PYTHON312), "-m", "venv", str(env)], check=True)
        pip(python, "-r", str(requirements))
        (env / "ready").touch()
    return python


def check_unchanged(pins: dict[str, str], python: Path, step: str) -> None:
    changed = changed_bundled(pins, installed(python))
    if changed:
        raise BundledPackageChanged(f"{step} changed Slicer's bundled packages: " + ", ".join(
            f"{name} {pinned} -> {now}" for name, (pinned, now) in sorted(changed.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer", default="5.12")
    parser.add_argument("--logic", action="store_true")
    args = parser.parse_args(argv)
    print(build(args.slicer, args.logic))
    return 0


if __name__ == "__main__":
    sys.exit(main())
