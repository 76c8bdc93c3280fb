"""A segment that is itself a cross-section: a thin disc drawn or predicted across a vessel at a
landmark (TotalSegmentator's ``pulmonary_artery_landmarks`` discs: annulus, sinotubular junction,
bifurcation, left and right pulmonary artery starts; an annulus a user paints by hand).

Such a disc is measured on its own plane, not as a vessel: the plane is the disc's least-variance
plane (PCA of its voxel centres in RAS, as TotalSegmentator's ``find_mask_normal``), and its outline
is the 0.5 level line of the disc's projection onto that plane: the largest value of the trilinearly
interpolated mask across the disc's thickness (a disc a couple of voxels thick is seldom exactly flat,
and a single plane through it reads gaps where it wobbles). Area, maximum and perpendicular diameter
as for a vessel's cross-section (:mod:`aiportal.vessels.cross_section`).

This is a different quantity from the vessel's cross-section at the disc's plane: a landmark model's
disc need not reach the vessel's wall (TotalSegmentator's pulmonary discs are 1-25 % smaller in area
than the pulmonary artery mask cut by the same plane).

A ragged disc has no one diameter: single planes through it half a voxel either side of its centre
can read diameters more than 1 mm apart (TotalSegmentator's report measures one such plane, between
pixel centres on a 0.8 mm plane image: on its sinotubular-junction disc 24.4 to 26.6 mm within
±0.4 mm of the plane). :func:`disc_measurement` measures that spread and warns when it is over 1 mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from aiportal.vessels.centerline import vessel_grid
from aiportal.vessels.cross_section import (
    _SAMPLES,
    CrossSection,
    _farthest_pair,
    _outline,
    plane_basis,
    section_from_outline,
)

# a disc flatter than this (thickness over width, from the PCA's spread) is measured as a disc
MAX_FLATNESS = 0.35
# a flat mask thicker than this many voxels is a vessel or an organ, not a landmark disc
MAX_DISC_VOXELS = 4.0
# single-plane diameters through a disc further apart than this: its diameter depends on the plane chosen
MAX_SINGLE_PLANE_SPREAD_MM = 1.0


def disc_plane(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre (RAS), unit normal and flatness (smallest over largest in-plane spread) of a mask's voxels."""
    points = np.argwhere(mask_kji)[:, ::-1] @ np.asarray(ijk_to_ras)[:3, :3].T + np.asarray(ijk_to_ras)[:3, 3]
    centre = points.mean(axis=0)
    variances, axes = np.linalg.eigh(np.cov((points - centre).T))
    return centre, axes[:, 0], float(np.sqrt(max(variances[0], 0.0) / max(variances[2], 1e-12)))


def measure_disc(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> CrossSection:
    """Area and diameters of a disc-shaped mask on its own plane (see the module docstring).
    A mask that is not flat (flatness above ``MAX_FLATNESS``) is refused: it is not a cross-section."""
    return _measure_disc(mask_kji, ijk_to_ras)[0]


def _measure_disc(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[CrossSection, tuple[float, float]]:
    """:func:`measure_disc`, and the smallest and largest maximum diameter of the disc cut by single planes
    parallel to its own, from half the smallest voxel size below its centre to as far above (where the
    disc's plane is known to within)."""
    mask_kji = np.asarray(mask_kji, dtype=bool)
    if np.count_nonzero(mask_kji) < 4:
        raise ValueError("the disc has fewer than 4 voxels")
    centre, normal, flatness = disc_plane(mask_kji, ijk_to_ras)
    if flatness > MAX_FLATNESS:
        raise ValueError(f"the mask is not a disc (thickness/width {flatness:.2f} > {MAX_FLATNESS}): "
                         "measure it as a vessel or a lesion")
    grid = vessel_grid(mask_kji, ijk_to_ras)
    raw = grid.mask.astype(np.float32)
    u, v = plane_basis(normal)
    points = grid.to_ras(np.argwhere(grid.mask))
    half_width = float(np.abs(np.column_stack([(points - centre) @ u, (points - centre) @ v])).max()
                       + 2.0 * grid.spacing.max())
    thickness = float(np.ptp((points - centre) @ normal)) / 2.0 + grid.spacing.max()
    pixel = 2.0 * half_width / (_SAMPLES - 1)
    offsets = (np.arange(_SAMPLES) - (_SAMPLES - 1) / 2) * pixel
    plane = (centre + offsets[:, None, None] * u + offsets[None, :, None] * v).reshape(-1, 3)
    step = grid.spacing.min() / 4
    projection = np.zeros(len(plane), dtype=np.float32)
    single_plane_diameters = []
    for shift in np.arange(-thickness, thickness + 1e-9, step):
        cut = ndimage.map_coordinates(raw, grid.to_kji(plane + shift * normal), order=1, cval=0.0)
        projection += step * cut
        if abs(shift) <= grid.spacing.min() / 2 + 1e-9:
            found = _outline(cut.reshape(_SAMPLES, _SAMPLES), 0.5)
            if found is not None and found[1]:
                single_plane_diameters.append(_farthest_pair(found[0] * pixel)[2])
    # mm of disc across each point of the plane: its edge is where half the disc's own thickness is left
    projection /= float(np.median(projection[projection > 0.5 * projection.max()]))
    found = _outline(projection.reshape(_SAMPLES, _SAMPLES), 0.5)
    if found is None:
        raise ValueError("the disc has no outline on its plane")
    outline, encloses = found
    polygon = outline * pixel - (_SAMPLES - 1) / 2 * pixel
    spread = ((min(single_plane_diameters), max(single_plane_diameters)) if single_plane_diameters
              else (float("nan"), float("nan")))
    return section_from_outline(grid, polygon, pixel, centre, normal, encloses), spread

def is_disc(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> bool:
    """A mask flat and thin enough to be a cross-section (a landmark disc), not a vessel: flatness at most
    ``MAX_FLATNESS`` and at most ``MAX_DISC_VOXELS`` of the largest voxel size thick (TotalSegmentator's
    pulmonary discs: flatness 0.10-0.13, 2-2.6 mm thick on 1.5 mm voxels; its pulmonary artery: 0.28, 45 mm)."""
    mask_kji = np.asarray(mask_kji, dtype=bool)
    if np.count_nonzero(mask_kji) < 4:
        return False
    centre, normal, flatness = disc_plane(mask_kji, ijk_to_ras)
    matrix = np.asarray(ijk_to_ras, dtype=float)
    points = np.argwhere(mask_kji)[:, ::-1] @ matrix[:3, :3].T + matrix[:3, 3]
    largest_voxel = float(np.linalg.norm(matrix[:3, :3], axis=0).max())
    return flatness <= MAX_FLATNESS and float(np.ptp((points - centre) @ normal)) <= MAX_DISC_VOXELS * largest_voxel


def disc_measurement(mask_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str = "disc"):
    """A landmark disc as a :class:`~aiportal.vessels.analysis.VesselMeasurement` of one cross-section
    (``kind`` "disc", no centreline), so the vessel outputs (vessels.json, markups, SR, panels) carry it;
    warned where single planes through it read diameters more than 1 mm apart."""
    from aiportal.vessels.analysis import VesselMeasurement, VesselSection
    from aiportal.vessels.centerline import Centreline

    section, (low, high) = _measure_disc(mask_kji, ijk_to_ras)
    warnings = []
    if high - low > MAX_SINGLE_PLANE_SPREAD_MM:
        warnings.append(f"{name}: the disc is ragged: single planes through it, half a voxel either side of its "
                        f"centre, read maximum diameters {low:.1f} to {high:.1f} mm; {section.max_diameter_mm:.1f} mm "
                        "is over its whole thickness, a one-plane measurement may differ by that much")
    measured = VesselSection(0, 0.0, section, refined=True)
    return VesselMeasurement(name, 0.0, Centreline(paths=[]), [measured], measured, warnings, kind="disc",
                             single_plane_range_mm=(low, high))
