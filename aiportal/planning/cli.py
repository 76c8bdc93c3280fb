"""``aiportal plan proximity|trajectory|margin|resect|angle|bundle|outcome``.

:func:`add_planning_commands` registers them on the main parser (one line in :mod:`aiportal.cli`).
Every command prints one line per result (alerts marked ``ALERT``) or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from aiportal.errors import InputError


def _thresholds(pairs: list[str]) -> dict[str, float]:
    thresholds = {}
    for pair in pairs or []:
        name, _, value = pair.rpartition("=")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise InputError(f"threshold {pair!r} is not NAME=MM", "write e.g. --threshold aorta=5") from None
    return thresholds


def _grid(args: argparse.Namespace, path: Path | None = None, volume: Path | None = None):
    from aiportal.planning.grid import load_label_grid

    return load_label_grid(path or args.segmentation, class_map=args.class_map, task=args.task,
                           volume=volume or args.volume)


def _emit(args: argparse.Namespace, result, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(lines))
    return 0


def _proximity_rows(args, grid) -> list[dict]:
    from aiportal.planning.proximity import proximity_table

    rows = proximity_table(grid, args.target, args.structures, _thresholds(args.threshold), args.default_threshold)
    return [row.as_dict() for row in rows]


def _proximity_line(row: dict) -> str:
    flag = f"  ALERT (< {row['threshold_mm']:g} mm)" if row["alert"] else ""
    touching = " touching" if row["gap_mm"] == 0 and row["overlap_ml"] == 0 else ""
    overlap = f" overlap {row['overlap_ml']:.2f} ml" if row["overlap_ml"] else ""
    return (f"{row['structure']:<32} gap {row['gap_mm']:7.2f} mm  centres {row['centre_distance_mm']:7.2f} mm"
            f"{touching}{overlap}{flag}")


def cmd_proximity(args: argparse.Namespace) -> int:
    rows = _proximity_rows(args, _grid(args))
    return _emit(args, rows, [f"closest approach to {args.target}:"] + [_proximity_line(r) for r in rows])


def _trajectory(args, grid, entry, target) -> dict:
    from aiportal.planning.trajectory import TrajectoryPlanner

    planner = TrajectoryPlanner(grid, args.structures, _thresholds(args.threshold), args.default_threshold)
    return planner.check(entry, target, args.radius).as_dict()


def _trajectory_lines(report: dict) -> list[str]:
    lines = [f"path {report['length_mm']:.1f} mm, tool radius {report['tool_radius_mm']:g} mm:"]
    for row in report["structures"]:
        inside = (f"  enters at {row['first_entry_mm']:.1f} mm, {row['length_inside_mm']:.1f} mm inside"
                  if row["entered"] else "")
        lines.append(f"{row['structure']:<32} clearance {row['clearance_mm']:7.2f} mm at {row['at_path_mm']:6.1f} mm"
                     f"{inside}{'  ALERT' if row['alert'] else ''}")
    return lines


def cmd_trajectory(args: argparse.Namespace) -> int:
    report = _trajectory(args, _grid(args), args.entry, args.target_point)
    return _emit(args, report, _trajectory_lines(report))


def cmd_margin(args: argparse.Namespace) -> int:
    from aiportal.planning.resection import margin_shell

    shell, _ = margin_shell(_grid(args), args.target, args.margin)
    lines = [f"{args.target} + {args.margin:g} mm: shell {shell.shell_ml:.2f} ml, touches:"]
    lines += [f"  {name:<32} {ml:9.3f} ml" for name, ml in shell.touches.items()] or ["  nothing"]
    return _emit(args, asdict(shell), lines)


def _planes(values: list[list[float]] | None):
    from aiportal.planning.resection import Plane

    return [Plane(tuple(v[:3]), tuple(v[3:])) for v in values or []]


def _surface(args: argparse.Namespace, grid):
    """The drawn cut surface of --surface-point / --surface-markups, removing the side of --surface-side
    (default: the target's centre), or None."""
    import numpy as np

    from aiportal.planning.surface_cut import CutSurface, read_markups_points

    points = list(args.surface_point or [])
    if args.surface_markups:
        points += read_markups_points(args.surface_markups).tolist()
    if not points:
        return None
    if args.surface_side:
        side = args.surface_side
    elif args.target:
        side = grid.ijk_to_ras_points(np.argwhere(grid.mask(args.target))).mean(axis=0)
    else:
        raise InputError("a drawn cut surface needs the side to remove", "pass --surface-side R A S or --target")
    return CutSurface(points, side)


def cmd_resect(args: argparse.Namespace) -> int:
    from aiportal.planning.resection import resect

    grid = _grid(args)
    result, _ = resect(grid, args.organ, planes=_planes(args.plane), combine=args.combine,
                       target=args.target, margin_mm=args.margin, surface=_surface(args, grid))
    lines = [f"{result.organ} ({result.method}): {result.organ_ml:.1f} ml, resected {result.resected_ml:.1f} ml, "
             f"remnant {result.remnant_ml:.1f} ml = {result.remnant_percent:.1f} %"]
    if result.target_margin_mm is not None:
        lines.append(f"{result.target} margin to the cut: {result.target_margin_mm:.1f} mm")
    lines += [f"WARNING: {w}" for w in result.warnings]
    return _emit(args, result.as_dict(), lines)


def cmd_angle(args: argparse.Namespace) -> int:
    from aiportal.planning.geometry import measure_angle

    lines = [(v[:3], v[3:]) for v in args.line or []]
    planes = [(v[:3], v[3:]) for v in args.plane or []]
    result = measure_angle(lines, planes)
    return _emit(args, result, [f"{result['kind']} angle: {result['angle_deg']:.2f}°"])


def _plan_spec(args: argparse.Namespace, grid):
    from aiportal.planning.plan_export import PlanSpec

    return PlanSpec(target=args.target, structures=args.structures, thresholds=_thresholds(args.threshold),
                    default_threshold_mm=args.default_threshold,
                    trajectories=[(v[:3], v[3:]) for v in args.trajectory or []], tool_radius_mm=args.radius,
                    organ=args.organ, planes=_planes(args.plane), combine=args.combine, margin_mm=args.margin,
                    surface=_surface(args, grid) if args.organ else None)


def cmd_bundle(args: argparse.Namespace) -> int:
    from aiportal.planning.plan_export import require_empty_folder, write_plan_bundle
    from aiportal.runtime import get_runtime

    require_empty_folder(args.out, args.overwrite)
    grid = _grid(args)
    segments = args.segments or ([args.target] if args.target else []) + list(args.structures or []) + (
        [args.organ] if args.organ else [])  # none named: every segment
    dicom_volume, dicom_options = None, None
    if args.dicom:
        from aiportal.io.volumes import load_volume

        dicom_volume = load_volume(args.dicom, get_runtime())
        if dicom_volume.source is None:
            raise InputError(f"--dicom {args.dicom} is not a DICOM series", "give the series the plan was made on")
        dicom_options = {"task": args.task, "snomed_csv": args.snomed_csv, "assign_missing_uids": args.assign_uids,
                         "observer_person": args.observer}
    manifest = write_plan_bundle(grid, args.out, _plan_spec(args, grid), segments=segments or None,
                                 coordinates=args.coordinates.upper(), dicom_volume=dicom_volume,
                                 dicom_options=dicom_options)
    return _emit(args, manifest, [f"plan bundle in {args.out}: {len(manifest['files'])} files + plan.json"]
                 + [f"WARNING: {w}" for w in manifest["warnings"]])


def cmd_outcome(args: argparse.Namespace) -> int:
    from aiportal.planning.outcome import outcome_lines, plan_outcome
    from aiportal.planning.outcome_registration import outcome_frame

    planned = _grid(args)
    actual = _grid(args, args.actual, args.actual_image)  # a .seg.nrrd on the post-operative CT
    frame = outcome_frame(args.planned_image, args.actual_image, args.register)

    def pair(values):
        return (values[:3], values[3:]) if values else None

    result = plan_outcome(planned, actual, frame, args.structures,
                          planned_trajectory=pair(args.planned_trajectory),
                          actual_trajectory=pair(args.actual_trajectory),
                          planned_plane=pair(args.planned_plane), actual_plane=pair(args.actual_plane))
    return _emit(args, result, outcome_lines(result))


def _common(parser: argparse.ArgumentParser, segmentation: bool = True) -> None:
    if segmentation:
        parser.add_argument("segmentation", type=Path,
                            help="label map (NIfTI/NRRD; names from a TotalSegmentator class map) or .seg.nrrd")
        parser.add_argument("--volume", type=Path, help="the image a .seg.nrrd was made on (its grid)")
        parser.add_argument("--class-map", type=Path, help="TotalSegmentator class map JSON {task: {value: name}} "
                                                           "(default: the installed TotalSegmentator's)")
        parser.add_argument("--task", default="total", help="task in the class map")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _structures(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--structures", nargs="+", help="at-risk segments (default: every other segment)")
    parser.add_argument("--threshold", action="append", metavar="NAME=MM", help="alert below this distance")
    parser.add_argument("--default-threshold", type=float, metavar="MM", help="alert threshold for the rest")


def _resection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plane", nargs=6, type=float, action="append", metavar=("R", "A", "S", "NR", "NA", "NS"),
                        help="cut plane: a RAS point and the normal pointing at the part removed; repeatable")
    parser.add_argument("--combine", choices=["all", "any"], default="all",
                        help="several planes: remove their intersection (wedge, default) or union")
    parser.add_argument("--margin", type=float, metavar="MM", help="without planes: remove the target + this margin")
    parser.add_argument("--surface-point", nargs=3, type=float, action="append", metavar=("R", "A", "S"),
                        help="a point of a drawn cut surface (thin-plate spline through ≥ 3 points); repeatable")
    parser.add_argument("--surface-markups", type=Path, help="the cut surface points as a Slicer .mrk.json")
    parser.add_argument("--surface-side", nargs=3, type=float, metavar=("R", "A", "S"),
                        help="a point on the side the drawn surface removes (default: the target's centre)")


def add_planning_commands(commands) -> None:
    """Add ``aiportal plan ...`` to the main parser's sub-commands."""
    plan = commands.add_parser("plan", help="surgical planning: proximity, trajectories, margins, resection, "
                                            "angles, plan bundle, plan vs outcome")
    sub = plan.add_subparsers(dest="plan_command", required=True)

    proximity = sub.add_parser("proximity", help="closest approach of each structure to a target, nearest first")
    _common(proximity)
    proximity.add_argument("--target", required=True)
    _structures(proximity)
    proximity.set_defaults(handler=cmd_proximity)

    trajectory = sub.add_parser("trajectory", help="a straight path checked against at-risk structures")
    _common(trajectory)
    trajectory.add_argument("--entry", nargs=3, type=float, required=True, metavar=("R", "A", "S"))
    trajectory.add_argument("--target", dest="target_point", nargs=3, type=float, required=True,
                            metavar=("R", "A", "S"))
    trajectory.add_argument("--radius", type=float, default=0.0, help="tool radius in mm")
    _structures(trajectory)
    trajectory.set_defaults(handler=cmd_trajectory)

    margin = sub.add_parser("margin", help="a margin shell around a segment and what it touches")
    _common(margin)
    margin.add_argument("--target", required=True)
    margin.add_argument("--margin", type=float, required=True, metavar="MM")
    margin.set_defaults(handler=cmd_margin)

    resect = sub.add_parser("resect", help="virtual resection: resected and remnant volumes, remnant percentage")
    _common(resect)
    resect.add_argument("--organ", required=True)
    resect.add_argument("--target", help="tumour: its margin to the cut (with --plane) or removed with --margin")
    _resection_arguments(resect)
    resect.set_defaults(handler=cmd_resect)

    angle = sub.add_parser("angle", help="angle between two lines, two planes, or a line and a plane")
    _common(angle, segmentation=False)
    angle.add_argument("--line", nargs=6, type=float, action="append", metavar=("R0", "A0", "S0", "R1", "A1", "S1"))
    angle.add_argument("--plane", nargs=6, type=float, action="append", metavar=("R", "A", "S", "NR", "NA", "NS"))
    angle.set_defaults(handler=cmd_angle)

    bundle = sub.add_parser("bundle", help="plan bundle for navigation / 3D printing: STL, JSON, CSV, markups")
    _common(bundle)
    bundle.add_argument("--out", type=Path, required=True, help="output folder")
    bundle.add_argument("--overwrite", action="store_true")
    bundle.add_argument("--target", help="target segment (proximity table to --structures)")
    _structures(bundle)
    bundle.add_argument("--segments", nargs="+", help="segments written as STL (default: target, structures, organ)")
    bundle.add_argument("--trajectory", nargs=6, type=float, action="append",
                        metavar=("R0", "A0", "S0", "R1", "A1", "S1"), help="entry and target; repeatable")
    bundle.add_argument("--radius", type=float, default=0.0, help="tool radius in mm")
    bundle.add_argument("--organ", help="organ to resect (with --plane or --target/--margin)")
    _resection_arguments(bundle)
    bundle.add_argument("--coordinates", choices=["lps", "ras"], default="lps", help="of the STL files")
    bundle.add_argument("--dicom", type=Path, help="the DICOM series the plan was made on: adds a DICOM SEG and "
                                                   "TID 1500 SR of the segments (dicom/)")
    bundle.add_argument("--snomed-csv", type=Path, help="SNOMED mapping of the segment names for the SEG "
                                                        "(default: the installed TotalSegmentator's)")
    bundle.add_argument("--assign-uids", action="store_true", help="fill empty UIDs of an anonymised series "
                                                                   "(a corrected copy goes into dicom/source/)")
    bundle.add_argument("--observer", help="person observer name for the SR")
    bundle.set_defaults(handler=cmd_bundle)

    outcome = sub.add_parser("outcome", help="planned vs post-operative segments, the post-operative CT registered "
                                              "to the planning CT")
    _common(outcome)
    outcome.add_argument("actual", type=Path, help="post-operative segmentation (on the post-operative CT)")
    outcome.add_argument("--planned-image", type=Path, help="the planning CT (file or DICOM folder)")
    outcome.add_argument("--actual-image", type=Path, help="the post-operative CT the actual segmentation is on")
    outcome.add_argument("--register", choices=["auto", "yes", "no"], default="auto",
                         help="rigid registration of the images (auto: unless both are DICOM of one frame)")
    outcome.add_argument("--planned-plane", nargs=6, type=float, metavar=("R", "A", "S", "NR", "NA", "NS"))
    outcome.add_argument("--actual-plane", nargs=6, type=float, metavar=("R", "A", "S", "NR", "NA", "NS"),
                         help="in the post-operative frame, like --actual-trajectory")
    outcome.add_argument("--structures", nargs="+", help="segments to compare (default: those in both)")
    outcome.add_argument("--planned-trajectory", nargs=6, type=float, metavar=("R0", "A0", "S0", "R1", "A1", "S1"))
    outcome.add_argument("--actual-trajectory", nargs=6, type=float, metavar=("R0", "A0", "S0", "R1", "A1", "S1"))
    outcome.set_defaults(handler=cmd_outcome)
