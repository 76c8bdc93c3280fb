"""A segment's separate lesions (connected components) and whether a mask is tubular (a vessel, not a lesion).

- **Connectivity: 26** (voxels touching by a face, an edge or a corner belong to one lesion). A lesion's
  rim drawn on thick slices often steps diagonally from slice to slice; 6-connectivity would cut such a
  lesion into pieces and count its rim voxels as extra "lesions". Two lesions that touch at a corner are
  rare, and a reader would not separate them by calipers either.
- **Minimum size.** Components under ``DEFAULT_MIN_LESION_MM3`` (a sphere of 3 mm diameter: far below the
  10 mm RECIST measurability limit, so no lesion a reader could measure is lost) or of a single voxel (on
  coarse grids: it has no diameter) are speckle of the model or the brush and are dropped; how many is said
  in the notes and warnings.
- **Tubularity.** The length of the longest path inside the mask (geodesic diameter, two Dijkstra sweeps
  on the 26-neighbour voxel graph, in mm) against the mean diameter of a cylinder of that length holding
  the mask's volume, ``2·sqrt(V / (π·L))``. A sphere has a ratio of 1.2; kidneys, spleen, liver and gall
  bladder of TotalSegmentator's example stay at 2.4–4.0 and the pyradiomics lesions at 2.5–4.3, but a lesion
  on thick slices shrunk in-plane reaches 6.8 (brain1 eroded by 3 mm, 6.5 mm slices), hence the threshold of
  8: the portal and splenic vein (19.6), spinal cord (8.3), ribs (up to 17) are tubular, and so is an aorta
  with its arch. A shorter piece (ratio from 4) is tubular when its cross-sections along its centreline stay
  round and keep their size or taper smoothly (:mod:`aiportal.vessels.constancy`): the 90 mm cut of
  abdominal aorta in ``example_seg`` (ratio 6.0: scatter 5 %, round 1.13) is; no organ or lesion of the
  examples is. Shorter or oval pieces (a 40 mm slab of aorta: 2.9; the inferior vena cava: oval) are not told
  from a lesion by shape, and neither is anything drawn on at most 3 slices (a sheet: its ratio measures
  its flatness), so a segment coded as a vessel (aorta, artery, vein, vena cava, trunk) is refused
  by its terminology too (:func:`vessel_terminology`). RECIST does not measure vessels:
  their axial "long axis" crosses between
  separate parts of the vessel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from aiportal.vessels.constancy import SectionConstancy, section_constancy

CONNECTIVITY = 26
DEFAULT_MIN_LESION_MM3 = math.pi / 6 * 3.0**3  # 14.1 mm³: a sphere of 3 mm diameter
TUBULAR_RATIO = 8.0  # path length / mean cross-section diameter at and above which a mask is a tube
SHORT_TUBE_RATIO = 4.0  # from here to TUBULAR_RATIO, a mask is a tube if its cross-sections say so
# a mask at most this many voxels thick along a voxel axis is a sheet (a few slices): its path over width
# measures how flat it is, not whether it is a tube (dcmqi's 3-slice liver: 13.9, spine: 9.5, heart: 8.2)
SHEET_VOXELS = 3
_MAX_GRAPH_VOXELS = 60_000  # larger masks are max-pooled for the path length (organ sized: ample detail)


@dataclass
class Components:
    """Connected components of a mask: ``labels`` (0 outside, i for the i-th kept lesion, largest first)."""

    labels: np.ndarray
    sizes: list[int]  # voxels of each kept lesion, in label order
    dropped: int  # components under the minimum size
    dropped_voxels: int

    @property
    def count(self) -> int:
        return len(self.sizes)


def split_components(mask: np.ndarray, voxel_mm3: float, min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3) -> Components:
    """Label the 26-connected components of ``mask``; keep those of at least ``min_lesion_mm3`` and two voxels,
    largest first (ties: the one met first in (k, j, i) order)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = sorted(range(count), key=lambda index: -sizes[index])  # stable: first met first among equals
    min_voxels = max(2, math.ceil(min_lesion_mm3 / voxel_mm3 - 1e-9))  # one voxel has no diameter
    kept = [index for index in order if sizes[index] >= min_voxels]
    relabel = np.zeros(count + 1, np.int32)
    relabel[[index + 1 for index in kept]] = np.arange(1, len(kept) + 1)
    dropped = [index for index in order if sizes[index] < min_voxels]
    return Components(relabel[labels], [int(sizes[index]) for index in kept], len(dropped),
                      int(sum(sizes[index] for index in dropped)))


@dataclass
class Tubularity:
    length_mm: float  # longest path inside the mask
    mean_diameter_mm: float  # of a cylinder of that length with the mask's volume
    sections: SectionConstancy | None = None  # measured for ratios from SHORT_TUBE_RATIO to TUBULAR_RATIO
    sheet: bool = False  # at most SHEET_VOXELS thick along a voxel axis: not judged by shape

    @property
    def ratio(self) -> float:
        return self.length_mm / self.mean_diameter_mm if self.mean_diameter_mm > 0 else math.inf

    @property
    def tubular(self) -> bool:
        if self.sheet:
            return False
        return self.ratio >= TUBULAR_RATIO or (self.ratio >= SHORT_TUBE_RATIO and self.sections is not None
                                               and self.sections.tube)

    def describe(self) -> str:
        shape = (f"{self.length_mm:.0f} mm long along its path and {self.mean_diameter_mm:.1f} mm wide on average "
                 f"(ratio {self.ratio:.1f}; tubular from {TUBULAR_RATIO:g})")
        if self.ratio < TUBULAR_RATIO and self.sections is not None and self.sections.tube:
            shape += f", and {self.sections.describe()}"
        return shape


_VESSEL_WORDS = re.compile(r"\b(aorta|aortic|arter(y|ies)|vein|veins|vena|vessels?|trunk)\b", re.IGNORECASE)


def vessel_terminology(type_meaning: str | None) -> bool:
    """Whether a segment's SNOMED type (its code meaning) names a blood vessel."""
    return bool(type_meaning and _VESSEL_WORDS.search(type_meaning))


def tubularity(mask: np.ndarray, linear: np.ndarray) -> Tubularity:
    """Path length and mean cross-section diameter of one connected ``mask`` (k, j, i) whose voxel axes
    i, j, k are the columns of ``linear`` (IJK→RAS without translation, mm)."""
    volume_mm3 = float(np.count_nonzero(mask)) * abs(float(np.linalg.det(linear)))
    original = mask
    factor = 1
    while np.count_nonzero(mask) > _MAX_GRAPH_VOXELS:  # max-pool 2×2×2: keeps thin parts connected
        factor *= 2
        padded = np.pad(mask, [(0, (-n) % 2) for n in mask.shape])
        mask = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).any(
            axis=(1, 3, 5))
    length = _geodesic_diameter(mask, linear * factor)
    # a path runs between voxel centres: add one voxel's extent along it, as a caliper would
    length += float(np.mean(np.linalg.norm(linear, axis=0)))
    box = ndimage.find_objects(original.astype(np.uint8))[0]
    sheet = min(part.stop - part.start for part in box) <= SHEET_VOXELS
    shape = Tubularity(length, 2.0 * math.sqrt(volume_mm3 / (math.pi * length)), sheet=sheet)
    if SHORT_TUBE_RATIO <= shape.ratio < TUBULAR_RATIO and not sheet:
        shape.sections = section_constancy(original, linear)
    return shape


def _geodesic_diameter(mask: np.ndarray, linear: np.ndarray) -> float:
    """Longest shortest path inside the mask (mm), by two sweeps: from the voxel farthest from the centroid
    to its farthest voxel, and from there on."""
    positions = np.argwhere(mask)
    if len(positions) < 2:
        return 0.0
    index = np.full(mask.shape, -1, np.int64)
    index[tuple(positions.T)] = np.arange(len(positions))
    rows, columns, weights = [], [], []
    padded = np.pad(index, 1, constant_values=-1)
    for dk, dj, di in _FORWARD_OFFSETS:
        neighbour = padded[1 + dk : 1 + dk + mask.shape[0], 1 + dj : 1 + dj + mask.shape[1],
                           1 + di : 1 + di + mask.shape[2]]
        both = (index >= 0) & (neighbour >= 0)
        rows.append(index[both])
        columns.append(neighbour[both])
        weights.append(np.full(rows[-1].size, float(np.linalg.norm(linear @ np.array([di, dj, dk])))))
    graph = sparse.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(columns))),
                              shape=(len(positions), len(positions))).tocsr()
    ras = positions[:, ::-1] @ linear.T
    start = int(np.argmax(((ras - ras.mean(axis=0)) ** 2).sum(axis=1)))
    for _ in range(2):
        distances = csgraph.dijkstra(graph, directed=False, indices=start)
        distances[~np.isfinite(distances)] = -1.0  # another component (not expected): ignore
        start = int(np.argmax(distances))
    return float(distances[start])


_FORWARD_OFFSETS = [(dk, dj, di) for dk in (-1, 0, 1) for dj in (-1, 0, 1) for di in (-1, 0, 1)
                    if (dk, dj, di) > (0, 0, 0)]
