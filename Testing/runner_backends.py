"""Backends that misbehave on purpose, run by the real runner in real child processes (test_runner.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from aiportal.errors import InputError
from aiportal.models.backend import LabelMapResult
from aiportal.models.catalog import ANATOMICAL_STRUCTURE, TISSUE, LabelSpec, ModelEntry

ENTRY = ModelEntry(
    id="test-threshold", title="Threshold (test)", modality="CT", task="voxels above a threshold",
    description="test backend", limitations="test only", version="0", license="MIT",
    labels=(LabelSpec(1, "Dense", ANATOMICAL_STRUCTURE, TISSUE),), family="classical", devices=("cpu", "cuda"),
)


class ThresholdBackend:
    """Labels voxels above params['threshold'], reporting progress through a real tqdm bar on stderr."""

    entry = ENTRY

    def run(self, volume, params, progress, cancel):
        from tqdm import tqdm

        progress(0.1, "thresholding")
        for _ in tqdm(range(5), desc="slices", file=sys.stderr, mininterval=0):
            time.sleep(0.05)
        label = (np.asarray(volume.array) > params.get("threshold", 0)).astype(np.uint8)
        return LabelMapResult(layers=[label], confidences={1: 0.5}, details={"device": params["device"]})


class SleepyBackend:
    """Starts a grandchild, records both pids in params['pid_file'], then sleeps until killed."""

    entry = ENTRY

    def run(self, volume, params, progress, cancel):
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(params["pid_file"]).write_text(f"{os.getpid()} {grandchild.pid}")
        progress(0.2, "sleeping")
        time.sleep(120)
        raise AssertionError("should have been killed")


class CrashingBackend:
    """Prints a few log lines, then dies the way a native library crash does (no Python exception)."""

    entry = ENTRY

    def run(self, volume, params, progress, cancel):
        print("loading weights from /nowhere/model.pt", file=sys.stderr)
        print("CUDA error: out of memory (simulated by the test backend)", file=sys.stderr, flush=True)
        os._exit(3)


class RefusingBackend:
    """Raises a user error: it must arrive in the parent as the same type with the same text."""

    entry = ENTRY

    def run(self, volume, params, progress, cancel):
        raise InputError(f"{volume.name} is not what this model needs", "choose another series")
