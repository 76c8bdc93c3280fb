"""classic-ct against Slicer's own segment-editor recipe, side by side on the same volumes.

Each measurement runs in a fresh child process, so its peak RSS is its own:
- ``ours``: ``aiportal`` end to end in one process — load the file, run classic-ct (body, two lungs,
  airways, bone), import the result into a segmentation node with terminology and provenance;
  the model's own time is reported separately.
- ``peer``: what a Slicer user does by hand with Segment Editor effects (trame-slicer's headless
  Threshold + Islands, the same effects Slicer's editor runs): lungs = threshold -1000..-400 HU,
  keep the largest island; bone = threshold 200..3000 HU, keep the largest island.
Both read the same NRRD/NIfTI file (the DICOM case is converted to NRRD once, beforehand). The
peer does less work (two segments, no body, no left/right, no gas rejection), so the ratio is a
floor on what our extra steps cost; Dice against the TotalSegmentator reference is printed for
both where the reference has the structure.

Run: ``.venv/bin/python bench/bench_classic_ct.py [--shared-data PATH] [--cases ...]``.
Not a test; prints a table. Numbers vary by ±30 % on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHANTOM_CASE = "phantom-512x512x300"
REFERENCES = {
    "example_ct.nii.gz": "example_seg_fast_force_split.nii.gz",
    "example_ct_sm.nii.gz": "example_seg.nii.gz",
    "example_ct_dicom": "example_seg_dicom.nii.gz",
}
LUNG_LOBES = range(10, 15)
BONES = [*range(25, 51), *range(69, 79), 91, *range(92, 117)]  # vertebrae, sacrum, limbs, skull, ribs, sternum


def _peak_mb() -> float:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that across exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quiet() -> None:
    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    vtk.vtkObject.GlobalWarningDisplayOff()


def _masks_on_reference(lungs, bone, volume_node, reference: Path | None) -> dict[str, float]:
    """Dice of lungs and bone against the TotalSegmentator reference (resampled by geometry)."""
    if reference is None:
        return {}
    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, nearest_on_grid

    ref_node = load_volume(reference).node
    ref = array_from_volume(ref_node)
    scores = {}
    for name, ours, labels in (("lungs", lungs, LUNG_LOBES), ("bone", bone, BONES)):
        picked, _ = nearest_on_grid(ours, ijk_to_ras_matrix(volume_node), ref.shape, ijk_to_ras_matrix(ref_node),
                                    fill=False)
        truth = np.isin(ref, list(labels))
        if truth.any():
            scores[name] = round(2 * np.count_nonzero(picked & truth) / (picked.sum() + truth.sum()), 3)
    return scores


def worker_ours(path: Path, reference: Path | None) -> dict:
    start = time.perf_counter()
    _quiet()
    from aiportal.io.volumes import load_volume
    from aiportal.models.backends.classic_ct import BONE, LEFT_LUNG, RIGHT_LUNG
    from aiportal.segment import SegmentationJob
    from aiportal.segmentation import segment_ids, segment_mask, shape_kji

    volume = load_volume(path).node
    job = SegmentationJob(volume, "classic-ct")
    model_times = []
    result = job.run(progress=lambda fraction, stage: model_times.append(time.perf_counter()))
    total = time.perf_counter() - start
    segmentation = result.segmentation_node.GetSegmentation()
    by_name = {segmentation.GetSegment(s).GetName(): s for s in segment_ids(result.segmentation_node)}

    def mask(*labels):
        found = [segment_mask(result.segmentation_node, by_name[label.name], volume)
                 for label in labels if label.name in by_name]
        return np.logical_or.reduce(found) if found else np.zeros(shape_kji(volume), bool)

    return {"seconds": total, "model_seconds": model_times[-1] - model_times[0], "peak_mb": _peak_mb(),
            "dice": _masks_on_reference(mask(LEFT_LUNG, RIGHT_LUNG), mask(BONE), volume, reference)}


def worker_peer(path: Path, reference: Path | None) -> dict:
    start = time.perf_counter()
    _quiet()
    from trame_slicer.core import SlicerApp
    from trame_slicer.segmentation import SegmentationEffectIslands, SegmentationEffectThreshold

    app = SlicerApp()
    volume = app.volumes_logic.AddArchetypeVolume(str(path), "ct")
    editor = app.segmentation_editor
    segmentation_node = editor.create_empty_segmentation_node()
    editor.set_active_segmentation(segmentation_node, volume)
    for name, low, high in (("lungs", -1000, -400), ("bone", 200, 3000)):
        editor.add_empty_segment(segment_name=name)
        threshold = editor.set_active_effect_type(SegmentationEffectThreshold)
        threshold.set_threshold_min_max_values((low, high))
        threshold.apply()
        editor.set_active_effect_type(SegmentationEffectIslands).keep_largest_island()
    total = time.perf_counter() - start
    from aiportal.segmentation import segment_ids, segment_mask

    lungs_id, bone_id = segment_ids(segmentation_node)
    return {"seconds": total, "peak_mb": _peak_mb(),
            "dice": _masks_on_reference(segment_mask(segmentation_node, lungs_id, volume),
                                        segment_mask(segmentation_node, bone_id, volume), volume, reference)}


def _child(worker: str, path: Path, reference: Path | None, time_limit: float) -> dict:
    command = [sys.executable, __file__, "--worker", worker, str(path)]
    if reference is not None:
        command += ["--reference", str(reference)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=time_limit)
    except subprocess.TimeoutExpired:
        return {"timed_out": time_limit}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(case: str, shared: Path, scratch: Path) -> Path:
    """A file both sides can read: the phantom and the DICOM series become NRRD once, here."""
    if case == PHANTOM_CASE or case == "example_ct_dicom":
        _quiet()
        from aiportal.io.volumes import load_volume, save_volume, volume_node_from_array
        from aiportal.runtime import get_runtime

        if case == PHANTOM_CASE:
            from aiportal.sample import make_ct_phantom

            phantom = make_ct_phantom(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7))
            node = volume_node_from_array(get_runtime().scene, phantom.hu, phantom.ijk_to_ras, "phantom")
        else:
            node = load_volume(shared / "totalseg" / case).node
        return save_volume(node, scratch / f"{case}.nrrd")
    return shared / "totalseg" / case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cases", nargs="*", default=[PHANTOM_CASE, *REFERENCES])
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("path", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = worker_ours if args.worker == "ours" else worker_peer
        print(json.dumps(work(args.path, args.reference)))
        return 0

    print(f"{'case':22s} {'ours s':>7s} {'(model)':>8s} {'peer s':>7s} {'ours/peer':>9s} "
          f"{'ours MB':>8s} {'peer MB':>8s}  Dice ours | peer", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases:
            path = _prepare(case, args.shared_data, Path(scratch))
            reference = args.shared_data / "totalseg" / REFERENCES[case] if case in REFERENCES else None
            ours = _child("ours", path, reference, args.time_limit)
            peer = _child("peer", path, reference, args.time_limit)
            if "error" in ours or "error" in peer or "timed_out" in ours:
                print(f"{case:22s} failed: ours {ours}; peer {peer.get('error', 'ok')}", flush=True)
                continue
            if "timed_out" in peer:  # the peer had not finished when stopped: its time is a lower bound
                peer = {"seconds": peer["timed_out"], "peak_mb": float("nan"), "dice": "not finished"}
                bound = ">", "<"
            else:
                bound = " ", " "
            ratio = ours["seconds"] / peer["seconds"]
            print(f"{case:22s} {ours['seconds']:7.2f} {ours['model_seconds']:8.2f} {bound[0]}{peer['seconds']:6.1f} "
                  f"{bound[1]}{ratio:8.3f} {ours['peak_mb']:8.0f} {peer['peak_mb']:8.0f}  "
                  f"{ours['dice']} | {peer['dice']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
