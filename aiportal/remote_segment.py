"""`aiportal segment INPUT --server URL --consent`: the same run as a local `aiportal segment`, on the inference server.

The input (a volume file, or a DICOM series folder sent as a .zip) is uploaded only with ``--consent``;
the job's result files land in ``--out`` and its warnings (the server's run.json ones) are printed as the
local run prints them: one ``warning: ...`` line each, and their count on the result line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from aiportal.errors import AIPortalError
from aiportal.remote import CONSENT_FIX


def add_server_arguments(segment: argparse.ArgumentParser) -> None:
    group = segment.add_argument_group("inference server")
    group.add_argument("--server", metavar="URL", help="run the job on this aiportal inference server instead of here")
    group.add_argument("--consent", action="store_true",
                       help="with --server: confirm that the image may be sent to the server")
    group.add_argument("--api-key", help="with --server: API key (default: the AIPORTAL_API_KEY environment variable)")


def print_run_summary(result: dict, input_label: str) -> None:
    """The run's warnings (stderr), then its result line and volumes: one format for local and server runs."""
    from aiportal.cli import geometry_line

    warnings = result.get("warnings") or []
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in result.get("notes") or []:
        if note not in warnings:
            print(f"note: {note}", file=sys.stderr)
    count = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""
    print(f"{result['model_id']} on {input_label}: {len(result['volumes_ml'])} segments in "
          f"{result['model_elapsed_s']:.1f} s{count}")
    if line := geometry_line(result.get("geometry") or {}):
        print(f"  {line}")
    for name, volume_ml in result["volumes_ml"].items():
        print(f"  {name:<12} {volume_ml:>10.1f} mL" if volume_ml is not None else f"  {name:<12} not measured")
    if result.get("absent_labels"):
        print(f"  not found: {', '.join(result['absent_labels'])}")


def _upload_file(source: Path, folder: Path) -> Path:
    """A volume file as it is; a DICOM folder as a .zip of its files (the server reads one series per job)."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise AIPortalError(f"{source} does not exist", "give a DICOM series folder or a NIfTI/NRRD file")
    archive = folder / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(source).as_posix())
    return archive


def segment_on_server(args: argparse.Namespace, params: dict) -> int:
    """Submit, follow, fetch into ``--out``, print as a local run does."""
    from aiportal.cli import TerminalProgress
    from aiportal.server.client import ServerClient

    if not args.consent:
        raise AIPortalError(f"Sending {args.input} to {args.server} needs consent", "add --consent, or " +
                            CONSENT_FIX.split(", or ")[-1])
    if args.box_ras:
        raise AIPortalError("--box-ras needs the volume's geometry, which stays on the server",
                            "give the boxes as voxel indices with --box")
    if args.series or args.acquired_geometry or args.nan_as is not None:
        raise AIPortalError("--series, --acquired-geometry and --nan-as are not sent to the server",
                            "upload one series with the defaults, or run the model here (drop --server)")
    from aiportal.prompts import box_prompt_params

    params = params | box_prompt_params(args.box or [], args.box_labels or [])
    if args.assign_uids:
        params["assign_missing_uids"] = True
    client = ServerClient(args.server, api_key=args.api_key or os.environ.get("AIPORTAL_API_KEY"))
    folder = Path(tempfile.mkdtemp(prefix="aiportal-upload-"))
    try:
        upload = _upload_file(args.input, folder)
        job = client.run(upload, args.model, args.out, consent=True, params=params, formats=args.formats,
                         progress=TerminalProgress(), timeout_s=args.timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = dict(job["result"], warnings=job.get("warnings") or job["result"].get("warnings") or [])
    print_run_summary(result, str(args.input))
    print(f"computed on {args.server}, job {job['id']}")
    print(f"wrote {len(result['files'])} file(s) to {args.out}")
    return 0
