"""MONAI bundle and deepbet backends on real images.

The MONAI bundle is a tiny one written by the test in MONAI's on-disk format (see tiny_bundle.py): its
hand-set UNet thresholds HU per voxel, so its output can be checked against the same thresholds applied
to the input, on a real CT crop stored in a non-RAS orientation (exercises Orientationd / Spacingd /
Invertd and our NIfTI round trip). deepbet runs its real weights (shipped in its wheel) on a real T1 MR
with skull: pyradiomics' brain1 (T1-weighted, post-contrast judging by the enhancing vessels; whole head
with scalp and skull, 256x256x25 at 0.78x0.78x6.5 mm). The MNI152 template in mni152/ is skull-stripped
and nibabel-moved/anatomical.nii covers only part of a head at 2 mm (33x41x25 voxels), so neither tests
skull stripping.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations
from tiny_bundle import BONE_HU, SOFT_TISSUE_HU, write_tiny_bundle

from aiportal.errors import CancelledError, InputError, ModelError
from aiportal.models.backend import ModelInput
from aiportal.models.backends.monai_bundle import MonaiBundleBackend, entry_from_bundle
from aiportal.progress import CancelToken, no_progress


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def run(backend, volume: ModelInput, **params):
    stages = []
    result = backend.run(volume, {"device": "cpu", **params}, lambda fraction, stage: stages.append(fraction),
                         CancelToken())
    assert stages == sorted(stages) and stages[-1] == 1.0
    return result


def ct_crop(shared_data: Path, ornt: list[list[int]]) -> ModelInput:
    """An off-centre crop of the real 3 mm abdominal CT, stored with the axis order and flips of ``ornt``."""
    image = nib.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    start = np.array([20, 10, 4])
    data = np.asarray(image.dataobj)[20:92, 10:70, 4:26]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ start + image.affine[:3, 3]
    ornt_array = np.array(ornt)
    moved = orientations.apply_orientation(data, ornt_array)
    moved_affine = affine @ orientations.inv_ornt_aff(ornt_array, data.shape)
    return ModelInput(np.ascontiguousarray(moved.transpose(2, 1, 0)), moved_affine, "CT", "CT crop")


# --- MONAI bundle ---------------------------------------------------------------------------------------


def test_bundle_label_table_from_metadata(tmp_path, shared_data):
    snomed_csv = shared_data / "totalseg" / "totalsegmentator_snomed_mapping.csv"
    folder = write_tiny_bundle(tmp_path / "organs", yaml_config=True, channel_def={
        "0": "background", "1": "spleen", "2": "Right kidney", "3": "my lesion"})
    entry = entry_from_bundle(folder, snomed_csv=snomed_csv)
    assert entry.id == "monai-bundle-organs" and entry.modality == "CT" and entry.version == "0.1.0"
    assert entry.family == "AI" and entry.license == "Apache-2.0"
    assert entry.weights.sha256 == hashlib.sha256((folder / "models" / "model.pt").read_bytes()).hexdigest()
    spleen, kidney, lesion = entry.labels
    assert (spleen.value, spleen.name, spleen.type.value) == (1, "spleen", "78961009")
    assert (kidney.value, kidney.type.value, kidney.type_modifier.value) == (2, "64033007", "24028007")
    assert (lesion.value, lesion.type.scheme, lesion.type.meaning) == (3, "SCT", "Tissue")  # generic, not invented
    assert {label.layer for label in entry.labels} == {0}

    # independent sigmoid channels (no background channel): values 1..n, each in its own layer
    multi = write_tiny_bundle(tmp_path / "brats", with_weights=True,
                              channel_def={"0": "tumor core", "1": "whole tumor", "2": "enhancing tumor"})
    meta = json.loads((multi / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["inputs"]["image"].update(modality="MRI", format="magnitude")
    (multi / "configs" / "metadata.json").write_text(json.dumps(meta))
    entry = entry_from_bundle(multi, snomed_csv=snomed_csv)
    assert entry.modality == "MR"
    assert [(label.value, label.layer) for label in entry.labels] == [(1, 0), (2, 1), (3, 2)]


def test_bundle_errors_name_the_problem(tmp_path, shared_data):
    with pytest.raises(InputError, match="not a MONAI bundle"):
        entry_from_bundle(tmp_path)
    folder = write_tiny_bundle(tmp_path / "bundle", with_weights=False)
    with pytest.raises(ModelError, match="models/model.pt"):
        entry_from_bundle(folder)
    write_tiny_bundle(folder)
    (folder / "configs" / "inference.json").rename(folder / "configs" / "train.json")
    with pytest.raises(ModelError, match="no inference config"):
        entry_from_bundle(folder)

    # a config whose dataset is one opaque expression: the image cannot be handed to it
    config = json.loads((folder / "configs" / "train.json").read_text())
    config["dataset"] = "$monai.data.Dataset(data=[{'image': f} for f in @datalist], transform=@preprocessing)"
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    volume = ct_crop(shared_data, [[0, 1], [1, 1], [2, 1]])
    with pytest.raises(ModelError, match="dataset#data"):
        run(MonaiBundleBackend(str(folder)), volume)
    with pytest.raises(ModelError, match="needs CT"):
        run(MonaiBundleBackend(str(folder)), ModelInput(volume.array, volume.ijk_to_ras, "MR", "an MR"))

    # the bundle's own code failing (weights that do not fit the network, via an override) names the bundle
    good = write_tiny_bundle(tmp_path / "good")
    with pytest.raises(ModelError, match="MONAI bundle good failed: RuntimeError: .*size mismatch"):
        run(MonaiBundleBackend(str(good)), volume, overrides={"network_def#out_channels": 2})
    cancelled = CancelToken()
    cancelled.cancel()
    with pytest.raises(CancelledError):
        MonaiBundleBackend(str(good)).run(volume, {"device": "cpu"}, no_progress, cancelled)


def test_bundle_runs_its_own_pipeline_with_exact_geometry(tmp_path, shared_data):
    backend = MonaiBundleBackend(str(write_tiny_bundle(tmp_path / "tiny")))
    assert [label.name for label in backend.entry.labels] == ["soft tissue", "dense tissue"]

    volume = ct_crop(shared_data, [[2, -1], [0, 1], [1, -1]])  # stored as A, I, L: not RAS
    assert nib.aff2axcodes(volume.ijk_to_ras) == ("A", "I", "L")
    result = run(backend, volume)
    (labels,) = result.layers
    assert labels.shape == volume.array.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}

    # the bundle resamples to 4 mm and back, so boundaries move a little; a flip or shift would not match
    expected = (volume.array >= SOFT_TISSUE_HU).astype(np.uint8) + (volume.array >= BONE_HU)
    for value, minimum in ((1, 0.85), (2, 0.65)):
        overlap = dice(labels == value, expected == value)
        assert overlap >= minimum, f"label {value}: Dice {overlap:.3f} with the thresholded input"
        for axis in range(3):
            assert dice(labels == value, np.flip(expected, axis) == value) < overlap - 0.15
    assert set(result.confidences) == {1, 2} and all(0.5 < p <= 1 for p in result.confidences.values())

    # the same crop stored in RAS gives the same labels, voxel for voxel, once put on the same grid
    ras = ct_crop(shared_data, [[0, 1], [1, 1], [2, 1]])
    (ras_labels,) = run(backend, ras).layers
    ornt = orientations.io_orientation(volume.ijk_to_ras)
    ras_ijk = orientations.apply_orientation(labels.transpose(2, 1, 0), ornt)
    assert np.allclose(ras.ijk_to_ras, volume.ijk_to_ras @ orientations.inv_ornt_aff(ornt, labels.shape[::-1]))
    assert np.array_equal(ras_ijk, ras_labels.transpose(2, 1, 0))


def test_bundle_without_invert_and_with_sigmoid_outputs(tmp_path, shared_data):
    volume = ct_crop(shared_data, [[2, -1], [0, 1], [1, -1]])
    soft = volume.array >= SOFT_TISSUE_HU

    # no Invertd: the bundle saves on its own 4 mm RAS grid, which we sample back onto the input grid
    (labels,) = run(MonaiBundleBackend(str(write_tiny_bundle(tmp_path / "raw", invert=False))), volume).layers
    assert labels.shape == volume.array.shape
    assert dice(labels == 1, soft & (volume.array < BONE_HU)) >= 0.85
    assert dice(labels == 2, volume.array >= BONE_HU) >= 0.6

    # sigmoid channels without background: one binary layer per channel, values 1..n
    channel_def = {"0": "any tissue", "1": "soft tissue or denser", "2": "denser than 75 HU"}
    backend = MonaiBundleBackend(str(write_tiny_bundle(tmp_path / "sig", sigmoid=True, channel_def=channel_def)))
    result = run(backend, volume)
    assert [set(np.unique(layer)) - {0} for layer in result.layers] == [{1}, {2}, {3}]
    assert dice(result.layers[1] > 0, soft) >= 0.85
    assert dice(result.layers[2] > 0, volume.array >= (SOFT_TISSUE_HU + BONE_HU) / 2) >= 0.8
    assert np.mean(result.layers[1][result.layers[2] > 0] > 0) > 0.99  # the layers overlap as the classes do

    # a bundle that wants several images per case (e.g. four MR contrasts) is refused before running
    meta = json.loads((tmp_path / "sig" / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["inputs"]["image"].update(num_channels=4, channel_def={
        "0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"})
    (tmp_path / "sig" / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="4 input images"):
        run(MonaiBundleBackend(str(tmp_path / "sig")), volume)


# --- deepbet ---------------------------------------------------------------------------------------------


def t1_with_skull(shared_data: Path) -> ModelInput:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(shared_data / "pyradiomics" / "brain1_image.nrrd"))
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return ModelInput(sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps, "MR",
                      "brain1 T1")


def test_deepbet_equals_run_bet(tmp_path, shared_data):
    from deepbet import run_bet
    from deepbet.utils import DATA_PATH

    from aiportal.models.backends.deepbet import ENTRY, DeepbetBackend

    assert ENTRY.id == "deepbet" and ENTRY.labels[0].type.value == "12738006"
    assert ENTRY.weights.sha256 == hashlib.sha256(Path(DATA_PATH, "models", "model.pt").read_bytes()).hexdigest()

    volume = t1_with_skull(shared_data)
    result = run(DeepbetBackend(), volume)
    (mask,) = result.layers
    assert mask.shape == volume.array.shape and set(np.unique(mask)) == {0, 1}

    # deepbet's own file API on the same image
    nifti = tmp_path / "t1.nii"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.ijk_to_ras), nifti)
    run_bet([str(nifti)], mask_paths=[str(tmp_path / "mask.nii")], tiv_paths=[str(tmp_path / "tiv.csv")],
            no_gpu=True, skip_broken=False)
    reference = np.asarray(nib.load(tmp_path / "mask.nii").dataobj).transpose(2, 1, 0) > 0
    assert dice(mask > 0, reference) >= 0.999
    tiv = float((tmp_path / "tiv.csv").read_text().splitlines()[1].split(",")[1])
    assert result.details["tiv_cm3"] == pytest.approx(tiv, rel=1e-6)

    # a brain, not a head: a plausible intracranial volume, and the bright scalp outside the mask
    assert 1000 < tiv < 2000
    head = volume.array > np.percentile(volume.array, 60)
    assert 0.3 < (mask.astype(bool) & head).sum() / head.sum() < 0.9
    assert 0.5 < result.confidences[1] <= 1.0


def test_deepbet_refuses_ct(shared_data):
    from aiportal.models.backends.deepbet import DeepbetBackend

    image = nib.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    ct = ModelInput(np.asarray(image.dataobj).transpose(2, 1, 0), image.affine, "CT", "example CT")
    with pytest.raises(ModelError, match=r"T1-weighted MR.*CT|CT.*T1-weighted MR"):
        run(DeepbetBackend(), ct)
    with pytest.raises(ModelError, match="looks like a CT"):  # a NIfTI: no DICOM modality to go by
        run(DeepbetBackend(), ModelInput(ct.array, ct.ijk_to_ras, None, "ct.nii.gz"))
    t1 = t1_with_skull(shared_data)
    with pytest.raises(InputError, match="threshold"):
        run(DeepbetBackend(), t1, threshold=1.5)
    with pytest.raises(InputError, match="n_dilate"):
        run(DeepbetBackend(), t1, n_dilate=0.5)
