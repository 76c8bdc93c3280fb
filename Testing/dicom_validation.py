"""Test helper: DICOM IOD validation with dciodvfy (Debian package dicom3tools)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: What dciodvfy 1.00~2022/2024 reports on every valid LABELMAP SEG: both builds predate the
#: Label Map Segmentation Storage SOP class (Sup 243) and apply the BINARY numbering rule to its
#: segment 0 (dicom.md §4). Validator false positives, asserted exactly so nothing else slips by.
LABELMAP_FALSE_POSITIVES = (
    "Error - Information Object Not found",
    "Error - SegmentNumber not monotonically increasing",
)
#: The same cause in an SR that references a LABELMAP SEG: dciodvfy does not know the SOP class is a
#: segmentation, so it objects to the Referenced Segment Number (one line per measurement group).
LABELMAP_SR_FALSE_POSITIVE = ("Error - Shall not be present for Referenced SOP Class that is not segmentation - "
                              "attribute <ReferencedSegmentNumber>")


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy prints for a file (warnings are not errors); fails without dciodvfy."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        pytest.fail("dciodvfy not found: install the Debian package dicom3tools (apt-get install dicom3tools)")
    result = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120)
    return [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
