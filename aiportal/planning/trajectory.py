"""A planned straight path (entry → target, optional tool radius) checked against at-risk structures.

:class:`TrajectoryPlanner` precomputes, once per segmentation, a k-d tree of each structure's surface
voxel centres and a coarse distance map with rigorous bounds (:mod:`aiportal.planning.distance_map`).
Every update (an end point moved) reads the maps along the path (trilinear, a few hundred points),
queries the k-d tree exactly only where the map says the closest approach can be, and refines the
minimum over the few surface points that can beat it (point-to-segment distance, no sampling error). Entry into a
structure and the length inside (screw length in a bone) come from the label map along the path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from aiportal.errors import InputError
from aiportal.planning.distance_map import DistanceBounds
from aiportal.planning.grid import LabelGrid


@dataclass
class StructureClearance:
    structure: str
    clearance_mm: float  # centre line to the nearest surface voxel centre minus the tool radius; 0 − radius if entered
    at_path_mm: float  # distance from the entry along the path where it is closest
    closest_point_ras: list[float]
    entered: bool
    first_entry_mm: float | None  # along the path where it first enters the structure
    length_inside_mm: float
    threshold_mm: float | None = None

    @property
    def alert(self) -> bool:
        return self.entered or (self.threshold_mm is not None and self.clearance_mm < self.threshold_mm)


@dataclass
class TrajectoryReport:
    entry_ras: list[float]
    target_ras: list[float]
    length_mm: float
    tool_radius_mm: float
    structures: list[StructureClearance] = field(default_factory=list)

    def as_dict(self) -> dict:
        report = asdict(self)
        for row, structure in zip(report["structures"], self.structures, strict=True):
            row["alert"] = structure.alert
        return report


def _segment_distances(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact distance of each point to the segment start–end, and the parameter (0..1) of its foot."""
    direction = end - start
    length_sq = float(direction @ direction)
    t = np.clip((points - start) @ direction / length_sq, 0.0, 1.0) if length_sq else np.zeros(len(points))
    feet = start + t[:, None] * direction
    return np.linalg.norm(points - feet, axis=1), t


REFINE_STEP_MM = 3.0  # exact k-d tree queries this far apart inside the windows the distance map leaves


class TrajectoryPlanner:
    """Precomputed structures of one segmentation, for fast path updates."""

    def __init__(self, grid: LabelGrid, structures: list[str] | None = None,
                 thresholds: dict[str, float] | None = None, default_threshold_mm: float | None = None):
        self.grid = grid
        self.structures = list(structures) if structures else grid.present_names()
        self.values = {name: grid.value(name) for name in self.structures}
        self.surfaces = {name: grid.surface_ras(name) for name in self.structures}
        self.trees = {name: cKDTree(points) for name, points in self.surfaces.items()}
        self.maps = {name: DistanceBounds(grid, grid.surface_kji(name)) for name in self.structures}
        lowered = {k.lower(): v for k, v in (thresholds or {}).items()}
        self.thresholds = {name: lowered.get(name.lower(), default_threshold_mm) for name in self.structures}
        self.step_mm = float(min(grid.spacing_ijk)) / 2.0
        self._ras_to_ijk = np.linalg.inv(grid.ijk_to_ras)

    def check(self, entry_ras, target_ras, tool_radius_mm: float = 0.0) -> TrajectoryReport:
        """Clearance, entry and length inside for every structure along entry → target."""
        start, end = np.asarray(entry_ras, float), np.asarray(target_ras, float)
        length = float(np.linalg.norm(end - start))
        if length == 0.0:
            raise InputError("the trajectory's entry and target are the same point", "move one end point")
        if not self.grid.inside_image(np.array([start, end])).all():
            raise InputError(f"the trajectory {start.round(1).tolist()} → {end.round(1).tolist()} leaves the image "
                             f"{self.grid.source}", "place both end points inside the image")
        count = max(2, int(np.ceil(length / self.step_mm)) + 1)
        along = np.linspace(0.0, length, count)
        samples = start + (along / length)[:, None] * (end - start)
        kji = (samples @ self._ras_to_ijk[:3, :3].T + self._ras_to_ijk[:3, 3])[:, ::-1]
        voxels = np.clip(np.rint(kji).astype(int), 0, np.array(self.grid.labels.shape) - 1)
        labels_along = self.grid.labels[tuple(voxels.T)]
        spacing = along[1] - along[0]
        report = TrajectoryReport([round(float(v), 3) for v in start], [round(float(v), 3) for v in end],
                                  round(length, 3), tool_radius_mm)
        for name in self.structures:
            report.structures.append(self._clearance(name, samples, kji, start, end, length, labels_along, along,
                                                     spacing, tool_radius_mm))
        report.structures.sort(key=lambda s: s.clearance_mm)
        return report

    def _clearance(self, name, samples, kji, start, end, length, labels_along, along, spacing,
                   radius) -> StructureClearance:
        tree = self.trees[name]
        # 1. The distance map bounds the distance at every path sample. The closest point p of the path lies
        # within spacing / 2 of a sample s_p, whose distance is ≤ d(p) + spacing / 2 ≤ min(upper) + spacing / 2:
        # only samples whose lower bound is below that can be s_p.
        lower, upper = self.maps[name].bounds(kji)
        candidates = np.flatnonzero(lower <= float(upper.min()) + spacing / 2.0)
        # 2. Exact queries every REFINE_STEP_MM over the candidates (and at both ends of each run of them):
        # p is within ``reach`` of a queried sample.
        stride = max(1, int(round(REFINE_STEP_MM / spacing)))
        run_ends = np.flatnonzero(np.diff(candidates) > 1)
        keep = np.zeros(len(candidates), bool)
        keep[::stride] = True
        keep[np.r_[0, run_ends, run_ends + 1, len(candidates) - 1]] = True
        queried = candidates[keep]
        reach = stride * spacing / 2.0 + spacing / 2.0
        exact, _ = tree.query(samples[queried], distance_upper_bound=float(upper.min()) + reach + spacing)
        bound = float(exact.min()) + reach + 1e-9
        # 3. p's closest surface point is within ``bound`` of the queried sample nearest p, whose own distance is
        # ≤ bound: the exact point-to-segment distance over those few points is the answer.
        close_samples = samples[queried[exact <= bound]]
        nearby = np.unique(np.concatenate([np.asarray(found, dtype=int) for found in
                                           tree.query_ball_point(close_samples, bound)]))
        points = self.surfaces[name][nearby]
        distances, t = _segment_distances(points, start, end)
        best = int(np.argmin(distances))
        inside = labels_along == self.values[name]
        first = float(along[np.argmax(inside)]) if inside.any() else None
        clearance = 0.0 if inside.any() else float(distances[best])  # 0: the path goes through it
        return StructureClearance(name, round(clearance - radius, 3), round(float(t[best]) * length, 3),
                                  [round(float(v), 3) for v in points[best]], bool(inside.any()),
                                  None if first is None else round(first, 3),
                                  round(float(np.count_nonzero(inside)) * spacing, 3), self.thresholds[name])


def brute_force_clearance(grid: LabelGrid, name: str, entry_ras, target_ras) -> float:
    """Exact path-to-structure distance over every voxel centre of the structure (the peer)."""
    points = grid.ijk_to_ras_points(np.argwhere(grid.mask(name)))
    distances, _ = _segment_distances(points, np.asarray(entry_ras, float), np.asarray(target_ras, float))
    return float(distances.min())
