"""Surgical planning on segmentations: proximity, margins, virtual resection, trajectories, angles,
plan bundles and plan-vs-outcome comparison.

GUI-free: every function works on a :class:`~aiportal.planning.grid.LabelGrid` (a label map, its
IJK→RAS matrix and segment names); faces (CLI, desktop, workspace) only load inputs and show results.
Distances are exact Euclidean distances between voxel centres in millimetres on any rotated,
anisotropic grid (scipy's distance transform with the voxel spacing, k-d trees of surface voxels).
"""

from aiportal.planning.grid import LabelGrid, load_label_grid

__all__ = ["LabelGrid", "load_label_grid"]
