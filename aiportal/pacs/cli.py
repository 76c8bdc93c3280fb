"""``aiportal pacs ...`` commands and the PACS half of ``aiportal segment --pacs``.

:func:`add_pacs_commands` adds ``pacs query|pull|push|list|add|remove|check`` to the main
parser; :func:`add_segment_pacs_arguments` and :func:`segment_from_pacs` give ``aiportal segment``
its ``--pacs NAME --study UID [--series UID] --push`` path: pull, segment, export SEG+SR,
push, verify. ``python -m aiportal.pacs.cli ...`` runs the same commands on their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from aiportal.pacs import PacsError
from aiportal.pacs.config import PROTOCOLS


def _progress():
    from aiportal.cli import TerminalProgress

    return TerminalProgress()


def _endpoint(name: str):
    from aiportal.pacs.config import get_endpoint

    return get_endpoint(name)


def cmd_pacs_query(args: argparse.Namespace) -> int:
    from aiportal.pacs.model import QueryFilters
    from aiportal.pacs.workflow import query_series, query_studies

    endpoint = _endpoint(args.name)
    filters = QueryFilters(patient_id=args.patient_id or "", accession_number=args.accession or "",
                           date_from=args.date_from or "", date_to=args.date_to or "", modality=args.modality or "",
                           description=args.description or "", limit=args.limit)
    if args.study:
        series = query_series(endpoint, args.study, filters, protocol=args.protocol)
        if args.json:
            print(json.dumps([asdict(s) for s in series], indent=2))
            return 0
        for s in series:
            print(f"{s.series_uid}  {s.modality:<4} #{s.series_number if s.series_number is not None else '-':<4} "
                  f"{s.number_of_instances if s.number_of_instances is not None else '?':>5} instances  "
                  f"'{s.description}'")
        print(f"{len(series)} series in study {args.study} on {endpoint.name}")
        return 0
    studies = query_studies(endpoint, filters, protocol=args.protocol)
    if args.json:
        print(json.dumps([asdict(s) for s in studies], indent=2))
        return 0
    for s in studies:
        print(f"{s.study_uid}  {s.study_date or '--------'}  {s.patient_id:<16} {s.accession_number:<12} "
              f"{'/'.join(s.modalities):<8} {s.number_of_series if s.number_of_series is not None else '?'} series  "
              f"'{s.description}'")
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} on {endpoint.name}")
    return 0


def cmd_pacs_pull(args: argparse.Namespace) -> int:
    from aiportal.pacs.workflow import pull_series

    endpoint = _endpoint(args.name)
    pulled = pull_series(endpoint, args.study, args.series, args.out, protocol=args.protocol, progress=_progress())
    for note in pulled.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"pulled series {pulled.series_uid} from {endpoint.name} ({pulled.protocol}): {len(pulled.files)} "
          f"instances, {pulled.bytes_received / 1e6:.1f} MB in {pulled.seconds:.1f} s into {pulled.folder}")
    return 0


def cmd_pacs_push(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args.name)
    files = _push_files(args.files)
    report = _push(endpoint, files, args.protocol)
    print(f"pushed and verified {len(report.objects)} object(s) on {endpoint.name} ({report.protocol}) "
          f"in {report.seconds:.1f} s")
    return 0


def _push_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.dcm") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise PacsError(f"{path} does not exist", "give DICOM files or folders to push")
    return files


def _push(endpoint, files: list[Path], protocol: str):
    from aiportal.pacs.workflow import push_files

    report = push_files(endpoint, files, protocol=protocol, progress=_progress())
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for item in report.objects:
        print(f"  {item.sop_instance_uid}  {item.path}")
    return report


def cmd_pacs_list(args: argparse.Namespace) -> int:
    from aiportal.pacs.config import config_path, list_endpoints

    endpoints = list_endpoints()
    for endpoint in endpoints:
        print(endpoint.describe())
    print(f"{len(endpoints)} endpoint(s); settings file {config_path()}")
    return 0


def cmd_pacs_add(args: argparse.Namespace) -> int:
    from aiportal.pacs.config import DimsePeer, PacsEndpoint, add_endpoint

    peer = None
    if args.ae_title or args.host or args.port:
        if not (args.ae_title and args.host and args.port):
            raise PacsError("A DIMSE peer needs --ae-title, --host and --port together", "give all three")
        peer = DimsePeer(args.ae_title, args.host, args.port, args.our_ae_title, args.our_port,
                         "move" if args.our_port else "get")
    auth = "bearer" if args.token_env else "basic" if args.username else "none"
    endpoint = PacsEndpoint(name=args.name, dicomweb_url=args.url or "", auth=auth, username=args.username or "",
                            password_env=args.password_env or "", token_env=args.token_env or "",
                            verify_tls=not args.insecure, ca_bundle=args.ca_bundle or "", timeout_s=args.timeout,
                            max_retrieve_mb=args.max_retrieve_mb, dimse=peer)
    path = add_endpoint(endpoint)
    print(f"saved {endpoint.describe()} in {path}")
    return 0


def cmd_pacs_remove(args: argparse.Namespace) -> int:
    from aiportal.pacs.config import config_path, remove_endpoint

    remove_endpoint(args.name)
    print(f"removed {args.name} from {config_path()}")
    return 0


def cmd_pacs_check(args: argparse.Namespace) -> int:
    from aiportal.pacs.config import check_endpoint

    check = check_endpoint(args.name)
    for line in (check.dicomweb, check.dimse):
        if line:
            print(line)
    return 0 if check.ok else 1


def add_pacs_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``pacs`` with its sub-commands to the main parser's sub-parsers."""
    pacs = subparsers.add_parser("pacs", help="query, pull from and push to a PACS (DICOMweb or DIMSE)")
    commands = pacs.add_subparsers(dest="pacs_command", required=True)

    query = commands.add_parser("query", help="find studies (or the series of --study)")
    query.add_argument("name", help="PACS endpoint name (see `aiportal pacs list`)")
    query.add_argument("--patient-id")
    query.add_argument("--accession")
    query.add_argument("--from", dest="date_from", help="study date from, YYYYMMDD")
    query.add_argument("--to", dest="date_to", help="study date to, YYYYMMDD")
    query.add_argument("--modality", help="e.g. CT")
    query.add_argument("--description", help="text in the study (or series) description")
    query.add_argument("--study", help="list the series of this StudyInstanceUID")
    query.add_argument("--limit", type=int, default=0, help="at most this many studies")
    query.add_argument("--json", action="store_true")
    query.add_argument("--protocol", choices=PROTOCOLS, default="auto")
    query.set_defaults(handler=cmd_pacs_query)

    pull = commands.add_parser("pull", help="retrieve a series into a new folder")
    pull.add_argument("name")
    pull.add_argument("--study", required=True, help="StudyInstanceUID")
    pull.add_argument("--series", help="SeriesInstanceUID (default: the study's only image series)")
    pull.add_argument("--out", type=Path, required=True, help="new folder for the series")
    pull.add_argument("--protocol", choices=PROTOCOLS, default="auto")
    pull.set_defaults(handler=cmd_pacs_pull)

    push = commands.add_parser("push", help="store DICOM files (e.g. SEG, SR) and verify they arrived")
    push.add_argument("name")
    push.add_argument("files", type=Path, nargs="+", help="DICOM files or folders (their *.dcm)")
    push.add_argument("--protocol", choices=PROTOCOLS, default="auto")
    push.set_defaults(handler=cmd_pacs_push)

    listing = commands.add_parser("list", help="configured endpoints")
    listing.set_defaults(handler=cmd_pacs_list)

    add = commands.add_parser("add", help="save an endpoint in the settings file")
    add.add_argument("name")
    add.add_argument("--url", help="DICOMweb base URL, e.g. https://pacs.example.org/dicom-web")
    add.add_argument("--username", help="HTTP basic user")
    add.add_argument("--password-env", help="environment variable that holds the password")
    add.add_argument("--token-env", help="environment variable that holds a bearer token")
    add.add_argument("--ca-bundle", help="PEM file of the hospital's certificate authority")
    add.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (testing only)")
    add.add_argument("--timeout", type=float, default=30.0, help="seconds")
    add.add_argument("--max-retrieve-mb", type=float, default=4096.0)
    add.add_argument("--ae-title", help="DIMSE: the PACS's AE title")
    add.add_argument("--host", help="DIMSE: the PACS's host")
    add.add_argument("--port", type=int, help="DIMSE: the PACS's port")
    add.add_argument("--our-ae-title", default="AIPORTAL", help="DIMSE: our AE title")
    add.add_argument("--our-port", type=int, default=0, help="DIMSE: our port for C-MOVE (default: use C-GET)")
    add.set_defaults(handler=cmd_pacs_add)

    remove = commands.add_parser("remove", help="delete an endpoint from the settings file")
    remove.add_argument("name")
    remove.set_defaults(handler=cmd_pacs_remove)

    check = commands.add_parser("check", help="test an endpoint (QIDO-RS query, C-ECHO)")
    check.add_argument("name")
    check.set_defaults(handler=cmd_pacs_check)
    return pacs


# ---------------------------------------------------------------------------------------------
# aiportal segment --pacs NAME --study UID [--series UID] --push


def add_segment_pacs_arguments(segment_parser: argparse.ArgumentParser) -> None:
    group = segment_parser.add_argument_group("PACS")
    group.add_argument("--pacs", metavar="NAME", help="pull the input from this PACS endpoint (instead of INPUT)")
    group.add_argument("--study", help="with --pacs: StudyInstanceUID (--series picks the series)")
    group.add_argument("--push", action="store_true",
                       help="with --pacs: store every DICOM object written (SEG, SR, key images, models) there "
                            "and verify")
    group.add_argument("--protocol", choices=PROTOCOLS, default="auto", help="with --pacs: DICOMweb or DIMSE")


def segment_from_pacs(args: argparse.Namespace, run_segment: Callable[[argparse.Namespace], int]) -> int:
    """Pull ``args.study`` / ``args.series`` from ``args.pacs``, run ``run_segment`` (the CLI's
    ``cmd_segment``) on it, then with ``args.push`` push the SEG and SR it wrote and verify them.

    The pulled images live in a temporary folder removed afterwards; the results stay in ``--out``.
    """
    from aiportal.export.exporter import expected_outputs, parse_formats
    from aiportal.outputs import check_output_folder
    from aiportal.pacs.workflow import pull_series

    if getattr(args, "input", None):
        raise PacsError(f"Both an input ({args.input}) and --pacs {args.pacs} were given", "give one of them")
    if not args.study:
        raise PacsError(f"--pacs {args.pacs} needs --study UID", "find it with `aiportal pacs query NAME`")
    formats = parse_formats(args.formats)
    if args.push and not {"seg", "sr"} <= set(formats):
        formats = parse_formats(",".join((*formats, "seg", "sr")))  # a push sends the SEG and the SR
    endpoint = _endpoint(args.pacs)
    check_output_folder(args.out, [*expected_outputs(formats), "run.json"], args.overwrite)  # before the pull
    local = argparse.Namespace(**vars(args))
    local.pacs, local.formats = None, ",".join(formats)
    with tempfile.TemporaryDirectory(prefix="aiportal-pacs-") as work:
        pulled = pull_series(endpoint, args.study, args.series, Path(work) / "series", protocol=args.protocol,
                             progress=_progress())
        for note in pulled.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"pulled {len(pulled.files)} instances of series {pulled.series_uid} from {endpoint.name} "
              f"({pulled.protocol}, {pulled.bytes_received / 1e6:.1f} MB)", file=sys.stderr)
        local.input, local.series = pulled.folder, pulled.series_uid
        code = run_segment(local)
    if code != 0 or not args.push:
        return code
    result = local.pipeline_result  # set by the segment command: what it wrote, its run
    push_exported(endpoint, args.out, result.files, args.protocol, run_ids=[result.run_id],
                  study_uid=result.study_uid, series_uid=result.series_uid, formats=list(formats))
    return 0


def push_exported(endpoint, out_dir: Path, files, protocol: str, *, run_ids: list[str], study_uid: str,
                  series_uid: str, formats: list[str]):
    """Push every DICOM object an export wrote (SEG, SR, key images, models, ...) to ``endpoint``, verify
    it arrived, and record it in the audit trail with the objects' UIDs."""
    import getpass

    from aiportal.export.exporter import dicom_object_names
    from aiportal.pacs.workflow import audit_push

    paths = [Path(out_dir) / name for name in dicom_object_names(files)]
    if not paths:
        raise PacsError(f"The export in {out_dir} wrote no DICOM object to push",
                        "ask for DICOM formats (e.g. --formats seg,sr,sc,estl) of a DICOM source series")
    report = _push(endpoint, paths, protocol)
    audit_push(report, run_ids=run_ids, study_uid=study_uid, series_uid=series_uid, user=getpass.getuser(),
               formats=formats)
    kinds = sorted({str(item.sop_class_uid) for item in report.objects})
    print(f"pushed and verified {len(report.objects)} DICOM object(s) ({len(kinds)} SOP class(es)) on "
          f"{endpoint.name} ({report.protocol}) in {report.seconds:.1f} s")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aiportal.pacs.cli", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true")
    add_pacs_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from aiportal.errors import AIPortalError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except AIPortalError as error:
        print(f"aiportal: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
