"""The child side of the runner: ``python -m aiportal.models.worker JOB_FOLDER``.

Reads the input the parent left in JOB_FOLDER, runs one backend, writes the result there. Progress,
notes and errors go to the parent as JSON lines on the original stdout; everything the libraries
print (tqdm bars included) is sent to stderr, which the parent parses and logs. Imports nothing
of Slicer or VTK: this runs in the model's own environment.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

import numpy as np

INPUT_ARRAY = "input.npy"
JOB_FILE = "job.json"
RESULT_ARRAYS = "result.npz"
RESULT_FILE = "result.json"


class _Events:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def send(self, **event: Any) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def progress(self, fraction: float, stage: str) -> None:
        self.send(progress=float(fraction), stage=stage)


def run_job(folder: Path, events: _Events) -> None:
    from aiportal.errors import AIPortalError
    from aiportal.models.backend import ModelInput
    from aiportal.models.catalog import BackendRef
    from aiportal.models.devices import resolve_device
    from aiportal.progress import CancelToken

    job = json.loads((folder / JOB_FILE).read_text())
    try:
        device, note = resolve_device(job["device"], job["devices"])
        if note:
            events.send(note=note)
        events.send(device=device)
        params = dict(job["params"], device=device)
        volume = ModelInput(array=np.load(folder / INPUT_ARRAY, mmap_mode="r"),
                            ijk_to_ras=np.asarray(job["ijk_to_ras"], dtype=float),
                            modality=job["modality"], name=job["name"])
        events.progress(0.0, f"loading {job['model_id']}")
        backend = BackendRef(job["backend"], tuple(job["backend_args"])).build()
        # the parent cancels by killing this process tree; the token stays unset here
        result = backend.run(volume, params, events.progress, CancelToken())
        np.savez(folder / RESULT_ARRAYS, *[np.ascontiguousarray(layer) for layer in result.layers])
        (folder / RESULT_FILE).write_text(json.dumps({
            "layers": len(result.layers),
            "confidences": {str(label): float(value) for label, value in result.confidences.items()},
            "details": result.details,
            "warnings": list(result.warnings),
        }, default=str))
        events.send(done=True)
    except AIPortalError as error:
        events.send(error={"type": type(error).__name__, "message": error.message, "fix": error.fix})
        raise SystemExit(2) from None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m aiportal.models.worker JOB_FOLDER", file=sys.stderr)
        return 64
    from aiportal.models.lifeline import PARENT_PID_ENV, die_with_parent

    # no stray model run, nor its copy of the image, when the runner is killed
    die_with_parent(int(os.environ.get(PARENT_PID_ENV) or 0), Path(argv[0]))
    # the protocol keeps the real stdout; anything printed by libraries (even from C) goes to stderr
    events = _Events(os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    try:
        run_job(Path(argv[0]), events)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
