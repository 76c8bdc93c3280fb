"""PACS connectivity: named endpoints, query, retrieve, store with verification, de-identification.

DICOMweb (QIDO-RS, WADO-RS, STOW-RS) is the first choice; DIMSE (C-FIND, C-GET/C-MOVE, C-STORE)
is the fallback for archives without it. Every error names the PACS, the object and the fix
(:class:`PacsError`), and nothing local is lost when a transfer fails.
"""

from __future__ import annotations

from aiportal.errors import AIPortalError


class PacsError(AIPortalError):
    """A PACS could not be reached, refused a request, or did not hold or accept an object."""


class PacsUnreachable(PacsError):
    """The PACS did not answer at all (down, wrong host or port): another protocol may still work."""
