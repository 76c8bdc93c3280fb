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
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from skimage.draw import polygon as polygon_pixels

_ON_LATTICE = 1e-3  # pixel units: a vertex this close to a pixel centre is on it


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D boolean mask, each (n, 2) as (row, column) pixel coordinates, open
    (the first vertex is not repeated), collinear vertices removed; outer outlines and holes alike."""
    return stack_contours(mask[None])[0]


_SIDES = np.array([[0, 1], [2, 1], [1, 0], [1, 2]])  # top, bottom, left, right edge midpoints (doubled)
_CORNERS = np.array([[0, 0], [0, 2], [2, 0], [2, 2]])  # upper left, upper right, lower left, lower right


def _segment_table() -> np.ndarray:
    """Marching squares per case (16 × up to 2 segments × (from side, to side), -1: none). A saddle cuts off
    its two outside corners (diagonal inside neighbours connected); every segment has the inside on its
    left, so each edge midpoint starts one segment and ends one and outlines join exactly."""
    table = np.full((16, 2, 2), -1)
    for case in range(1, 15):
        inside = [bool(case >> bit & 1) for bit in range(4)]
        ul, ur, ll, lr = inside
        cracked = [ul != ur, ll != lr, ul != ll, ur != lr]  # top, bottom, left, right
        if all(cracked):
            pairs = [(0, 3), (2, 1)] if ul else [(0, 2), (1, 3)]
        else:
            pairs = [tuple(side for side in range(4) if cracked[side])]
        x = _CORNERS[inside.index(True)]
        for slot, (first, second) in enumerate(pairs):
            p, q = _SIDES[first], _SIDES[second]
            left = (q[0] - p[0]) * (x[1] - p[1]) - (q[1] - p[1]) * (x[0] - p[0]) > 0
            table[case, slot] = (first, second) if left else (second, first)
    return table


_SEGMENTS = _segment_table()


def stack_contours(masks: np.ndarray) -> list[list[np.ndarray]]:
    """:func:`mask_contours` of every slice of a (k, j, i) boolean stack, all slices at once.

    Marching squares at level 0.5 with diagonal inside neighbours connected (scikit-image's
    ``find_contours(..., fully_connected="high")``, as in the 8-connected islands of a label map), done
    with numpy over the whole stack: find_contours joins its segments one by one in Python, which was
    most of the export time. Coordinates are doubled to integers, so joining and straight-run tests are exact.
    """
    padded = np.zeros((masks.shape[0], masks.shape[1] + 2, masks.shape[2] + 2), dtype=np.uint8)
    padded[:, 1:-1, 1:-1] = masks  # a false border closes outlines at the edge
    # each 2×2 cell's case: corners upper left, upper right, lower left, lower right as bits 0-3
    case = padded[:, :-1, :-1] | padded[:, :-1, 1:] << 1 | padded[:, 1:, :-1] << 2 | padded[:, 1:, 1:] << 3
    k, r, c = np.nonzero((case != 0) & (case != 15))
    case = case[k, r, c]
    starts, ends, slices = [], [], []
    for slot in range(2):
        segment = _SEGMENTS[case, slot]
        present = segment[:, 0] >= 0
        cell = np.stack([2 * r[present], 2 * c[present]], axis=1)
        starts.append(cell + _SIDES[segment[present, 0]])
        ends.append(cell + _SIDES[segment[present, 1]])
        slices.append(k[present])
    result: list[list[np.ndarray]] = [[] for _ in range(masks.shape[0])]
    if not len(k):
        return result
    p, q, k = np.concatenate(starts), np.concatenate(ends), np.concatenate(slices)
    width = 2 * padded.shape[2] + 1
    plane = (2 * padded.shape[1] + 1) * width
    start_id, end_id = k * plane + p[:, 0] * width + p[:, 1], k * plane + q[:, 0] * width + q[:, 1]
    by_start = np.argsort(start_id)
    following = by_start[np.searchsorted(start_id, end_id, sorter=by_start)]
    order, outline = _walk_cycles(following)
    preceding = np.empty_like(following)
    preceding[following] = np.arange(len(following))
    before, after = p - p[preceding], q - p
    turning = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    keep = order[turning[order]]
    points = p[keep] / 2.0 - 1.0  # doubled padded coordinates -> pixel (row, column)
    labels = outline[keep]
    cuts = np.nonzero(np.diff(labels))[0] + 1
    for piece, first in zip(np.split(points, cuts), np.concatenate([[0], cuts]), strict=True):
        result[int(k[keep[first]])].append(piece)
    return result


def _walk_cycles(following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments of a permutation's cycles in walking order, each cycle from its lowest segment, and
    each segment's cycle number (pointer jumping: log2(longest cycle) numpy steps, no Python loop)."""
    count = len(following)
    graph = csr_matrix((np.ones(count, dtype=np.int8), (np.arange(count), following)), shape=(count, count))
    _, cycle = connected_components(graph, directed=True, connection="weak")
    first = np.full(cycle.max() + 1, count)
    np.minimum.at(first, cycle, np.arange(count))
    last = following == first[cycle]  # the segment that closes its cycle
    to_end = np.where(last, 0, 1)
    jump = np.where(last, np.arange(count), following)
    while np.any(jump != jump[jump]):
        to_end, jump = to_end + to_end[jump], jump[jump]
    order = np.lexsort((-to_end, first[cycle]))  # by cycle (its lowest segment), then walking order
    return order, cycle


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
