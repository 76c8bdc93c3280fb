"""classic-ct against TotalSegmentator references on real CTs and against the phantom's ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from aiportal.errors import CancelledError, ModelError
from aiportal.io.volumes import nearest_on_grid
from aiportal.models.classic_ct import check_ct_intensities, segment_classic_ct
from aiportal.progress import CancelToken
from aiportal.sample import make_ct_phantom

LEFT_LUNG_LABELS = (10, 11)
RIGHT_LUNG_LABELS = (12, 13, 14)
# the CT cases and their TotalSegmentator task "total" references
CASES = {
    "example_ct": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
    "example_ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "example_ct_dicom": ("example_ct_dicom", "example_seg_dicom.nii.gz"),
}
LUNG_DICE_MIN, BONE_DICE_MIN = 0.85, 0.75
# below this reference lung volume a case has no lungs to score; classic-ct must then find ~none
MIN_REFERENCE_LUNG_ML = 20.0


def skeletal_labels(shared_data: Path) -> list[int]:
    """Bones of task "total"; costal cartilages (117) are cartilage, not bone (they are ~100-130 HU)."""
    names = json.loads((shared_data / "totalseg" / "class_map_total_totalmr.json").read_text())["total"]
    prefixes = ("vertebrae_", "rib_", "hip_", "femur_", "humerus_", "scapula_", "clavicula_")
    return [int(k) for k, n in names.items()
            if n.startswith(prefixes) or n in ("sacrum", "sternum", "skull")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def load_ct(shared_data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(hu (k, j, i), ijk_to_ras) of a NIfTI file or a DICOM series folder."""
    path = shared_data / "totalseg" / name
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        image = reader.Execute()
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
        ijk_to_lps[:3, 3] = image.GetOrigin()
        return sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    img = nib.load(path)
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


def reference_on_grid(path: Path, shape: tuple[int, int, int], ijk_to_ras: np.ndarray) -> np.ndarray:
    """Reference label map resampled (nearest) onto the CT grid by geometry, not by array order."""
    img = nib.load(path)
    labels = np.asarray(img.dataobj).transpose(2, 1, 0)
    on_ct, inside = nearest_on_grid(labels, img.affine, shape, ijk_to_ras)
    assert inside.all(), f"{path.name} does not cover the CT grid"
    return on_ct


@pytest.fixture(scope="module")
def results(shared_data: Path) -> dict:
    """Segment every case once; the tests below score the shared result."""
    out = {}
    for case, (ct_name, ref_name) in CASES.items():
        hu, ijk_to_ras = load_ct(shared_data, ct_name)
        reference = reference_on_grid(shared_data / "totalseg" / ref_name, hu.shape, ijk_to_ras)
        masks = segment_classic_ct(hu, ijk_to_ras)
        voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0
        out[case] = (masks, reference, voxel_ml)
    return out


@pytest.fixture(scope="module")
def dice_table(results, shared_data: Path) -> dict:
    bones = skeletal_labels(shared_data)
    table = {}
    for case, (masks, reference, voxel_ml) in results.items():
        ref_lung = np.isin(reference, LEFT_LUNG_LABELS + RIGHT_LUNG_LABELS)
        lungs = masks.lung_left | masks.lung_right
        table[case] = {
            "ref_lung_ml": ref_lung.sum() * voxel_ml,
            "lung_ml": lungs.sum() * voxel_ml,
            "lungs": dice(lungs, ref_lung),
            "lung_left": dice(masks.lung_left, np.isin(reference, LEFT_LUNG_LABELS)),
            "lung_right": dice(masks.lung_right, np.isin(reference, RIGHT_LUNG_LABELS)),
            "bone": dice(masks.bone, np.isin(reference, bones)),
        }
    print("\ncase               ref lung ml  lung ml  lungs  left   right  bone")
    for case, row in table.items():
        print(f"{case:18s} {row['ref_lung_ml']:11.0f} {row['lung_ml']:8.0f} {row['lungs']:6.3f} "
              f"{row['lung_left']:6.3f} {row['lung_right']:6.3f} {row['bone']:6.3f}")
    return table


@pytest.mark.parametrize("case", list(CASES))
def test_lungs_match_reference(dice_table: dict, case: str) -> None:
    row = dice_table[case]
    if row["ref_lung_ml"] < MIN_REFERENCE_LUNG_ML:
        # no lung in the reference (upper abdomen): stomach and bowel gas must not become lung
        assert row["lung_ml"] < MIN_REFERENCE_LUNG_ML, row
    else:
        assert row["lungs"] >= LUNG_DICE_MIN, row


@pytest.mark.parametrize("case", ["example_ct", "example_ct_sm"])  # the cases whose reference has lung
def test_lung_sides_not_swapped(dice_table: dict, case: str) -> None:
    row = dice_table[case]
    assert row["ref_lung_ml"] >= MIN_REFERENCE_LUNG_ML, row
    assert row["lung_left"] >= LUNG_DICE_MIN and row["lung_right"] >= LUNG_DICE_MIN, row


@pytest.mark.parametrize("case", list(CASES))
def test_bone_matches_reference(dice_table: dict, case: str) -> None:
    assert dice_table[case]["bone"] >= BONE_DICE_MIN, dice_table[case]


@pytest.mark.parametrize("case", list(CASES))
def test_no_trachea_in_abdominal_scans(results: dict, case: str) -> None:
    masks, _, voxel_ml = results[case]
    assert masks.airways.sum() * voxel_ml < 1.0


def test_masks_keep_input_grid_and_body_contains_organs(results: dict) -> None:
    for masks, reference, _ in results.values():
        for mask in (masks.body, masks.lung_left, masks.lung_right, masks.airways, masks.bone):
            assert mask.shape == reference.shape and mask.dtype == bool
        organs = masks.lung_left | masks.lung_right | masks.airways | masks.bone
        assert (organs & ~masks.body).sum() <= 0.01 * organs.sum()


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom()


@pytest.fixture(scope="module")
def phantom_masks(phantom):
    return segment_classic_ct(phantom.hu, phantom.ijk_to_ras)


def test_phantom_ground_truth(phantom, phantom_masks) -> None:
    scores = {
        "lungs": dice(phantom_masks.lung_left | phantom_masks.lung_right, phantom.lung_left | phantom.lung_right),
        "lung_left": dice(phantom_masks.lung_left, phantom.lung_left),
        "lung_right": dice(phantom_masks.lung_right, phantom.lung_right),
        "bone": dice(phantom_masks.bone, phantom.bone),
        "airways": dice(phantom_masks.airways, phantom.airways),
        "body": dice(phantom_masks.body, phantom.body),
    }
    print("\nphantom Dice:", {k: round(v, 3) for k, v in scores.items()})
    assert scores["lungs"] > 0.9 and scores["bone"] > 0.9 and scores["airways"] > 0.8, scores
    assert scores["lung_left"] > 0.9 and scores["lung_right"] > 0.9, scores
    assert scores["body"] > 0.95, scores


def test_phantom_geometry_is_lps_like(phantom) -> None:
    """i toward patient left (RAS -x), j toward posterior (RAS -y), k toward superior (RAS +z)."""
    assert phantom.hu.dtype == np.int16
    direction = np.sign(np.diag(phantom.ijk_to_ras[:3, :3]))
    assert direction.tolist() == [-1.0, -1.0, 1.0]
    # the left lung lies at larger i, i.e. lower RAS x
    left_i = np.nonzero(phantom.lung_left)[2].mean()
    right_i = np.nonzero(phantom.lung_right)[2].mean()
    assert left_i > right_i


def test_orientation_independent(phantom, phantom_masks) -> None:
    """The same patient stored RAS (flipped i and j, swapped axes) gives the same masks."""
    hu = phantom.hu[:, ::-1, ::-1]
    ijk_to_ras = phantom.ijk_to_ras.copy()
    shape = phantom.hu.shape
    ijk_to_ras[:3, 0] *= -1
    ijk_to_ras[:3, 1] *= -1
    ijk_to_ras[:3, 3] = phantom.ijk_to_ras[:3, :3] @ [shape[2] - 1, shape[1] - 1, 0] + phantom.ijk_to_ras[:3, 3]
    # also swap the in-plane array axes (i <-> j)
    hu = np.ascontiguousarray(hu.transpose(0, 2, 1))
    ijk_to_ras = ijk_to_ras[:, [1, 0, 2, 3]]
    masks = segment_classic_ct(hu, ijk_to_ras)

    def back(mask: np.ndarray) -> np.ndarray:
        return mask.transpose(0, 2, 1)[:, ::-1, ::-1]

    assert dice(back(masks.lung_left), phantom_masks.lung_left) > 0.99
    assert dice(back(masks.lung_right), phantom_masks.lung_right) > 0.99
    assert dice(back(masks.bone), phantom_masks.bone) > 0.99


def test_progress_and_cancel(phantom) -> None:
    reports: list[tuple[float, str]] = []
    segment_classic_ct(phantom.hu[:40], phantom.ijk_to_ras, progress=lambda f, s: reports.append((f, s)))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"body", "lungs", "airways", "bone"} <= {s for _, s in reports}

    token = CancelToken()

    def cancel_at_lungs(fraction: float, stage: str) -> None:
        if stage == "lungs":
            token.cancel()

    with pytest.raises(CancelledError):
        segment_classic_ct(phantom.hu[:40], phantom.ijk_to_ras, progress=cancel_at_lungs, cancel=token)


def test_rejects_mr(shared_data: Path) -> None:
    img = nib.load(shared_data / "totalseg" / "example_mr_sm.nii.gz")
    with pytest.raises(ModelError, match="example_mr_sm.nii.gz.*Hounsfield"):
        check_ct_intensities(np.asarray(img.dataobj).transpose(2, 1, 0), "example_mr_sm.nii.gz")


@pytest.mark.parametrize("case", list(CASES))
def test_accepts_ct(shared_data: Path, case: str) -> None:
    hu, _ = load_ct(shared_data, CASES[case][0])
    check_ct_intensities(hu, case)


def test_accepts_phantom(phantom) -> None:
    check_ct_intensities(phantom.hu, "phantom")


def test_cropped_chest_ct_lung(shared_data: Path) -> None:
    """A real chest CT whose small field of view cuts through the patient (only the right lung,
    which touches the image border), with elastix's lung mask as reference."""
    folder = shared_data / "elastix-lung" / "Testing" / "Data"
    image = sitk.ReadImage(str(folder / "3DCT_lung_baseline_small.mha"))
    mask = sitk.Resample(sitk.ReadImage(str(folder / "3DCT_lung_baseline_mask.mha")), image, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    masks = segment_classic_ct(sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps)
    reference = sitk.GetArrayFromImage(mask) > 0
    assert dice(masks.lung_right | masks.lung_left, reference) > 0.9
    assert masks.lung_left.sum() < 0.02 * masks.lung_right.sum()  # the crop holds the right lung only
