"""``aiportal register``: align a moving volume to a fixed one and write the transform (and the resampled moving
volume, the checks and warnings in registration.json).

Beside the ``register`` package, not in it: the package's ``__init__`` loads SimpleITK and the registration
code (~1.4 s), which every ``aiportal`` command would pay when building its parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_register_command(commands) -> None:
    from aiportal.cli import add_nan_as

    register = commands.add_parser("register", help="align a moving volume to a fixed one")
    register.add_argument("fixed", type=Path, help="fixed volume: DICOM folder/file, NIfTI or NRRD")
    register.add_argument("moving", type=Path, help="moving volume")
    register.add_argument("--type", choices=["rigid", "affine", "bspline"], default="rigid")
    register.add_argument("--metric", choices=["auto", "mean_squares", "mutual_information"], default="auto",
                          help="auto: mean squares for the same contrast (both CT, or intensities that correlate "
                               "after a mutual-information alignment), else mutual information; then both checks")
    register.add_argument("--init", choices=["geometry", "moments", "none"], default="geometry",
                          help="initial alignment: image centres, intensity moments, or scanner coordinates")
    register.add_argument("--levels", type=int, default=3, help="multi-resolution levels")
    register.add_argument("--landmarks", nargs=2, type=Path, metavar=("FIXED_PTS", "MOVING_PTS"),
                          help="corresponding points (elastix point files, 'index' or 'point'): report TRE in mm")
    register.add_argument("--fixed-series", help="SeriesInstanceUID in a fixed folder with several series")
    register.add_argument("--moving-series", help="SeriesInstanceUID in a moving folder with several series")
    register.add_argument("--out", type=Path, required=True, help="output folder")
    register.add_argument("--no-resample", action="store_true", help="do not write the resampled moving volume")
    register.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    add_nan_as(register)
    register.set_defaults(handler=cmd_register)


def cmd_register(args: argparse.Namespace) -> int:
    from aiportal.io.volumes import load_volume, save_volume
    from aiportal.outputs import check_output_folder, staged_output
    from aiportal.register import apply_to_scene, read_landmark_pairs, register_volumes, resample, save_transform
    from aiportal.runtime import get_runtime

    outputs = ["transform.h5", "registration.json", *([] if args.no_resample else ["moving_registered.nrrd"])]
    check_output_folder(args.out, outputs, args.overwrite)
    from aiportal.cli import TerminalProgress, print_warnings

    progress = TerminalProgress()
    progress(0.0, f"loading {args.fixed} and {args.moving}")
    fixed_loaded = load_volume(args.fixed, series_uid=args.fixed_series, nan_as=args.nan_as)
    moving_loaded = load_volume(args.moving, series_uid=args.moving_series, nan_as=args.nan_as)
    print_warnings(fixed_loaded.warnings + moving_loaded.warnings)
    fixed, moving = fixed_loaded.node, moving_loaded.node
    # read before registering, so a bad point file fails fast
    landmarks = read_landmark_pairs(*args.landmarks, fixed, moving) if args.landmarks else None
    result = register_volumes(fixed, moving, kind=args.type, metric=args.metric, initialization=args.init,
                              levels=args.levels, progress=progress, landmarks=landmarks)
    runtime = get_runtime()
    with staged_output(args.out, overwrite=args.overwrite) as staging:
        save_transform(apply_to_scene(runtime, result, fixed, moving, observe=False), staging / "transform.h5")
        if not args.no_resample:
            save_volume(resample(runtime, result, fixed, moving), staging / "moving_registered.nrrd")
        (staging / "registration.json").write_text(json.dumps(
            {"fixed": str(args.fixed), "moving": str(args.moving), **result.summary()}, indent=2))
    picked = f" ({result.metric_choice.reason})" if result.metric_choice else ""
    print(f"{result.kind} registration of {args.moving} to {args.fixed}: {result.metric}{picked}, metric "
          f"{result.final_metric:.5g} after {result.iterations} iterations in {result.elapsed_s:.1f} s")
    if result.tre:
        print(f"landmark TRE: mean {result.tre.mean_mm:.2f} mm, max {result.tre.max_mm:.2f} mm over "
              f"{len(result.tre.per_point_mm)} points (before: {result.unregistered_tre.mean_mm:.2f} mm)")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    print(f"wrote {args.out / 'transform.h5'} (moving → fixed, Slicer's transform-to-parent)")
    return 0
