"""One plan bundle for every face: what was planned (target, trajectories, resection) → ``plan.json`` and files.

The CLI (``aiportal plan bundle``), the desktop panel and the browser panel all describe the plan as a
:class:`PlanSpec` and call :func:`write_plan_bundle`, so a bundle written from any face holds the same
numbers for the same inputs. The desktop and the browser start from scene nodes
(:func:`bundle_from_scene`); a browser download is the folder zipped (:func:`zip_folder`).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aiportal.errors import InputError
from aiportal.planning.grid import LabelGrid


@dataclass
class PlanSpec:
    """What was planned; names are segment names of the grid."""

    target: str | None = None  # proximity table of the structures to it
    structures: list[str] | None = None  # at-risk segments (default: every other one)
    thresholds: dict[str, float] = field(default_factory=dict)
    default_threshold_mm: float | None = None
    trajectories: list[tuple[list[float], list[float]]] = field(default_factory=list)  # (entry, target) RAS
    tool_radius_mm: float = 0.0
    organ: str | None = None  # resected by planes, a drawn surface, or target + margin
    planes: list = field(default_factory=list)  # aiportal.planning.resection.Plane
    combine: str = "all"
    margin_mm: float | None = None
    surface: object = None  # aiportal.planning.surface_cut.CutSurface


def build_plan(grid: LabelGrid, spec: PlanSpec) -> tuple[dict, np.ndarray | None]:
    """The plan's measurements (``plan.json`` without the manifest) and the resected mask (or None)."""
    from aiportal.planning.proximity import proximity_table
    from aiportal.planning.resection import resect
    from aiportal.planning.trajectory import TrajectoryPlanner

    plan: dict = {"segmentation": grid.source, "target": spec.target}
    if spec.target:
        plan["proximity"] = [row.as_dict() for row in proximity_table(
            grid, spec.target, spec.structures, spec.thresholds, spec.default_threshold_mm)]
    planner = TrajectoryPlanner(grid, spec.structures, spec.thresholds, spec.default_threshold_mm) \
        if spec.trajectories else None
    plan["trajectories"] = [planner.check(entry, target, spec.tool_radius_mm).as_dict()
                            for entry, target in spec.trajectories]
    resected = None
    if spec.organ:
        target = spec.target if spec.target != spec.organ else None  # the desktop resects the picked target
        result, resected = resect(grid, spec.organ, planes=spec.planes or None, combine=spec.combine,
                                  target=target, margin_mm=spec.margin_mm, surface=spec.surface)
        plan["resection"] = result.as_dict()
    return plan, resected


def write_plan_bundle(grid: LabelGrid, folder: Path, spec: PlanSpec, *, segments: list[str] | None = None,
                      coordinates: str = "LPS", runtime=None, dicom_volume=None,
                      dicom_options: dict | None = None) -> dict:
    """Measure the plan and write its bundle into ``folder``; returns the manifest with the plan's
    ``warnings`` (e.g. a target crossing the cut). ``segments`` (STL, SEG) default to every segment that has
    voxels."""
    from aiportal.planning.bundle import write_bundle

    if dicom_volume is not None:
        from aiportal.planning.bundle_dicom import require_series_lattice

        require_series_lattice(grid, dicom_volume.node)  # before anything is measured or written
    plan, resected = build_plan(grid, spec)
    names = segments or grid.present_names()
    manifest = write_bundle(grid, Path(folder), plan, segments=list(dict.fromkeys(names)), resected_mask=resected,
                            coordinates=coordinates, runtime=runtime, dicom_volume=dicom_volume,
                            dicom_options=dicom_options)
    return {**manifest, "warnings": list(plan.get("resection", {}).get("warnings", []))}  # for every face to show


def new_bundle_folder(parent: Path, stem: str) -> Path:
    """A fresh folder ``<stem>-plan-<time>`` in ``parent`` (a second one in the same second gets a suffix)."""
    import time

    base = Path(parent) / f"{stem}-plan-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, count = base, 1
    while folder.exists():
        count += 1
        folder = base.with_name(f"{base.name}-{count}")
    folder.mkdir(parents=True)
    return folder


def require_empty_folder(folder: Path, overwrite: bool = False) -> None:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file", "choose a folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise InputError(f"output folder {folder} is not empty", "choose a new or empty folder")


def loaded_dicom_volume(volume_node, dicom_files: list) -> object | None:
    """The volume with the DICOM series it was loaded from (for the SEG and SR), or None without files."""
    if not dicom_files:
        return None
    from aiportal.io.dicom_series import source_from_files
    from aiportal.io.volumes import LoadedVolume

    files = [Path(f) for f in dicom_files]
    return LoadedVolume(volume_node, source_from_files(files), [], files[0].parent)


def zip_folder(folder: Path) -> bytes:
    """The bundle as one zip (paths relative to the folder)."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()
