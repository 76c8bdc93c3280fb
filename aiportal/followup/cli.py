"""`aiportal followup`: lesions followed over the current study and its priors (local folders or a PACS)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from aiportal.errors import InputError


def add_followup_command(commands) -> None:
    parser = commands.add_parser(
        "followup", help="track lesions over the current study and its priors: RECIST response, table, plot, SRs",
        description="Register each prior to the current study, track every lesion with one tracking UID, and "
                    "write followup.json/csv, followup.png and one TID 1500 SR per time point.")
    parser.add_argument("--current", type=Path, help="folder of the current study: DICOM images and their SEG")
    parser.add_argument("--prior", type=Path, action="append", default=[], help="folder of a prior study (repeat)")
    parser.add_argument("--pacs", metavar="NAME", help="find the priors of --study on this PACS endpoint")
    parser.add_argument("--study", help="with --pacs: the current study's StudyInstanceUID")
    parser.add_argument("--protocol", choices=("auto", "dicomweb", "dimse"), default="auto")
    parser.add_argument("--description", default="", help="with --pacs: priors' study description must contain it")
    parser.add_argument("--max-priors", type=int, default=3)
    parser.add_argument("--deidentify", action="store_true",
                        help="with --pacs: de-identify the pulled studies (PS3.15 basic profile, one mapping for all "
                             "time points, kept in DIR/reidentification.json) before they are processed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--organ", action="append", default=[], help="segment followed by volume only (repeat)")
    parser.add_argument("--lymph-node", action="append", default=[], help="segment measured by its short axis")
    parser.add_argument("--no-register", action="store_true",
                        help="trust one frame of reference (priors on another one are left out)")
    parser.add_argument("--segment-missing", metavar="MODEL", default="",
                        help="segment a prior that has no SEG with this model ('auto': the model of the current "
                             "study's SEG); default: leave it out")
    parser.set_defaults(handler=cmd_followup)


def cmd_followup(args: argparse.Namespace) -> int:
    from aiportal.followup.run import describe, run_follow_up

    options = {"register": not args.no_register, "organs": tuple(args.organ), "lymph_nodes": tuple(args.lymph_node),
               "segment_missing": getattr(args, "segment_missing", "")}
    if args.pacs:
        if args.current or args.prior:
            raise InputError("--pacs was given with --current/--prior", "give the study on the PACS, or folders")
        if not args.study:
            raise InputError(f"--pacs {args.pacs} needs --study UID", "find it with `aiportal pacs query NAME`")
        from aiportal.followup.priors import pull_current_and_priors
        from aiportal.pacs.config import get_endpoint

        endpoint = get_endpoint(args.pacs)
        with tempfile.TemporaryDirectory(prefix="aiportal-followup-") as work:
            started = time.monotonic()
            pulled = pull_current_and_priors(endpoint, args.study, Path(work), protocol=args.protocol,
                                             description=args.description, max_priors=args.max_priors)
            print(f"found {len(pulled.priors)} prior(s) of patient {pulled.studies[0].patient_id} on "
                  f"{endpoint.name}: " + ", ".join(s.study_date for s in pulled.studies[1:]), file=sys.stderr)
            if getattr(args, "deidentify", False):
                from aiportal.followup.priors import deidentify_pulled
                from aiportal.pacs.deidentify import ReidentificationMap

                mapping = ReidentificationMap()
                pulled = deidentify_pulled(pulled, Path(work) / "deidentified", mapping)
                mapping.save(Path(args.out) / "reidentification.json")
            pulled_s = time.monotonic() - started  # the query, the pulls and any de-identification
            run = run_follow_up(pulled.current, pulled.priors, args.out, skipped=pulled.skipped,
                                labels=pulled.labels, **options)
            run.seconds = {"pull": pulled_s, **run.seconds}
    else:
        if not args.current or not args.prior:
            raise InputError("followup needs --current DIR and at least one --prior DIR (or --pacs NAME --study UID)",
                             "give the folders of the current and prior studies")
        run = run_follow_up(args.current, args.prior, args.out, **options)
    for line in describe(run):
        print(line)
    print(f"wrote {', '.join(p.name for p in run.files)} to {args.out} "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in run.seconds.items())})")
    args.followup_run = run  # for callers in-process (tests, faces)
    return 0
