"""One cross-section of a vessel: the plane through a centreline point, perpendicular to the
centreline, sampled sub-voxel from the smoothed mask.

The plane is sampled on a fine square grid (about 1/64 of its width, trilinear from the
Gaussian-smoothed mask) and the vessel's outline is the 0.5 level line through that grid
(marching squares, linear between samples). The section is the outline that encloses the
centreline point (holes, e.g. a dissection flap left out of the mask, are filled); other pieces of
the mask that the plane also cuts (the other limb of an arch, a neighbour branch) are not part of
it. Definitions, in the plane, in mm:

- **area**: the area enclosed by the outline (shoelace formula);
- **maximum diameter**: the longest distance between two points of the outline (its Feret diameter);
- **perpendicular diameter**: the longest chord of the section perpendicular to the maximum diameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from aiportal.vessels.centerline import VesselGrid

_SAMPLES = 129  # per side of the plane grid (odd: the centre is a sample)


@dataclass
class CrossSection:
    """A measured cross-section; every point in RAS mm."""

    center: np.ndarray
    normal: np.ndarray
    area_mm2: float
    max_diameter_mm: float
    perpendicular_diameter_mm: float
    max_diameter_endpoints: tuple[np.ndarray, np.ndarray]
    perpendicular_endpoints: tuple[np.ndarray, np.ndarray]
    solidity: float  # area over its convex hull's: about 1 for a single vessel, less at a branch
    cut_by_image_border: bool  # part of the section lies beyond the image: it is cut off there
    encloses_center: bool  # the outline encloses the centreline point (else the nearest outline)


def plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane perpendicular to ``normal``."""
    normal = normal / np.linalg.norm(normal)
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(normal, u)


def _outline(image: np.ndarray, level: float) -> tuple[np.ndarray, bool] | None:
    """The 0.5 outline (in pixel coordinates) enclosing the centre pixel, or nearest to it."""
    from skimage.measure import find_contours, points_in_poly  # installed on first use inside Slicer

    centre = (np.array(image.shape) - 1) / 2.0
    contours = [c for c in find_contours(image, level) if len(c) >= 4 and np.allclose(c[0], c[-1])]
    if not contours:
        return None
    enclosing = [c for c in contours if points_in_poly(centre[None, :], c)[0]]
    if enclosing:  # the outer one of nested outlines: holes are filled
        return max(enclosing, key=lambda c: abs(_area(c))), True
    return min(contours, key=lambda c: np.min(np.linalg.norm(c - centre, axis=1))), False


def _area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _farthest_pair(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    hull = points[ConvexHull(points).vertices] if len(points) > 3 else points
    squared = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)
    a, b = np.unravel_index(int(squared.argmax()), squared.shape)
    return hull[a], hull[b], float(np.sqrt(squared[a, b]))


def longest_perpendicular_chord(polygon: np.ndarray, along: np.ndarray,
                                resolution: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The longest segment inside ``polygon`` (closed, 2D) perpendicular to the unit vector ``along``:
    lines across, every ``resolution``, each cut by the polygon's edges into inside segments."""
    across = np.array([-along[1], along[0]])
    s, t = polygon @ along, polygon @ across
    s0, s1, t0, t1 = s[:-1], s[1:], t[:-1], t[1:]
    offsets = np.arange(s.min() + resolution / 2, s.max(), resolution)[:, None]
    if len(offsets) == 0:  # an outline thinner than half the resolution along ``along``: no line crosses it
        return polygon[0], polygon[0], 0.0
    crossing = (s0 - offsets) * (s1 - offsets) < 0  # (lines, edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        cuts = np.where(crossing, t0 + (offsets - s0) / (s1 - s0) * (t1 - t0), np.nan)
    cuts = np.sort(cuts, axis=1)[:, : 2 * (int(crossing.sum(axis=1).max()) // 2)]  # nan sorts last
    if cuts.shape[1] == 0:
        return polygon[0], polygon[0], 0.0
    lengths = np.nan_to_num(cuts[:, 1::2] - cuts[:, 0::2], nan=-1.0)  # inside segments of each line
    line, segment = np.unravel_index(int(lengths.argmax()), lengths.shape)
    offset = float(offsets[line, 0])
    start, end = cuts[line, 2 * segment], cuts[line, 2 * segment + 1]
    return offset * along + start * across, offset * along + end * across, float(lengths[line, segment])


def measure_cross_section(grid: VesselGrid, center: np.ndarray, normal: np.ndarray,
                          half_width_mm: float) -> CrossSection | None:
    """The section of the vessel through ``center`` perpendicular to ``normal`` (see the module
    docstring); the plane grid grows until the section fits in it. None where the plane holds no
    outline (the point is outside the vessel and nothing is near)."""
    normal = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    u, v = plane_basis(normal)
    width = float(half_width_mm)
    for _ in range(4):
        pixel = 2.0 * width / (_SAMPLES - 1)
        offsets = (np.arange(_SAMPLES) - (_SAMPLES - 1) / 2) * pixel
        # image rows along u, columns along v
        plane = center + offsets[:, None, None] * u + offsets[None, :, None] * v
        flat = plane.reshape(-1, 3)
        image = grid.value(flat).reshape(_SAMPLES, _SAMPLES)
        found = _outline(image, grid.level)
        if found is None:
            return None
        outline, encloses = found
        touches = outline.min() <= 0.5 or outline.max() >= _SAMPLES - 1.5
        if not touches:
            break
        width *= 2.0
    polygon = outline * pixel - (_SAMPLES - 1) / 2 * pixel  # mm in (u, v)
    return section_from_outline(grid, polygon, pixel, center, normal, encloses)


def section_from_outline(grid: VesselGrid, polygon: np.ndarray, pixel: float, center: np.ndarray,
                         normal: np.ndarray, encloses: bool) -> CrossSection:
    """Area and diameters (module docstring) of a closed outline in mm, in the (u, v) basis of
    :func:`plane_basis` (``normal``) about ``center``; ``pixel``: the plane grid's sample spacing."""
    u, v = plane_basis(normal)
    area = abs(_area(polygon))
    a, b, diameter = _farthest_pair(polygon)
    along = (b - a) / diameter if diameter > 0 else np.array([1.0, 0.0])
    c, d, perpendicular = longest_perpendicular_chord(polygon, along, pixel / 4)
    hull_area = ConvexHull(polygon).volume if len(polygon) > 3 else area

    def ras(point: np.ndarray) -> np.ndarray:
        return center + point[..., 0, None] * u + point[..., 1, None] * v

    # beyond the image the mask reads as outside: an outline within a voxel of the image's faces
    # follows the border there, not the vessel's wall
    near_border = grid.distance_to_image_border(ras(polygon)).min() < 1.0

    return CrossSection(
        center=np.asarray(center, dtype=float), normal=normal, area_mm2=area, max_diameter_mm=diameter,
        perpendicular_diameter_mm=perpendicular, max_diameter_endpoints=(ras(a), ras(b)),
        perpendicular_endpoints=(ras(c), ras(d)), solidity=area / hull_area if hull_area > 0 else 1.0,
        cut_by_image_border=bool(near_border), encloses_center=encloses,
    )
