"""Write results all-or-nothing: into a staging folder first, then move into place.

A failed or cancelled run leaves the output folder exactly as it was; existing files are never
overwritten unless the caller says so.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from aiportal.errors import InputError


def check_output_folder(out_dir: Path, names: Iterable[str], overwrite: bool) -> None:
    """Refuse early, before any work, when the outputs would replace the user's files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} is a file, not a folder", "give a folder path with --out")
    clashes = [name for name in names if (out_dir / name).exists()]
    if clashes and not overwrite:
        raise InputError(
            f"{out_dir} already holds {', '.join(clashes)}",
            "choose another --out folder, or pass --overwrite to replace them",
        )


@contextlib.contextmanager
def staged_output(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``out_dir``, else delete it."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # same parent: the final moves are renames on one file system
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        names = [path.name for path in staging.iterdir()]
        check_output_folder(out_dir, names, overwrite)
        out_dir.mkdir(exist_ok=True)
        for name in names:
            target = out_dir / name
            if target.is_dir():  # only reached with overwrite: a folder cannot be renamed onto a folder
                shutil.rmtree(target)
            (staging / name).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
