"""Per-segment statistics, each quantity DICOM-coded (quantity, unit, method) like Slicer's
SegmentStatistics, so the same numbers go to the table, CSV/JSON and the TID 1500 SR.

All values are computed on the voxels of the segment as they lie on the intensity volume's grid:

- volume: voxel count x voxel volume (exact, Slicer's "Sum of segmented voxel volumes");
- intensity mean/std (population, ddof=0)/min/max/median: numpy over the voxels under the mask;
- surface area: area of the marching-cubes mesh of the voxel mask, unsmoothed (as pyradiomics and
  IBSI do), so it does not depend on the display's smoothing factor;
- Feret diameter: exact largest distance between two voxel centres (as ITK's FeretDiameter), found
  on the convex hull of the boundary voxel centres;
- centroid and oriented bounding box (principal axes of the voxel centres; the box encloses the
  whole voxels), in RAS.

Each segment is cropped to its own bounding box first, which keeps 20+ segments on a 512x512x300
CT to seconds (a whole-map vtkITKLabelShapeStatistics Feret run takes minutes).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import vtk
from scipy import ndimage
from scipy.spatial import ConvexHull
from vtkmodules.util import numpy_support

from aiportal.errors import InputError
from aiportal.models.catalog import Code
from aiportal.progress import CancelToken, ProgressCallback, no_progress
from aiportal.segmentation import (
    ijk_to_ras_vtk,
    image_scalars_kji,
    label_boxes,
    label_value,
    layer_on_grid,
    segment_mask,
    vtk_matrix_to_array,
)
from aiportal.segmentation import segment_ids as all_segment_ids


@dataclass(frozen=True)
class Quantity:
    key: str  # column name in tables, CSV and JSON
    title: str  # for people
    concept: Code  # what is measured (SR concept name)
    unit: Code  # UCUM
    method: Code | None = None  # how it is measured (SR method), when it matters
    scalar: bool = True  # False for vectors (centroid, bounding box): not written as SR NUM items
    derivation: Code | None = None  # SR derivation (mean, minimum, ...) of an intensity quantity


@dataclass
class SegmentStatistics:
    segment_id: str
    name: str
    label_value: int | None
    values: dict[str, float | tuple[float, ...]] = field(default_factory=dict)  # key -> value; NaN when empty
    quantities: tuple[Quantity, ...] = ()  # what each key means, units included (set by compute_statistics)


# Codes as Slicer's SegmentStatistics plugins (and dcmqi) use them.
_VOXELS = Code("99QIICR", "nvoxels", "Number of voxels")
_VOLUME = Code("SCT", "118565006", "Volume")
_SUM_OF_VOXEL_VOLUMES = Code("DCM", "126030", "Sum of segmented voxel volumes")
_SURFACE_AREA = Code("99CHEMINF", "000247", "Surface area")
_MAX_3D_DIAMETER = Code("IBSI", "L0JK", "Maximum 3D diameter")
_CENTER_OF_GRAVITY = Code("DCM", "122475", "Center of Gravity")
# No standard code exists for the oriented bounding box; a private scheme, as Slicer does for voxels.
_OBB_CENTER = Code("99AIPORTAL", "obb_center", "Oriented bounding box center")
_OBB_SIZE = Code("99AIPORTAL", "obb_size", "Oriented bounding box size")
_OBB_AXES = Code("99AIPORTAL", "obb_axes", "Oriented bounding box axes")
_ATTENUATION = Code("DCM", "112031", "Attenuation Coefficient")
_MR_SIGNAL = Code("DCM", "110852", "MR signal intensity")
_INTENSITY = Code("99AIPORTAL", "intensity", "Voxel intensity")  # other modalities
_INTENSITY_CONCEPTS = {"CT": _ATTENUATION, "MR": _MR_SIGNAL}
_MEAN = Code("SCT", "373098007", "Mean")
_STD = Code("SCT", "386136009", "Standard Deviation")
_MIN = Code("SCT", "255605001", "Minimum")
_MAX = Code("SCT", "56851009", "Maximum")
_MEDIAN = Code("SCT", "373099004", "Median")

HOUNSFIELD_UNIT = Code("UCUM", "[hnsf'U]", "Hounsfield unit")
NO_UNITS = Code("UCUM", "1", "no units")
_VOXEL_UNIT = Code("UCUM", "{voxels}", "voxels")
_ML = Code("UCUM", "mL", "milliliter")
_MM = Code("UCUM", "mm", "millimeter")
_MM2 = Code("UCUM", "mm2", "square millimeter")

INTENSITY_KEYS = ("hu_mean", "hu_std", "hu_min", "hu_max", "hu_median")


def intensity_unit(modality: str | None) -> Code:
    """Unit of the voxel values: Hounsfield units for CT, unitless otherwise (MR, unknown)."""
    return HOUNSFIELD_UNIT if (modality or "").upper() == "CT" else NO_UNITS


def quantities(modality: str | None = "CT") -> tuple[Quantity, ...]:
    """All quantities, with the intensity ones coded for ``modality``."""
    unit = intensity_unit(modality)
    concept = _INTENSITY_CONCEPTS.get((modality or "").upper(), _INTENSITY)
    intensity = [
        Quantity(key, title, concept, unit, derivation=derivation)
        for key, title, derivation in zip(
            INTENSITY_KEYS,
            ("Mean intensity", "Intensity standard deviation", "Minimum intensity", "Maximum intensity",
             "Median intensity"),
            (_MEAN, _STD, _MIN, _MAX, _MEDIAN),
            strict=True,
        )
    ]
    return (
        Quantity("voxel_count", "Voxel count", _VOXELS, _VOXEL_UNIT),
        Quantity("volume_ml", "Volume", _VOLUME, _ML, method=_SUM_OF_VOXEL_VOLUMES),
        *intensity,
        Quantity("surface_area_mm2", "Surface area", _SURFACE_AREA, _MM2),
        Quantity("feret_diameter_mm", "Feret diameter", _MAX_3D_DIAMETER, _MM),
        Quantity("centroid_ras", "Centroid (RAS)", _CENTER_OF_GRAVITY, _MM, scalar=False),
        Quantity("obb_center_ras", "Oriented box centre (RAS)", _OBB_CENTER, _MM, scalar=False),
        Quantity("obb_size_mm", "Oriented box size", _OBB_SIZE, _MM, scalar=False),
        Quantity("obb_axes", "Oriented box axes (RAS, rows)", _OBB_AXES, NO_UNITS, scalar=False),
    )


QUANTITIES: tuple[Quantity, ...] = quantities("CT")


# -- computation ---------------------------------------------------------------------------------
@dataclass
class _Layer:
    """A shared label map layer on the volume grid, with every label's bounding box."""

    array: np.ndarray
    boxes: list[tuple[slice, ...] | None]
    offset_kji: np.ndarray


def _layer_on_grid(layer, volume_ijk_to_ras: np.ndarray) -> _Layer | None:
    placed = layer_on_grid(layer, volume_ijk_to_ras)
    if placed is None:
        return None
    return _Layer(placed.array, label_boxes(placed.array), placed.offset_kji)


def _crop_from_layer(layer: _Layer, value: int) -> tuple[np.ndarray, np.ndarray] | None:
    box = layer.boxes[value - 1] if 0 < value <= len(layer.boxes) else None
    if box is None:
        return None
    return layer.array[box] == value, layer.offset_kji + np.array([s.start for s in box])


def crop_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return None
    return mask[boxes[0]], np.array([s.start for s in boxes[0]])


def clip_to_volume(
    mask: np.ndarray, origin_kji: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Cut off the part of a cropped mask that lies outside the volume (no intensities there)."""
    lo = np.maximum(origin_kji, 0)
    hi = np.minimum(origin_kji + mask.shape, shape)
    if np.any(hi <= lo):
        return None
    inner = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin_kji, strict=True))
    return mask[inner], lo


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (6-connectivity)."""
    padded = np.pad(mask, 1)
    centre = (slice(1, -1),) * 3
    interior = mask.copy()
    for axis in range(3):
        for shifted in (slice(None, -2), slice(2, None)):
            neighbour = list(centre)
            neighbour[axis] = shifted
            interior &= padded[tuple(neighbour)]
    return mask & ~interior


def max_pairwise_distance(points: np.ndarray, chunk: int = 2048) -> float:
    """Largest distance between any two of the points (brute force, in chunks)."""
    best = 0.0
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        best = max(best, float(squared.max()))
    return math.sqrt(best)


def extreme_points(points: np.ndarray) -> np.ndarray:
    """The convex hull vertices of the points: the only ones that can be farthest apart or
    extreme along any direction. A planar set (one slice) gets the hull in its own plane."""
    if len(points) <= 4:
        return points
    centred = points - points.mean(axis=0)
    spread, directions = np.linalg.eigh(centred.T @ centred)
    rank = int(np.sum(spread > 1e-9 * max(spread[-1], 1e-12)))
    if rank < 2:  # on a line: its two ends
        along = centred @ directions[:, -1]
        return points[[along.argmin(), along.argmax()]]
    return points[ConvexHull(centred @ directions[:, 3 - rank :]).vertices]


def _index_moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) covariance of the voxel indices, (i, j, k) order, from the mask's
    three 2D projections: no coordinate list of millions of voxels."""
    k, j, i = (np.arange(n, dtype=np.float64) for n in mask.shape)
    kj, ki, ji = (np.count_nonzero(mask, axis=axis).astype(np.float64) for axis in (2, 1, 0))
    count = kj.sum()
    per_k, per_j, per_i = kj.sum(axis=1), kj.sum(axis=0), ki.sum(axis=0)
    mean = np.array([per_i @ i, per_j @ j, per_k @ k]) / count
    second = np.empty((3, 3))
    second[0, 0], second[1, 1], second[2, 2] = per_i @ i**2, per_j @ j**2, per_k @ k**2
    second[0, 1] = second[1, 0] = j @ ji @ i
    second[0, 2] = second[2, 0] = k @ ki @ i
    second[1, 2] = second[2, 1] = k @ kj @ j
    return mean, second / count - np.outer(mean, mean)


def _surface_area(mask: np.ndarray, spacing: np.ndarray) -> float:
    image = vtk.vtkImageData()
    padded = np.pad(mask, 1).astype(np.uint8)  # closed surface also where the segment touches the crop
    image.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])
    image.SetSpacing(*spacing)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = padded.ravel()
    surface = vtk.vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    mass = vtk.vtkMassProperties()
    mass.SetInputConnection(surface.GetOutputPort())
    mass.Update()
    return float(mass.GetSurfaceArea())


def _shape_values(mask: np.ndarray, origin_kji: np.ndarray, ijk_to_ras: np.ndarray) -> dict:
    linear, translation = ijk_to_ras[:3, :3], ijk_to_ras[:3, 3]
    mean_ijk, covariance_ijk = _index_moments(mask)
    centroid = linear @ (mean_ijk + origin_kji[::-1]) + translation
    _, eigenvectors = np.linalg.eigh(linear @ covariance_ijk @ linear.T)
    axes = eigenvectors[:, ::-1].T.copy()  # rows, largest spread first
    axes *= np.where(axes[np.arange(3), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # deterministic signs
    if np.linalg.det(axes) < 0:
        axes[2] *= -1
    boundary = (np.argwhere(_boundary(mask)) + origin_kji)[:, ::-1] @ linear.T + translation
    extremes = extreme_points(boundary)
    projected = (extremes - centroid) @ axes.T
    low, high = projected.min(axis=0), projected.max(axis=0)
    # the box encloses whole voxels: add each voxel's extent along every axis
    size = high - low + np.abs(axes @ linear).sum(axis=1)
    return {
        "surface_area_mm2": _surface_area(mask, np.linalg.norm(linear, axis=0)),
        "feret_diameter_mm": max_pairwise_distance(extremes) if len(extremes) > 1 else 0.0,
        "centroid_ras": tuple(float(v) for v in centroid),
        "obb_center_ras": tuple(float(v) for v in centroid + ((low + high) / 2) @ axes),
        "obb_size_mm": tuple(float(v) for v in size),
        "obb_axes": tuple(float(v) for v in axes.ravel()),
    }


def _empty_values(keys: Iterable[Quantity]) -> dict[str, float | tuple[float, ...]]:
    sizes = {"obb_axes": 9}
    return {q.key: math.nan if q.scalar else (math.nan,) * sizes.get(q.key, 3) for q in keys}


def compute_statistics(
    segmentation_node,
    volume_node,
    segment_ids: Sequence[str] | None = None,
    modality: str | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> list[SegmentStatistics]:
    """Statistics of each segment (all by default) on ``volume_node``'s voxels, in segment order.

    ``modality`` (default: the volume's ``DICOM.Modality`` attribute, else CT as for a NIfTI CT)
    picks the intensity unit.
    An empty segment gets voxel count 0 and NaN for everything else.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("No intensity volume for the statistics", "select the image the segmentation was made on")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError(f"{volume_node.GetName()} has several values per voxel", "select a scalar (grey-value) volume")
    if segmentation_node.GetParentTransformNode() or volume_node.GetParentTransformNode():
        raise InputError(
            f"{segmentation_node.GetName()} or {volume_node.GetName()} is transformed",
            "harden the transforms (Data module) before computing statistics",
        )
    segmentation = segmentation_node.GetSegmentation()
    known = all_segment_ids(segmentation_node)
    wanted = list(segment_ids) if segment_ids is not None else known
    for segment_id in wanted:
        if segment_id not in known:
            raise InputError(
                f"Segment {segment_id!r} is not in {segmentation_node.GetName()}",
                f"use one of: {', '.join(known) or 'none (the segmentation is empty)'}",
            )
    table = quantities(modality or volume_node.GetAttribute("DICOM.Modality") or "CT")
    ijk_to_ras = vtk_matrix_to_array(ijk_to_ras_vtk(volume_node))
    voxels = image_scalars_kji(volume_node.GetImageData())
    voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0
    layers: dict[str, _Layer | None] = {}
    rows = []
    for index, segment_id in enumerate(wanted):
        if cancel is not None:
            cancel.check("segment statistics")
        segment = segmentation.GetSegment(segment_id)
        progress(index / max(len(wanted), 1), f"Statistics: {segment.GetName()}")
        layer_image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        address = layer_image.GetAddressAsString("vtkObject") if layer_image is not None else ""
        if address not in layers:
            layers[address] = _layer_on_grid(layer_image, ijk_to_ras) if layer_image is not None else None
        layer = layers[address]
        if layer is not None:
            crop = _crop_from_layer(layer, segment.GetLabelValue())
        else:  # another grid: let Slicer resample the segment onto the volume's grid
            crop = crop_from_mask(segment_mask(segmentation_node, segment_id, volume_node))
        if crop is not None:
            crop = clip_to_volume(*crop, voxels.shape)
        row = SegmentStatistics(segment_id, segment.GetName(), label_value(segment), _empty_values(table), table)
        row.values["voxel_count"] = 0
        if crop is not None and (count := int(np.count_nonzero(crop[0]))):
            mask, origin = crop
            box = tuple(slice(o, o + n) for o, n in zip(origin, mask.shape, strict=True))
            values = voxels[box][mask].astype(np.float64)
            row.values.update(
                voxel_count=count,
                volume_ml=float(count * voxel_ml),
                hu_mean=float(values.mean()),
                hu_std=float(values.std()),
                hu_min=float(values.min()),
                hu_max=float(values.max()),
                hu_median=float(np.median(values)),
                **_shape_values(mask, origin, ijk_to_ras),
            )
        rows.append(row)
    progress(1.0, "Statistics done")
    return rows


# -- tables --------------------------------------------------------------------------------------
def _plain(value: float | tuple[float, ...]) -> float | int | list | None:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def as_json(rows: Sequence[SegmentStatistics]) -> list[dict]:
    """JSON-ready rows: each measurement with its key, value (None when empty), unit and meaning."""
    return [
        {
            "segment_id": row.segment_id,
            "name": row.name,
            "label_value": row.label_value,
            "measurements": [
                {
                    "key": q.key,
                    "title": q.title,
                    "value": _plain(row.values.get(q.key, math.nan)),
                    "unit": q.unit.value,
                    "unit_meaning": q.unit.meaning,
                    "concept": {"scheme": q.concept.scheme, "value": q.concept.value, "meaning": q.concept.meaning},
                }
                for q in (row.quantities or QUANTITIES)
            ],
        }
        for row in rows
    ]


def _cell(value: float | tuple[float, ...]) -> str:
    if isinstance(value, tuple):
        return " ".join(_cell(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def segment_statistics_table(rows: Sequence[SegmentStatistics]) -> tuple[list[str], list[list[str]]]:
    """Header (titles with units) and text cells, one row per segment: for CSV and the faces' tables."""
    table = rows[0].quantities if rows and rows[0].quantities else QUANTITIES
    symbols = {"[hnsf'U]": "HU", "{voxels}": "", "1": ""}
    header = ["Segment", "Label value"] + [
        f"{q.title} ({symbol})" if (symbol := symbols.get(q.unit.value, q.unit.value)) else q.title for q in table
    ]
    cells = [
        [row.name, "" if row.label_value is None else str(row.label_value)]
        + [_cell(row.values.get(q.key, math.nan)) for q in table]
        for row in rows
    ]
    return header, cells


def write_csv(rows: Sequence[SegmentStatistics], path) -> Path:
    """Write the statistics table as CSV (vectors as space-separated numbers)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"Folder {path.parent} does not exist", "create it or choose another output path")
    header, cells = segment_statistics_table(rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(cells)
    return path

