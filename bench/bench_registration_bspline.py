"""Deformable registration against a known warp: ours (B-spline defaults) and elastix's B-spline, same run.

Case: a real CT warped by a known smooth displacement (three Gaussian bumps, up to ~12 mm;
:mod:`aiportal.register.validation`); fixed = the CT, moving = its warped copy. TRE = |estimated − true|
position in the moving image of random body points (> -500 HU) of the fixed CT, median and 95th percentile.

Methods (each in a fresh child process):
- ``ours``: :func:`aiportal.register.register_volumes` with ``kind="bspline"`` and every other option at
  its default (auto metric, geometry initialisation): rigid, affine, then :mod:`aiportal.register.bspline`.
- ``elastix``: itk-elastix 0.25.4 with ``ParameterObject.GetDefaultParameterMap("bspline")`` unchanged (its
  default B-spline map: 4 levels, final grid spacing 10 mm with schedule 2.83/2/1.41/1, adaptive stochastic
  gradient descent, 256 iterations of 2048 random samples, Mattes MI + bending-energy penalty, weights 1/1),
  fixed → moving in one run; TRE from its transform through transformix's deformation field.

Cases: ``ct-3mm`` (totalseg/example_ct.nii.gz, 3 mm), ``ct-6mm`` (same, shrunk x2: what the test runs),
``brain-ct-2mm`` (totalseg/ct_brain_atlas_1mm.nii.gz shrunk x2, "body" = voxels > 0.5, the head),
``mr-t1-2mm`` (the MNI152 T1 shrunk x2, "body" = voxels > 20), ``ct-6mm-inverted`` (ct-6mm with the warped copy's
intensities negated: different contrasts, so auto picks mutual information and ITK's Mattes B-spline runs, not
ours). Each case runs in its own child process; ``peak_mb`` is that child's peak resident memory.

Run: ``nice .venv/bin/python bench/bench_registration_bspline.py [--cases ...] [--methods ...]``.
Timings vary by ±30 % on a shared 2-core machine.
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
sys.path.insert(0, str(REPO))
CASES = {  # name: (file under shared data, shrink factor, body threshold)
    "ct-3mm": ("totalseg/example_ct.nii.gz", 1, -500.0),
    "ct-6mm": ("totalseg/example_ct.nii.gz", 2, -500.0),
    # the atlas is the head on an exact-0 background (81 % of it; tissue from 1); shrinking smooths that background
    # into tiny positive values (1e-40...), so "> 0" took 62 % of the TRE points in empty air: 0.5, the head only
    "brain-ct-2mm": ("totalseg/ct_brain_atlas_1mm.nii.gz", 2, 0.5),
    "mr-t1-2mm": ("mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", 2, 20.0),
    # different contrasts: the warped copy's intensities inverted (bone dark, air bright): auto picks mutual
    # information, which runs ITK's Mattes B-spline, not ours
    "ct-6mm-inverted": ("totalseg/example_ct.nii.gz", 2, -500.0),
}
METHODS = ("ours", "elastix")
POINTS = 3000


def case_files(shared: Path, case: str, folder: Path) -> tuple[Path, Path]:
    import SimpleITK as sitk

    from aiportal.register.validation import known_warp

    name, shrink, _ = CASES[case]
    fixed = sitk.ReadImage(str(shared / name), sitk.sitkFloat32)
    if shrink > 1:
        fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, fixed.GetSpacing()[0] * shrink / 2), [shrink] * 3)
    paths = folder / "fixed.nii.gz", folder / "moving.nii.gz"
    sitk.WriteImage(fixed, str(paths[0]))
    moving = known_warp(fixed)
    if case.endswith("-inverted"):
        moving = -1.0 * moving
    sitk.WriteImage(moving, str(paths[1]))
    return paths


def run_ours(fixed_path: Path, moving_path: Path, points: np.ndarray):
    from aiportal.io.volumes import load_volume
    from aiportal.register import register_volumes
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    fixed, moving = (load_volume(p, runtime).node for p in (fixed_path, moving_path))
    start = time.perf_counter()
    result = register_volumes(fixed, moving, kind="bspline")
    seconds = time.perf_counter() - start
    mapped = np.array([result.itk_transform.TransformPoint(tuple(p)) for p in points])
    return mapped, seconds, {"metric": result.metric, "warnings": result.warnings, "note": result.notes[-1]}


def run_elastix(fixed_path: Path, moving_path: Path, points: np.ndarray):
    import itk
    import SimpleITK as sitk

    fixed, moving = (itk.imread(str(p), itk.F) for p in (fixed_path, moving_path))
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
    start = time.perf_counter()
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False)
    seconds = time.perf_counter() - start
    field = itk.transformix_deformation_field(moving, result, output_directory=str(fixed_path.parent))
    field_image = sitk.GetImageFromArray(itk.array_from_image(field).astype(np.float64), isVector=True)
    reference = sitk.ReadImage(str(fixed_path))
    field_image.CopyInformation(reference)
    transform = sitk.DisplacementFieldTransform(field_image)
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in points])
    return mapped, seconds, {"grid_mm": result.GetParameterMap(0)["GridSpacing"][:1]}


def child(case: str, method: str, shared: Path) -> dict:
    import SimpleITK as sitk

    from aiportal.register.validation import body_points, displacement, true_fixed_to_moving

    with tempfile.TemporaryDirectory() as folder:
        fixed_path, moving_path = case_files(shared, case, Path(folder))
        fixed = sitk.ReadImage(str(fixed_path))
        points = body_points(fixed, CASES[case][2], POINTS)
        truth = true_fixed_to_moving(points, fixed)
        mapped, seconds, details = {"ours": run_ours, "elastix": run_elastix}[method](fixed_path, moving_path, points)
    errors = np.linalg.norm(mapped - truth, axis=1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    true_shift = np.linalg.norm(displacement(truth, fixed), axis=1)
    moved = true_shift >= 2.0  # where the warp is more than a voxel-fraction: the part that tests the warp
    return {"case": case, "method": method, "seconds": seconds, "tre_median_mm": float(np.median(errors)),
            "tre_median_moved_mm": float(np.median(errors[moved])), "moved_fraction": float(moved.mean()),
            "tre_p95_mm": float(np.percentile(errors, 95)), "tre_max_mm": float(errors.max()),
            "true_median_mm": float(np.median(true_shift)), "true_max_mm": float(true_shift.max()),
            "peak_mb": peak_mb, **details}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.shared_data)))
        return 0
    rows = []
    for case in args.cases:
        for method in args.methods:
            done = subprocess.run([sys.executable, __file__, "--shared-data", str(args.shared_data), "--child", case,
                                   method], capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                print(f"{case} {method}: FAILED {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'case':<14} {'method':<8} {'time s':>7} {'x ours':>7} {'TRE med':>8} {'p95':>6} {'max':>6} "
          f"{'true med/max mm':>16} {'peak MB':>8} {'TRE med where moved >= 2 mm':>28}")
    for row in rows:
        ours = next((r for r in rows if r["case"] == row["case"] and r["method"] == "ours"), None)
        ratio = row["seconds"] / ours["seconds"] if ours else float("nan")
        print(f"{row['case']:<14} {row['method']:<8} {row['seconds']:7.1f} {ratio:7.2f} "
              f"{row['tre_median_mm']:8.2f} {row['tre_p95_mm']:6.2f} {row['tre_max_mm']:6.2f} "
              f"{row['true_median_mm']:7.1f}/{row['true_max_mm']:.1f} {row['peak_mb']:8.0f} "
              f"{row['tre_median_moved_mm']:10.2f} ({100 * row['moved_fraction']:.0f} % of points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
