"""Vessel cross-sections: ours against TotalSegmentator's own method (2.18, ``aorta_report`` / ``pulmonary_report``),
side by side in one run.

1. **Same plane, known answer.** Analytic tubes (see ``Testing/test_vessels.py``) on an isotropic 0.8 mm grid (the
   grid TotalSegmentator's reports resample to) and, for ours only, on a rotated anisotropic grid. Both methods get the
   TRUE centre and normal, so only the cross-section measurement differs. TotalSegmentator's: voxelised plane
   (|distance| < 1 voxel) AND mask, dilated by one voxel, closest blob (``get_plane_aorta_intersection``), then the
   farthest pair of boundary voxel centres and the longest near-perpendicular pair (``get_plane_diameters``).
2. **Pulmonary report landmarks** (``totalseg/pulmonary_report``): the numbers in its ``pulmonary_report.json``
   (report "version" 0.2.0: the landmark DISCS of its landmark model measured on their own plane), TotalSegmentator
   2.18's own pipeline re-run on the same masks (``_load_report_data``, ``create_landmark_planes``,
   ``measure_landmarks``: the artery cut by the disc's plane, dilated by one voxel), the same 2.18 measurement applied
   to the discs themselves (what its landmark 1 does), and ours: on the discs (``measure_disc``), the artery at their
   plane, and on our centreline.

Run: ``.venv/bin/python bench/bench_vessels.py`` (needs the ``totalsegmentator`` package). Not a test; prints tables.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "Testing")]
DATA = REPO.parent / "shared" / "data"


def _stations(curve: np.ndarray, count: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``count`` points of the middle half of a curve with their unit tangents and indices."""
    tangents = np.gradient(curve, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    indices = np.linspace(len(curve) // 4, 3 * len(curve) // 4, count).astype(int)
    return [(curve[i], tangents[i], i) for i in indices]


def same_plane(count: int = 12) -> None:
    from test_vessels import TUBES, tube_phantom
    from totalsegmentator.aorta_report.geometry import get_plane_diameters
    from totalsegmentator.aorta_report.geometry_report import get_plane_aorta_intersection

    from aiportal.vessels.centerline import vessel_grid
    from aiportal.vessels.cross_section import measure_cross_section

    print("\n1. Same plane (true centre and normal), error against the known diameter, mm: mean [min, max]; "
          "time per section")
    print("| tube | grid | TotalSegmentator max / perpendicular | ours max / perpendicular | s/section theirs / ours |")
    print("|---|---|---|---|---|")
    for name, (curve, radii, spacing, rotation) in TUBES.items():
        for grid_name, grid_spacing, grid_rotation in (("0.8 mm iso", (0.8, 0.8, 0.8), np.eye(3)),
                                                       (f"{spacing} rotated", spacing, rotation)):
            mask, ijk_to_ras = tube_phantom(curve, radii, grid_spacing, grid_rotation)
            grid = vessel_grid(mask, ijk_to_ras)
            theirs, ours, times = [], [], [0.0, 0.0]
            for centre, tangent, index in _stations(curve, count):
                truth = 2 * radii[index]
                started = time.perf_counter()
                section = measure_cross_section(grid, centre, tangent, 2 * truth)
                times[1] += time.perf_counter() - started
                ours.append((section.max_diameter_mm - truth, section.perpendicular_diameter_mm - truth))
                if grid_rotation is np.eye(3) or np.allclose(grid_rotation, np.eye(3)):
                    voxel = np.linalg.solve(ijk_to_ras[:3, :3], centre - ijk_to_ras[:3, 3])
                    started = time.perf_counter()
                    plane = get_plane_aorta_intersection(mask.transpose(2, 1, 0).astype(np.uint8), voxel, tangent)
                    diameter, perpendicular = get_plane_diameters(plane, grid_spacing)[:2]
                    times[0] += time.perf_counter() - started
                    theirs.append((diameter - truth, perpendicular - truth))

            def cell(errors):
                if not errors:
                    return "— (isotropic, axis-aligned grids only)"
                e = np.array(errors)
                return " / ".join(f"{e[:, c].mean():+.2f} [{e[:, c].min():+.2f}, {e[:, c].max():+.2f}]" for c in (0, 1))

            print(f"| {name} | {grid_name} | {cell(theirs)} | {cell(ours)} | "
                  f"{times[0] / count if theirs else float('nan'):.3f} / {times[1] / count:.3f} |")


def pulmonary() -> None:
    from test_vessels import pulmonary_comparison
    from totalsegmentator.pulmonary_report.measurements import create_landmark_planes, measure_landmarks
    from totalsegmentator.pulmonary_report.pipeline import _load_report_data

    folder = DATA / "totalseg" / "pulmonary_report"
    started = time.perf_counter()
    rows, vessel = pulmonary_comparison(folder)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    logger = logging.getLogger("bench_vessels")
    data = _load_report_data(folder / "models" / "ct_cropped.nii.gz", folder / "models", folder / "models",
                             "pulmonary_artery.nii.gz", Path(tempfile.mkdtemp()), logger, False)
    largest = create_landmark_planes(data["landmarks"], data["pulmonary_artery"], data["spacing"], logger)
    measure_landmarks(data["landmarks"], data["ct_img"], data["affine"], largest, Path(tempfile.mkdtemp()), logger,
                      False)
    theirs_s = time.perf_counter() - started
    reruns = [(np.linalg.norm(np.subtract(lm["end"], lm["start"])),
               np.linalg.norm(np.subtract(lm["end_pd"], lm["start_pd"]))) for lm in data["landmarks"].values()]
    for landmark in data["landmarks"].values():  # 2.18's measurement on the disc itself, as for its landmark 1
        landmark["roi"] = (np.asarray(landmark["data"]) > 0).astype(np.uint8)
    measure_landmarks(data["landmarks"], data["ct_img"], data["affine"], largest, Path(tempfile.mkdtemp()), logger,
                      False)
    print(f"\n2. Pulmonary artery landmarks, maximum / perpendicular diameter in mm (ours: whole vessel, "
          f"{len(vessel.sections)} sections, {ours_s:.1f} s; TotalSegmentator 2.18 re-run: 5 landmarks, "
          f"{theirs_s:.1f} s incl. its CT resampling and PNGs)")
    print("| landmark | pulmonary_report.json (discs) | TotalSegmentator 2.18 on the discs | ours on the discs "
          "| TotalSegmentator 2.18 re-run (artery, dilated) | ours, artery at their plane | ours on centreline |")
    print("|---|---|---|---|---|---|---|")
    for row, landmark, rerun in zip(rows, data["landmarks"].values(), reruns, strict=True):
        on_disc = (np.linalg.norm(np.subtract(landmark["end"], landmark["start"])),
                   np.linalg.norm(np.subtract(landmark["end_pd"], landmark["start_pd"])))
        print(f"| {row['landmark']} | {row['theirs_mm']:.1f} / {row['theirs_perpendicular_mm']:.1f} "
              f"| {on_disc[0]:.1f} / {on_disc[1]:.1f} "
              f"| {row['ours_disc_mm']:.1f} / {row['ours_disc_perpendicular_mm']:.1f} "
              f"({row['ours_disc_mm'] - row['theirs_mm']:+.1f}) | {rerun[0]:.1f} / {rerun[1]:.1f} "
              f"| {row['ours_at_their_plane_mm']:.1f} / {row['ours_at_their_plane_perpendicular_mm']:.1f} "
              f"| {row['ours_on_centreline_mm']:.1f} / {row['ours_on_centreline_perpendicular_mm']:.1f} |")
    print("\nAreas, mm²: | landmark | json (disc) | ours, disc | ours, artery at their plane | artery voxels cut "
          "exactly (0.1 mm) |")
    for row in rows:
        print(f"| {row['landmark']} | {row['theirs_area_mm2']:.0f} | {row['ours_disc_area_mm2']:.0f} "
              f"| {row['ours_at_their_plane_area_mm2']:.0f} | {row['voxel_section_area_mm2']:.0f} |")


if __name__ == "__main__":
    same_plane()
    pulmonary()
