"""AI Segment Portal: GUI-free core of the AISegmentPortal / AIMeasure / AIRegister Slicer extension.

Everything here runs inside 3D Slicer (on ``slicer.mrmlScene``) and headless on the
``slicer-core`` wheel (see :mod:`aiportal.runtime`).
"""

__version__ = "0.1.0"
