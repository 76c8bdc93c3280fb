"""``aiportal import-rtstruct``: an RT Structure Set into a segmentation (seg.nrrd) on its CT/MR series.

Registered on the main parser by :func:`add_rtstruct_commands` (one line in :mod:`aiportal.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_rtstruct_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``import-rtstruct`` to the main parser's sub-parsers."""
    command = subparsers.add_parser(
        "import-rtstruct", help="load an RT Structure Set (RTSTRUCT) into a segmentation on its CT/MR series")
    command.add_argument("file", type=Path, help="the RTSTRUCT file")
    command.add_argument("--reference", type=Path, required=True,
                         help="folder of the DICOM series the structure set was drawn on")
    command.add_argument("--series", help="SeriesInstanceUID, when the folder holds several series")
    command.add_argument("--out", type=Path, required=True, help="output segmentation (.seg.nrrd)")
    command.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    command.set_defaults(handler=cmd_import_rtstruct)
    return command


def cmd_import_rtstruct(args: argparse.Namespace) -> int:
    from aiportal.errors import InputError
    from aiportal.io.volumes import load_volume
    from aiportal.rt.importer import import_rtstruct
    from aiportal.segmentation import save_segmentation

    if not args.file.is_file():
        raise InputError(f"RT Structure Set {args.file} does not exist", "check the path of the RTSTRUCT file")
    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out} already exists", "choose another --out, or pass --overwrite")
    loaded = load_volume(args.reference, series_uid=args.series)
    if loaded.source is None:
        raise InputError(f"{args.reference} is not a DICOM series",
                         "give the folder of the CT/MR series the structure set references (--reference)")
    reference = loaded.source.reference()
    imported = import_rtstruct(args.file, loaded.node,
                               frame_of_reference_uid=str(loaded.source.headers[0].get("FrameOfReferenceUID", "")),
                               referenced_series_uid=reference.get("series_uid", ""))
    for warning in imported.warnings:
        print(f"aiportal: warning: {warning}", file=sys.stderr)
    save_segmentation(imported.segmentation_node, args.out)
    rois = imported.structure_set.rois
    print(f"{args.out}: {len(rois)} ROIs from {args.file.name} "
          f"({sum(roi.contours for roi in rois)} contours): {', '.join(roi.name for roi in rois)}")
    return 0
