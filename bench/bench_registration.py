"""Registration: ours (``register_volumes``) against elastix's and SimpleITK's defaults, on the same pairs, same run.

Methods (each run in a fresh child process, so its peak RSS is its own):
- ``ours``: :func:`aiportal.register.register_volumes` (SimpleITK, our settings), images loaded into a Slicer scene.
- ``elastix``: itk-elastix (``pip install itk-elastix``) with ``GetDefaultParameterMap("rigid" | "affine")``
  unchanged: 4 levels, adaptive stochastic gradient descent, Mattes MI, 2048 random samples per iteration.
- ``elastix-init``: the same defaults plus ``AutomaticTransformInitialization`` (geometric centre; centre of
  gravity for the masks): the only setting ours and ``sitk`` have that elastix's defaults lack.
- ``sitk``: SimpleITK's textbook setup (its registration notebooks): geometry-centred initialiser, Mattes MI
  with 50 bins on 1 % random samples, gradient descent (learning rate 1, 100 iterations), scales from
  physical shift, 3 levels (shrink 4/2/1, smoothing 2/1/0 mm).

Pairs:
- ``nibabel-rigid``: ``anatomical.nii`` → ``reoriented_anat_moved.nii`` (known rigid motion: nibabel
  ``euler2mat(0.1, 0.2, 0.3)`` = z, y, x angles in rad, translation (3, 4, 5) mm). Reports the recovered
  angles and translation, and TRE over 2000 head voxels mapped by the true and the found motion.
- ``lung-masks-affine``: elastix's 3DCT_lung baseline → follow-up lung masks (the follow-up CT is not in the
  data), as clipped signed distance maps, the dilated masks restricting the metric for every method; TRE on
  elastix's 10 landmark pairs. Also prints how far elastix's own regression result image is from the
  baseline CT at those landmarks (its residual; needs no registration of ours), and the landmark TRE of
  elastix's own affine regression baselines, which saw the full CT pair (:data:`ELASTIX_AFFINE_BASELINES`).

Run: ``.venv/bin/python bench/bench_registration.py [--shared-data PATH] [--pairs ...] [--methods ...]``.
Not a test; prints a table and ratios to ours. Timings vary by ±30 % (more under load) on a shared 2-core machine.
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
PAIRS = ("nibabel-rigid", "lung-masks-affine")
METHODS = ("ours", "elastix", "elastix-init", "sitk")
TRUE_ANGLES_ZYX = (0.1, 0.2, 0.3)
TRUE_TRANSLATION = (3.0, 4.0, 5.0)
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
DISTANCE_CLIP_MM = 20.0
MASK_DILATION_VOXELS = 3
# elastix's own affine results for the 3DCT_lung CT pair (fixed baseline LPS -> moving follow-up LPS), as
# stored in SuperElastix/elastix (Apache-2.0) Testing: x' = A (x - centre) + centre + t, A row-major.
# The follow-up CT they were made from is not in ../shared/data, so only their parameters can be compared.
ELASTIX_LUNG_CENTRE = (-75.9649967928, -43.8039956112, -1274.5)
ELASTIX_AFFINE_BASELINES = {
    "Baselines/TransformParameters_3DCT_lung.NC.affine.ASGD.001.txt @ 9b9e19a7": (
        1.045432, -0.013710, -0.015656, 0.035530, 1.061084, -0.009338, 0.027828, 0.019193, 1.033736,
        -4.171211, -8.244301, 34.500010),
    "Data/transformparameters.3DCT_lung.affine.txt @ b07dc302 (start of 3DCT_lung.example)": (
        1.036712, -0.007980, -0.008800, 0.021786, 1.054137, -0.008197, 0.004715, 0.003528, 1.036974,
        -4.095423, -7.386937, 35.655217),
}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- inputs, shared by every method
def pair_files(shared: Path, pair: str, folder: Path) -> dict:
    """The two images (and masks) of a pair as files every method can read; lung masks become distance maps."""
    if pair == "nibabel-rigid":
        data = shared / "nibabel-moved"
        return {"fixed": data / "anatomical.nii", "moving": data / "reoriented_anat_moved.nii", "kind": "rigid"}
    import SimpleITK as sitk
    from scipy import ndimage

    data = shared / "elastix-lung" / "Testing" / "Data"
    files = {"kind": "affine", "fixed_points": data / "3DCT_lung_baseline.txt",
             "moving_points": data / "3DCT_lung_followup.txt"}
    for role, name in (("fixed", "3DCT_lung_baseline_mask.mha"), ("moving", "3DCT_lung_followup_mask.mha")):
        mask_image = sitk.ReadImage(str(data / name))
        mask = sitk.GetArrayFromImage(mask_image) > 0
        spacing = mask_image.GetSpacing()[::-1]
        signed = ndimage.distance_transform_edt(mask, sampling=spacing) - ndimage.distance_transform_edt(
            ~mask, sampling=spacing)
        for key, array in ((role, np.clip(signed, -DISTANCE_CLIP_MM, DISTANCE_CLIP_MM) + DISTANCE_CLIP_MM),
                           (f"{role}_mask", ndimage.binary_dilation(mask, iterations=MASK_DILATION_VOXELS))):
            image = sitk.GetImageFromArray(array.astype(np.float32 if key == role else np.uint8))
            image.CopyInformation(mask_image)
            files[key] = folder / f"{key}.mha"
            sitk.WriteImage(image, str(files[key]))
        files[f"{role}_geometry"] = data / name
    return files


def landmarks_lps(files: dict) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    from aiportal.register.landmarks import read_elastix_points

    out = []
    for role in ("fixed", "moving"):
        geometry = sitk.ReadImage(str(files[f"{role}_geometry"]))
        out.append(np.array([geometry.TransformContinuousIndexToPhysicalPoint(p.tolist())
                             for p in read_elastix_points(files[f"{role}_points"]).values]))
    return out[0], out[1]


# --------------------------------------------------------------------------- the three methods
def run_ours(files: dict):
    """Returns (fixed LPS → moving LPS transform, seconds of registration)."""
    from aiportal.io.volumes import array_from_volume, load_volume
    from aiportal.register import register_volumes
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    fixed, moving = (load_volume(files[role], runtime).node for role in ("fixed", "moving"))
    options = {"kind": files["kind"], "metric": "mean_squares"}
    if "fixed_mask" in files:  # masks on the same grids as the distance maps
        options |= {"initialization": "moments",
                    "fixed_mask": array_from_volume(load_volume(files["fixed_mask"], runtime).node) > 0,
                    "moving_mask": array_from_volume(load_volume(files["moving_mask"], runtime).node) > 0}
    start_rss, start = rss_mb(), time.perf_counter()
    result = register_volumes(fixed, moving, **options)
    return result.itk_transform, time.perf_counter() - start, start_rss


def run_sitk(files: dict):
    import SimpleITK as sitk

    fixed, moving = (sitk.ReadImage(str(files[role]), sitk.sitkFloat32) for role in ("fixed", "moving"))
    start_rss, start = rss_mb(), time.perf_counter()
    linear = sitk.Euler3DTransform() if files["kind"] == "rigid" else sitk.AffineTransform(3)
    initial = sitk.CenteredTransformInitializer(fixed, moving, linear, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.01, seed=1)
    if "fixed_mask" in files:
        method.SetMetricFixedMask(sitk.ReadImage(str(files["fixed_mask"])))
        method.SetMetricMovingMask(sitk.ReadImage(str(files["moving_mask"])))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=100, convergenceMinimumValue=1e-6,
                                         convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed, moving)
    return transform, time.perf_counter() - start, start_rss


def run_elastix(files: dict, centred: bool = False):
    import itk
    import SimpleITK as sitk

    fixed, moving = (itk.imread(str(files[role]), itk.F) for role in ("fixed", "moving"))
    masks = {}
    if "fixed_mask" in files:
        masks = {"fixed_mask": itk.imread(str(files["fixed_mask"]), itk.UC),
                 "moving_mask": itk.imread(str(files["moving_mask"]), itk.UC)}
    parameters = itk.ParameterObject.New()
    parameter_map = parameters.GetDefaultParameterMap(files["kind"])
    if centred:  # the one change from the defaults: start centred, as ours and sitk do
        parameter_map["AutomaticTransformInitialization"] = ["true"]
        parameter_map["AutomaticTransformInitializationMethod"] = ["CenterOfGravity" if masks else "GeometricalCenter"]
    parameters.AddParameterMap(parameter_map)
    start_rss, start = rss_mb(), time.perf_counter()
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False,
                                                **masks)
    seconds = time.perf_counter() - start
    found = result.GetParameterMap(0)
    values = [float(v) for v in found["TransformParameters"]]
    center = [float(v) for v in found["CenterOfRotationPoint"]]
    if found["Transform"][0] == "EulerTransform":  # elastix's Euler3D is ITK's (same angle order, ComputeZYX false)
        transform = sitk.Euler3DTransform(center, *values[:3], values[3:])
    else:
        transform = sitk.AffineTransform(values[:9], values[9:], center)
    return transform, seconds, start_rss


# --------------------------------------------------------------------------- accuracy
def matrix_lps(transform) -> np.ndarray:
    """4x4 fixed LPS → moving LPS of a linear ITK transform (composites unwrapped)."""
    import SimpleITK as sitk

    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetBackTransform() if transform.GetNumberOfTransforms() == 1 else transform
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.array(transform.TransformPoint(tuple(axis))) - origin for axis in np.eye(3)]
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = np.stack(columns, axis=1), origin
    return matrix


def accuracy(pair: str, files: dict, transform) -> dict:
    import SimpleITK as sitk
    from nibabel.affines import from_matvec
    from nibabel.eulerangles import euler2mat, mat2euler

    if pair == "nibabel-rigid":
        true = from_matvec(euler2mat(*TRUE_ANGLES_ZYX), TRUE_TRANSLATION)  # fixed RAS → moving RAS
        found = FLIP @ matrix_lps(transform) @ FLIP
        fixed = sitk.ReadImage(str(files["fixed"]))
        voxels = sitk.GetArrayFromImage(fixed)
        head = np.argwhere(voxels > np.percentile(voxels, 40))
        head = head[np.random.default_rng(1).choice(len(head), 2000, replace=False)]
        points = np.array([fixed.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in head])
        ras = np.c_[points * FLIP.diagonal()[:3], np.ones(len(points))]
        errors = np.linalg.norm((ras @ found.T - ras @ true.T)[:, :3], axis=1)
        residual = found[:3, :3].T @ true[:3, :3]
        return {"tre_mean_mm": float(errors.mean()), "tre_max_mm": float(errors.max()),
                "rotation_error_deg": float(np.degrees(np.arccos(np.clip((np.trace(residual) - 1) / 2, -1, 1)))),
                "angles_zyx_rad": [round(float(a), 4) for a in mat2euler(found[:3, :3])],
                "translation_mm": [round(float(t), 3) for t in found[:3, 3]]}
    fixed_points, moving_points = landmarks_lps(files)
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in fixed_points])
    errors = np.linalg.norm(mapped - moving_points, axis=1)
    return {"tre_mean_mm": float(errors.mean()), "tre_max_mm": float(errors.max()),
            "tre_per_point_mm": [round(float(e), 2) for e in errors]}


def child(pair: str, method: str, shared: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        files = pair_files(shared, pair, Path(folder))
        runner = {"ours": run_ours, "elastix": run_elastix, "sitk": run_sitk,
                  "elastix-init": lambda f: run_elastix(f, centred=True)}[method]
        transform, seconds, start_rss = runner(files)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"pair": pair, "method": method, "seconds": seconds, "peak_rss_mb": peak,
                "peak_above_start_mb": peak - start_rss, **accuracy(pair, files, transform)}


def elastix_stored_residual(shared: Path) -> np.ndarray:
    """How far elastix's regression result image lies from the baseline CT at each baseline landmark (mm)."""
    import SimpleITK as sitk

    from aiportal.register.landmarks import read_elastix_points, residual_shift_mm

    testing = shared / "elastix-lung" / "Testing"
    geometry = sitk.ReadImage(str(testing / "Data" / "3DCT_lung_baseline_mask.mha"))
    points = np.array([geometry.TransformContinuousIndexToPhysicalPoint(index.tolist())
                       for index in read_elastix_points(testing / "Data" / "3DCT_lung_baseline.txt").values])
    return residual_shift_mm(sitk.ReadImage(str(testing / "Data" / "3DCT_lung_baseline_small.mha")),
                             sitk.ReadImage(str(testing / "Baselines" / "3DCT_lung.mha")), points)


def elastix_baseline_tre(shared: Path) -> dict[str, np.ndarray]:
    """Landmark TRE (mm) of each of elastix's stored affine results for the lung CT pair."""
    with tempfile.TemporaryDirectory() as folder:
        fixed, moving = landmarks_lps(pair_files(shared, "lung-masks-affine", Path(folder)))
    centre = np.array(ELASTIX_LUNG_CENTRE)
    out = {}
    for name, parameters in ELASTIX_AFFINE_BASELINES.items():
        matrix, shift = np.array(parameters[:9]).reshape(3, 3), np.array(parameters[9:])
        out[name] = np.linalg.norm((fixed - centre) @ matrix.T + centre + shift - moving, axis=1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--child", nargs=2, metavar=("PAIR", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.shared_data)))
        return 0
    rows = []
    for pair in args.pairs:
        for method in args.methods:
            done = subprocess.run([sys.executable, __file__, "--shared-data", str(args.shared_data), "--child", pair,
                                   method], capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                reason = [line for line in done.stderr.splitlines() if "ERROR" in line or "Error" in line][-1:]
                print(f"{pair} {method}: FAILED {reason}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'pair':<18} {'method':<12} {'time s':>7} {'x ours':>7} {'TRE mean':>9} {'TRE max':>8} "
          f"{'peak MB':>8} {'+MB':>6}  details")
    for row in rows:
        ours = next((r for r in rows if r["pair"] == row["pair"] and r["method"] == "ours"), None)
        ratio = row["seconds"] / ours["seconds"] if ours else float("nan")
        details = {k: v for k, v in row.items() if k in ("angles_zyx_rad", "translation_mm", "rotation_error_deg",
                                                          "tre_per_point_mm")}
        print(f"{row['pair']:<18} {row['method']:<12} {row['seconds']:7.2f} {ratio:7.2f} {row['tre_mean_mm']:9.2f} "
              f"{row['tre_max_mm']:8.2f} {row['peak_rss_mb']:8.0f} {row['peak_above_start_mb']:6.0f}  {details}")
    print(f"truth nibabel-rigid: angles_zyx_rad {list(TRUE_ANGLES_ZYX)}, translation_mm {list(TRUE_TRANSLATION)}")
    if "lung-masks-affine" in args.pairs:
        residual = elastix_stored_residual(args.shared_data)
        print(f"elastix's stored 3DCT_lung result vs baseline CT at the landmarks: mean {residual.mean():.2f} mm, "
              f"max {residual.max():.2f} mm (its own regression run used the follow-up CT, not in the data)")
        for name, tre in elastix_baseline_tre(args.shared_data).items():
            print(f"elastix's own affine result on the CT pair, {name}: TRE mean {tre.mean():.2f} mm, "
                  f"max {tre.max():.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
