"""Loading gantry-tilted and unevenly spaced DICOM series: our regular grid against dcm2niix, side by side.

Per case, each side runs in a fresh child process (its own peak RSS):
- ``ours``: :func:`aiportal.io.dicom_series.read_dicom_series` — scan, decode, sort, resample onto
  the regular grid (default), and the same with ``geometry="acquired"`` (no resampling);
- ``dcm2niix``: Debian's dcm2niix converting the folder to NIfTI (it writes the volume as stacked
  and a tilt-corrected ``*_Tilt_1.nii`` / equidistant ``*_Eq_1.nii`` beside it).
The body (largest region > -300 HU) volume of each corrected output is printed next to the "true"
one where a case has it (re-spaced copies of the 20-slice TotalSegmentator CT: the full series).

Cases: the real Philips series tilted -18.5 degrees; the TotalSegmentator CT with a 15 degree tilt
written into its positions; that CT with a change of spacing (2 mm, then 4 mm) and with 3 slices
missing.

Run: ``.venv/bin/python bench/bench_dicom_geometry.py [--shared-data PATH]`` (needs dcm2niix). Not a
test; prints a table. Times vary by ±30 % on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EVEN = "totalseg/example_ct_dicom"

_OURS = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from scipy import ndimage
sys.path.insert(0, sys.argv[1])
from aiportal.io.dicom_series import read_dicom_series
started = time.perf_counter()
image = read_dicom_series(Path(sys.argv[2]), geometry=sys.argv[3])
seconds = time.perf_counter() - started
labels, _ = ndimage.label(image.array > -300)
sizes = np.bincount(labels.ravel()); sizes[0] = 0
ml = float(sizes.max()) * abs(float(np.linalg.det(image.ijk_to_ras[:3, :3]))) / 1000
status = Path("/proc/self/status").read_text().splitlines()
peak = next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_mb": peak, "body_ml": ml, "shape": list(image.array.shape[::-1])}))
"""


def _body_ml(array: np.ndarray, affine: np.ndarray) -> float:
    from scipy import ndimage

    labels, _ = ndimage.label(array > -300)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return float(sizes.max()) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000


def ours(folder: Path, geometry: str) -> dict:
    output = subprocess.run([sys.executable, "-c", _OURS, str(REPO), str(folder), geometry], check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def dcm2niix(folder: Path, out: Path) -> dict:
    """dcm2niix's time and peak RSS (GNU time's report of the child), and its corrected output's body."""
    import nibabel as nib

    out.mkdir()
    command = ["/usr/bin/time", "-f", "%M", "dcm2niix", "-o", str(out), "-f", "case", "-z", "n", str(folder)]
    if not Path("/usr/bin/time").exists():
        command = command[3:]
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = float(result.stderr.strip().splitlines()[-1]) / 1024 if command[0] == "/usr/bin/time" else float("nan")
    corrected = sorted(out.glob("*_Tilt_*.nii")) + sorted(out.glob("*_Eq_*.nii"))
    path = corrected[0] if corrected else sorted(out.glob("*.nii"))[0]
    image = nib.load(path)
    return {"seconds": seconds, "peak_mb": peak, "body_ml": _body_ml(np.asanyarray(image.dataobj), image.affine),
            "shape": list(image.shape), "file": path.name}


def _sorted_files(folder: Path) -> list[Path]:
    import pydicom

    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                        .ImagePositionPatient[2]))


def _subset(shared: Path, out: Path, keep: list[int]) -> Path:
    files = _sorted_files(shared / EVEN)
    out.mkdir()
    for index in keep:
        shutil.copy(files[index], out / files[index].name)
    return out


def _tilted(shared: Path, out: Path, degrees: float) -> Path:
    import pydicom

    out.mkdir()
    files = _sorted_files(shared / EVEN)
    z0 = float(pydicom.dcmread(files[0], stop_before_pixels=True).ImagePositionPatient[2])
    for path in files:
        dataset = pydicom.dcmread(path)
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + math.tan(math.radians(degrees)) * (z - z0), z]
        dataset.GantryDetectorTilt = degrees
        dataset.save_as(out / path.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if shutil.which("dcm2niix") is None:
        sys.exit("dcm2niix not found: apt-get install dcm2niix")
    shared = args.shared_data
    with tempfile.TemporaryDirectory() as temporary:
        tmp = Path(temporary)
        truth = ours(shared / EVEN, "regular")["body_ml"]
        cases = {
            "Philips tilt -18.5 (real)": (shared / "dcm_qa_ct/Philips-tilt-minus18.5", None),
            "TotalSeg CT, 15° tilt written": (_tilted(shared, tmp / "tilt15", 15.0), None),
            "TotalSeg CT, 2 then 4 mm": (_subset(shared, tmp / "change", [*range(10), 11, 13, 15, 17, 19]), truth),
            "TotalSeg CT, 3 slices missing": (_subset(shared, tmp / "missing", [i for i in range(20)
                                                                               if i not in (6, 13, 14)]), truth),
        }
        print(f"{'case':<32} {'side':<16} {'time s':>7} {'peak MB':>8} {'body mL':>9} {'vs true':>8}  grid")
        for name, (folder, true_ml) in cases.items():
            rows = {"ours (regular)": ours(folder, "regular"), "ours (acquired)": ours(folder, "acquired"),
                    "dcm2niix": dcm2niix(folder, tmp / f"d2n-{len(list(tmp.iterdir()))}")}
            for side, row in rows.items():
                error = f"{100 * (row['body_ml'] / true_ml - 1):+.2f}%" if true_ml else ""
                grid = "x".join(map(str, row["shape"])) + (f" ({row['file']})" if "file" in row else "")
                print(f"{name:<32} {side:<16} {row['seconds']:>7.2f} {row['peak_mb']:>8.0f} {row['body_ml']:>9.1f} "
                      f"{error:>8}  {grid}")
            ratio = rows["ours (regular)"]["seconds"] / rows["dcm2niix"]["seconds"]
            body = rows["ours (regular)"]["body_ml"] / rows["dcm2niix"]["body_ml"] - 1
            print(f"{'':<32} ours/dcm2niix: time x{ratio:.2f}, body {100 * body:+.2f}%")


if __name__ == "__main__":
    main()
