"""``aiportal``: the headless face — the same logic as the Slicer modules, from a terminal.

Runs on the slicer-core wheel or under Slicer's PythonSlicer. Errors print one line and exit
with a non-zero code; results are written all-or-nothing (see :mod:`aiportal.outputs`).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from aiportal import __version__
from aiportal.errors import AIPortalError, CancelledError
from aiportal.followup.cli import add_followup_command
from aiportal.pacs.cli import add_pacs_commands, add_segment_pacs_arguments
from aiportal.planning.cli import add_planning_commands
from aiportal.register_cli import add_register_command
from aiportal.remote_segment import add_server_arguments
from aiportal.weights.cli import add_doctor_command, add_models_commands

EXIT_ERROR = 1
EXIT_CANCELLED = 130



class TerminalProgress:
    """A one-line progress bar on a terminal; plain lines (one per stage) otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self.interactive = stream.isatty()
        self._last_stage: str | None = None

    def __call__(self, fraction: float, stage: str) -> None:
        if self.interactive:
            filled = int(round(fraction * self.width))
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {fraction:4.0%} {stage:<40.40}")
            if fraction >= 1.0:
                self.stream.write("\n")
        elif stage != self._last_stage:
            self.stream.write(f"{fraction:4.0%} {stage}\n")
        self._last_stage = stage
        self.stream.flush()


def _quiet_vtk(debug: bool) -> None:
    # Slicer's libraries log deprecation notes to stderr; a batch user needs errors only
    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_INFO if debug else vtk.vtkLogger.VERBOSITY_ERROR)
    if not debug:
        vtk.vtkObject.GlobalWarningDisplayOff()


def available_devices() -> list[str]:
    """Compute devices usable here: always the CPU, plus CUDA / MPS when PyTorch sees them."""
    import importlib.util

    devices = ["cpu"]
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            devices += [f"cuda ({torch.cuda.get_device_name(0)})"]
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            devices.append("mps")
    return devices


def cmd_info(args: argparse.Namespace) -> int:
    from aiportal.models.catalog import get_catalog

    models = get_catalog().models
    if args.json:
        print(json.dumps({"version": __version__, "devices": available_devices(),
                          "models": [asdict(model) for model in models]}, indent=2))
        return 0
    print(f"aiportal {__version__}")
    print(f"devices: {', '.join(available_devices())}")
    print("models:")
    for model in models:
        weights = model.weights.location if model.weights else "none needed"
        print(f"  {model.id:<14} {model.title}")
        print(f"  {'':<14} modality {model.modality}; version {model.version}; {model.family}; "
              f"devices {', '.join(model.devices)}; weights: {weights}; licence {model.license}")
        print(f"  {'':<14} labels: {', '.join(label.name for label in model.labels)}")
        print(f"  {'':<14} does not: {model.limitations}")
    return 0


def _export_options(args: argparse.Namespace):
    from aiportal.export.exporter import ExportOptions, parse_formats

    return ExportOptions(formats=parse_formats(args.formats), seg_type=args.seg_type.upper(),
                         assign_missing_uids=args.assign_uids, observer_person=args.observer,
                         surfaces_merged=args.merged_surfaces, coordinates=args.coordinates.upper(),
                         smoothing=args.smoothing, decimation=args.decimation,
                         volume_true_surfaces=not args.slicer_surfaces)


def _print_export(result, out: Path) -> None:
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    _print_dicom_objects([vars(file) for file in result.files], out)
    print(f"wrote {len(result.files)} file(s) to {out}")


def _print_dicom_objects(files: list[dict], out: Path) -> None:
    """The SEG and SR with their UIDs; other DICOM objects (key images, models) counted per series."""
    series: dict[tuple[str, str], int] = {}
    for file in files:
        if not file["sop_instance_uid"] or file["kind"] == "source":
            continue
        if file["kind"] in ("seg", "sr", "rtstruct"):
            print(f"  {file['kind'].upper():<4} {out / file['name']}  SOPInstanceUID {file['sop_instance_uid']}")
        else:
            key = (file["kind"], str(Path(file["name"]).parent))
            series[key] = series.get(key, 0) + 1
    for (kind, folder), count in series.items():
        print(f"  {kind.upper():<4} {count} object(s) in {out / folder}")


def _model_params(args: argparse.Namespace) -> dict:
    """``--param KEY=VALUE`` as the model's parameters (the boxes are checked on the volume once it is loaded)."""
    params: dict = {}
    for item in args.param:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise AIPortalError(f"--param {item!r} is not KEY=VALUE", "e.g. --param step_size=0.5")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _geometry(args: argparse.Namespace) -> str:
    return "acquired" if getattr(args, "acquired_geometry", False) else "regular"


def geometry_line(geometry: dict) -> str:
    """One line saying which grid the outputs are on, when a DICOM series was not used as it is."""
    if not geometry:
        return ""
    what = (f"{geometry['acquired_slices']} " + ("tilted " if geometry.get("tilt_degrees") else "")
            + ("" if geometry.get("uniform_spacing", True) else "unevenly spaced ") + "slices")
    tilt = f" at {geometry['tilt_degrees']:.1f}°" if geometry.get("tilt_degrees") else ""
    if geometry.get("resampled"):
        i, j, k = geometry["shape_ijk"]
        spacing = "x".join(f"{v:.4g}" for v in geometry["spacing_mm"])
        return (f"geometry: resampled from {what}{tilt} onto a regular grid of {i}x{j}x{k} voxels ({spacing} mm); "
                "outputs are on this grid")
    if geometry.get("tilt_degrees") or not geometry.get("uniform_spacing", True):
        measured = "" if geometry.get("measurable", True) else " (not fit for measurement)"
        return f"geometry: the {what}{tilt} as acquired{measured}; outputs are on the acquired slices"
    return ""


def cmd_segment(args: argparse.Namespace) -> int:
    if getattr(args, "pacs", None):  # pull from the PACS, run this same command on it, push the SEG + SR
        from aiportal.pacs.cli import segment_from_pacs

        return segment_from_pacs(args, cmd_segment)
    if args.input is None:
        raise AIPortalError("segment needs an INPUT (DICOM folder or image file) or --pacs NAME --study UID",
                            "give one of them")
    from aiportal.export.exporter import expected_outputs
    from aiportal.outputs import check_output_folder
    from aiportal.pipeline import PipelineRequest, run_segmentation

    options = _export_options(args)
    check_output_folder(args.out, [*expected_outputs(options.formats), "run.json"], args.overwrite)  # before work
    if args.server:  # the same run on the inference server
        from aiportal.remote_segment import segment_on_server

        return segment_on_server(args, _model_params(args))
    request = PipelineRequest(input_path=args.input, model_id=args.model, out_dir=args.out, options=options,
                              params=_model_params(args), boxes=args.box or [], boxes_ras=args.box_ras or [],
                              box_labels=args.box_labels or [],
                              series_uid=args.series, timeout_s=args.timeout, device=args.device,
                              overwrite=args.overwrite, input_label=str(args.input), nan_as=args.nan_as,
                              geometry=_geometry(args))
    result = run_segmentation(request, progress=TerminalProgress())
    args.pipeline_result = result  # for the PACS push of `segment --pacs --push`
    from aiportal.remote_segment import print_run_summary

    print_run_summary(result.as_json(), str(args.input))
    _print_dicom_objects(result.files, args.out)
    print(f"wrote {len(result.files)} file(s) to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from aiportal.export.exporter import expected_outputs, export_to_folder
    from aiportal.io.volumes import load_volume
    from aiportal.outputs import check_output_folder
    from aiportal.segmentation import load_segmentation, require_same_grid

    options = _export_options(args)
    check_output_folder(args.out, expected_outputs(options.formats), args.overwrite)
    endpoint = None
    if args.push:  # an unknown endpoint is refused before any work
        from aiportal.pacs.config import get_endpoint

        endpoint = get_endpoint(args.push)
    progress = TerminalProgress()
    progress(0.0, f"loading {args.source}")
    loaded = load_volume(args.source, series_uid=args.series, nan_as=args.nan_as, geometry=_geometry(args))
    print_warnings(loaded.warnings)
    node = load_segmentation(args.segmentation)
    require_same_grid(node, str(args.segmentation), loaded.node, str(args.source))
    exported = export_to_folder(node, loaded.node, loaded.source, args.out, options, overwrite=args.overwrite,
                                modality=loaded.source.modality if loaded.source else None, progress=progress)
    _print_export(exported, args.out)
    if endpoint is not None:
        from aiportal.pacs.cli import push_exported

        reference = loaded.source.reference() if loaded.source else {}
        push_exported(endpoint, args.out, exported.files, args.protocol, run_ids=exported.run_ids,
                      study_uid=reference.get("study_uid", ""), series_uid=reference.get("series_uid", ""),
                      formats=list(options.formats))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from aiportal.io.volumes import load_volume
    from aiportal.measure.report import (
        measure_segmentation,
        measurement_warnings,
        write_axis_lines,
        write_measurements,
    )
    from aiportal.outputs import check_output_folder, staged_output
    from aiportal.segmentation import load_segmentation, require_same_grid

    vessel_names = [name for name in (args.vessels or "").split(",") if name]
    outputs = ["measurements.json", "measurements.csv", "axes"]
    outputs += ["vessels.json"] if vessel_names else []
    outputs += ["segmentation.dcm", "measurements.dcm"] if args.sr else []
    outputs += ["source"] if args.sr and args.assign_uids else []
    outputs += ["key_images"] if args.key_images else []
    outputs += ["followup.json", "followup.csv"] if args.prior else []
    if args.prior and not args.prior_volume:
        raise AIPortalError("--prior needs --prior-volume (the volume the prior segmentation was made on)",
                            "add --prior-volume PRIOR_CT")
    check_output_folder(args.out, outputs, args.overwrite)
    loaded = load_volume(args.volume, series_uid=args.series, nan_as=args.nan_as)
    if args.sr and loaded.source is None:
        raise AIPortalError(f"--sr needs a DICOM --volume: {args.volume} is not a DICOM series",
                            "give the DICOM series the segmentation was made on, or leave out --sr")
    volume = loaded.node
    node = load_segmentation(args.segmentation)
    require_same_grid(node, str(args.segmentation), volume, str(args.volume))  # as export: one check
    vessels = []
    if vessel_names:
        from aiportal.vessels.report import measure_vessels, recist_names_besides

        vessels = measure_vessels(node, volume, vessel_names)
    recist_names = args.segments or (recist_names_besides(node, vessel_names) if vessel_names else None)
    measurements, skipped = ([], {}) if vessel_names and not recist_names else measure_segmentation(
        node, volume, segment_names=recist_names, lymph_nodes=tuple(args.lymph_nodes or ()),
        **({} if args.min_lesion_mm3 is None else {"min_lesion_mm3": args.min_lesion_mm3}))
    follow_up = None
    if args.prior:
        from aiportal.measure.followup import compare_studies

        prior_loaded = load_volume(args.prior_volume, nan_as=args.nan_as)
        loaded.warnings += prior_loaded.warnings
        prior_volume = prior_loaded.node
        prior_segmentation = load_segmentation(args.prior)
        require_same_grid(prior_segmentation, str(args.prior), prior_volume, str(args.prior_volume))
        registration = None
        if args.register:
            from aiportal.register import register_volumes

            registration = register_volumes(volume, prior_volume)  # the current study is the fixed one
            for warning in registration.warnings:
                print(f"WARNING: registration of the prior volume {warning}")
        follow_up = compare_studies(prior_segmentation, prior_volume, node, volume,
                                    registration=registration, lymph_nodes=tuple(args.lymph_nodes or ()),
                                    nadir_sum_mm=args.nadir)
    with staged_output(args.out, overwrite=args.overwrite) as staging:
        write_measurements(measurements, skipped, staging)
        write_axis_lines(node.GetScene(), measurements, node, staging / "axes")
        if vessel_names:
            from aiportal.vessels.report import write_vessel_markups, write_vessels_json

            write_vessels_json(vessels, staging / "vessels.json")
            write_vessel_markups(node.GetScene(), vessels, node, staging / "axes")
        keys = None
        if args.key_images:
            from aiportal.measure.key_images import write_key_images

            keys = write_key_images(volume, node, measurements, staging / "key_images")
        if args.sr:  # with --key-images, they are also written as DICOM Secondary Capture, listed in the SR
            from aiportal.vessels.report import write_measurement_sr

            write_measurement_sr(node, loaded, measurements, vessels, staging,
                                 assign_missing_uids=args.assign_uids, key_images=keys)
        if follow_up is not None:
            from aiportal.measure.followup import write_follow_up

            write_follow_up(follow_up, staging)
    print(f"{len(measurements)} lesion(s) measured in {len({m.segment_id for m in measurements})} segment(s)")
    for m in measurements:
        kind = "node, short axis" if m.lymph_node else "long axis"
        print(f"  {m.lesion_name:<20} {m.reported_mm:8.1f} mm ({kind}); long {m.long_axis_mm:.1f} x short "
              f"{m.short_axis_mm:.1f} mm on slice {m.slice_axis}={m.slice_index}; 3D {m.max_3d_diameter_mm:.1f} mm")
    for vessel in vessels:
        print(f"  {vessel.summary()}")
    print_warnings(loaded.warnings + measurement_warnings(measurements, skipped)
                    + [warning for vessel in vessels for warning in vessel.warnings])
    if follow_up is not None:
        print(f"RECIST 1.1 response: {follow_up.assessment.response.value} ({follow_up.assessment.explanation})")
    print(f"wrote {args.out / 'measurements.json'}, measurements.csv and axis lines in {args.out / 'axes'}"
          + (", vessels.json" if vessel_names else "") + (", SEG + SR" if args.sr else "")
          + (", key images" if args.key_images else "") + (", followup.json/csv" if follow_up else ""))
    return 0


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _audit():
    from aiportal.audit import AuditLog
    from aiportal.settings import Settings

    return AuditLog(Settings.from_environment().audit_log)


def cmd_audit(args: argparse.Namespace) -> int:
    from aiportal.audit import AuditLog, record_review

    log = AuditLog(args.log) if args.log else _audit()
    if args.audit_command == "verify":
        verdict, problems = log.status()
        for problem in problems:
            where = f"line {problem.line}" if problem.line else "head/anchor"
            print(f"{log.path}: {where}: {problem.problem}", file=sys.stderr)
        if problems:
            print(f"aiportal: error: audit log {log.path} is {verdict} ({len(problems)} problem(s))", file=sys.stderr)
            return EXIT_ERROR
        print(f"{log.path}: {verdict}, {len(log.records())} records")
        return 0
    if args.audit_command == "report":
        from aiportal.audit_report import report_command

        return report_command(log.records(), args)
    if args.audit_command == "review":
        import getpass

        record = record_review(log, args.run_id, args.segment, args.decision, args.user or getpass.getuser())
        print(f"recorded: {record['decision']} {record['segment']} of run {record['run_id']} (record {record['seq']})")
        return 0
    records = [r for r in log.records() if (not args.run or r.get("run_id") == args.run)
               and (not args.event or r.get("event") == args.event)]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        what = record.get("model_id") or record.get("decision") or ""
        target = record.get("segment") or record.get("study_uid") or record.get("input") or ""
        print(f"{record['seq']:>5} {record['time']} {record['event']:<7} {record.get('run_id', '')[:12]:<12} "
              f"{what:<14} {target} ({record.get('user', '')})")
    if not records:
        print(f"no records in {log.path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from aiportal.io.volumes import save_volume, volume_node_from_array
    from aiportal.runtime import get_runtime
    from aiportal.sample import make_ct_phantom

    if args.out.exists() and not args.overwrite:
        raise AIPortalError(f"{args.out} already exists", "choose another path, or pass --overwrite")
    phantom = make_ct_phantom(seed=args.seed)
    node = volume_node_from_array(get_runtime().scene, phantom.hu, phantom.ijk_to_ras, "CT phantom")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_volume(node, args.out)
    k, j, i = phantom.hu.shape
    print(f"wrote {args.out}: synthetic chest CT phantom, {i}x{j}x{k} voxels")
    return 0


def add_nan_as(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nan-as", type=float, metavar="VALUE",
                        help="replace NaN/Inf voxels of the input with VALUE (with a warning); default: refuse them")


def _add_export_arguments(parser: argparse.ArgumentParser, default_formats: str = "nrrd,json") -> None:
    from aiportal.export.exporter import FORMATS

    group = parser.add_argument_group("export")
    group.add_argument("--formats", default=default_formats,
                       help=f"comma-separated, from: {','.join(FORMATS)} (default {default_formats}; sr and estl "
                            "bring seg; rtstruct: DICOM RT Structure Set; sc: key images as DICOM Secondary Capture; "
                            "estl: 3D models as DICOM Encapsulated STL)")
    group.add_argument("--seg-type", choices=["binary", "labelmap"], default="binary", help="DICOM SEG type")
    group.add_argument("--assign-uids", action="store_true",
                       help="anonymised series with empty UIDs: give them UIDs and write a corrected copy "
                            "(source/) that the SEG/SR reference")
    group.add_argument("--observer", help="person observer name for the SR (the model is always the device observer)")
    group.add_argument("--merged-surfaces", action="store_true", help="one STL/OBJ file for all segments")
    group.add_argument("--coordinates", choices=["lps", "ras"], default="lps", help="of STL/OBJ files")
    group.add_argument("--smoothing", type=float, default=0.5, help="surface smoothing factor 0..1")
    group.add_argument("--decimation", type=float, default=0.0, help="surface decimation factor 0..1")
    group.add_argument("--slicer-surfaces", action="store_true",
                       help="write Slicer's 3D-view surfaces instead of volume-true ones (thin structures shrink)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiportal", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aiportal {__version__}")
    parser.add_argument("--debug", action="store_true", help="show library logs and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="list models and compute devices")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=cmd_info)
    add_models_commands(commands)  # `aiportal models ...`: list, setup, install, pack, import, verify weights
    add_doctor_command(commands)  # `aiportal doctor`

    segment = commands.add_parser("segment", help="segment a CT/MR volume")
    segment.add_argument("input", type=Path, nargs="?",
                         help="DICOM series folder or file, NIfTI (.nii/.nii.gz) or NRRD (or --pacs)")
    segment.add_argument("--model", default="classic-ct", help="model id (see `aiportal info`)")
    segment.add_argument("--out", type=Path, required=True, help="output folder")
    segment.add_argument("--series", help="SeriesInstanceUID, when the folder holds several series")
    segment.add_argument("--acquired-geometry", action="store_true",
                         help="keep a gantry-tilted or unevenly spaced DICOM series as acquired instead of "
                              "resampling it onto a regular grid (the default)")
    segment.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    segment.add_argument("--box", nargs=6, type=int, action="append", metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
                         help="box prompt in voxel indices (inclusive; K0 = K1: a 2D box propagated); repeatable")
    segment.add_argument("--box-ras", nargs=6, type=float, action="append",
                         metavar=("R0", "A0", "S0", "R1", "A1", "S1"), help="box prompt by two RAS corners in mm")
    segment.add_argument("--box-labels", nargs="+", type=int, metavar="LABEL",
                         help="the structure of each box (--box ones first, then --box-ras), e.g. 1 1 2: 2D boxes "
                              "of one structure on several slices, the slices between them filled (default 1 2 3 ...)")
    segment.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                         help="model parameter (value parsed as JSON when it can be), e.g. --param folds=[0]")
    segment.add_argument("--timeout", type=float, help="stop the model after this many seconds")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    _add_export_arguments(segment)
    add_segment_pacs_arguments(segment)
    add_nan_as(segment)
    add_server_arguments(segment)
    segment.set_defaults(handler=cmd_segment)

    export = commands.add_parser("export", help="export an existing segmentation (seg.nrrd) of a source image")
    export.add_argument("segmentation", type=Path, help="a .seg.nrrd made on the source image")
    export.add_argument("--source", type=Path, required=True, help="the source DICOM series folder or image file")
    export.add_argument("--series", help="SeriesInstanceUID, when the folder holds several series")
    export.add_argument("--acquired-geometry", action="store_true",
                        help="the segmentation was made on the DICOM series as acquired (segment --acquired-geometry)")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    _add_export_arguments(export, default_formats="seg,sr")
    export.add_argument("--push", metavar="PACS",
                        help="store every DICOM object written (SEG, SR, key images, models) on this PACS endpoint "
                             "and verify it arrived (see `aiportal pacs list`)")
    export.add_argument("--protocol", choices=["auto", "dicomweb", "dimse"], default="auto", help="with --push")
    add_nan_as(export)
    export.set_defaults(handler=cmd_export)

    measure = commands.add_parser("measure", help="RECIST 1.1 axes of each lesion (separate part of a segment); "
                                                  "vessel diameters (--vessels)")
    measure.add_argument("segmentation", type=Path, help="a .seg.nrrd made on the volume")
    measure.add_argument("--volume", type=Path, required=True, help="its volume: DICOM folder/file, NIfTI or NRRD")
    measure.add_argument("--series", help="SeriesInstanceUID, when the folder holds several series")
    measure.add_argument("--segments", nargs="*", help="segment names to measure (default: all)")
    measure.add_argument("--lymph-nodes", nargs="*", help="segment names that are lymph nodes (short axis)")
    measure.add_argument("--key-images", action="store_true",
                         help="a PNG per lesion with its axes drawn (with --sr also as DICOM Secondary Capture, "
                              "listed in the SR)")
    measure.add_argument("--prior", type=Path, help="prior study's segmentation (.seg.nrrd): follow-up response")
    measure.add_argument("--prior-volume", type=Path, help="the volume the prior segmentation was made on")
    measure.add_argument("--register", action="store_true",
                         help="align the prior volume to the current one first (else: same frame of reference)")
    measure.add_argument("--nadir", type=float, help="smallest sum of diameters so far (mm), if below baseline")
    measure.add_argument("--min-lesion-mm3", type=float,
                         help="separate lesions smaller than this are speckle, dropped and counted "
                              "(default 14.1 mm³: a 3 mm sphere)")
    measure.add_argument("--vessels", metavar="NAME[,NAME...]",
                         help="segments to measure as vessels (centreline, cross-sections, maximum diameter "
                              "perpendicular to it) or landmark discs (on their own plane): vessels.json; no RECIST")
    measure.add_argument("--sr", action="store_true",
                         help="also write segmentation.dcm (SEG) and measurements.dcm (TID 1500 SR with the "
                              "RECIST axes and vessel diameters); needs a DICOM --volume")
    measure.add_argument("--assign-uids", action="store_true",
                         help="with --sr: generate UIDs an anonymised series lacks (corrected copy in source/)")
    measure.add_argument("--out", type=Path, required=True, help="output folder")
    measure.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    add_nan_as(measure)
    measure.set_defaults(handler=cmd_measure)

    add_register_command(commands)  # `aiportal register`

    from aiportal.audit_report import add_report_arguments

    audit = commands.add_parser("audit", help="read, verify or add to the audit trail")
    audit.add_argument("--log", type=Path, help="audit log (default: AIPORTAL_AUDIT_LOG or ~/.local/share/aiportal)")
    audit_commands = audit.add_subparsers(dest="audit_command")
    show = audit_commands.add_parser("show", help="list records (the default)")
    for parser_ in (audit, show):
        parser_.add_argument("--run", help="only this run id")
        parser_.add_argument("--event", choices=["ai_run", "export", "review"])
        parser_.add_argument("--json", action="store_true")
    audit_commands.add_parser("verify", help="check the keyed hash chain and its anchor: INTACT, EMPTY, "
                                             "MISSING or TAMPERED; exit 1 unless intact/empty")
    report = audit_commands.add_parser("report", help="per model: runs, accept/modify/reject rates, time to "
                                                      "decision, edit-rate drift alarm")
    add_report_arguments(report)
    review = audit_commands.add_parser("review", help="record the reader's decision on an AI segment")
    review.add_argument("run_id")
    review.add_argument("segment")
    review.add_argument("decision", choices=["accepted", "modified", "rejected"])
    review.add_argument("--user")
    audit.set_defaults(handler=cmd_audit)

    sample = commands.add_parser("sample", help="write the project's synthetic chest CT phantom")
    sample.add_argument("out", type=Path, help="output file (.nrrd or .nii.gz)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--overwrite", action="store_true")
    sample.set_defaults(handler=cmd_sample)

    from aiportal.rt.cli import add_rtstruct_commands
    from aiportal.server.cli import add_serve_command
    from aiportal.workspace.cli import add_workspace_command

    add_pacs_commands(commands)  # `aiportal pacs query|pull|push|list|add|remove|check`
    add_serve_command(commands)  # `aiportal serve` and `aiportal server-key ...`
    add_workspace_command(commands)  # `aiportal workspace`: the browser face
    add_followup_command(commands)  # `aiportal followup`
    add_planning_commands(commands)  # `aiportal plan proximity|trajectory|margin|resect|angle|bundle|outcome`
    add_rtstruct_commands(commands)  # `aiportal import-rtstruct`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from aiportal.interrupts import os_error_line, sigterm_as_interrupt

    args = build_parser().parse_args(argv)
    _quiet_vtk(args.debug)
    sigterm_as_interrupt()
    try:
        return args.handler(args)
    except CancelledError as error:
        print(f"aiportal: {error}", file=sys.stderr)
        return EXIT_CANCELLED
    except AIPortalError as error:
        print(f"aiportal: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("aiportal: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except OSError as error:  # a path the user gave (an --out inside a file, a missing input): not our bug
        print(f"aiportal: error: {os_error_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # anything else is our bug: still one line, traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"aiportal: internal error: {type(error).__name__}: {error} (rerun with --debug for details)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
