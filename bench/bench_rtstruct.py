"""RT Structure Set export: ours (``aiportal.rt``) against rt-utils on the same case, in one run.

The case is bench_export's: the real 20-slice abdominal CT repeated 15 times along z into a 512×512×300
series with fresh UIDs, and TotalSegmentator's 31-label result for it repeated the same way
(``labels.nrrd``). Each side runs in its own process from the same inputs (the series folder and
``labels.nrrd``, read with SimpleITK by both) and writes one RTSTRUCT with one ROI per label:

- **ours**: series headers (no pixels), ``rois_from_labels`` + ``encode_rtstruct``.
- **rt-utils**: ``RTStructBuilder.create_new`` (reads the series) + ``add_roi`` per label + ``save``.

Measured with GNU time (wall, CPU, peak RSS). Then, outside the timing: dciodvfy error counts of each
file, and each file's round trip Dice (min / mean over ROIs) read back by our reader (exact for both contour
conventions: it measures what the file holds) and rt-utils' file by rt-utils' own reader. (rt-utils reading
ours is checked in Testing/test_rtstruct.py on the 20-slice case: its reader is too slow for 300 slices.)

Run: ``.venv/bin/python bench/bench_rtstruct.py`` (needs the ``bench`` extra). Not a test; prints a table.
The machine has 2 cores shared with other jobs; wall times vary by ±30 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import REPO, _timed  # noqa: E402


def _labels(folder: Path):
    import numpy as np
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd"))).astype(np.uint8)  # (k, j, i)


def _names() -> dict[int, str]:
    from aiportal.models.totalseg_labels import totalsegmentator_labels

    return {label.value: label.name for label in totalsegmentator_labels("total")}


def run_ours(folder: Path) -> None:
    from aiportal.io.dicom_series import source_from_files
    from aiportal.models.totalseg_labels import totalsegmentator_labels
    from aiportal.rt.encode import encode_rtstruct, rois_from_labels

    headers = source_from_files(sorted((folder / "ct").iterdir())).headers  # k order of labels.nrrd
    table = {label.value: label for label in totalsegmentator_labels("total")}
    rois = rois_from_labels(_labels(folder), {v: t.name for v, t in table.items()},
                            {v: t.color for v, t in table.items()})
    written = encode_rtstruct(rois, headers, folder / "ours.dcm")
    print(json.dumps({"rois": len(rois), "contours": written.number_of_contours, "points": written.number_of_points}))


def run_rt_utils(folder: Path) -> None:
    import numpy as np
    from rt_utils import RTStructBuilder

    from aiportal.io.dicom_series import source_from_files

    builder = RTStructBuilder.create_new(str(folder / "ct"))
    ours_order = [str(h.SOPInstanceUID) for h in source_from_files(sorted((folder / "ct").iterdir())).headers]
    theirs = {str(ds.SOPInstanceUID): n for n, ds in enumerate(builder.series_data)}
    labels = _labels(folder)[np.argsort([theirs[uid] for uid in ours_order])]  # into rt-utils' slice order
    names = _names()
    for value in sorted(set(np.unique(labels).tolist()) - {0}):
        builder.add_roi(mask=np.transpose(labels == value, (1, 2, 0)), name=names[value])
    builder.save(str(folder / "rt_utils.dcm"))


def evaluate(folder: Path) -> None:
    """Round trip Dice of both files by both readers (in our k order), and dciodvfy error counts."""
    import numpy as np
    import pydicom
    from rt_utils import RTStructBuilder

    from aiportal.io.dicom_series import read_dicom_series
    from aiportal.rt.reader import rasterize_structure_set

    series = read_dicom_series(folder / "ct")
    labels, names = _labels(folder), _names()
    ours_order = [str(h.SOPInstanceUID) for h in series.source.headers]
    result = {}
    for name in ("ours", "rt_utils"):
        path = folder / f"{name}.dcm"
        errors = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        lines = (errors.stdout + errors.stderr).splitlines()
        entry = {"dciodvfy_errors": sum(line.startswith("Error") for line in lines),
                 "dciodvfy_first": sorted({line for line in lines if line.startswith("Error")})[:3],
                 "size_mb": path.stat().st_size / 1e6}
        read = rasterize_structure_set(pydicom.dcmread(path), series.ijk_to_ras, labels.shape)
        by_name = {roi.name: roi.mask for roi in read.rois}
        if name == "rt_utils":
            theirs = RTStructBuilder.create_from(str(folder / "ct"), str(path))
            order = {str(ds.SOPInstanceUID): n for n, ds in enumerate(theirs.series_data)}
            permutation = [order[uid] for uid in ours_order]
        for reader in ("ours", "rt_utils") if name == "rt_utils" else ("ours",):
            scores = []
            for value in sorted(set(np.unique(labels).tolist()) - {0}):
                truth = labels == value
                if reader == "ours":
                    mask = by_name[names[value]]
                else:
                    mask = np.transpose(theirs.get_roi_mask_by_name(names[value]), (2, 0, 1))[permutation] > 0
                scores.append(2 * np.count_nonzero(truth & mask) / (np.count_nonzero(truth) + np.count_nonzero(mask)))
            entry[f"dice_read_by_{reader}"] = {"min": float(min(scores)), "mean": float(np.mean(scores))}
        result[name] = entry
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    children = {"ours": run_ours, "rt-utils": run_rt_utils, "evaluate": evaluate}
    parser.add_argument("--child", choices=list(children), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        children[args.child](args.folder)
        return 0

    me = [sys.executable, __file__]
    make = [sys.executable, str(Path(__file__).resolve().parent / "bench_export.py")]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        case = json.loads(_timed([*make, "--child", "make", "--shared-data", str(args.shared_data),
                                  "--folder", str(folder)])["stdout"].strip().splitlines()[-1])
        print(f"case: {case['shape']} voxels (k, j, i), {case['labels']} labels, {case['slices']} DICOM files")
        ours = _timed([*me, "--child", "ours", "--folder", str(folder)])
        peer = _timed([*me, "--child", "rt-utils", "--folder", str(folder)])
        counts = json.loads(ours["stdout"].strip().splitlines()[-1])
        for name, timing in (("ours", ours), ("rt-utils", peer)):  # before the slow evaluation
            print(f"{name + ':':9} wall {timing['wall']:.2f} s, CPU {timing['cpu']:.2f} s, "
                  f"peak {timing['peak_mb']:.0f} MB", flush=True)
        quality = json.loads(_timed([*me, "--child", "evaluate", "--folder", str(folder)])["stdout"]
                             .strip().splitlines()[-1])
    print(f"ours: {counts['rois']} ROIs, {counts['contours']} contours, {counts['points']} points")
    print(f"{'':10} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'MB':>6} {'dciodvfy E':>10} "
          f"{'Dice read by ours min/mean':>27} {'by its own reader':>18}")
    for name, timing in (("ours", ours), ("rt_utils", peer)):
        q = quality[name]
        own = q.get("dice_read_by_rt_utils", q["dice_read_by_ours"])
        print(f"{name:10} {timing['wall']:7.2f} {timing['cpu']:7.2f} {timing['peak_mb']:8.0f} {q['size_mb']:6.1f} "
              f"{q['dciodvfy_errors']:10d} {q['dice_read_by_ours']['min']:14.4f} / {q['dice_read_by_ours']['mean']:.4f}"
              f" {own['min']:9.4f} / {own['mean']:.4f}")
    print(f"ratio ours / rt-utils: wall {ours['wall'] / peer['wall']:.2f}×, CPU {ours['cpu'] / peer['cpu']:.2f}×, "
          f"peak memory {ours['peak_mb'] / peer['peak_mb']:.2f}×")
    if quality["rt_utils"]["dciodvfy_first"]:
        print("rt-utils' dciodvfy errors (first kinds):", *quality["rt_utils"]["dciodvfy_first"], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
