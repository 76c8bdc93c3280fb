"""nnU-Net v2 and TotalSegmentator backends, run end to end with tiny models in the libraries' formats.

The tiny models (Testing/tiny_models.py) are intensity-threshold classifiers whose every output voxel
depends on its own input voxel only, so the exact answer is known on any real image: a result that is
shifted, flipped, transposed or resampled with the wrong spacing does not match it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_models import (
    TOTALSEG_FAST_DATASET,
    threshold_truth,
    write_nnunet_results_folder,
    write_totalseg_fast_model,
)

from aiportal.errors import InputError, ModelError
from aiportal.models.backend import ModelInput
from aiportal.models.backends import nnunet, totalsegmentator
from aiportal.models.catalog import TISSUE, Catalog
from aiportal.progress import CancelToken

RULES = [(1, ">", 200.5), (2, "<", -500.5)]  # HU thresholds between integer CT values
LABELS = {"background": 0, "bone": 1, "left lung": 2, "Liver": 3}  # Liver: a class the model never outputs
SPACING_KJI = (6.0, 3.0, 3.0)  # example_ct_sm at every second slice


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: on a shared 2-core runner, torch's default threads spin against each other (10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ct_crop(shared_data: Path, flip_i: bool = False, swap_ik: bool = False) -> ModelInput:
    """A real 3 mm abdominal CT crop, every second slice (6 x 3 x 3 mm), optionally stored flipped/transposed."""
    image = nib.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    hu = np.asarray(image.dataobj).transpose(2, 1, 0)[::2, 20:80, 20:100]
    ijk_to_ras = image.affine.copy()
    ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ np.array([20.0, 20.0, 0.0])
    ijk_to_ras[:3, 2] *= 2
    if flip_i:  # same physical image, i axis stored right-to-left
        hu = hu[:, :, ::-1]
        ijk_to_ras[:3, 3] += ijk_to_ras[:3, 0] * (hu.shape[2] - 1)
        ijk_to_ras[:3, 0] *= -1
    if swap_ik:  # same physical image, i and k axes exchanged
        hu = hu.transpose(2, 1, 0)
        ijk_to_ras[:3, [0, 2]] = ijk_to_ras[:3, [2, 0]]
    return ModelInput(np.ascontiguousarray(hu), ijk_to_ras, "CT", "example_ct_sm crop")


def tiny_nnunet(root: Path, **kwargs) -> Path:
    options = {"spacing_zyx": SPACING_KJI, "patch_size_zyx": (16, 64, 80)} | kwargs  # one tile covers the crop
    return write_nnunet_results_folder(root, 101, "TinyThreshold", LABELS, RULES, **options)


def run(backend, volume: ModelInput, params: dict | None = None):
    stages: list[tuple[float, str]] = []
    result = backend.run(volume, params or {}, lambda fraction, stage: stages.append((fraction, stage)),
                         CancelToken())
    assert stages and stages[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in stages)
    return result


# ----------------------------------------------------------------------------- nnU-Net v2


def test_nnunet_entry_from_results_folder(tmp_path):
    folder = tiny_nnunet(tmp_path, folds=(0, 1))
    entry = nnunet.entry_from_results_folder(folder)

    assert entry.id == f"nnunet:{folder}" and entry.environment == "torch"
    assert entry.version == "Dataset101_TinyThreshold/nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert entry.modality == "CT"
    assert [(label.value, label.name) for label in entry.labels] == [(1, "bone"), (2, "left lung"), (3, "Liver")]
    bone, lung, liver = entry.labels
    assert (bone.category, bone.type) == (TISSUE, TISSUE)  # no TotalSegmentator class called "bone"
    assert (lung.type.value, lung.type_modifier.meaning) == ("39607008", "Left")  # "left lung" -> lung_left
    assert liver.type.value == "10200004"
    listing = "".join(
        f"{hashlib.sha256((folder / f'fold_{fold}' / 'checkpoint_final.pth').read_bytes()).hexdigest()}"
        f"  fold_{fold}/checkpoint_final.pth\n" for fold in (0, 1))  # sha256sum's format
    assert entry.weights.sha256 == hashlib.sha256(listing.encode()).hexdigest()
    catalog = Catalog()
    catalog.add_source(nnunet.SOURCE_PREFIX, nnunet.resolve_source, "an nnU-Net v2 results folder")
    assert catalog.get(f"nnunet:{folder}") == entry
    assert catalog.backend(f"nnunet:{folder}").entry == entry  # what the runner's child builds


def test_nnunet_result_lies_on_the_input_grid(tmp_path, shared_data):
    folder = tiny_nnunet(tmp_path)
    volume = ct_crop(shared_data)
    result = run(nnunet.NnUNetBackend(str(folder)), volume, {"use_tta": False, "device": "cpu"})

    (labels,) = result.layers
    truth = threshold_truth(volume.array, RULES)
    assert labels.shape == volume.array.shape and labels.dtype == np.uint8
    # the input is already at the plans' spacing, so nnU-Net must not resample at all: exact voxel match
    np.testing.assert_array_equal(labels, truth)
    present = set(np.unique(labels).tolist()) - {0}
    assert present == {1, 2} and present <= set(LABELS.values())
    assert set(result.confidences) == present
    assert all(0.5 < score <= 1.0 for score in result.confidences.values())
    assert result.details["input_spacing_kji"] == list(SPACING_KJI)
    assert result.details["folds"] == ["0"] and not result.details["mirroring"]


def test_nnunet_tta_two_folds_and_reoriented_reader(tmp_path, shared_data):
    """Mirroring TTA over two folds, a model planned with NibabelIOWithReorient, an input stored i/k-swapped."""
    folder = tiny_nnunet(tmp_path, folds=(0, 1), image_reader_writer="NibabelIOWithReorient",
                         spacing_zyx=(6.0, 3.0, 3.0))
    plain = ct_crop(shared_data)
    volume = ct_crop(shared_data, flip_i=True, swap_ik=True)
    result = run(nnunet.NnUNetBackend(str(folder)), volume, {"use_tta": True, "confidence": False})

    (labels,) = result.layers
    assert labels.shape == volume.array.shape
    np.testing.assert_array_equal(labels, threshold_truth(volume.array, RULES))
    # the same physical answer as on the plainly stored crop
    np.testing.assert_array_equal(labels.transpose(2, 1, 0)[:, :, ::-1], threshold_truth(plain.array, RULES))
    assert result.details["folds"] == ["0", "1"] and result.details["mirroring"]
    assert result.confidences == {}


def test_nnunet_errors_name_the_problem(tmp_path, shared_data):
    folder = tiny_nnunet(tmp_path)
    volume = ct_crop(shared_data)
    backend = nnunet.NnUNetBackend(str(folder))

    with pytest.raises(ModelError, match="no fold 3"):
        backend.run(volume, {"folds": [3]}, lambda *_: None, CancelToken())
    two_channels = ModelInput(np.stack([volume.array, volume.array]), volume.ijk_to_ras, "CT", "two-channel")
    with pytest.raises(ModelError, match=r"needs 1 input channel\(s\) \(CT\).*two-channel has 2"):
        backend.run(two_channels, {}, lambda *_: None, CancelToken())
    mr = ModelInput(volume.array, volume.ijk_to_ras, "MR", "an MR")
    with pytest.raises(ModelError, match="trained on CT, but an MR is MR"):
        backend.run(mr, {}, lambda *_: None, CancelToken())

    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a torch checkpoint")
    with pytest.raises(ModelError, match="cannot be loaded: .*check that the checkpoints are complete"):
        backend.run(volume, {}, lambda *_: None, CancelToken())
    (folder / "fold_0" / "checkpoint_final.pth").rename(folder / "fold_0" / "checkpoint_best.pth")
    assert nnunet.read_results_folder(folder).checkpoint_name == "checkpoint_best.pth"  # the fallback
    (folder / "fold_0" / "checkpoint_best.pth").unlink()
    with pytest.raises(ModelError, match="has no fold_N/checkpoint_final.pth or checkpoint_best.pth"):
        nnunet.entry_from_results_folder(folder)
    (folder / "dataset.json").unlink()
    with pytest.raises(ModelError, match="has no dataset.json"):
        nnunet.entry_from_results_folder(folder)
    with pytest.raises(ModelError, match="not an nnU-Net results folder"):
        nnunet.entry_from_results_folder(tmp_path)


# ----------------------------------------------------------------------------- TotalSegmentator


def test_totalseg_catalog_entries(shared_data):
    entries = dict((entry.id, entry) for entry, _ in totalsegmentator.entries())
    for model_id in ("totalseg-total", "totalseg-total-fast", "totalseg-total_mr", "totalseg-total_mr-fast",
                     "totalseg-body", "totalseg-tissue_types"):
        assert model_id in entries
    catalog = Catalog()
    for entry, backend in totalsegmentator.entries():
        catalog.register(entry, backend)
    assert catalog.backend("totalseg-total_mr-fast").entry == entries["totalseg-total_mr-fast"]

    class_maps = json.loads((shared_data / "totalseg" / "class_map_total_totalmr.json").read_text())
    for model_id, task in (("totalseg-total-fast", "total"), ("totalseg-total_mr", "total_mr")):
        entry = entries[model_id]
        assert {label.value: label.name for label in entry.labels} == {
            int(value): name for value, name in class_maps[task].items()}
        assert all(label.category.scheme == "SCT" and label.type.value for label in entry.labels)
    total = entries["totalseg-total"]
    assert len(total.labels) == 117 and total.modality == "CT" and entries["totalseg-total_mr"].modality == "MR"
    assert total.label(5).name == "liver" and total.label(5).type.value == "10200004"
    assert "licence" in entries["totalseg-tissue_types"].license


def test_totalseg_missing_weights_say_what_and_how(tmp_path, shared_data):
    backend = totalsegmentator.TotalSegmentatorBackend("total", "fast")
    with pytest.raises(ModelError) as caught:
        backend.run(ct_crop(shared_data), {"totalseg_home": str(tmp_path)}, lambda *_: None, CancelToken())
    message = str(caught.value)
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in message
    assert "totalseg_download_weights -t total_fast" in message
    assert "`aiportal models import-weights <zip or folder>`" in message  # outside Slicer: the console script
    assert str(tmp_path / "nnunet" / "results") in message
    assert not list(tmp_path.rglob("Dataset*"))  # nothing was downloaded or created

    licensed = totalsegmentator.TotalSegmentatorBackend("tissue_types")
    with pytest.raises(ModelError, match="needs a TotalSegmentator licence key"):
        licensed.run(ct_crop(shared_data), {"totalseg_home": str(tmp_path)}, lambda *_: None, CancelToken())
    with pytest.raises(InputError, match="not 18"):
        totalsegmentator.set_license("aca_123", tmp_path)
    config_path = totalsegmentator.set_license("aca_1234567890ABCD", tmp_path)
    config = json.loads(config_path.read_text())
    assert config["license_number"] == "aca_1234567890ABCD" and config["send_usage_stats"] is False


def test_totalseg_import_weights(tmp_path):
    source = tmp_path / "downloaded"
    model = write_totalseg_fast_model(source, RULES)
    dataset = model.parent
    archive = tmp_path / f"{dataset.name}.zip"  # laid out like the GitHub release zips
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in dataset.rglob("*"):
            zip_file.write(path, path.relative_to(dataset.parent).as_posix())

    home = tmp_path / "home"
    with pytest.raises(ModelError):
        totalsegmentator.check_weights("total", "fast", home=home)
    placed = totalsegmentator.import_weights(archive, home)
    assert placed == [home / "nnunet" / "results" / dataset.name]
    assert totalsegmentator.check_weights("total", "fast", home=home)
    assert totalsegmentator.import_weights(source, tmp_path / "home2")[0].name == dataset.name  # a folder too

    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as zip_file:
        zip_file.writestr("../Dataset297_x/evil.txt", "x")
    with pytest.raises(InputError, match="unsafe path"):
        totalsegmentator.import_weights(unsafe, home)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no TotalSegmentator weights"):
        totalsegmentator.import_weights(tmp_path / "empty", home)


def test_totalseg_fast_runs_its_own_pipeline_on_a_tiny_model(tmp_path, shared_data):
    class_names = {label.name: label.value for label in totalsegmentator.entry_for(
        totalsegmentator.VARIANTS[1]).labels}
    rules = [(class_names["vertebrae_L1"], ">", 200.5), (class_names["lung_upper_lobe_left"], "<", -500.5)]
    write_totalseg_fast_model(tmp_path, rules)
    (tmp_path / "config.json").write_text(json.dumps({"totalseg_id": "t", "send_usage_stats": True,
                                                      "prediction_counter": 0}))
    image = nib.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    hu = np.asarray(image.dataobj).transpose(2, 1, 0)[:, 20:80, 20:100]
    ijk_to_ras = image.affine.copy()
    ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ np.array([20.0, 20.0, 0.0])
    volume = ModelInput(np.ascontiguousarray(hu[:, :, ::-1]), ijk_to_ras @ np.array(  # stored LAS: not canonical
        [[-1, 0, 0, hu.shape[2] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float), "CT", "crop")

    backend = totalsegmentator.TotalSegmentatorBackend("total", "fast")
    result = run(backend, volume, {"totalseg_home": str(tmp_path), "device": "cpu"})

    (labels,) = result.layers
    truth = threshold_truth(volume.array, rules)
    assert labels.shape == volume.array.shape
    # through TotalSegmentator's RAS reorientation, NIfTI round trip and 3 mm resampling (a no-op here) and back
    np.testing.assert_array_equal(labels, truth)
    assert set(np.unique(labels).tolist()) - {0} == {value for value, _, _ in rules}
    assert {value for value, _, _ in rules} <= {label.value for label in backend.entry.labels}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["send_usage_stats"] is False
    dataset_id, name = TOTALSEG_FAST_DATASET
    (weights_path, digest), = result.details["weights_sha256"].items()
    assert f"Dataset{dataset_id}_{name}" in weights_path
    assert digest == hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- through the product's faces


def test_nnunet_folder_model_from_the_cli_runs_in_a_child_and_lands_on_the_input_grid(tmp_path, shared_data):
    """`aiportal segment --model nnunet:FOLDER`: catalog source, child-process runner, import, export."""
    import os
    import subprocess
    import sys

    folder = tiny_nnunet(tmp_path / "results")
    volume = ct_crop(shared_data)
    # the crop as a file with its exact geometry (nibabel wants (i, j, k) order)
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0).astype(np.int16), volume.ijk_to_ras),
             tmp_path / "crop.nii.gz")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "segment", str(tmp_path / "crop.nii.gz"),
                           "--model", f"nnunet:{folder}", "--param", "use_tta=false", "--formats", "nrrd,json",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))  # (k, j, i)
    truth = threshold_truth(volume.array, RULES)
    np.testing.assert_array_equal(labels, truth)
    segments = json.loads((out / "segments.json").read_text())["segments"]
    assert {s["name"] for s in segments} == {"bone", "left lung"}
    lung = next(s for s in segments if s["name"] == "left lung")
    # "left lung" matched TotalSegmentator's lung_left: SNOMED Lung with the Left modifier
    assert (lung["codes"]["type"]["value"], lung["codes"]["type_modifier"]["value"]) == ("39607008", "7771000")
    assert all(0.5 < s["confidence"] <= 1 for s in segments)
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == f"nnunet:{folder}" and run["provenance"]["device"] == "cpu"
