"""Centrelines of a tubular mask: skeleton -> graph -> main path and branches, in RAS millimetres.

The mask is first resampled onto an isotropic grid along its own voxel axes (so a 3 mm slice
spacing does not bias the skeleton), thinned (scikit-image, Lee's method) and turned into a graph
of 26-neighbours weighted by their physical distance. The main path is the graph's longest
shortest path (double Dijkstra sweep); branches are then taken greedily, farthest first, while
they stick out of what is already taken by more than the local radius (shorter ones are thinning
spurs). Each path is smoothed along its arc length and extended at its free ends along its
tangent up to the mask's surface, because thinning stops about one radius short of an end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

# the isotropic grid the skeleton is made on has at most this many voxels (big CTA aortas)
_MAX_SKELETON_VOXELS = 6_000_000
_MAX_BRANCHES = 24
# the mask is smoothed with σ = the largest voxel size (mm) along every axis, at least half a voxel:
# rounds the staircase of thick slices (whose corners would otherwise inflate maximum diameters)
_SMOOTHING_VOXELS = 0.5


@dataclass
class VesselGrid:
    """A mask (k, j, i) on its voxel grid, the Gaussian-smoothed copy cross-sections are read from,
    and the grid's geometry."""

    mask: np.ndarray
    smooth: np.ndarray
    ijk_to_ras: np.ndarray
    image_box_kji: tuple[np.ndarray, np.ndarray] | None = None  # the whole image, in this grid's indices
    level: float = 0.5  # the smoothed mask's value on the vessel's surface

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    def to_kji(self, ras: np.ndarray) -> np.ndarray:
        """RAS points (n, 3) -> continuous (k, j, i) indices (3, n), for ``ndimage.map_coordinates``."""
        ras = np.atleast_2d(ras)
        ijk = np.linalg.solve(self.ijk_to_ras[:3, :3], (ras - self.ijk_to_ras[:3, 3]).T)
        return ijk[::-1]

    def to_ras(self, kji: np.ndarray) -> np.ndarray:
        """(n, 3) (k, j, i) indices -> (n, 3) RAS."""
        return np.asarray(kji, dtype=float)[:, ::-1] @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def value(self, ras: np.ndarray) -> np.ndarray:
        """The smoothed mask at RAS points (0 outside the grid); ``level`` is the vessel's surface."""
        return ndimage.map_coordinates(self.smooth, self.to_kji(ras), order=1, cval=0.0)

    def distance_to_image_border(self, ras: np.ndarray) -> np.ndarray:
        """How far (in voxels) RAS points lie inside the image's faces (negative: beyond them)."""
        lo, hi = self.image_box_kji if self.image_box_kji is not None else (
            np.zeros(3), np.array(self.mask.shape))
        kji = self.to_kji(ras)
        return np.minimum(kji - (lo[:, None] - 0.5), (hi[:, None] - 0.5) - kji).min(axis=0)

    def inside_image(self, ras: np.ndarray) -> np.ndarray:
        """Which RAS points lie inside the image the mask was cut from (beyond it, a vessel is cut)."""
        lo, hi = self.image_box_kji if self.image_box_kji is not None else (
            np.zeros(3), np.array(self.mask.shape))
        kji = self.to_kji(ras)
        return np.all((kji >= lo[:, None] - 0.5) & (kji <= hi[:, None] - 0.5), axis=0)


def vessel_grid(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> VesselGrid:
    """The mask cropped to its box (plus the smoothing's reach, never beyond the image: the image border
    is where a vessel is cut) with a Gaussian-smoothed copy, and the level of that copy that encloses
    the mask's volume."""
    box = ndimage.find_objects(mask_kji.astype(np.uint8))
    if not box or box[0] is None:
        raise ValueError("the mask is empty")
    spacing = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)[::-1]  # along k, j, i
    sigma = np.maximum(_SMOOTHING_VOXELS, spacing.max() / spacing)
    pad = np.ceil(3 * sigma).astype(int) + 1
    lo = np.array([max(s.start - p, 0) for s, p in zip(box[0], pad, strict=True)])
    hi = np.array([min(s.stop + p, n) for s, p, n in zip(box[0], pad, mask_kji.shape, strict=True)])
    crop = mask_kji[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].astype(bool)
    shifted = np.array(ijk_to_ras, dtype=float)
    shifted[:3, 3] += shifted[:3, :3] @ lo[::-1]
    # beyond the image, map_coordinates reads 0 (cval): a vessel cut by the image border ends there
    smooth = ndimage.gaussian_filter(crop.astype(np.float32), sigma=sigma, mode="nearest")
    return VesselGrid(crop, smooth, shifted, (-lo, np.array(mask_kji.shape) - lo), _volume_true_level(crop, smooth))


def _volume_true_level(mask: np.ndarray, smooth: np.ndarray) -> float:
    """The level of the smoothed mask that encloses the mask's own volume (smoothing shrinks a curved
    surface at level 0.5): counted on 8 sub-voxel samples per voxel in the band where it changes."""
    band = np.argwhere((smooth > 0.02) & (smooth < 0.98))
    if len(band) == 0:
        return 0.5
    sure = int(np.count_nonzero(smooth >= 0.98))
    offsets = np.array(np.meshgrid([-0.25, 0.25], [-0.25, 0.25], [-0.25, 0.25], indexing="ij")).reshape(3, -1)
    samples = (band.T[:, :, None] + offsets[:, None, :]).reshape(3, -1)
    values = np.sort(ndimage.map_coordinates(smooth, samples, order=1, mode="nearest"))[::-1]
    needed = 8 * (int(np.count_nonzero(mask)) - sure)
    if needed <= 0 or needed >= len(values):
        return 0.5
    return float(np.clip(values[needed], 0.2, 0.8))


@dataclass
class CentrelinePath:
    """One centreline polyline (RAS, ~0.5 mm apart after smoothing), with the radius of the largest
    inscribed sphere at each point, and which ends are free (not attached to another path)."""

    points: np.ndarray
    radii: np.ndarray
    free_start: bool
    free_end: bool
    parent: int | None = None  # index of the path this branch leaves from
    junction: np.ndarray | None = None  # where it leaves (RAS)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


@dataclass
class Centreline:
    paths: list[CentrelinePath]  # paths[0] is the main path
    junctions: list[np.ndarray] = field(default_factory=list)
    components: int = 1  # connected pieces of the mask (only the largest is followed)
    max_inscribed_radius_mm: float = 0.0
    skeleton_spacing_mm: float = 0.0


def _isotropic(grid: VesselGrid) -> tuple[np.ndarray, np.ndarray]:
    """The mask resampled (from the smoothed copy, level 0.5) on an isotropic grid along the same
    axes; returns it and its IJK->RAS."""
    spacing = grid.spacing
    extent = np.array(grid.mask.shape[::-1]) * spacing  # along i, j, k
    step = max(float(spacing.min()), float((np.prod(extent) / _MAX_SKELETON_VOXELS) ** (1 / 3)))
    counts = np.maximum(np.ceil(extent / step).astype(int), 1)
    axes_ijk = [np.arange(n) * step / s - 0.5 + step / (2 * s) for n, s in zip(counts, spacing, strict=True)]
    k, j, i = np.meshgrid(axes_ijk[2], axes_ijk[1], axes_ijk[0], indexing="ij")
    iso = ndimage.map_coordinates(grid.smooth, [k, j, i], order=1, cval=0.0) >= grid.level
    matrix = np.array(grid.ijk_to_ras, dtype=float)
    directions = matrix[:3, :3] / spacing
    matrix[:3, 3] = matrix[:3, :3] @ np.array([a[0] for a in axes_ijk]) + matrix[:3, 3]
    matrix[:3, :3] = directions * step
    return iso, matrix


def _graph(skeleton: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, csr_matrix]:
    """Skeleton voxels (n, 3 as k, j, i) and their 26-neighbour graph weighted in mm."""
    nodes = np.argwhere(skeleton)
    index = np.full(skeleton.shape, -1, dtype=np.int64)
    index[tuple(nodes.T)] = np.arange(len(nodes))
    padded = np.pad(index, 1, constant_values=-1)
    rows, cols, weights = [], [], []
    linear = ijk_to_ras[:3, :3]
    for offset in np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T:
        if tuple(offset) <= (0, 0, 0):  # each pair once
            continue
        neighbour = padded[tuple((nodes + 1 + offset).T)]
        found = neighbour >= 0
        rows.append(np.flatnonzero(found))
        cols.append(neighbour[found])
        weights.append(np.full(found.sum(), np.linalg.norm(linear @ offset[::-1])))
    r, c, w = (np.concatenate(x) for x in (rows, cols, weights))
    matrix = csr_matrix((np.concatenate([w, w]), (np.concatenate([r, c]), np.concatenate([c, r]))),
                        shape=(len(nodes), len(nodes)))
    return nodes, matrix


def _path(predecessors: np.ndarray, end: int) -> list[int]:
    path = [end]
    while predecessors[path[-1]] >= 0:
        path.append(int(predecessors[path[-1]]))
    return path[::-1]


def _smooth_polyline(points: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Resample at 0.5 mm and Gaussian-smooth along the arc length; the ends are padded by point
    reflection so they keep their direction instead of curling in."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    if arc[-1] < 1e-6:
        return points[:1]
    samples = np.linspace(0.0, arc[-1], max(int(np.ceil(arc[-1] / 0.5)) + 1, 2))
    resampled = np.column_stack([np.interp(samples, arc, points[:, a]) for a in range(3)])
    sigma = sigma_mm / (samples[1] - samples[0]) if len(samples) > 1 else 0
    if sigma < 0.5 or len(resampled) < 3:
        return resampled
    pad = min(int(3 * sigma) + 1, len(resampled) - 1)
    head = 2 * resampled[0] - resampled[pad:0:-1]
    tail = 2 * resampled[-1] - resampled[-2 : -pad - 2 : -1]
    smoothed = ndimage.gaussian_filter1d(np.vstack([head, resampled, tail]), sigma, axis=0, mode="nearest")
    return smoothed[pad : pad + len(resampled)]


def _extend_to_surface(points: np.ndarray, grid: VesselGrid, at_start: bool, step_back_mm: float) -> np.ndarray:
    """Continue a path from one end along its end tangent while it is inside the vessel (or the image),
    stopping ``step_back_mm`` short of the surface."""
    end = points[0] if at_start else points[-1]
    inner = points[min(6, len(points) - 1)] if at_start else points[max(-7, -len(points))]
    direction = end - inner
    if np.linalg.norm(direction) < 1e-9:
        return points
    direction /= np.linalg.norm(direction)
    ray = end + np.outer(np.arange(0.25, 200.0, 0.25), direction)
    outside = (grid.value(ray) < grid.level) | ~grid.inside_image(ray)
    first_out = int(np.argmax(outside)) if outside.any() else len(ray)
    reach = 0.25 * first_out + 0.25 - step_back_mm
    if reach <= 0.5:
        return points
    added = end + np.outer(np.arange(0.5, reach + 1e-9, 0.5), direction)
    return np.vstack([added[::-1], points]) if at_start else np.vstack([points, added])


def extract_centreline(grid: VesselGrid) -> Centreline:
    """Main path and branches of the largest connected piece of the mask (see the module docstring)."""
    iso, iso_matrix = _isotropic(grid)
    iso = ndimage.binary_fill_holes(iso)
    labels, count = ndimage.label(iso, structure=np.ones((3, 3, 3)))
    if count == 0:
        raise ValueError("the vessel is thinner than the skeleton grid")
    if count > 1:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
        iso = labels == 1 + int(np.argmax(sizes))
    step = float(np.linalg.norm(iso_matrix[:3, 0]))
    distance = ndimage.distance_transform_edt(iso) * step  # radius of the inscribed sphere, mm
    from skimage.morphology import skeletonize  # installed on first use inside Slicer

    skeleton = skeletonize(iso) > 0
    if not skeleton.any():
        skeleton = distance == distance.max()
    nodes, graph = _graph(skeleton, iso_matrix)
    parts, part_of = connected_components(graph, directed=False)
    keep = part_of == np.bincount(part_of).argmax()
    nodes = nodes[keep]
    graph = graph[keep][:, keep]
    ras = nodes[:, ::-1] @ iso_matrix[:3, :3].T + iso_matrix[:3, 3]
    radius = distance[tuple(nodes.T)]

    far = dijkstra(graph, indices=0)
    a = int(np.argmax(np.where(np.isfinite(far), far, -1)))
    from_a, predecessors = dijkstra(graph, indices=a, return_predecessors=True)
    b = int(np.argmax(np.where(np.isfinite(from_a), from_a, -1)))
    node_paths: list[tuple[list[int], int | None]] = [(_path(predecessors, b), None)]
    taken = np.zeros(len(nodes), dtype=bool)
    taken[node_paths[0][0]] = True
    path_of = np.full(len(nodes), -1)
    path_of[node_paths[0][0]] = 0
    while len(node_paths) <= _MAX_BRANCHES:
        reach, predecessors, sources = dijkstra(graph, indices=np.flatnonzero(taken), min_only=True,
                                                return_predecessors=True)
        reach = np.where(np.isfinite(reach), reach, -1)
        tip = int(np.argmax(reach))
        attach = int(sources[tip])
        # a real branch leaves the parent's surface by more than a few voxels; thinning spurs do not
        if reach[tip] <= radius[attach] + 3 * step + 2.0:
            break
        branch = _path(predecessors, tip)  # from the attachment (taken) to the tip
        node_paths.append((branch, int(path_of[attach])))
        path_of[branch[1:]] = len(node_paths) - 1
        taken[branch] = True

    sigma = max(2.0 * float(grid.spacing.max()), 2.0, 0.5 * float(np.median(radius)))
    paths, junctions = [], []
    for indices, parent in node_paths:
        polyline = _smooth_polyline(ras[indices], sigma)
        junction = ras[indices[0]] if parent is not None else None
        if junction is not None:
            junctions.append(junction)
        back = 0.5 * float(grid.spacing.max())
        if parent is None and len(polyline) > 1:
            polyline = _extend_to_surface(polyline, grid, True, back)
        if len(polyline) > 1:
            polyline = _extend_to_surface(polyline, grid, False, back)
        nearest = np.clip(np.rint(np.linalg.solve(iso_matrix[:3, :3], (polyline - iso_matrix[:3, 3]).T)[::-1]),
                          0, np.array(iso.shape)[:, None] - 1).astype(int)
        paths.append(CentrelinePath(polyline, distance[tuple(nearest)], free_start=parent is None, free_end=True,
                                    parent=parent, junction=junction))
    return Centreline(paths, junctions, components=count, skeleton_spacing_mm=step,
                      max_inscribed_radius_mm=float(distance.max()))


def tubularity(mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    """How tube-like a segment is: the length of its main centreline over the diameter of the largest
    sphere inside it. A ball gives 1, compact organs about 1-2.5, a vessel or rib well above 3 (a 9 cm
    piece of abdominal aorta: 3.9; the pulmonary artery tree: 4.4). A piece of a vessel shorter than
    about three diameters cannot be told from a lesion by shape. Coarse (skeleton on at most 2 mm voxels)
    so it is cheap enough to call on every segment before a RECIST measurement (0.01-0.4 s per
    TotalSegmentator organ)."""
    grid = vessel_grid(mask_kji, ijk_to_ras)
    if grid.spacing.min() < 2.0 and np.count_nonzero(grid.mask) * np.prod(grid.spacing) > 8.0 ** 3:
        zoom = np.minimum(grid.spacing[::-1] / 2.0, 1.0)
        coarse = ndimage.zoom(grid.smooth, zoom, order=1) >= 0.5
        matrix = np.array(grid.ijk_to_ras, dtype=float)
        matrix[:3, :3] = matrix[:3, :3] / zoom[::-1]
        if coarse.any():
            grid = VesselGrid(coarse, ndimage.gaussian_filter(coarse.astype(np.float32), 0.5, mode="nearest"),
                              matrix)
    centreline = extract_centreline(grid)
    # the inscribed sphere's radius is measured between voxel centres: half a voxel short of the surface
    diameter = 2.0 * centreline.max_inscribed_radius_mm + centreline.skeleton_spacing_mm
    return centreline.paths[0].length_mm / diameter
