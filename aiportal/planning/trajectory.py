"""A planned straight path (entry → target, optional tool radius) checked against at-risk structures.

:class:`TrajectoryPlanner` precomputes, once per segmentation, a k-d tree of each structure's surface
voxel centres; every update (an end point moved) then queries path samples coarse to fine (4 mm, then
half the finest voxel spacing near the candidates), and the minimum clearance is refined exactly over
the few surface points that can beat the sampled minimum (point-to-segment distance, no sampling error). Entry into a
structure and the length inside (screw length in a bone) come from the label map along the path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from aiportal.errors import InputError
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


COARSE_STEP_MM = 4.0  # first pass along the path
QUERY_EPS = 1.0  # coarse pass k-d tree approximation; the bounds keep the final answer exact


class TrajectoryPlanner:
    """Precomputed structures of one segmentation, for fast path updates."""

    def __init__(self, grid: LabelGrid, structures: list[str] | None = None,
                 thresholds: dict[str, float] | None = None, default_threshold_mm: float | None = None):
        self.grid = grid
        self.structures = list(structures) if structures else grid.present_names()
        self.values = {name: grid.value(name) for name in self.structures}
        self.surfaces = {name: grid.surface_ras(name) for name in self.structures}
        self.trees = {name: cKDTree(points) for name, points in self.surfaces.items()}
        lowered = {k.lower(): v for k, v in (thresholds or {}).items()}
        self.thresholds = {name: lowered.get(name.lower(), default_threshold_mm) for name in self.structures}
        self.step_mm = float(min(grid.spacing_ijk)) / 2.0

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
        voxels = np.rint(self.grid.ras_to_kji(samples)).astype(int)
        voxels = np.clip(voxels, 0, np.array(self.grid.labels.shape) - 1)
        labels_along = self.grid.labels[tuple(voxels.T)]
        spacing = along[1] - along[0]
        report = TrajectoryReport([round(float(v), 3) for v in start], [round(float(v), 3) for v in end],
                                  round(length, 3), tool_radius_mm)
        for name in self.structures:
            report.structures.append(self._clearance(name, samples, start, end, length, labels_along, along,
                                                     spacing, tool_radius_mm))
        report.structures.sort(key=lambda s: s.clearance_mm)
        return report

    def _clearance(self, name, samples, start, end, length, labels_along, along, spacing, radius) -> StructureClearance:
        tree = self.trees[name]
        # Coarse pass with approximate k-d tree queries (distance d returned: true in [d / (1 + eps), d]). The
        # distance to a structure changes by at most s along s mm of path, so only windows around coarse samples
        # whose lower bound can beat the best upper bound can hold the closest point.
        stride = max(1, int(round(COARSE_STEP_MM / spacing)))
        coarse = np.unique(np.r_[np.arange(0, len(samples), stride), len(samples) - 1])
        upper, _ = tree.query(samples[coarse], eps=QUERY_EPS)
        best_upper = float(upper.min())
        chosen = coarse[upper / (1.0 + QUERY_EPS) - stride * spacing / 2.0 <= best_upper + 1e-9]
        window = np.zeros(len(samples), bool)
        for index in chosen:
            window[max(0, index - stride // 2 - 1):index + stride // 2 + 2] = True
        fine = np.flatnonzero(window)
        # exact queries, pruned beyond what can matter (the sample nearest the closest point's foot is within it)
        exact, _ = tree.query(samples[fine], distance_upper_bound=best_upper + spacing / 2.0 + 1e-6)
        bound = float(exact.min()) + spacing / 2.0 + 1e-9
        # the closest point p lies within ``bound`` of the fine sample nearest its foot, whose distance is ≤ bound
        close_samples = samples[fine[exact <= bound]]
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
