"""PNG key images for the report: each lesion's RECIST slice, windowed, with its axes drawn.

The slice is resampled (linear) in the plane of the axes, in radiological display convention
(patient right on the image's left, anterior up), around the lesion with a margin, at square
pixels; the segment outline is drawn in green, the long axis in yellow and the short axis in cyan,
with their lengths. Pillow comes with highdicom (and with Slicer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix
from aiportal.measure.recist import RecistMeasurement
from aiportal.segmentation import segment_mask

LONG_AXIS_COLOR = (255, 220, 0)
SHORT_AXIS_COLOR = (0, 220, 255)
OUTLINE_COLOR = (0, 200, 0)
MIN_FIELD_MM = 40.0


@dataclass
class KeyImage:
    path: Path
    window: float
    level: float
    mm_per_pixel: float
    long_axis_pixels: tuple[tuple[float, float], tuple[float, float]]  # (x, y) of the endpoints, as drawn
    short_axis_pixels: tuple[tuple[float, float], tuple[float, float]]
    # RAS unit vectors of the image's rows (left to right) and columns (top to bottom): its orientation
    row_direction_ras: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    column_direction_ras: tuple[float, float, float] = (0.0, -1.0, 0.0)


def window_level(volume_node, values: np.ndarray | None = None) -> tuple[float, float]:
    """The volume's display window/level when it has one set, else the 1st–99th percentile of ``values``."""
    display = volume_node.GetDisplayNode() if hasattr(volume_node, "GetDisplayNode") else None
    if display is not None and display.GetWindow() > 0 and not display.GetAutoWindowLevel():
        return float(display.GetWindow()), float(display.GetLevel())
    data = array_from_volume(volume_node) if values is None else values
    low, high = np.percentile(data, [1.0, 99.0])
    return float(max(high - low, 1e-6)), float((high + low) / 2)


def render_key_image(volume_node, segmentation_node, measurement: RecistMeasurement, path: Path, *,
                     size: int = 512, window: float | None = None, level: float | None = None,
                     outline: bool = True) -> KeyImage:
    """Write ``path`` (PNG, ``size`` × ``size``) for one lesion's measurement on ``volume_node``."""
    ijk_to_ras = ijk_to_ras_matrix(volume_node)
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    p, q = (np.array(point) for point in measurement.long_axis_endpoints_ras)
    a, b = (np.array(point) for point in measurement.short_axis_endpoints_ras)
    axis = "ijk".index(measurement.slice_axis)
    normal = np.cross(ijk_to_ras[:3, (axis + 1) % 3], ijk_to_ras[:3, (axis + 2) % 3])
    normal /= np.linalg.norm(normal)
    # display axes in the slice plane: x toward the patient's left, y toward posterior (radiological)
    x_axis = _in_plane(np.array([-1.0, 0.0, 0.0]), normal, fallback=np.array([0.0, -1.0, 0.0]))
    y_axis = np.cross(normal, x_axis)
    if y_axis @ np.array([0.0, -1.0, 0.0]) + y_axis @ np.array([0.0, 0.0, -1.0]) < 0:
        y_axis = -y_axis  # posterior (or inferior, on a coronal slice) is down
    centre = (p + q) / 2
    field_mm = max(MIN_FIELD_MM, 2.0 * measurement.long_axis_mm)
    mm_per_pixel = field_mm / size
    offsets = (np.arange(size) - (size - 1) / 2) * mm_per_pixel
    ras = centre + offsets[None, :, None] * x_axis + offsets[:, None, None] * y_axis  # (y, x, 3)
    ijk = np.concatenate([ras, np.ones((size, size, 1))], axis=-1) @ ras_to_ijk.T
    voxels = array_from_volume(volume_node).astype(np.float32)
    kji = [ijk[..., 2], ijk[..., 1], ijk[..., 0]]
    pixels = ndimage.map_coordinates(voxels, kji, order=1, mode="constant", cval=float(voxels.min()))
    if window is None or level is None:
        auto_window, auto_level = window_level(volume_node, voxels)
        window = auto_window if window is None else window
        level = auto_level if level is None else level
    grey = np.clip((pixels - (level - window / 2)) / window * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    draw = ImageDraw.Draw(image)

    if outline:
        mask = segment_mask(segmentation_node, measurement.segment_id, volume_node)
        inside = ndimage.map_coordinates(mask.astype(np.uint8), kji, order=0, mode="constant", cval=0) > 0
        edge = inside & ~ndimage.binary_erosion(inside)
        rgb = np.asarray(image).copy()
        rgb[edge] = OUTLINE_COLOR
        image = Image.fromarray(rgb, "RGB")
        draw = ImageDraw.Draw(image)

    def to_pixels(point: np.ndarray) -> tuple[float, float]:
        offset = point - centre
        return (float(offset @ x_axis / mm_per_pixel + (size - 1) / 2),
                float(offset @ y_axis / mm_per_pixel + (size - 1) / 2))

    width = max(2, size // 256)
    long_pixels = (to_pixels(p), to_pixels(q))
    short_pixels = (to_pixels(a), to_pixels(b))
    draw.line(long_pixels, fill=LONG_AXIS_COLOR, width=width)
    draw.line(short_pixels, fill=SHORT_AXIS_COLOR, width=width)
    draw.text((6, 6), f"{measurement.lesion_name}  slice {measurement.slice_axis}={measurement.slice_index}",
              fill=(255, 255, 255))
    draw.text((6, 20), f"long {measurement.long_axis_mm:.1f} mm", fill=LONG_AXIS_COLOR)
    draw.text((6, 34), f"short {measurement.short_axis_mm:.1f} mm", fill=SHORT_AXIS_COLOR)
    draw.text((6, size - 18), f"R | {field_mm:.0f} mm field | L", fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return KeyImage(path, float(window), float(level), mm_per_pixel, long_pixels, short_pixels,
                    tuple(float(v) for v in x_axis), tuple(float(v) for v in y_axis))


def write_key_images(volume_node, segmentation_node, measurements: list[RecistMeasurement], folder: Path,
                     **options) -> list[KeyImage]:
    """One PNG per lesion in ``folder``, named after the segment."""
    folder = Path(folder)
    return [render_key_image(volume_node, segmentation_node, m, folder / f"{_file_name(m.lesion_name)}.png",
                             **options) for m in measurements]


def _in_plane(direction: np.ndarray, normal: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    projected = direction - (direction @ normal) * normal
    if np.linalg.norm(projected) < 1e-3:  # a sagittal slice: no left-right in it
        projected = fallback - (fallback @ normal) * normal
    return projected / np.linalg.norm(projected)


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_ " else "_" for c in name).strip() or "lesion"
