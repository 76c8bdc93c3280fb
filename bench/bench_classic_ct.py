"""Time ``classic-ct`` on a 512x512x300 phantom and on the real test CTs (wall time, peak RSS).

Run: ``.venv/bin/python bench/bench_classic_ct.py [--shared-data PATH]``. Not a test: it prints numbers.
Each case runs in a fresh child process so that peak RSS belongs to that case alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


PHANTOM_CASE = "phantom-512x512x300"


def _save_phantom(folder: Path) -> Path:
    """Made once in the parent: its generation must not count toward the segmentation's peak RSS."""
    from aiportal.sample import make_ct_phantom

    phantom = make_ct_phantom(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7))
    path = folder / "phantom.npz"
    np.savez(path, hu=phantom.hu, ijk_to_ras=phantom.ijk_to_ras)
    return path


def _load(case: str, shared: Path, phantom: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if case == PHANTOM_CASE and phantom is not None:
        with np.load(phantom) as saved:
            return saved["hu"], saved["ijk_to_ras"]
    if case == "example_ct_dicom":
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared / "totalseg" / case)))
        image = reader.Execute()
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
        matrix[:3, 3] = image.GetOrigin()
        return sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix  # LPS -> RAS
    import nibabel as nib

    img = nib.load(shared / "totalseg" / case)
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


def _run(case: str, shared: Path, phantom: Path | None, queue) -> None:
    from aiportal.models.classic_ct import segment_classic_ct

    hu, ijk_to_ras = _load(case, shared, phantom)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    segment_classic_ct(hu, ijk_to_ras)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    queue.put((case, hu.shape, seconds, peak_mb, rss_before / 1024, hu.nbytes / 2**20))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cases", nargs="*", default=[
        PHANTOM_CASE, "example_ct.nii.gz", "example_ct_sm.nii.gz", "example_ct_dicom"])
    args = parser.parse_args()
    context = mp.get_context("spawn")
    scratch = tempfile.TemporaryDirectory()
    phantom = None
    if PHANTOM_CASE in args.cases:  # made in a child: a fork inherits the parent's peak RSS
        phantom = Path(scratch.name) / "phantom.npz"
        maker = context.Process(target=_save_phantom, args=(Path(scratch.name),))
        maker.start()
        maker.join()
    print(f"{'case':24s} {'shape (k,j,i)':18s} {'seconds':>8s} {'peak RSS MB':>12s} {'RSS before':>11s} "
          f"{'input MB':>9s}")
    for case in args.cases:
        queue = context.Queue()
        worker = context.Process(target=_run, args=(case, args.shared_data, phantom, queue))
        worker.start()
        worker.join()
        if worker.exitcode != 0:
            print(f"{case:24s} failed (exit {worker.exitcode})")
            continue
        name, shape, seconds, peak, before, input_mb = queue.get()
        print(f"{name:24s} {str(shape):18s} {seconds:8.2f} {peak:12.0f} {before:11.0f} {input_mb:9.0f}")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
