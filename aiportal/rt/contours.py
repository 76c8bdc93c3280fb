"""Planar contours of a binary slice and back, exact on the pixel grid (pure numpy / scikit-image).

Outlines come from marching squares at level 0.5 on the zero-padded slice: every vertex lies on the
boundary between an inside and an outside pixel (half-way between their centres), so no pixel centre is
ever on a contour (the nearest is 0.35 pixel away). Outer outlines and hole outlines are separate closed
contours; a pixel is inside when its centre is inside an odd number of them (even-odd), which gives the
slice back exactly. That is the RT Structure Set convention for holes that Slicer (SlicerRT), rt-utils
(OpenCV ``fillPoly``) and most planning systems read.

Contours drawn through pixel centres (rt-utils / OpenCV ``findContours`` output) are read the way their
writers mean them: the pixels the contour runs through count as inside.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as polygon_pixels
from skimage.measure import find_contours

_ON_LATTICE = 1e-3  # pixel units: a vertex this close to a pixel centre is on it


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D boolean mask, each (n, 2) as (row, column) pixel coordinates, open
    (the first vertex is not repeated), collinear vertices removed; outer outlines and holes alike."""
    if not mask.any():
        return []
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left = int(rows[0]), int(columns[0])
    crop = mask[top:int(rows[-1]) + 1, left:int(columns[-1]) + 1]
    padded = np.pad(crop.astype(np.uint8), 1)  # closes outlines that touch the image edge
    # 'high': diagonal neighbours are connected, as in the 8-connected islands of a label map
    outlines = find_contours(padded, 0.5, fully_connected="high")
    offset = np.array([top - 1.0, left - 1.0])
    return [_without_collinear(outline[:-1] + offset) for outline in outlines if len(outline) > 3]


def _without_collinear(points: np.ndarray) -> np.ndarray:
    """Drop the vertices where the outline goes straight on (marching squares puts one on every pixel edge)."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    turning = np.abs(cross) > 1e-9
    return points[turning] if turning.sum() >= 3 else points


def fill_contours(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The 2D boolean mask of closed contours ((row, column) pixel coordinates), even-odd: holes are
    contours inside contours. Pixel centres on a contour (contours drawn through pixel centres) are inside."""
    mask = np.zeros(shape, dtype=bool)
    on_contour = np.zeros(shape, dtype=bool)
    for contour in contours:
        _mark_lattice_points(contour, on_contour)
        if len(contour) < 3:
            continue
        # fill within the contour's box only: a slice is large, most outlines are small
        low = np.clip(np.floor(contour.min(axis=0)).astype(int), 0, None)
        high = np.minimum(np.ceil(contour.max(axis=0)).astype(int) + 1, shape)
        if np.any(high <= low):
            continue
        box = (slice(low[0], high[0]), slice(low[1], high[1]))
        rr, cc = polygon_pixels(contour[:, 0] - low[0], contour[:, 1] - low[1], tuple(high - low))
        mask[box][rr, cc] ^= True
    return mask | on_contour


def _mark_lattice_points(contour: np.ndarray, out: np.ndarray) -> None:
    """Set the pixels whose centres lie on the contour's edges (only edges between vertices on centres)."""
    rounded = np.rint(contour)
    if not np.all(np.abs(contour - rounded) < _ON_LATTICE):
        on = np.all(np.abs(contour - rounded) < _ON_LATTICE, axis=1)  # mixed: only the vertices themselves
        points = rounded[on].astype(np.int64)
    else:
        start = rounded.astype(np.int64)
        delta = np.roll(start, -1, axis=0) - start
        steps = np.maximum(np.gcd(np.abs(delta[:, 0]), np.abs(delta[:, 1])), 1)
        counts = steps  # lattice points per edge, the end vertex excluded (it starts the next edge)
        edge = np.repeat(np.arange(len(start)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        points = start[edge] + (delta[edge] // steps[edge, None]) * within[:, None]
    inside = ((points[:, 0] >= 0) & (points[:, 0] < out.shape[0]) & (points[:, 1] >= 0)
              & (points[:, 1] < out.shape[1]))
    out[points[inside, 0], points[inside, 1]] = True
