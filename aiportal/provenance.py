"""Who made a segment, with what, how: recorded on every AI segment as segment tags.

Tags travel with the segment inside Slicer, into seg.nrrd and back, so provenance survives
editing, saving and reloading; the audit trail keeps the same record per run.
"""

from __future__ import annotations

import getpass
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from aiportal import __version__

TAG_PREFIX = "AIPortal."
#: Review states of an AI segment; "suggested" until the reader decides.
REVIEW_STATES = ("suggested", "accepted", "modified", "rejected")


def read_tag(segment, name: str) -> str | None:
    """A ``vtkSegment`` tag's value, or None when the segment lacks it."""
    import vtk  # here, not at the top: the plain DICOM encoders use this module without VTK

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def software_versions() -> str:
    try:
        core = metadata.version("slicer-core")
    except metadata.PackageNotFoundError:  # inside the Slicer application
        core = "Slicer application"
    return f"aiportal {__version__}; slicer-core {core}"


@dataclass
class Provenance:
    model_id: str
    model_version: str
    weights_sha256: str  # "none" for models without weights
    parameters: dict[str, Any]
    device: str
    started: str
    finished: str
    user: str = field(default_factory=getpass.getuser)
    software: str = field(default_factory=software_versions)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_tags(self) -> dict[str, str]:
        tags = {}
        for key, value in asdict(self).items():
            text = json.dumps(value, sort_keys=True, separators=(",", ":")) if key == "parameters" else str(value)
            # Slicer joins tags with "|" in seg.nrrd; keep values free of it
            tags[TAG_PREFIX + key] = text.replace("|", "/")
        return tags

    def tag(self, segment) -> None:
        """Write this provenance onto a ``vtkSegment``."""
        for key, value in self.as_tags().items():
            segment.SetTag(key, value)

    @classmethod
    def of_segment(cls, segment) -> Provenance | None:
        """The provenance tagged on a ``vtkSegment``; None for a segment no model made."""
        values = {name: value for name in cls.__dataclass_fields__
                  if (value := read_tag(segment, TAG_PREFIX + name)) is not None}
        if "model_id" not in values:
            return None
        values["parameters"] = json.loads(values.get("parameters", "{}"))
        return cls(**values)
