"""`aiportal followup` over three time points against the two-study follow-up run once per prior.

The three studies are the ones `Testing/test_followup_pacs.py` builds: a 20 x 180 x 180 crop of
TotalSegmentator's real CT, the later two moved by known rigid motions onto their own frames of reference,
real lesion shapes (pyradiomics) shrunk, grown, removed and added, each study with its DICOM SEG.

- ``ours``: ``aiportal followup --current T2 --prior T0 --prior T1`` (one process: registers both priors,
  tracks the lesions over all three, writes the table, plot and three SRs).
- ``peer``: ``aiportal measure T2 --prior Tn --register`` once per prior (the two-study follow-up a user
  runs by hand today; it compares each prior with the current study only, so it cannot tell a lesion's
  history, nor the nadir by itself).

Each run is its own child process, so its peak RSS is its own. Run: ``.venv/bin/python
bench/bench_followup.py [--shared-data PATH]``. Numbers vary by ±30 % on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATES = ("20240101", "20240401", "20240701")


def _build(shared: Path, root: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "Testing"))
    from scipy import ndimage
    from test_followup_pacs import CROP, _rigid, _study, _with_seg
    from test_followup_tracking import IN_PLANE, place, real_lesion

    from aiportal.followup.load import load_time_point
    from aiportal.runtime import build_headless_runtime
    from aiportal.segmentation import save_segmentation

    runtime = build_headless_runtime()
    shape = (20, CROP[1].stop - CROP[1].start, CROP[2].stop - CROP[2].start)
    a, b, c = (real_lesion(shared, "brain1"), real_lesion(shared, "brain2"), real_lesion(shared, "brain1", False))
    lesion_a = place(shape, a, (4, 30, 30))
    masks = [[lesion_a, place(shape, b, (6, 100, 110))], [ndimage.binary_erosion(lesion_a, IN_PLANE, iterations=2)],
             [ndimage.binary_dilation(lesion_a, IN_PLANE, iterations=3), place(shape, c, (10, 130, 20))]]
    motions = [_rigid(0, (0, 0, 0)), _rigid(3.0, (6, -4, 2)), _rigid(-4.0, (-5, 7, -3))]
    folders = {}
    for date, lesions, motion in zip(DATES, masks, motions, strict=True):
        folder = _with_seg(runtime, _study(shared / "totalseg" / "example_ct_dicom", root / date, date=date,
                                           motion=motion), lesions)
        point = load_time_point(folder, runtime)
        save_segmentation(point.segmentation, root / f"{date}.seg.nrrd")
        folders[date] = folder
    return folders


def _timed(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, and its stdout."""
    script = ("import resource, subprocess, sys, time, json; t = time.monotonic(); "
              "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(json.dumps([time.monotonic() - t, "
              "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode, r.stdout, r.stderr]))")
    done = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds, peak_mb, code, out, err = json.loads(done.stdout)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed: {err}")
    return seconds, peak_mb, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-followup-") as work:
        root = Path(work)
        folders = _build(args.shared_data, root)
        cli = [sys.executable, "-m", "aiportal.cli"]
        ours = _timed([*cli, "followup", "--current", str(folders[DATES[2]]), "--prior", str(folders[DATES[0]]),
                       "--prior", str(folders[DATES[1]]), "--out", str(root / "ours")])
        peer = [_timed([*cli, "measure", str(root / f"{DATES[2]}.seg.nrrd"), "--volume", str(folders[DATES[2]]),
                        "--prior", str(root / f"{date}.seg.nrrd"), "--prior-volume", str(folders[date]), "--register",
                        "--out", str(root / f"peer_{date}")]) for date in DATES[:2]]
        print(ours[2])
        for (_, _, out), date in zip(peer, DATES[:2], strict=True):
            print(f"peer, prior {date}: " + next((line for line in out.splitlines() if "RECIST" in line), "?"))
        peer_s, peer_mb = sum(p[0] for p in peer), max(p[1] for p in peer)
        print(f"{'':28}{'seconds':>10}{'peak MB':>10}")
        print(f"{'ours (3 time points)':28}{ours[0]:10.1f}{ours[1]:10.0f}")
        print(f"{'peer (2 x measure --prior)':28}{peer_s:10.1f}{peer_mb:10.0f}")
        print(f"ratio ours/peer: time {ours[0] / peer_s:.2f}, peak memory {ours[1] / peer_mb:.2f}")


if __name__ == "__main__":
    main()
