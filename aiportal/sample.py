"""A synthetic chest/upper-abdomen CT phantom with ground-truth masks, made by the project.

Used for the README demo (``aiportal segment`` on it) and for tests of ``classic-ct`` against a
known answer. Anatomy is defined in millimetres, so any shape/spacing gives the same patient:
an elliptic trunk with subcutaneous fat, two lungs with vessel texture, trachea and main bronchi,
heart, contrast-filled aorta (a trap for bone thresholds), liver, a gas-filled stomach under the
left diaphragm (a trap for lung thresholds), vertebrae with spinal canal, ribs, sternum and a CT
table under the patient. The grid is axial and LPS-like as a DICOM CT would be (i toward patient
left, j toward posterior, k toward superior), expressed as a RAS ``ijk_to_ras``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

AIR_HU, LUNG_HU, FAT_HU, SOFT_HU, BLOOD_HU, LIVER_HU = -1000, -850, -100, 40, 40, 60
CONTRAST_AORTA_HU, CARTILAGE_HU, CSF_HU, TABLE_HU = 220, 110, 10, 300
CORTEX_HU, MARROW_HU = 900, 250
NOISE_SD_HU = 15.0


@dataclass
class Phantom:
    hu: np.ndarray  # int16, (k, j, i)
    ijk_to_ras: np.ndarray  # 4x4
    body: np.ndarray  # bool truth masks, (k, j, i)
    lung_left: np.ndarray
    lung_right: np.ndarray
    airways: np.ndarray
    bone: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(sz, sy, sx) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)[::-1])


class _Grid:
    """Patient coordinates in mm: x toward patient left, y toward posterior, z toward superior."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=float)
        nk, nj, ni = shape
        self.z = np.arange(nk) * spacing[0]
        self.y = (np.arange(nj) - nj / 2) * spacing[1]
        self.x = (np.arange(ni) - ni / 2) * spacing[2]
        self.height = nk * spacing[0]

    def _box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index box covering the mm box [low, high] given as (x, y, z)."""
        box = []
        for axis, lo, hi in ((self.z, low[2], high[2]), (self.y, low[1], high[1]), (self.x, low[0], high[0])):
            start, stop = np.searchsorted(axis, lo), np.searchsorted(axis, hi, side="right")
            if stop <= start:
                return None
            box.append(slice(start, stop))
        return tuple(box)  # type: ignore[return-value]

    def _coords(self, box):
        return np.meshgrid(self.z[box[0]], self.y[box[1]], self.x[box[2]], indexing="ij")

    def ellipsoid(self, center, radii) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        center, radii = np.asarray(center, float), np.asarray(radii, float)
        box = self._box(center - radii, center + radii)
        if box is None:
            return mask
        z, y, x = self._coords(box)
        mask[box] = ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + (
            (z - center[2]) / radii[2]
        ) ** 2 <= 1
        return mask

    def capsule(self, start, end, radius: float) -> np.ndarray:
        """Tube of a given radius around the segment start-end (rounded ends)."""
        mask = np.zeros(self.shape, dtype=bool)
        start, end = np.asarray(start, float), np.asarray(end, float)
        box = self._box(np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        if box is None:
            return mask
        z, y, x = self._coords(box)
        axis = end - start
        t = ((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2]) / max(
            axis @ axis, 1e-9
        )
        t = np.clip(t, 0, 1)
        dist2 = (x - start[0] - t * axis[0]) ** 2 + (y - start[1] - t * axis[1]) ** 2 + (
            z - start[2] - t * axis[2]
        ) ** 2
        mask[box] = dist2 <= radius**2
        return mask

    def elliptic_cylinder(self, center_xy, radii_xy, z_range) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        box = self._box(
            np.array([center_xy[0] - radii_xy[0], center_xy[1] - radii_xy[1], z_range[0]]),
            np.array([center_xy[0] + radii_xy[0], center_xy[1] + radii_xy[1], z_range[1]]),
        )
        if box is None:
            return mask
        y, x = np.meshgrid(self.y[box[1]], self.x[box[2]], indexing="ij")
        inside = ((x - center_xy[0]) / radii_xy[0]) ** 2 + ((y - center_xy[1]) / radii_xy[1]) ** 2 <= 1
        mask[box] = inside[None]
        return mask


def _bone_piece(grid: _Grid, outer: np.ndarray, cortex_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a bone's outer shape into (cortex, marrow) by an in-plane erosion of cortex_mm."""
    steps = max(1, int(round(cortex_mm / float(min(grid.spacing[1:])))))
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    marrow = ndi.binary_erosion(outer, structure=plane, iterations=steps)
    return outer & ~marrow, marrow


def make_ct_phantom(
    shape: tuple[int, int, int] = (120, 256, 256),
    spacing: tuple[float, float, float] = (2.5, 1.4, 1.4),
    seed: int = 0,
) -> Phantom:
    """A chest + upper abdomen CT in HU with truth masks; ``shape``/``spacing`` are (k, j, i)/(sz, sy, sx)."""
    rng = np.random.default_rng(seed)
    grid = _Grid(shape, spacing)
    top = grid.height
    hu = np.full(shape, AIR_HU, dtype=np.float32)

    # trunk: fat shell around soft tissue; the table lies under it
    trunk_center, trunk_radii = (0.0, -10.0), (160.0, 110.0)
    body = grid.elliptic_cylinder(trunk_center, trunk_radii, (-1, top + 1))
    inner = grid.elliptic_cylinder(trunk_center, (trunk_radii[0] - 10, trunk_radii[1] - 10), (-1, top + 1))
    hu[body] = FAT_HU
    hu[inner] = SOFT_HU
    table_y = trunk_center[1] + trunk_radii[1] + 15.0
    table = grid.elliptic_cylinder((0.0, table_y + 250.0), (200.0, 253.0), (-1, top + 1)) & ~grid.elliptic_cylinder(
        (0.0, table_y + 250.0), (195.0, 247.0), (-1, top + 1)
    )
    table &= (grid.y[None, :, None] > table_y - 5) & ~body
    hu[table] = TABLE_HU

    # lungs above a domed diaphragm; the heart and mediastinum cut into them
    lung_bottom = 0.3 * top
    lung_c = lung_bottom + 0.5 * (top - 15 - lung_bottom)
    lung_rz = 0.5 * (top - 15 - lung_bottom)
    right_lung = grid.ellipsoid((-76.0, -8.0, lung_c), (52.0, 78.0, lung_rz))
    left_lung = grid.ellipsoid((76.0, -8.0, lung_c), (50.0, 78.0, lung_rz))
    heart = grid.ellipsoid((18.0, -35.0, lung_bottom + 0.3 * (top - lung_bottom)), (58.0, 50.0, 0.28 * top))
    aorta = grid.capsule((22.0, 40.0, -5.0), (22.0, 40.0, 0.78 * top), 13.0) | grid.capsule(
        (22.0, 40.0, 0.78 * top), (5.0, -20.0, 0.82 * top), 13.0
    )
    # trachea from the top of the scan to the carina, main bronchi into the hila
    carina = np.array([0.0, 5.0, 0.68 * top])
    trachea_top = np.array([0.0, -10.0, top + 5])
    right_hilum = np.array([-45.0, 10.0, carina[2] - 30.0])
    left_hilum = np.array([48.0, 12.0, carina[2] - 38.0])
    lumen = grid.capsule(trachea_top, carina, 9.0)
    lumen |= grid.capsule(carina, right_hilum, 6.5) | grid.capsule(carina, left_hilum, 6.0)
    lumen |= grid.capsule(right_hilum, right_hilum + [-20.0, 5.0, -35.0], 4.0)
    lumen |= grid.capsule(left_hilum, left_hilum + [20.0, 8.0, -35.0], 4.0)
    lumen |= grid.capsule(right_hilum, right_hilum + [-20.0, -10.0, 30.0], 4.0)
    lumen |= grid.capsule(left_hilum, left_hilum + [20.0, -10.0, 30.0], 4.0)
    wall = ndi.binary_dilation(lumen, iterations=max(1, int(round(2.0 / min(spacing))))) & ~lumen
    spine_y = 72.0
    mediastinum = heart | aorta | grid.elliptic_cylinder((0.0, 0.0), (22.0, 60.0), (-1, top + 1))
    mediastinum |= grid.elliptic_cylinder((0.0, spine_y + 10), (30.0, 45.0), (-1, top + 1))
    lung_left = left_lung & ~mediastinum & inner
    lung_right = right_lung & ~mediastinum & inner

    hu[lung_left | lung_right] = LUNG_HU
    # parenchyma texture: smooth density variation plus a tree of vessels from each hilum
    texture = ndi.gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), 2.0)
    texture *= 40.0 / max(float(texture.std()), 1e-6)
    hu[lung_left | lung_right] += texture[lung_left | lung_right]
    vessels = np.zeros(shape, dtype=bool)
    for hilum, side in ((right_hilum, -1.0), (left_hilum, 1.0)):
        for _ in range(14):
            direction = rng.normal(0.0, 1.0, 3)
            direction[0] = side * abs(direction[0]) + side * 0.5
            direction /= np.linalg.norm(direction)
            length = rng.uniform(40.0, 90.0)
            end = hilum + direction * length
            vessels |= grid.capsule(hilum + direction * 10, end, rng.uniform(1.5, 3.5))
    vessels &= lung_left | lung_right
    hu[vessels] = BLOOD_HU
    hu[heart & inner] = BLOOD_HU
    hu[aorta] = CONTRAST_AORTA_HU

    # upper abdomen: liver under the right dome, stomach with a gas cap under the left one
    diaphragm_mm = 6.0  # the abdomen starts below a muscular diaphragm, not right at the lung
    thorax = grid.ellipsoid((-76.0, -8.0, lung_c), (52.0 + diaphragm_mm, 78.0 + diaphragm_mm, lung_rz + diaphragm_mm))
    thorax |= grid.ellipsoid((76.0, -8.0, lung_c), (50.0 + diaphragm_mm, 78.0 + diaphragm_mm, lung_rz + diaphragm_mm))
    abdomen = inner & ~thorax & (grid.z[:, None, None] < lung_c)
    liver = grid.ellipsoid((-60.0, 0.0, lung_bottom - 10), (95.0, 85.0, 70.0)) & abdomen
    hu[liver] = LIVER_HU
    stomach = grid.ellipsoid((70.0, -30.0, lung_bottom - 25), (40.0, 35.0, 35.0)) & abdomen & ~liver
    gas = stomach & (grid.y[None, :, None] < -40.0)  # patient supine: gas rises anteriorly
    hu[stomach] = 20.0
    hu[gas] = AIR_HU
    for center in ((-40.0, -70.0, 0.08 * top), (60.0, -60.0, 0.12 * top), (10.0, -85.0, 0.05 * top)):
        bubble = grid.ellipsoid(center, (12.0, 9.0, 10.0)) & inner
        hu[bubble] = AIR_HU

    # airways are painted after the lungs so the lumen stays air inside them
    hu[wall & ~lumen & inner] = SOFT_HU
    lumen &= inner
    hu[lumen] = AIR_HU

    # skeleton: vertebral bodies, arches around the spinal canal, ribs, sternum
    cortex = np.zeros(shape, dtype=bool)
    marrow = np.zeros(shape, dtype=bool)

    def add_bone(outer: np.ndarray, cortex_mm: float = 2.0) -> None:
        shell, core = _bone_piece(grid, outer, cortex_mm)
        cortex[shell] = True
        marrow[core] = True

    level = 0.0
    while level < top:
        add_bone(grid.elliptic_cylinder((0.0, spine_y), (20.0, 17.0), (level, level + 24.0)))
        arch = grid.elliptic_cylinder((0.0, spine_y + 32.0), (16.0, 15.0), (level + 2.0, level + 22.0))
        arch |= grid.elliptic_cylinder((0.0, spine_y + 58.0), (4.0, 14.0), (level + 4.0, level + 18.0))
        add_bone(arch, 2.5)
        level += 28.0  # 4 mm discs
    canal = grid.elliptic_cylinder((0.0, spine_y + 30.0), (9.0, 8.0), (-1, top + 1))
    for rib_z in np.arange(lung_bottom - 30.0, top - 20.0, 26.0):
        for side in (-1.0, 1.0):
            angles = np.linspace(np.deg2rad(100), np.deg2rad(-55), 18)  # spine (posterior) to front
            points = [
                (side * (trunk_radii[0] - 18) * np.cos(a) * 0.95 + side * 8, trunk_center[1]
                 + (trunk_radii[1] - 16) * np.sin(a), rib_z - 12.0 * (1 - np.sin(a)))
                for a in angles
            ]
            rib = np.zeros(shape, dtype=bool)
            for p0, p1 in zip(points[:-1], points[1:], strict=True):
                rib |= grid.capsule(p0, p1, 5.5)
            add_bone(rib, 1.5)
            # costal cartilage toward the sternum: dense soft tissue, not bone
            hu[grid.capsule(points[-1], (side * 18.0, -105.0, rib_z - 20), 4.5) & inner] = CARTILAGE_HU
    add_bone(grid.elliptic_cylinder((0.0, -108.0), (16.0, 6.0), (0.55 * top, 0.9 * top)), 1.5)

    marrow &= ~canal
    cortex &= ~canal & inner
    marrow &= inner
    hu[canal & inner] = CSF_HU
    hu[marrow] = MARROW_HU + rng.normal(0.0, 40.0, int(marrow.sum()))
    hu[cortex] = CORTEX_HU + rng.normal(0.0, 120.0, int(cortex.sum()))
    bone = cortex | marrow

    # scanner: slight blur (partial volume) then quantum noise
    hu = ndi.gaussian_filter(hu, sigma=(0.4, 0.6, 0.6))
    hu += rng.normal(0.0, NOISE_SD_HU, shape).astype(np.float32)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    nk, nj, ni = shape
    sz, sy, sx = spacing
    ijk_to_ras = np.array(
        [[-sx, 0, 0, ni / 2 * sx], [0, -sy, 0, nj / 2 * sy], [0, 0, sz, 0.0], [0, 0, 0, 1.0]], dtype=float
    )
    not_lung = ndi.binary_dilation(bone) | lumen | wall
    return Phantom(
        hu=hu, ijk_to_ras=ijk_to_ras, body=body, lung_left=lung_left & ~not_lung,
        lung_right=lung_right & ~not_lung, airways=lumen, bone=bone,
    )
