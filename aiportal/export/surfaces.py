"""Segments as surface meshes (STL, OBJ) for 3D printing, planning and other software.

Files are written by Slicer's own ``ExportSegmentsClosedSurfaceRepresentationToFiles`` so they
match what Slicer's Segmentations module writes (LPS or RAS, OBJ with one material per segment).
The work happens on a temporary copy of the segmentation: the user's node keeps its conversion
parameters (smoothing) and representations. Every surface is checked to be watertight.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import slicer
import vtk

from aiportal.errors import AIPortalError, InputError
from aiportal.segmentation import segment_ids as all_segment_ids

_Logic = slicer.vtkSlicerSegmentationsModuleLogic
CLOSED_SURFACE = "Closed surface"
FILE_FORMATS = ("STL", "OBJ")


def surface_is_closed(polydata: vtk.vtkPolyData) -> bool:
    """True when every edge is shared by exactly two triangles (no holes, no non-manifold edges)."""
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(polydata)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return polydata.GetNumberOfCells() > 0 and edges.GetOutput().GetNumberOfCells() == 0


def surface_volume_mm3(polydata: vtk.vtkPolyData) -> float:
    """Enclosed volume of a closed triangle mesh (mm³ for meshes in mm)."""
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(polydata)
    mass = vtk.vtkMassProperties()
    mass.SetInputConnection(triangles.GetOutputPort())
    mass.Update()
    return float(mass.GetVolume())


def safe_file_stem(name: str) -> str:
    """A segment name as a file name on every system: letters, digits, '.', '_', '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return stem or "segment"


def _unique(stem: str, taken: set[str]) -> str:
    candidate, number = stem, 2
    while candidate.lower() in taken:  # case-insensitive: macOS and Windows file systems
        candidate, number = f"{stem}_{number}", number + 1
    taken.add(candidate.lower())
    return candidate


def _check_folder(out_dir: Path) -> None:
    if not out_dir.is_dir():
        raise InputError(f"Output folder {out_dir} does not exist", "create it or choose another folder")
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"Output folder {out_dir} is not writable", "choose a folder you can write to")


def _surfaces_made_with(segmentation, smoothing: float, decimation: float) -> bool:
    """Whether the segmentation already holds closed surfaces made with these factors."""
    if not segmentation.ContainsRepresentation(CLOSED_SURFACE):
        return False
    try:
        made = (float(segmentation.GetConversionParameter("Smoothing factor") or "nan"),
                float(segmentation.GetConversionParameter("Decimation factor") or "0"))
    except ValueError:
        return False
    return made == (smoothing, decimation)


def export_surfaces(
    segmentation_node,
    out_dir,
    *,
    file_format: Literal["STL", "OBJ"] = "STL",
    merged: bool = False,
    coordinates: Literal["LPS", "RAS"] = "LPS",
    smoothing: float = 0.5,
    decimation: float = 0.0,
    segment_ids: Sequence[str] | None = None,
) -> list[Path]:
    """Write closed surfaces of the segments (all by default) and return the files written.

    One file per segment named after it (``liver.stl``), or with ``merged`` one file named after
    the segmentation. OBJ files come with their ``.mtl`` (segment colours) next to them.
    ``smoothing`` and ``decimation`` are Slicer's "Smoothing factor" and "Decimation factor".
    LPS is what most STL consumers (and Slicer's default) expect; RAS flips x and y.

    Raises :class:`InputError` for a bad request, and :class:`AIPortalError` after writing when a
    surface is not watertight (lower the decimation), so that it is never used unknowingly.
    """
    writer_format = file_format.upper()
    if writer_format not in FILE_FORMATS:
        raise InputError(f"Unknown surface file format {file_format!r}", f"use one of: {', '.join(FILE_FORMATS)}")
    if coordinates not in ("LPS", "RAS"):
        raise InputError(f"Unknown coordinate system {coordinates!r}", "use LPS or RAS")
    out_dir = Path(out_dir)
    _check_folder(out_dir)
    known = all_segment_ids(segmentation_node)
    if not known:
        raise InputError(f"Segmentation {segmentation_node.GetName()} has no segments", "segment the image first")
    wanted = list(segment_ids) if segment_ids is not None else known
    for segment_id in wanted:
        if segment_id not in known:
            raise InputError(
                f"Segment {segment_id!r} is not in {segmentation_node.GetName()}", f"use one of: {', '.join(known)}"
            )
    if writer_format == "OBJ" and "DISPLAY" not in os.environ:
        # Slicer's OBJ export goes through vtkOBJExporter, which opens a render window: without an X
        # server, use EGL (Mesa's software renderer) instead of failing on the X connection first.
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

    copy = slicer.vtkMRMLSegmentationNode()
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    segmentation = copy.GetSegmentation()
    if not _surfaces_made_with(segmentation, smoothing, decimation):  # else reuse the ones shown in 3D
        segmentation.RemoveRepresentation(CLOSED_SURFACE)
        segmentation.SetConversionParameter("Smoothing factor", str(smoothing))
        segmentation.SetConversionParameter("Decimation factor", str(decimation))
        if not segmentation.CreateRepresentation(CLOSED_SURFACE):
            raise AIPortalError(f"Slicer could not make surfaces of {segmentation_node.GetName()}")
    empty = [
        segmentation.GetSegment(s).GetName()
        for s in wanted
        if not segmentation.GetSegment(s).GetRepresentation(CLOSED_SURFACE).GetNumberOfCells()
    ]
    if empty:
        raise InputError(f"Segments {', '.join(empty)} are empty: no surface to export", "leave them out (segment_ids)")

    # Slicer names a merged file after the node: one merged export per file names each file.
    taken: set[str] = set()
    if merged:
        jobs = [(_unique(safe_file_stem(segmentation_node.GetName() or "segmentation"), taken), wanted)]
    else:
        jobs = [(_unique(safe_file_stem(segmentation.GetSegment(s).GetName()), taken), [s]) for s in wanted]
    suffix = "." + writer_format.lower()
    written: list[Path] = []
    open_surfaces = []
    for stem, ids in jobs:
        copy.SetName(stem)
        array = vtk.vtkStringArray()
        for segment_id in ids:
            array.InsertNextValue(segment_id)
        path = out_dir / (stem + suffix)
        _Logic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(out_dir), copy, array, writer_format, coordinates == "LPS", 1.0, True
        )
        if not path.is_file():  # Slicer reports success even when its writer failed
            raise AIPortalError(f"Could not write {path}", "check the free disk space and the folder's permissions")
        written.append(path)
        if writer_format == "OBJ":
            written.append(path.with_suffix(".mtl"))
        open_surfaces += [
            segmentation.GetSegment(s).GetName()
            for s in ids
            if not surface_is_closed(segmentation.GetSegment(s).GetRepresentation(CLOSED_SURFACE))
        ]
    if open_surfaces:
        raise AIPortalError(
            f"Surfaces of {', '.join(open_surfaces)} are not watertight (files written in {out_dir})",
            "export again with a lower decimation factor",
        )
    return written
