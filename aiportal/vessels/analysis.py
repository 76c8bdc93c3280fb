"""Vessel analysis of one mask: centreline, cross-sections every millimetre, maximum diameter.

Everything is computed in RAS millimetres from the mask and its IJK->RAS matrix, so anisotropic
voxels and rotated or oblique direction matrices give the same answer (to the sampling of the mask).
Cross-sections where the measurement cannot be trusted are kept in the list but left out of the
maximum, each with its reason: near a branch point (the plane cuts into the branch), cut by the
image border, not enclosing its centreline point, or clearly not one vessel (solidity < 0.8).
Before the maximum is taken, its candidates' planes are turned to the least section area nearby
(the skeleton's tangent can be several degrees off near its ends; an oblique plane enlarges a
section by 1/cos of the tilt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aiportal.vessels.centerline import Centreline, CentrelinePath, extract_centreline, vessel_grid
from aiportal.vessels.cross_section import CrossSection, measure_cross_section, plane_basis

DEFAULT_STEP_MM = 1.0
_MIN_SOLIDITY = 0.8
# below this many of the largest voxel size per typical diameter, analytic tubes were off by more than 1 mm
_VOXELS_PER_DIAMETER = 5.0


@dataclass
class VesselSection:
    """A cross-section on a centreline path, at ``arc_mm`` from the path's start."""

    path: int  # 0: main path, else a branch
    arc_mm: float
    section: CrossSection
    excluded: list[str] = field(default_factory=list)  # why it does not count for the maximum
    radius_mm: float = 0.0  # of the largest sphere inside the vessel there
    refined: bool = False  # its plane was turned to the least area (see _refined_maximum)

    def as_json(self) -> dict:
        s = self.section
        return {
            "path": self.path,
            "arc_mm": round(self.arc_mm, 2),
            "position_ras": _rounded(s.center),
            "normal": _rounded(s.normal, 5),
            "area_mm2": round(s.area_mm2, 2),
            "max_diameter_mm": round(s.max_diameter_mm, 2),
            "perpendicular_diameter_mm": round(s.perpendicular_diameter_mm, 2),
            "max_diameter_endpoints_ras": [_rounded(p) for p in s.max_diameter_endpoints],
            "perpendicular_endpoints_ras": [_rounded(p) for p in s.perpendicular_endpoints],
            "solidity": round(s.solidity, 3),
            "normal_refined": self.refined,
            "excluded": self.excluded,
        }


@dataclass
class VesselMeasurement:
    name: str
    centerline_length_mm: float  # of the main path
    centreline: Centreline
    sections: list[VesselSection]
    maximum: VesselSection | None  # the section with the largest maximum diameter that counts
    warnings: list[str] = field(default_factory=list)
    segment_id: str = ""
    kind: str = "vessel"  # or "disc": a landmark cross-section measured on its own plane (vessels.flat)
    single_plane_range_mm: tuple[float, float] | None = None  # of a disc: see vessels.flat

    @property
    def max_diameter_mm(self) -> float:
        return self.maximum.section.max_diameter_mm if self.maximum else float("nan")

    def summary(self) -> str:
        """One line for the CLI and the panels."""
        if self.maximum is None:
            return f"{self.name}: centreline {self.centerline_length_mm:.1f} mm, no cross-section measured"
        s = self.maximum.section
        ras = ", ".join(f"{x:.1f}" for x in s.center)
        if self.kind == "disc":
            return (f"{self.name}: disc (a cross-section on its own plane): max diameter {s.max_diameter_mm:.1f} mm "
                    f"(perpendicular {s.perpendicular_diameter_mm:.1f} mm, area {s.area_mm2:.0f} mm²) at RAS ({ras})")
        return (f"{self.name}: max diameter {s.max_diameter_mm:.1f} mm (perpendicular "
                f"{s.perpendicular_diameter_mm:.1f} mm, area {s.area_mm2:.0f} mm²) at RAS ({ras}); centreline "
                f"{self.centerline_length_mm:.1f} mm, {len(self.centreline.paths) - 1} branch(es), "
                f"{len(self.sections)} cross-sections")

    def as_json(self) -> dict:
        m = self.maximum.section if self.maximum else None
        return {
            "name": self.name,
            "segment_id": self.segment_id,
            "kind": self.kind,
            "centerline_length_mm": round(self.centerline_length_mm, 2) if self.kind == "vessel" else None,
            **({"single_plane_max_diameter_range_mm": [round(x, 2) for x in self.single_plane_range_mm]}
               if self.single_plane_range_mm else {}),
            "max_diameter_mm": round(m.max_diameter_mm, 2) if m else None,
            "max_diameter_perpendicular_mm": round(m.perpendicular_diameter_mm, 2) if m else None,
            "max_diameter_area_mm2": round(m.area_mm2, 2) if m else None,
            "max_diameter_position_ras": _rounded(m.center) if m else None,
            "max_diameter_endpoints_ras": [_rounded(p) for p in m.max_diameter_endpoints] if m else None,
            "max_diameter_path": self.maximum.path if self.maximum else None,
            "max_diameter_arc_mm": round(self.maximum.arc_mm, 2) if self.maximum else None,
            "paths": [{"path": n, "parent": p.parent, "length_mm": round(p.length_mm, 2),
                       "start_ras": _rounded(p.points[0]), "end_ras": _rounded(p.points[-1])}
                      for n, p in enumerate(self.centreline.paths)],
            "branches": max(len(self.centreline.paths) - 1, 0),
            "connected_pieces": self.centreline.components,
            "warnings": self.warnings,
            "cross_sections": [s.as_json() for s in self.sections],
        }


def _rounded(vector: np.ndarray, decimals: int = 3) -> list[float]:
    return [round(float(x), decimals) for x in vector]


def _stations(path: CentrelinePath, step_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``step_mm`` (at most) along a path, their arc length, unit tangent and radius."""
    points = path.points
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    count = max(int(np.ceil(arc[-1] / step_mm)), 1)
    positions = np.linspace(0.0, arc[-1], count + 1)
    centres = np.column_stack([np.interp(positions, arc, points[:, a]) for a in range(3)])
    tangent_all = np.gradient(points, arc, axis=0) if len(points) > 1 else np.array([[0.0, 0.0, 1.0]])
    tangents = np.column_stack([np.interp(positions, arc, tangent_all[:, a]) for a in range(3)])
    tangents /= np.maximum(np.linalg.norm(tangents, axis=1, keepdims=True), 1e-12)
    radii = np.interp(positions, arc, path.radii)
    return centres, positions, tangents, radii


def _exclusions(section: CrossSection, radius: float, junctions, margin: float) -> list[str]:
    """Why a cross-section should not count for the vessel's maximum (empty: it counts)."""
    excluded = []
    for junction, junction_radius in junctions:
        if np.linalg.norm(section.center - junction) < 1.5 * max(junction_radius, radius) + margin:
            excluded.append("near a branch point")
            break
    if section.cut_by_image_border:
        excluded.append("cut by the image border")
    if not section.encloses_center:
        excluded.append("outline does not enclose the centreline")
    if section.solidity < _MIN_SOLIDITY:
        excluded.append(f"not one round vessel (solidity {section.solidity:.2f})")
    return excluded


def _least_area_normal(grid, section: CrossSection, half_width: float, tilt: float = np.tan(np.radians(4.0)),
                       rounds: int = 2) -> CrossSection:
    """The section through the same centre whose plane has the least area nearby: a plane perpendicular to
    a tube cuts it in the smallest section, so this corrects the centreline's tangent where it is off
    (near the ends of the skeleton, at kinks). Parabola through the areas at ±tilt about each in-plane axis."""
    best = section
    for _ in range(rounds):
        u, v = plane_basis(best.normal)
        step = np.zeros(2)
        for axis, direction in enumerate((u, v)):
            areas = []
            for sign in (-1.0, 1.0):
                tilted = measure_cross_section(grid, best.center, best.normal + sign * tilt * direction, half_width)
                areas.append(tilted.area_mm2 if tilted is not None else np.inf)
            curvature = areas[0] - 2 * best.area_mm2 + areas[1]
            if np.isfinite(curvature) and curvature > 0:
                step[axis] = np.clip(tilt * (areas[0] - areas[1]) / (2 * curvature), -2 * tilt, 2 * tilt)
        if not step.any():
            break
        turned = measure_cross_section(grid, best.center, best.normal + step[0] * u + step[1] * v, half_width)
        if turned is None or turned.area_mm2 >= best.area_mm2:
            break
        best = turned
    return best


def _refined_maximum(grid, counted: list[VesselSection], junctions, margin: float, keep_excluded: bool,
                     limit: int = 40) -> VesselSection | None:
    """The counted section with the largest maximum diameter, after turning the candidates' planes to the
    least area (:func:`_least_area_normal`): refine the current maximum until the maximum is a refined one.
    A section that no longer counts once turned drops out, unless ``keep_excluded`` (none counted at all)."""
    for _ in range(limit):
        if not counted:
            return None
        top = max(counted, key=lambda s: s.section.max_diameter_mm)
        if top.refined:
            return top
        top.section = _least_area_normal(grid, top.section, 2.0 * top.radius_mm + margin)
        top.refined = True
        top.excluded = _exclusions(top.section, top.radius_mm, junctions, margin)
        if top.excluded and not keep_excluded:
            counted.remove(top)
    return max(counted, key=lambda s: s.section.max_diameter_mm) if counted else None


def measure_vessel(mask_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str = "vessel",
                   step_mm: float = DEFAULT_STEP_MM) -> VesselMeasurement:
    """Centreline, cross-sections every ``step_mm`` along the main path and every branch, and the
    largest maximum diameter over the sections that count (see the module docstring)."""
    if step_mm <= 0 or step_mm > 1.0:
        raise ValueError("the cross-section step must be in (0, 1] mm")
    grid = vessel_grid(np.asarray(mask_kji, dtype=bool), np.asarray(ijk_to_ras, dtype=float))
    centreline = extract_centreline(grid)
    margin = 2.0 * float(grid.spacing.max())
    junctions = [(p.junction, float(p.radii[0])) for p in centreline.paths if p.junction is not None]
    sections: list[VesselSection] = []
    for number, path in enumerate(centreline.paths):
        if len(path.points) < 2:
            continue
        for centre, arc, tangent, radius in zip(*_stations(path, step_mm), strict=True):
            section = measure_cross_section(grid, centre, tangent, 2.0 * radius + margin)
            if section is not None:
                reasons = _exclusions(section, radius, junctions, margin)
                sections.append(VesselSection(number, float(arc), section, reasons, radius))
    warnings = []
    if centreline.components > 1:
        warnings.append(f"{name} has {centreline.components} separate pieces: only the largest is measured")
    typical = float(np.median([s.section.max_diameter_mm for s in sections])) if sections else 0.0
    coarsest = float(grid.spacing.max())
    if sections and coarsest > typical / _VOXELS_PER_DIAMETER:
        warnings.append(f"{name}: {coarsest:.1f} mm voxels are coarse for a vessel of about {typical:.0f} mm: "
                        f"diameters may be off by more than 1 mm (analytic tubes: up to 2.5 mm at 8 mm on 5 mm "
                        "slices); measure on thinner slices")
    cut = sum("cut by the image border" in s.excluded for s in sections)
    if cut:
        warnings.append(f"{name} is cut by the image border ({cut} cross-sections there left out): its largest "
                        "diameter may lie outside the image")
    counted = [s for s in sections if not s.excluded]
    fallback = not counted and bool(sections)
    if fallback:
        warnings.append(f"no cross-section of {name} is free of branches and the image border: its maximum "
                        "diameter is taken over all of them and may be too large")
        counted = list(sections)
    maximum = _refined_maximum(grid, counted, junctions, margin, keep_excluded=fallback)
    if maximum is None:
        warnings.append(f"{name}: no cross-section could be measured")
    return VesselMeasurement(name, centreline.paths[0].length_mm, centreline, sections, maximum, warnings)
