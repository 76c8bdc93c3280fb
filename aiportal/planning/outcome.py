"""Plan vs outcome: planned segments against post-operative ones, in the planning frame.

Surface distances are computed between world (RAS) surface points with k-d trees, so the two
segmentations need not share a grid, only a frame: the post-operative points are first mapped by
``actual_to_planned`` (the rigid registration of the post-operative CT to the planning CT,
:mod:`aiportal.planning.outcome_registration`). Dice is reported when both are on the same grid and
no mapping was needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

from aiportal.planning.grid import LabelGrid


@dataclass
class StructureOutcome:
    structure: str
    planned_ml: float
    actual_ml: float
    volume_change_percent: float
    mean_surface_distance_mm: float  # symmetric mean of nearest surface distances
    hausdorff_mm: float
    hausdorff95_mm: float
    dice: float | None


def surface_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Nearest-point distances of each point set to the other, concatenated (symmetric)."""
    forward, _ = cKDTree(second).query(first)
    backward, _ = cKDTree(first).query(second)
    return np.concatenate([forward, backward])


def compare_structure(planned: LabelGrid, actual: LabelGrid, name: str,
                      actual_to_planned: np.ndarray | None = None) -> StructureOutcome:
    planned_ml = float(np.count_nonzero(planned.mask(name))) * planned.voxel_ml
    actual_ml = float(np.count_nonzero(actual.mask(name))) * actual.voxel_ml
    actual_points = actual.surface_ras(name)
    moved = actual_to_planned is not None and not np.allclose(actual_to_planned, np.eye(4))
    if moved:
        actual_points = actual_points @ actual_to_planned[:3, :3].T + actual_to_planned[:3, 3]
    distances = surface_distances(planned.surface_ras(name), actual_points)
    same_grid = not moved and planned.labels.shape == actual.labels.shape and np.allclose(
        planned.ijk_to_ras, actual.ijk_to_ras, atol=1e-3)
    dice = None
    if same_grid:
        a, b = planned.mask(name), actual.mask(name)
        dice = round(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)), 4)
    return StructureOutcome(name, round(planned_ml, 3), round(actual_ml, 3),
                            round(100.0 * (actual_ml - planned_ml) / planned_ml, 2),
                            round(float(distances.mean()), 3), round(float(distances.max()), 3),
                            round(float(np.percentile(distances, 95)), 3), dice)


def compare_outcome(planned: LabelGrid, actual: LabelGrid, structures: list[str] | None = None,
                    actual_to_planned: np.ndarray | None = None) -> list[dict]:
    """Every structure present in both (or the ones named), planned vs actual (mapped by ``actual_to_planned``,
    a 4×4 post-operative RAS → planning RAS matrix)."""
    names = structures or [n for n in planned.present_names() if n in set(actual.present_names())]
    return [asdict(compare_structure(planned, actual, name, actual_to_planned)) for name in names]


def plan_outcome(planned: LabelGrid, actual: LabelGrid, frame, structures: list[str] | None = None, *,
                 planned_trajectory=None, actual_trajectory=None, planned_plane=None, actual_plane=None) -> dict:
    """Every face's plan-vs-outcome result: the frame (an :class:`~aiportal.planning.outcome_registration.
    OutcomeFrame`), the per-structure distances and, given both, the trajectory ((entry, target) RAS) and cut
    plane ((point, normal)) deviations; the actual ones are in the post-operative frame and mapped first."""
    from aiportal.planning.geometry import plane_deviation, trajectory_deviation

    result: dict = {"frame": frame.as_dict(),
                    "structures": compare_outcome(planned, actual, structures, frame.actual_to_planned_ras)}
    if planned_trajectory is not None and actual_trajectory is not None:
        mapped = frame.map_points([actual_trajectory[0], actual_trajectory[1]])
        result["trajectory"] = trajectory_deviation(tuple(planned_trajectory), (mapped[0], mapped[1]))
    if planned_plane is not None and actual_plane is not None:
        point = frame.map_points(actual_plane[0])[0]
        normal = frame.actual_to_planned_ras[:3, :3] @ np.asarray(actual_plane[1], float)  # rigid: normals turn too
        result["plane"] = plane_deviation(tuple(planned_plane), (point, normal))
    return result


def outcome_lines(result: dict) -> list[str]:
    """The result as text lines (CLI, desktop panel)."""
    frame = result["frame"]
    lines = [f"{'registered' if frame['registered'] else 'not registered'}: {frame['reason']}"]
    lines += [f"{r['structure']:<32} volume {r['planned_ml']:.1f} → {r['actual_ml']:.1f} ml "
              f"({r['volume_change_percent']:+.1f} %), mean surface {r['mean_surface_distance_mm']:.2f} mm, "
              f"Hausdorff {r['hausdorff_mm']:.2f} mm" + (f", Dice {r['dice']:.3f}" if r["dice"] is not None else "")
              for r in result["structures"]]
    for key in ("trajectory", "plane"):
        if key in result:
            lines.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in result[key].items()))
    return lines + [f"WARNING: {w}" for w in frame["warnings"]]
