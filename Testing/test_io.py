"""The input layer on real data: DICOM series, NIfTI/NRRD, volume nodes and the subject hierarchy.

Reference readers are independent of ours: SimpleITK (GDCM) for DICOM geometry and voxels, and
Slicer's own archetype reader for files we write.
"""

from __future__ import annotations

import math
import shutil
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import vtk
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid

from aiportal.errors import CancelledError, InputError
from aiportal.io.dicom_series import list_series, read_dicom_series
from aiportal.io.hierarchy import place_in_study
from aiportal.io.volumes import (
    array_from_volume,
    ijk_to_ras_matrix,
    load_volume,
    save_volume,
    volume_node_from_array,
)
from aiportal.progress import CancelToken

EXAMPLE_CT = "totalseg/example_ct_dicom"  # 20 slices, JPEG 2000 lossless, empty UIDs
CT_3SLICE = "dcmqi/data/segmentations/ct-3slice"
MONAI_CT = "monai-ct-dicom/CT_DICOM"  # 4 slices, non-uniform spacing


def copy_files(files, folder: Path, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f.name for f in files]
    return [Path(shutil.copy(f, folder / name)) for f, name in zip(files, names, strict=True)]


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def sitk_reference(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (z, y, x) and IJK→RAS of SimpleITK's (GDCM) reading of a DICOM series folder."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps


def sh_children(shnode, parent: int) -> list[int]:
    ids = vtk.vtkIdList()
    shnode.GetItemChildren(parent, ids)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]


# ---------------------------------------------------------------------------------------------
# Real series against SimpleITK


def test_example_ct_matches_simpleitk(shared_data, runtime):
    folder = shared_data / EXAMPLE_CT
    expected_array, expected_matrix = sitk_reference(folder)

    image = read_dicom_series(folder)
    assert image.array.dtype == np.int16
    assert image.array.shape == (20, 512, 512)
    np.testing.assert_array_equal(image.array, expected_array)
    np.testing.assert_allclose(image.ijk_to_ras, expected_matrix, atol=1e-4)
    assert image.array.min() >= -1024  # HU: RescaleIntercept -1024 applied

    loaded = load_volume(folder, runtime)
    np.testing.assert_array_equal(array_from_volume(loaded.node), expected_array)
    np.testing.assert_allclose(ijk_to_ras_matrix(loaded.node), expected_matrix, atol=1e-4)
    assert loaded.node.GetName() == "CT Body 3.0"
    assert any("empty UIDs" in w for w in loaded.warnings)  # anonymised series is reported
    # Slices along the normal (z ascending in LPS = RAS superior): InstanceNumber runs the other way.
    z = [float(h.ImagePositionPatient[2]) for h in loaded.source.headers]
    assert z == sorted(z)
    assert loaded.source.files[0].name.endswith("016592")


def test_ct_3slice_matches_simpleitk_and_sets_dicom_references(shared_data, runtime):
    folder = shared_data / CT_3SLICE
    expected_array, expected_matrix = sitk_reference(folder)
    loaded = load_volume(folder, runtime)
    np.testing.assert_array_equal(array_from_volume(loaded.node), expected_array)
    np.testing.assert_allclose(ijk_to_ras_matrix(loaded.node), expected_matrix, atol=1e-4)
    assert loaded.warnings == []

    source = loaded.source
    assert [f.name for f in source.files] == ["03.dcm", "02.dcm", "01.dcm"]  # by position, not name
    assert loaded.node.GetAttribute("DICOM.instanceUIDs") == " ".join(source.sop_instance_uids)
    assert loaded.node.GetAttribute("DICOM.SeriesInstanceUID") == source.series_uid
    assert source.patient_id == "99000" and source.modality == "CT"
    assert all("PixelData" not in h for h in source.headers)

    shnode = runtime.shnode
    node_item = shnode.GetItemByDataNode(loaded.node)
    study = shnode.GetItemParent(node_item)
    patient = shnode.GetItemParent(study)
    assert shnode.GetItemUID(node_item, "DICOM") == source.series_uid
    assert shnode.GetItemUID(study, "DICOM") == source.study_uid
    assert shnode.GetItemUID(patient, "DICOM") == "99000"
    assert shnode.GetItemLevel(study) == "Study" and shnode.GetItemLevel(patient) == "Patient"
    assert shnode.GetItemName(patient) == "JANCT000"
    display = loaded.node.GetDisplayNode()  # the window the scanner stored, as Slicer's DICOM loader
    assert (display.GetWindow(), display.GetLevel()) == (
        float(source.headers[0].WindowWidth),
        float(source.headers[0].WindowCenter),
    )


def test_single_file_loads_its_whole_series(shared_data, runtime):
    folder = shared_data / EXAMPLE_CT
    one_file = dicom_files(folder)[7]
    loaded = load_volume(one_file, runtime)
    assert array_from_volume(loaded.node).shape == (20, 512, 512)
    assert loaded.path == one_file


# ---------------------------------------------------------------------------------------------
# NIfTI / NRRD through Slicer's reader


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha"])
def test_written_volume_reloads_identically(shared_data, runtime, tmp_path, suffix):
    dicom = load_volume(shared_data / EXAMPLE_CT, runtime)
    path = save_volume(dicom.node, tmp_path / f"ct{suffix}")
    reloaded = load_volume(path, runtime)
    assert reloaded.source is None
    np.testing.assert_array_equal(array_from_volume(reloaded.node), array_from_volume(dicom.node))
    np.testing.assert_allclose(ijk_to_ras_matrix(reloaded.node), ijk_to_ras_matrix(dicom.node), atol=1e-4)
    study = runtime.shnode.GetItemParent(runtime.shnode.GetItemByDataNode(reloaded.node))
    assert runtime.shnode.GetItemName(study) == "ct"


def test_nifti_geometry_is_slicers(shared_data, runtime):
    """A real (big-endian) NIfTI: load_volume gives exactly what Slicer's storage node reads."""
    import slicer

    path = shared_data / "monai-ct-dicom" / "anatomical.nii"
    loaded = load_volume(path, runtime)
    reference = runtime.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(reference)
    np.testing.assert_array_equal(array_from_volume(loaded.node), array_from_volume(reference))
    np.testing.assert_array_equal(ijk_to_ras_matrix(loaded.node), ijk_to_ras_matrix(reference))
    assert loaded.node.GetName() == "anatomical"


def test_damaged_volume_file_is_an_input_error(runtime, tmp_path):
    path = tmp_path / "broken.nrrd"
    path.write_text("not a nrrd header")
    with pytest.raises(InputError, match="broken.nrrd") as error:
        load_volume(path, runtime)
    assert str(path) in str(error.value)
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_node_from_array_round_trip(runtime):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 7, 9)).astype(np.float32)
    angle = math.radians(20)
    matrix = np.array(
        [
            [0.8 * math.cos(angle), -0.9 * math.sin(angle), 0, 10],
            [0.8 * math.sin(angle), 0.9 * math.cos(angle), 0, -20],
            [0, 0, 2.5, 30],
            [0, 0, 0, 1],
        ]
    )
    node = volume_node_from_array(runtime.scene, array, matrix, "oblique")
    np.testing.assert_array_equal(array_from_volume(node), array)
    np.testing.assert_allclose(ijk_to_ras_matrix(node), matrix, atol=1e-12)
    assert node.GetDisplayNode() is not None
    label = volume_node_from_array(runtime.scene, array > 0, matrix, "mask", "vtkMRMLLabelMapVolumeNode")
    assert label.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(array_from_volume(label), (array > 0).astype(np.uint8))


def test_place_in_study_reuses_items(shared_data, runtime):
    first = load_volume(shared_data / CT_3SLICE, runtime)
    second = volume_node_from_array(runtime.scene, np.zeros((2, 2, 2), np.int16), np.eye(4), "derived")
    shnode = runtime.shnode
    study = place_in_study(runtime, second, first.source, "unused")
    assert study == shnode.GetItemParent(shnode.GetItemByDataNode(first.node))
    assert len(sh_children(shnode, shnode.GetSceneItemID())) == 1  # one patient, nothing else
    anonymous = load_volume(shared_data / EXAMPLE_CT, runtime)
    anonymous_study = shnode.GetItemParent(shnode.GetItemByDataNode(anonymous.node))
    assert shnode.GetItemName(anonymous_study) == "Study 2022-12-08"
    assert shnode.GetItemName(shnode.GetItemParent(anonymous_study)) == "Anonymous"
    again = load_volume(shared_data / EXAMPLE_CT, runtime)  # same anonymous study: reused by name
    assert shnode.GetItemParent(shnode.GetItemByDataNode(again.node)) == anonymous_study


# ---------------------------------------------------------------------------------------------
# Grouping, selection, sorting


def test_two_series_are_refused_then_selected(shared_data, tmp_path):
    copy_files(dicom_files(shared_data / CT_3SLICE), tmp_path / "a")
    copy_files(dicom_files(shared_data / MONAI_CT), tmp_path / "b" / "deeper")
    (tmp_path / "notes.txt").write_text("not DICOM")
    ct3 = read_dicom_series(shared_data / CT_3SLICE).source.series_uid
    monai = read_dicom_series(shared_data / MONAI_CT).source.series_uid

    with pytest.raises(InputError) as error:
        read_dicom_series(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "--series" in message
    assert ct3 in message and monai in message and "3 files" in message and "4 files" in message

    assert read_dicom_series(tmp_path, series_uid=ct3).array.shape == (3, 512, 512)
    assert read_dicom_series(tmp_path, series_uid=monai, geometry="acquired").array.shape == (4, 16, 16)
    with pytest.raises(InputError, match="1.2.3.4 is not in") as error:
        read_dicom_series(tmp_path, series_uid="1.2.3.4")
    assert ct3 in str(error.value) and monai in str(error.value)


def test_dicomdir_folder_lists_its_series(shared_data):
    folder = shared_data / "pydicom" / "dicomdirtests"
    summaries = list_series(folder)
    assert len(summaries) == 6  # the DICOMDIR files are skipped, 6 series in 3 patients
    assert sum(s.number_of_files for s in summaries) == 18
    with pytest.raises(InputError, match="6 image series"):
        read_dicom_series(folder)
    brain = next(s for s in summaries if s.description == "Routine Brain")
    assert read_dicom_series(folder, series_uid=brain.series_uid, geometry="acquired").array.shape == (4, 16, 16)
    pilot = next(s for s in summaries if s.description == "T/S/C RF FAST PILOT")
    with pytest.raises(InputError, match="mixes image orientations"):  # tri-plane localizer
        read_dicom_series(folder, series_uid=pilot.series_uid)


def test_series_without_uids_is_grouped_by_geometry(shared_data):
    folder = shared_data / EXAMPLE_CT
    (summary,) = list_series(folder)
    assert summary.series_uid == "" and summary.key.startswith("nouid-")
    assert (summary.modality, summary.number_of_files) == ("CT", 20)
    assert read_dicom_series(folder, series_uid=summary.key).source.key == summary.key


def test_shuffled_file_names_give_the_same_volume(shared_data, tmp_path):
    files = dicom_files(shared_data / EXAMPLE_CT)
    rng = np.random.default_rng(1)
    names = [f"{uuid.UUID(int=int(rng.integers(2**62))).hex}.dcm" for _ in files]
    copy_files(files[::2], tmp_path / "x", names[::2])
    copy_files(files[1::2], tmp_path / "y" / "z", names[1::2])
    original = read_dicom_series(shared_data / EXAMPLE_CT)
    shuffled = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(shuffled.array, original.array)
    np.testing.assert_array_equal(shuffled.ijk_to_ras, original.ijk_to_ras)


# ---------------------------------------------------------------------------------------------
# Geometry problems


def test_non_uniform_spacing_is_reported(shared_data):
    """Kept as acquired on request, at the mean step and said so (default: a regular grid, see
    test_dicom_geometry.py)."""
    image = read_dicom_series(shared_data / MONAI_CT, geometry="acquired")
    assert any(w.startswith("Missing slices: about 161 slice(s)") for w in image.warnings)
    spacing = next(w for w in image.warnings if w.startswith("Acquired geometry"))
    assert "stacked at the mean step" in spacing and "wrong" in spacing
    assert image.ijk_to_ras[2, 2] == pytest.approx((105.519997 + 99.480003) / 3)


def test_missing_slice_is_reported(shared_data, tmp_path):
    files = dicom_files(shared_data / EXAMPLE_CT)
    copy_files(files[:9] + files[10:], tmp_path)
    image = read_dicom_series(tmp_path)
    assert any("about 1 slice(s) missing in 1 gap(s)" in w for w in image.warnings)
    assert image.array.shape[0] == 20  # the gap is filled on the regular grid
    assert any(w.startswith("1 of the 20 slices of the regular grid lie in gaps") for w in image.warnings)
    assert read_dicom_series(tmp_path, geometry="acquired").array.shape[0] == 19


def test_gantry_tilt_is_reported_with_its_angle(shared_data, tmp_path):
    tilt = 15.0
    for path in dicom_files(shared_data / EXAMPLE_CT):
        dataset = pydicom.dcmread(path)
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        # Tilted gantry: each slice shifts in-plane (along y) in proportion to its z offset.
        dataset.ImagePositionPatient = [x, y + math.tan(math.radians(tilt)) * (z + 766.5), z]
        dataset.save_as(tmp_path / path.name)
    image = read_dicom_series(tmp_path)
    (warning,) = [w for w in image.warnings if "tilted" in w]
    assert warning.startswith(f"Resampled from 20 tilted slices at {tilt:.1f}° onto a regular grid")
    original = read_dicom_series(shared_data / EXAMPLE_CT)
    assert not any("tilt" in w for w in original.warnings)
    shift_rows = math.ceil(math.tan(math.radians(tilt)) * 38.0 / 0.9765625)  # 19 steps of 2 mm
    assert image.array.shape == (20, 512 + shift_rows, 512)
    np.testing.assert_array_equal(read_dicom_series(tmp_path, geometry="acquired").array, original.array)


def test_duplicate_positions_are_an_error(shared_data, tmp_path):
    files = copy_files(dicom_files(shared_data / CT_3SLICE), tmp_path)
    duplicate = pydicom.dcmread(files[1])
    duplicate.SOPInstanceUID = generate_uid()
    duplicate.save_as(tmp_path / "copy_of_02.dcm")
    with pytest.raises(InputError, match="duplicate slice position") as error:
        read_dicom_series(tmp_path)
    assert "02.dcm" in str(error.value) and "copy_of_02.dcm" in str(error.value)


def test_mixed_image_sizes_are_an_error(shared_data, tmp_path):
    files = copy_files(dicom_files(shared_data / CT_3SLICE), tmp_path)
    small = pydicom.dcmread(files[0])
    small.PixelData = small.pixel_array[:256, :256].tobytes()
    small.Rows = small.Columns = 256
    small.save_as(files[0])
    with pytest.raises(InputError, match="mixes image sizes") as error:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Pixel decoding


@pytest.mark.parametrize("syntax", [JPEGLSLossless, RLELossless], ids=["jpeg-ls", "rle"])
def test_compressed_transfer_syntaxes_decode_identically(shared_data, tmp_path, syntax):
    for path in dicom_files(shared_data / CT_3SLICE):
        dataset = pydicom.dcmread(path)
        dataset.compress(syntax)
        dataset.save_as(tmp_path / path.name)
    assert pydicom.dcmread(tmp_path / "01.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, read_dicom_series(shared_data / CT_3SLICE).array)


def test_non_integral_rescale_gives_float(shared_data, tmp_path):
    for path in dicom_files(shared_data / CT_3SLICE):
        dataset = pydicom.dcmread(path)
        dataset.RescaleSlope = "0.5"
        dataset.save_as(tmp_path / path.name)
    image = read_dicom_series(tmp_path)
    raw = np.stack([pydicom.dcmread(tmp_path / n).pixel_array for n in ("03.dcm", "02.dcm", "01.dcm")])
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, raw.astype(np.float32) * 0.5 - 1024)


def test_progress_and_cancel(shared_data):
    reported: list[float] = []
    read_dicom_series(shared_data / CT_3SLICE, progress=lambda f, _stage: reported.append(f))
    assert reported == sorted(reported) and reported[-1] == 1.0
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        read_dicom_series(shared_data / CT_3SLICE, cancel=token)


# ---------------------------------------------------------------------------------------------
# Bad input: every message names the input


def test_truncated_pixel_data_names_the_file(shared_data, tmp_path):
    files = copy_files(dicom_files(shared_data / EXAMPLE_CT)[:4], tmp_path)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as error:
        read_dicom_series(tmp_path)
    assert str(files[2]) in str(error.value) and str(tmp_path) in str(error.value)


@pytest.mark.parametrize("keep", [0.5, 0.002], ids=["in-pixels", "in-header"])
def test_truncated_uncompressed_file_names_the_file(shared_data, tmp_path, keep):
    files = copy_files(dicom_files(shared_data / CT_3SLICE), tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError) as error:
        read_dicom_series(tmp_path)
    assert str(files[1]) in str(error.value)


def test_missing_path(runtime, tmp_path):
    missing = tmp_path / "nowhere"
    for call in (lambda: read_dicom_series(missing), lambda: load_volume(missing, runtime)):
        with pytest.raises(InputError, match="does not exist") as error:
            call()
        assert str(missing) in str(error.value)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="empty") as error:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_folder_of_text_files(runtime, tmp_path):
    for name in ("readme.txt", "notes.md", "DICOMDIR"):
        (tmp_path / name).write_text("hello")
    with pytest.raises(InputError, match="no DICOM files") as error:
        load_volume(tmp_path, runtime)
    assert str(tmp_path) in str(error.value)


def test_unsupported_file(runtime, tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match="neither a DICOM file nor a volume file") as error:
        load_volume(path, runtime)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "relative", ["dcmqi/data/sr-example/sr.dcm", "pydicom/liver_1frame.dcm", "dcmqi/data/sr-example"]
)
def test_objects_without_an_image_volume(shared_data, runtime, relative):
    path = shared_data / relative
    with pytest.raises(InputError) as error:
        load_volume(path, runtime)
    assert str(path) in str(error.value)
    assert "image" in error.value.fix


def test_image_series_next_to_its_sr_and_seg_is_chosen(shared_data, tmp_path):
    copy_files(dicom_files(shared_data / CT_3SLICE), tmp_path)
    shutil.copy(shared_data / "dcmqi/data/segmentations/liver.dcm", tmp_path)
    shutil.copy(shared_data / "dcmqi/data/sr-example/sr.dcm", tmp_path)
    assert read_dicom_series(tmp_path).array.shape == (3, 512, 512)
    assert [s.is_image for s in list_series(tmp_path)] == [True, False, False]


def test_enhanced_multiframe_equals_its_single_frame_series(shared_data, runtime):
    folder = shared_data / "dcmqi/data/segmentations/24x38x3"
    single = read_dicom_series(folder / "image")
    expected_array, expected_matrix = sitk_reference(folder / "image")
    multi = load_volume(folder / "multiframe" / "mf.dcm", runtime)
    np.testing.assert_array_equal(array_from_volume(multi.node), single.array)
    np.testing.assert_array_equal(single.array, expected_array)
    np.testing.assert_allclose(ijk_to_ras_matrix(multi.node), expected_matrix, atol=1e-4)
    assert multi.source.frames == [0, 1, 2]
    assert multi.node.GetAttribute("DICOM.instanceUIDs") == multi.source.headers[0].SOPInstanceUID


def test_source_from_files_sorts_like_the_series_reader(shared_data):
    from aiportal.io.dicom_series import source_from_files

    folder = shared_data / "dcmqi/data/segmentations/ct-3slice"
    expected = read_dicom_series(folder).source
    files = sorted(folder.iterdir(), reverse=True)
    source = source_from_files(files)
    assert source.sop_instance_uids == expected.sop_instance_uids
    assert source.files == expected.files and source.study_uid == expected.study_uid
    with pytest.raises(InputError, match="missing or not DICOM"):
        source_from_files([*files, folder / "nope.dcm"])


def test_a_truncated_nifti_is_refused_not_filled_with_zeros(shared_data, runtime, tmp_path):
    """ITK reads a cut-short .nii.gz / .nii as zeros; the loader must name the file and the fix (issue 18)."""
    import gzip

    source = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    whole = source.read_bytes()
    raw = gzip.decompress(whole)
    cases = {"cut.nii.gz": whole[: len(whole) // 2],  # a half-copied download
             "short-inside.nii.gz": gzip.compress(raw[: len(raw) * 3 // 4]),  # a complete gzip of a cut .nii
             "cut.nii": raw[: len(raw) // 2]}
    before = runtime.scene.GetNumberOfNodes()
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(InputError, match="truncated") as caught:
            load_volume(path, runtime)
        assert str(path) in caught.value.message and "again" in caught.value.fix and "\n" not in str(caught.value)
    assert runtime.scene.GetNumberOfNodes() == before  # nothing half-loaded left in the scene
    (tmp_path / "whole.nii").write_bytes(raw)
    assert load_volume(tmp_path / "whole.nii", runtime).node.GetImageData().GetDimensions() is not None
