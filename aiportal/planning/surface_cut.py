"""A drawn cut surface: points the surgeon places (a markups point list or the CLI's ``--surface-point``)
fitted by a thin-plate spline, for virtual resection along a curved cut.

The points' best-fit plane (PCA) gives the frame; the surface is the thin-plate spline through the
points' heights over that plane (exact at every point; three points give the plane through them).
It is a height field over that plane, so a cut that folds back over itself must be split into
several surfaces or planes; beyond the points the spline continues smoothly (near-linearly). The
removed side is the one holding ``side_ras`` (e.g. the tumour's centre).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.interpolate import RBFInterpolator
from scipy.spatial import cKDTree

from aiportal.errors import InputError


class CutSurface:
    """Thin-plate spline surface through ``points_ras`` (n ≥ 3, RAS mm); positive side: the one holding ``side_ras``."""

    def __init__(self, points_ras, side_ras):
        points = np.asarray(points_ras, float).reshape(-1, 3)
        if len(points) < 3:
            raise InputError(f"a drawn cut surface needs at least 3 points, got {len(points)}",
                             "place 3 or more points on the cut (or use --plane)")
        self.points_ras = points
        self.centre = points.mean(axis=0)
        _, singular, axes = np.linalg.svd(points - self.centre)
        if singular[1] < 1e-6 * max(1.0, singular[0]):
            raise InputError("the cut surface points lie on one line", "spread the points over the cut surface")
        self.axes = axes  # rows: in-plane u, in-plane v, normal
        uv, heights = self._frame(points)
        if np.unique(np.round(uv, 6), axis=0).shape[0] < len(uv):
            raise InputError("two cut surface points lie on one line across the surface (it folds over itself)",
                             "remove one of them, or split the cut into several surfaces or planes")
        self._spline = RBFInterpolator(uv, heights, kernel="thin_plate_spline", degree=1)
        side = self._offset(np.asarray(side_ras, float).reshape(1, 3))[0]
        if abs(side) < 1e-6:
            raise InputError("the point marking the removed side lies on the cut surface",
                             "give a point clearly on the side to remove")
        self.sign = 1.0 if side > 0 else -1.0

    def _frame(self, ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        local = (np.asarray(ras, float) - self.centre) @ self.axes.T
        return local[:, :2], local[:, 2]

    def _offset(self, ras: np.ndarray) -> np.ndarray:
        uv, height = self._frame(ras)
        return height - self._spline(uv)

    def side(self, ras: np.ndarray) -> np.ndarray:
        """Signed offset along the fit plane's normal from the surface (mm); > 0 on the removed side."""
        return self.sign * self._offset(ras)

    def sample(self, ras: np.ndarray, step_mm: float) -> np.ndarray:
        """Surface points every ``step_mm`` over the span of ``ras`` projected on the fit plane."""
        uv, _ = self._frame(ras)
        low, high = uv.min(axis=0) - step_mm, uv.max(axis=0) + step_mm
        u, v = (np.arange(lo, hi + step_mm, step_mm) for lo, hi in zip(low, high, strict=True))
        grid = np.stack(np.meshgrid(u, v, indexing="ij"), axis=-1).reshape(-1, 2)
        local = np.c_[grid, self._spline(grid)]
        return local @ self.axes + self.centre

    def signed_distance(self, ras: np.ndarray, step_mm: float) -> np.ndarray:
        """Distance to the surface (sampled every ``step_mm``: within step·√2/2), signed like :meth:`side`."""
        ras = np.asarray(ras, float).reshape(-1, 3)
        distance, _ = cKDTree(self.sample(ras, step_mm)).query(ras)
        return np.where(self.side(ras) > 0, distance, -distance)


def read_markups_points(path: Path) -> np.ndarray:
    """Control points (RAS) of a Slicer markups file (.mrk.json; LPS or RAS as it says)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        markups = document["markups"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is not a Slicer markups file ({error})", "export the points from Slicer as "
                         ".mrk.json") from None
    points = []
    for markup in markups:
        flip = np.array([-1.0, -1.0, 1.0]) if markup.get("coordinateSystem", "LPS") == "LPS" else np.ones(3)
        points += [np.asarray(p["position"], float) * flip for p in markup.get("controlPoints", [])]
    if not points:
        raise InputError(f"{path} has no control points", "place the cut surface points in Slicer first")
    return np.array(points)
