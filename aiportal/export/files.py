"""What an export wrote, file by file: shared by the exporter and the writers it calls."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportedFile:
    kind: str  # the format ("seg", "sc", ...), "source" for a corrected source copy, "png" for a key image
    name: str  # relative to the export folder
    sop_instance_uid: str | None = None  # set for every DICOM object (what a push sends)
    series_uid: str | None = None
