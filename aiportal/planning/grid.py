"""A label map with its geometry and segment names: the one input every planning function takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from aiportal.errors import InputError

#: Surface voxels: inside the segment with at least one face neighbour outside (6-connectivity).
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


@dataclass
class LabelGrid:
    """Label map ``labels`` (k, j, i), its 4x4 IJK→RAS matrix and ``names`` (label value → name)."""

    labels: np.ndarray
    ijk_to_ras: np.ndarray
    names: dict[int, str]
    source: str = ""
    _surfaces: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float)
        axes = self.ijk_to_ras[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing <= 0):
            raise InputError(f"{self.source or 'label map'} has a zero voxel spacing", "fix the image header")
        gram = (axes / spacing).T @ (axes / spacing)
        if np.abs(gram - np.eye(3)).max() > 1e-4:
            raise InputError(f"{self.source or 'label map'} has a sheared grid (axes not orthogonal)",
                             "resample it onto a regular grid first (aiportal segment does this for DICOM)")

    @property
    def spacing_ijk(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Voxel size in array order (for scipy's ``sampling``)."""
        return tuple(float(s) for s in self.spacing_ijk[::-1])

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_ijk)) / 1000.0

    def value(self, name: str) -> int:
        """The label value of segment ``name`` (case-insensitive); an error lists the names there are."""
        for value, candidate in self.names.items():
            if candidate.lower() == name.lower():
                return value
        present = ", ".join(sorted(self.names.values())[:12])
        raise InputError(f"no segment {name!r} in {self.source or 'the segmentation'}",
                         f"choose one of: {present}{' ...' if len(self.names) > 12 else ''}")

    def mask(self, name: str) -> np.ndarray:
        """Boolean (k, j, i) mask of ``name``; an empty segment is refused."""
        mask = self.labels == self.value(name)
        if not mask.any():
            raise InputError(f"segment {name!r} in {self.source or 'the segmentation'} is empty",
                             "choose a segment that has voxels")
        return mask

    def present_names(self) -> list[str]:
        """Names of the segments that have voxels, in label order."""
        present = set(np.unique(self.labels).tolist())
        return [name for value, name in sorted(self.names.items()) if value in present]

    def ijk_to_ras_points(self, kji: np.ndarray) -> np.ndarray:
        """(n, 3) voxel indices in (k, j, i) order → (n, 3) RAS points in mm."""
        ijk = np.asarray(kji, dtype=float)[:, ::-1]
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_kji(self, ras: np.ndarray) -> np.ndarray:
        """(n, 3) RAS points → (n, 3) continuous voxel indices in (k, j, i) order."""
        ras_to_ijk = np.linalg.inv(self.ijk_to_ras)
        ijk = np.asarray(ras, dtype=float) @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]
        return ijk[:, ::-1]

    def inside_image(self, ras: np.ndarray) -> np.ndarray:
        """Which RAS points lie within the image (voxel-centre grid ± half a voxel)."""
        kji = self.ras_to_kji(ras)
        return np.all((kji >= -0.5) & (kji <= np.array(self.labels.shape) - 0.5), axis=1)

    def surface_kji(self, name: str) -> np.ndarray:
        """(n, 3) indices of ``name``'s surface voxels (cached: trajectories reuse them)."""
        if name not in self._surfaces:
            self._surfaces[name] = surface_voxels(self.mask(name))
        return self._surfaces[name]

    def surface_ras(self, name: str) -> np.ndarray:
        return self.ijk_to_ras_points(self.surface_kji(name))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """(n, 3) (k, j, i) indices of the mask's voxels that touch the outside through a face.

    The nearest voxel of a segment to any outside point is always a surface voxel, so distances
    computed over surface voxels equal those over all voxels, at a fraction of the points.
    """
    box = bounding_box(mask)
    cropped = np.pad(mask[box], 1)
    interior = ndimage.binary_erosion(cropped, _FACE_NEIGHBOURS)
    surface = np.argwhere(cropped & ~interior) - 1
    return surface + np.array([s.start for s in box])


def bounding_box(mask: np.ndarray, margin_voxels: np.ndarray | int = 0) -> tuple[slice, ...]:
    """The smallest box around the mask, grown by ``margin_voxels`` per axis and clipped to the array."""
    margin = np.broadcast_to(np.asarray(margin_voxels, dtype=int), (3,))
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(0, occupied[0] - margin[axis]), min(mask.shape[axis], occupied[-1] + 1 + margin[axis])))
    return tuple(box)


def require_same_grid(first: LabelGrid, second: LabelGrid) -> None:
    """Segmentations compared voxel by voxel must share the grid."""
    if first.labels.shape != second.labels.shape or np.abs(first.ijk_to_ras - second.ijk_to_ras).max() > 1e-3:
        raise InputError(f"{second.source or 'the second segmentation'} is on a different grid from "
                         f"{first.source or 'the first'}", "resample one onto the other's grid first")


def load_label_grid(path: Path, *, class_map: Path | None = None, task: str = "total",
                    volume: Path | None = None, runtime=None) -> LabelGrid:
    """A label map file (NIfTI/NRRD, names from a TotalSegmentator class map) or a ``.seg.nrrd``.

    The label volume is read by the Slicer core (same orientation handling as every other face).
    """
    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume
    from aiportal.runtime import get_runtime

    path = Path(path)
    if not path.exists():
        raise InputError(f"segmentation {path} does not exist", "check the path")
    runtime = runtime or get_runtime()
    if path.name.lower().endswith(".seg.nrrd"):
        return _from_seg_nrrd(path, volume, runtime)
    node = load_volume(path, runtime).node
    labels = array_from_volume(node)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise InputError(f"{path} is not a label map (non-integer voxels)", "give a label map or a .seg.nrrd")
        labels = labels.astype(np.int32)
    names = _class_names(class_map, task)
    for value in np.unique(labels).tolist():
        if value and value not in names:
            names[int(value)] = f"label_{value}"
    return LabelGrid(labels, ijk_to_ras_matrix(node), names, source=path.name)


def _class_names(class_map: Path | None, task: str) -> dict[int, str]:
    from aiportal.models import totalseg_labels

    if class_map is not None:
        return totalseg_labels.read_class_map_json(class_map, task)
    try:
        return totalseg_labels.installed_class_map(task)
    except Exception:  # TotalSegmentator not installed: numbered labels
        return {}


def _from_seg_nrrd(path: Path, volume: Path | None, runtime) -> LabelGrid:
    from aiportal.io.volumes import load_volume
    from aiportal.segmentation import load_segmentation

    if volume is None:
        raise InputError(f"{path} needs its reference image", "pass --volume with the image it was made on")
    reference = load_volume(volume, runtime).node
    return grid_from_segmentation(load_segmentation(path, runtime), reference, source=path.name)


def grid_from_segmentation(segmentation_node, reference_volume, source: str = "") -> LabelGrid:
    """A segmentation node's segments as one label map on the reference volume's grid, named by segment."""
    from aiportal.io.volumes import ijk_to_ras_matrix
    from aiportal.segmentation import export_label_map, label_value, segment_ids

    labels = export_label_map(segmentation_node, reference_volume)
    segmentation = segmentation_node.GetSegmentation()
    ids = segment_ids(segmentation_node)
    values = [label_value(segmentation.GetSegment(i)) for i in ids]
    next_free = max([v for v in values if v] + [0]) + 1
    names: dict[int, str] = {}
    for segment_id, value in zip(ids, values, strict=True):
        if value is None:  # export_label_map numbers untagged segments the same way
            value, next_free = next_free, next_free + 1
        names[value] = segmentation.GetSegment(segment_id).GetName()
    return LabelGrid(labels.astype(np.int32), ijk_to_ras_matrix(reference_volume), names,
                     source=source or segmentation_node.GetName())
