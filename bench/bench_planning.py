"""Surgical planning: ours against brute force / scipy peers, side by side in one run.

1. **Trajectory update** (the live drag of an end point) on a 512×512×300 grid: TotalSegmentator's
   example abdomen labels resampled (nearest) from 3 mm onto 512×512×300. Ours: k-d trees of the
   at-risk structures' surface voxels and coarse distance maps with bounds built once, then per update
   the maps read along the path narrow the exact k-d tree queries, refined exactly. Peers in the same
   run: the previous update (k-d trees only, exact queries at every path sample of the windows a
   coarse approximate pass leaves) and the exact brute force, point-to-segment distance over every
   voxel centre of every structure.
2. **Proximity** liver ↔ at-risk structures on the real grids (3 mm abdomen, 0.98×0.98×2 mm chest
   DICOM grid) and the 512×512×300 one. Ours: scipy distance transform of each structure, cropped to
   both segments' box, read at the liver's voxels. Peer: scipy ``cKDTree`` over all voxel centres
   (exact, same answer) and, on the 3 mm case, exhaustive chunked numpy pairwise distances.
3. **Resection**: remnant volume and percentage by planes; ours vs numpy over the full grid.

Peak memory is ``tracemalloc``'s peak of Python/numpy allocations during the call (scipy's k-d tree
internals are not traced). Run: ``PYTHONPATH=$PWD .venv/bin/python bench/bench_planning.py``. Not a test.
"""

from __future__ import annotations

import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "totalseg"
AT_RISK = ["aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "kidney_right", "vertebrae_T12",
           "stomach", "gallbladder", "spinal_cord"]


def _measure(function, *args, **kwargs):
    """(result, seconds, peak MiB) of one call."""
    tracemalloc.start()
    started = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def _grids():
    from aiportal.planning.grid import LabelGrid, load_label_grid

    class_map = DATA / "class_map_total_totalmr.json"
    abdomen = load_label_grid(DATA / "example_seg.nii.gz", class_map=class_map)
    chest = load_label_grid(DATA / "example_seg_dicom.nii.gz", class_map=class_map)
    target_shape = (300, 512, 512)
    zoom = np.array(target_shape) / np.array(abdomen.labels.shape)
    big_labels = ndimage.zoom(abdomen.labels.astype(np.uint8), zoom, order=0)
    scale = zoom[::-1]  # i, j, k
    matrix = abdomen.ijk_to_ras.copy()
    matrix[:3, :3] = abdomen.ijk_to_ras[:3, :3] / scale
    matrix[:3, 3] = abdomen.ijk_to_ras[:3, :3] @ (0.5 / scale - 0.5) + abdomen.ijk_to_ras[:3, 3]
    big = LabelGrid(big_labels, matrix, dict(abdomen.names), source="abdomen 512x512x300")
    return {"abdomen 3 mm": abdomen, "chest 0.98x0.98x2 mm": chest, "abdomen 512x512x300": big}


def _kd_tree_only_planner():
    """The previous update (before the distance maps), kept as a peer: coarse approximate k-d tree queries every
    4 mm, exact queries at every sample (half the finest spacing apart) in the windows they leave, then the same
    exact refinement."""
    from aiportal.planning.trajectory import StructureClearance, TrajectoryPlanner, _segment_distances

    class KdTreeOnlyPlanner(TrajectoryPlanner):
        def _clearance(self, name, samples, kji, start, end, length, labels_along, along, spacing, radius):
            tree, eps = self.trees[name], 1.0
            stride = max(1, int(round(4.0 / spacing)))
            coarse = np.unique(np.r_[np.arange(0, len(samples), stride), len(samples) - 1])
            upper, _ = tree.query(samples[coarse], eps=eps)
            best_upper = float(upper.min())
            chosen = coarse[upper / (1.0 + eps) - stride * spacing / 2.0 <= best_upper + 1e-9]
            window = np.zeros(len(samples), bool)
            for index in chosen:
                window[max(0, index - stride // 2 - 1):index + stride // 2 + 2] = True
            fine = np.flatnonzero(window)
            exact, _ = tree.query(samples[fine], distance_upper_bound=best_upper + spacing / 2.0 + 1e-6)
            bound = float(exact.min()) + spacing / 2.0 + 1e-9
            nearby = np.unique(np.concatenate([np.asarray(found, dtype=int) for found in
                                               tree.query_ball_point(samples[fine[exact <= bound]], bound)]))
            distances, t = _segment_distances(self.surfaces[name][nearby], start, end)
            best = int(np.argmin(distances))
            inside = labels_along == self.values[name]
            clearance = 0.0 if inside.any() else float(distances[best])
            return StructureClearance(name, round(clearance - radius, 3), round(float(t[best]) * length, 3),
                                      [], bool(inside.any()), None, 0.0, self.thresholds[name])
    return KdTreeOnlyPlanner


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def trajectory_updates(grid, updates: int = 40, peer_updates: int = 5) -> None:
    from aiportal.planning.trajectory import TrajectoryPlanner, brute_force_clearance

    structures = [s for s in AT_RISK if s in grid.present_names()]
    planner, build_s, build_mb = _measure(TrajectoryPlanner, grid, structures, None, 5.0)
    old = _kd_tree_only_planner()(grid, structures, None, 5.0)
    liver = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver")))
    target = liver.mean(axis=0)
    rng = np.random.default_rng(0)
    ours, previous, peer, worst, peaks = [], [], [], 0.0, []
    for _ in range(updates):
        entry = target + np.array([-90.0, 0.0, 0.0]) + rng.uniform(-15, 15, 3)  # the surgeon drags the entry
        started = time.perf_counter()
        report = planner.check(entry, target)
        ours.append(time.perf_counter() - started)
        _, _, peak = _measure(planner.check, entry, target)  # traced separately: tracemalloc slows the call
        peaks.append(peak)
        started = time.perf_counter()
        old_report = old.check(entry, target)
        previous.append(time.perf_counter() - started)
        old_rows = {row.structure: row.clearance_mm for row in old_report.structures}
        for row in report.structures:
            worst = max(worst, abs(row.clearance_mm - old_rows[row.structure]))
        if len(peer) >= peer_updates:
            continue
        started = time.perf_counter()
        brute = {name: brute_force_clearance(grid, name, entry, target) for name in structures}
        peer.append(time.perf_counter() - started)
        for row in report.structures:
            if not row.entered:
                worst = max(worst, abs(row.clearance_mm - brute[row.structure]))
    ours_ms, old_ms, peer_ms = (statistics.median(v) * 1e3 for v in (ours, previous, peer))
    print(f"| {grid.source} {grid.labels.shape[::-1]} | {len(structures)} | {build_s:.2f} s / {build_mb:.0f} MiB | "
          f"{ours_ms:.1f} / {_p95(ours) * 1e3:.1f} ms, {max(peaks):.1f} MiB | "
          f"{old_ms:.1f} / {_p95(previous) * 1e3:.1f} ms ({old_ms / ours_ms:.1f}×) | "
          f"{peer_ms:.0f} ms ({peer_ms / ours_ms:.0f}×) | {worst:.1e} |", flush=True)


def proximity_case(label: str, grid) -> None:
    from aiportal.planning.proximity import proximity_table

    structures = [s for s in AT_RISK if s in grid.present_names()]
    rows, ours_s, ours_mb = _measure(proximity_table, grid, "liver", structures)

    def kd_tree_peer():
        liver = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver")))
        return {name: cKDTree(grid.ijk_to_ras_points(np.argwhere(grid.mask(name)))).query(liver)[0].min()
                for name in structures}

    peer, peer_s, peer_mb = _measure(kd_tree_peer)
    worst = max(abs(row.centre_distance_mm - peer[row.structure]) for row in rows)
    line = (f"| {label} | {len(structures)} | {ours_s:.2f} s / {ours_mb:.0f} MiB | {peer_s:.2f} s / {peer_mb:.0f} MiB |"
            f" {peer_s / ours_s:.1f}× | {worst:.1e} |")
    if grid.labels.size < 1e6:  # exhaustive pairwise distances only where they fit in time
        def exhaustive():
            liver = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver")))
            result = {}
            for name in structures:
                other = grid.ijk_to_ras_points(np.argwhere(grid.mask(name)))
                result[name] = min(np.sqrt(((liver[i:i + 2000, None] - other[None]) ** 2).sum(-1)).min()
                                   for i in range(0, len(liver), 2000))
            return result
        brute, brute_s, brute_mb = _measure(exhaustive)
        worst = max(worst, max(abs(row.centre_distance_mm - brute[row.structure]) for row in rows))
        line += f" {brute_s:.1f} s / {brute_mb:.0f} MiB ({brute_s / ours_s:.0f}×) |"
    else:
        line += " – |"
    print(line, flush=True)
    for row in rows:
        print(f"|   {row.structure} | | {row.centre_distance_mm:.2f} mm (gap {row.gap_mm:.2f}) | "
              f"{peer[row.structure]:.2f} mm | | | |")


def resection_case(label: str, grid) -> None:
    from aiportal.planning.resection import Plane, resect

    liver = grid.mask("liver")
    centre = grid.ijk_to_ras_points(np.argwhere(liver)).mean(axis=0)
    planes = [Plane(tuple(centre), (1.0, 0.0, 0.0)), Plane(tuple(centre), (0.0, 0.0, 1.0))]
    (result, _), ours_s, ours_mb = _measure(resect, grid, "liver", planes=planes)

    def full_grid_peer():
        ras = grid.ijk_to_ras_points(np.indices(grid.labels.shape).reshape(3, -1).T)
        beyond = np.ones(len(ras), bool)
        for plane in planes:
            beyond &= plane.signed_distance(ras) > 0
        return np.count_nonzero(liver.ravel() & ~beyond)

    remnant, peer_s, peer_mb = _measure(full_grid_peer)
    print(f"| {label} | {result.organ_ml:.1f} | {result.remnant_ml:.1f} ({result.remnant_percent:.2f} %) | "
          f"{remnant == result.remnant_voxels} | {ours_s:.2f} s / {ours_mb:.0f} MiB | "
          f"{peer_s:.2f} s / {peer_mb:.0f} MiB | {peer_s / ours_s:.1f}× |")


def main() -> None:
    sections = set(sys.argv[1:]) or {"trajectory", "proximity", "resection"}  # e.g. `... bench_planning.py trajectory`
    grids = _grids()
    print("\n1. Trajectory update (entry dragged 40 times; brute force the first 5); median / p95; clearance "
          "agreement with brute force and the previous update", flush=True)
    print("| grid | structures | ours: precompute / peak | ours: update median / p95, peak | previous (k-d tree "
          "only): median / p95 (÷ ours) | brute force: median (÷ ours) | max |Δ| mm |")
    print("|---|---|---|---|---|---|---|")
    for grid in grids.values() if "trajectory" in sections else []:
        trajectory_updates(grid)
    print("\n2. Proximity liver ↔ at-risk structures (centre distances); agreement with the peers")
    print("| grid | structures | ours (distance transform) | scipy cKDTree peer | peer / ours | max |Δ| mm | "
          "exhaustive numpy |")
    print("|---|---|---|---|---|---|---|")
    for label, grid in grids.items() if "proximity" in sections else []:
        proximity_case(label, grid)
    print("\n3. Resection of the liver by a wedge of two planes through its centroid")
    print("| grid | liver ml | remnant ml (%) | remnant = full-grid voxel count | ours | numpy full grid | ratio |")
    print("|---|---|---|---|---|---|---|")
    for label, grid in grids.items() if "resection" in sections else []:
        if grid.labels.size > 50e6:  # the full-grid numpy peer needs ~2 GB there
            continue
        resection_case(label, grid)


if __name__ == "__main__":
    main()
