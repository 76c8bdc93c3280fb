"""What ``metric="auto"`` picks, and the check every result gets that its optimisation did not see.

Picking (measured on real pairs, bench/bench_registration.py):

- Mattes mutual information aligns any pair of contrasts and captures large motion, but on small or
  coarse images its 32-bin histogram is noisy: the nibabel MR pair (2 mm → SPM's 4 mm copy) stops
  2.4° / 2.5 mm (corners) off. Mean squares on the same pair reaches 0.19° / 0.4 mm, and fails on
  different contrasts (a T2-like copy: "lost the overlap").
- So auto runs mutual information first, then decides whether the two images share a contrast: from the
  DICOM modality tags when both have one (CT and CT: same; CT and MR: different), else from the
  intensities themselves at the mutual-information alignment (Pearson correlation ≥
  :data:`SAME_CONTRAST_CORRELATION`). Same contrast: the moving intensities are fitted linearly to the
  fixed ones (scanner gain differs between MR sessions) and mean squares refines from there.

Checking: the result is re-optimised from a start :data:`PERTURB_DEG` / :data:`PERTURB_MM` away; a
registration that found the images' true alignment lands in the same place again, one that found an
accident of the metric (unrelated images, too little overlap) does not. Disagreement beyond
``max(2 mm, 1 voxel)`` at the fixed volume's corners is a warning. Landmarks, when given, are the other
check: a TRE above the unregistered one is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Pearson correlation of fixed-foreground and aligned moving intensities above which the pair shares a contrast
#: (measured: nibabel MR pair 0.54, MNI T1 vs its WM map 0.85, vs itself 0.89; T1 vs a T2-like inversion -0.81,
#: vs its GM map -0.56; unrelated MR/CT pairs 0.01-0.26)
SAME_CONTRAST_CORRELATION = 0.45
_CORRELATION_SAMPLES = 200_000
PERTURB_DEG = 4.0
PERTURB_MM = 6.0
_CONSISTENCY_FLOOR_MM = 2.0
#: edge-alignment sharpness below which a result is flagged (see :func:`alignment_sharpness`)
MIN_SHARPNESS = 0.15  # real pairs 0.24-1.0, unrelated images -0.01-0.07


@dataclass(frozen=True)
class MetricChoice:
    """The metric auto picked, and why (one line for registration.json)."""

    metric: str
    reason: str
    correlation: float | None = None


def data_mask(image: sitk.Image) -> sitk.Image | None:
    """Where ``image`` holds data: without the padding a resampler leaves outside the scanned field.

    Padding is the image's minimum, exactly, in a region touching the border, covering >= 5 % of the voxels
    and set apart from the intensities above it (SPM's 4 mm copy of the nibabel MR: 68 % zeros, none of the
    voxels within 2 % of the range above zero). A CT's air (noisy, ~-1000 HU) is not padding. None: no padding.
    """
    values = sitk.GetArrayViewFromImage(image)
    low, span = float(values.min()), float(values.max() - values.min())
    at_min = values == low
    share = float(at_min.mean())
    if share < 0.05 or float(((values > low) & (values <= low + 0.02 * span)).mean()) > share / 2:
        return None
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(at_min.astype(np.uint8))))
    border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(),
                                       labels[:, :, [0, -1]].ravel()]))
    padding = np.isin(labels, border[border > 0])
    if padding.mean() < 0.05:
        return None
    mask = sitk.GetImageFromArray((~padding).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def modality(node) -> str:
    """The volume's DICOM modality (CT, MR, PT, …) when it came from DICOM, else ''."""
    return (node.GetAttribute("DICOM.Modality") or "").upper()


def _aligned_samples(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                     fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None) -> tuple[np.ndarray, np.ndarray]:
    """Fixed intensities and the moving ones mapped onto them, where both masks (None: all) hold data."""
    factor = max(1, int(np.ceil((fixed.GetNumberOfPixels() / _CORRELATION_SAMPLES) ** (1 / 3))))
    grid = sitk.Shrink(fixed, [factor] * 3) if factor > 1 else fixed
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, grid, transform, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
    values = sitk.GetArrayFromImage(grid)
    inside = np.isfinite(warped)
    if fixed_mask is not None:
        inside &= sitk.GetArrayFromImage(sitk.Resample(fixed_mask, grid, sitk.Transform(),
                                                       sitk.sitkNearestNeighbor, 0)) > 0
    if moving_mask is not None:
        inside &= sitk.GetArrayFromImage(sitk.Resample(moving_mask, grid, transform, sitk.sitkNearestNeighbor, 0)) > 0
    return values[inside].astype(np.float64), warped[inside].astype(np.float64)


def choose_metric(fixed_node, moving_node, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None) -> MetricChoice:
    """Same contrast → mean squares (on linearly fitted intensities), else mutual information."""
    tags = modality(fixed_node), modality(moving_node)
    if all(tags):
        if tags[0] == tags[1] == "CT":
            return MetricChoice("mean_squares", "both CT (DICOM Modality): Hounsfield units compare directly")
        if tags[0] != tags[1]:
            return MetricChoice("mutual_information", f"different modalities ({tags[0]} and {tags[1]})")
    a, b = _aligned_samples(fixed, moving, transform, fixed_mask, moving_mask)
    # inside the fixed foreground (above Otsu's threshold): a shared dark background must not pass for a shared
    # contrast (MNI T1 against its grey-matter map: 0.78 with the background, negative inside the head)
    if len(a) >= 100 and a.std() > 0:
        tissue = a > _otsu(a)
        a, b = a[tissue], b[tissue]
    if len(a) < 100 or a.std() == 0 or b.std() == 0:
        return MetricChoice("mutual_information", "too little overlap to compare the intensities")
    correlation = float(np.corrcoef(a, b)[0, 1])
    if correlation >= SAME_CONTRAST_CORRELATION:
        return MetricChoice("mean_squares", f"same contrast: intensities correlate {correlation:.2f} after "
                            "mutual-information alignment; mean squares refines", correlation)
    return MetricChoice("mutual_information", f"different contrasts: intensities correlate {correlation:.2f} "
                        f"(< {SAME_CONTRAST_CORRELATION}) after mutual-information alignment", correlation)


def _otsu(values: np.ndarray) -> float:
    histogram, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * centres)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(centres[np.nanargmax(between[:-1])])


def gradient_alignment(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """How well the edges line up: gradient-weighted mean cos² of the angle between fixed and moving gradients.

    Independent of the metric optimised (and of contrast: cos² ignores the gradient's sign). 1/3 for unrelated
    edge directions, 1 for identical ones. Measured on the fixed grid where the moving volume has data.
    """
    sigma = max(*fixed.GetSpacing(), *moving.GetSpacing())
    factor = max(1, int(np.ceil((fixed.GetNumberOfPixels() / _CORRELATION_SAMPLES) ** (1 / 3))))
    grid = sitk.Shrink(fixed, [factor] * 3) if factor > 1 else fixed
    smooth_fixed = sitk.Resample(sitk.SmoothingRecursiveGaussian(fixed, sigma), grid)
    warped = sitk.Resample(sitk.SmoothingRecursiveGaussian(moving, sigma), grid, transform, sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    cover = sitk.BinaryErode(sitk.Resample(ones, grid, transform, sitk.sitkNearestNeighbor, 0), [2, 2, 2])
    inside = sitk.GetArrayFromImage(cover) > 0
    if inside.sum() < 100:
        return float("nan")
    gf = sitk.GetArrayFromImage(sitk.Gradient(smooth_fixed))[inside]
    gm = sitk.GetArrayFromImage(sitk.Gradient(warped))[inside]
    return float(((gf * gm).sum(-1) ** 2).sum() / max(float(((gf**2).sum(-1) * (gm**2).sum(-1)).sum()), 1e-30))


def alignment_sharpness(fixed: sitk.Image, moving: sitk.Image, transform: sitk.AffineTransform) -> float:
    """How much the edge alignment drops when the result is shifted by 2 voxels (coarser image) along each axis.

    (score − mean shifted score) / (1 − mean shifted score): near 0 when the edges line up no better at the
    result than beside it (nothing was aligned), 0.5+ on the real pairs.
    """
    score = gradient_alignment(fixed, moving, transform)
    step = 2 * max(*fixed.GetSpacing(), *moving.GetSpacing())
    shifted = []
    for axis in np.eye(3):
        for sign in (1, -1):
            moved = sitk.CompositeTransform([transform, sitk.TranslationTransform(3, tuple(sign * step * axis))])
            shifted.append(gradient_alignment(fixed, moving, moved))
    around = float(np.nanmean(shifted))
    return (score - around) / max(1.0 - around, 1e-6)


def fitted_moving(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None) -> sitk.Image:
    """The moving image scaled and shifted so its intensities best match the fixed ones (least squares)."""
    a, b = _aligned_samples(fixed, moving, transform, fixed_mask, moving_mask)
    slope, intercept = np.polyfit(b, a, 1)
    return sitk.Cast(moving * float(slope) + float(intercept), sitk.sitkFloat32)


def corners(image: sitk.Image) -> np.ndarray:
    """The physical (LPS) positions of the image's 8 corner voxels."""
    size = np.array(image.GetSize()) - 1
    indices = [(i, j, k) for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]) for idx in indices])


def corner_disagreement_mm(fixed: sitk.Image, first: sitk.Transform, second: sitk.Transform) -> float:
    """Largest distance between where two transforms send the fixed volume's corners."""
    points = corners(fixed)
    return float(max(np.linalg.norm(np.subtract(first.TransformPoint(tuple(p)), second.TransformPoint(tuple(p))))
                     for p in points))


def perturbed(transform: sitk.AffineTransform) -> sitk.AffineTransform:
    """``transform`` preceded by a rotation of PERTURB_DEG about each axis and a PERTURB_MM shift."""
    angle = np.radians(PERTURB_DEG)
    turn = sitk.Euler3DTransform(transform.GetCenter(), angle, -angle, angle, (PERTURB_MM, -PERTURB_MM, PERTURB_MM))
    composed = sitk.CompositeTransform([transform, turn])  # the turn acts on fixed points first
    out = sitk.AffineTransform(3)
    out.SetCenter(transform.GetCenter())
    origin = np.array(composed.TransformPoint(transform.GetCenter()))
    columns = [np.array(composed.TransformPoint(tuple(np.add(transform.GetCenter(), axis)))) - origin
               for axis in np.eye(3)]
    out.SetMatrix(np.stack(columns, axis=1).ravel().tolist())
    out.SetTranslation(tuple(origin - np.array(transform.GetCenter())))
    return out


def consistency_tolerance_mm(fixed: sitk.Image, moving: sitk.Image) -> float:
    return max(_CONSISTENCY_FLOOR_MM, *fixed.GetSpacing(), *moving.GetSpacing())
