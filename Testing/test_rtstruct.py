"""DICOM RT Structure Set export (``--formats rtstruct``) and import (``aiportal import-rtstruct``) on the real
20-slice CT with TotalSegmentator's 31-label reference segmentation: dciodvfy, references, round trip Dice,
interchange with rt-utils (an independent writer and reader) both ways, and a push to a real Orthanc."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from orthanc_server import ct_with_uids  # noqa: E402
from test_dicom_sc_estl import totalseg_segmentation  # noqa: E402

from aiportal.cli import main  # noqa: E402
from aiportal.export.exporter import ExportOptions, export_to_folder  # noqa: E402
from aiportal.io.volumes import load_volume  # noqa: E402
from aiportal.rt.contours import fill_contours, mask_contours, stack_contours  # noqa: E402
from aiportal.rt.writer import RT_STRUCTURE_SET_STORAGE  # noqa: E402
from aiportal.segmentation import load_segmentation, segment_ids, segment_mask  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def exported(shared_data, tmp_path_factory):
    """One rtstruct export of the real case, with each segment's mask on the CT grid."""
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    root = tmp_path_factory.mktemp("rtstruct")
    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", root / "ct", patient_id="RT-1",
                          patient_name="Rt^Struct")
    ct = load_volume(series.folder, runtime)
    node = totalseg_segmentation(runtime, shared_data, ct.node)
    result = export_to_folder(node, ct.node, ct.source, root / "out", ExportOptions(formats=("rtstruct",)))
    segmentation = node.GetSegmentation()
    masks = {segmentation.GetSegment(i).GetName(): segment_mask(node, i, ct.node).astype(bool)
             for i in segment_ids(node)}
    yield runtime, series, ct, node, root / "out" / "structures.dcm", result, masks
    runtime.scene.Clear(1)


def test_contours_with_holes_and_islands_fill_back_exactly():
    ring = np.zeros((30, 30), dtype=bool)
    ring[3:27, 3:27] = True
    ring[8:22, 8:22] = False  # a hole ...
    ring[12:18, 12:18] = True  # ... with an island in it
    ring[0, 0] = ring[1, 1] = True  # diagonal neighbours at the image corner
    outlines = mask_contours(ring)
    assert len(outlines) == 4  # outer, hole, island, corner pair
    assert np.array_equal(fill_contours(outlines, ring.shape), ring)
    # every vertex is on a pixel edge: half-way between two pixel centres along a row or a column
    vertices = np.concatenate(outlines)
    assert np.all(np.isclose(np.abs(vertices - np.rint(vertices)).max(axis=1), 0.5))


def test_stacked_contours_are_scikit_image_marching_squares():
    """The vectorised outlines of a whole stack are find_contours' (level 0.5, diagonals connected) slice by
    slice: the same outlines with the same vertices (collinear ones dropped), and they fill back exactly."""
    from scipy import ndimage
    from skimage.measure import find_contours

    rng = np.random.default_rng(7)
    stack = ndimage.binary_opening(rng.random((12, 40, 50)) > 0.55)
    stack[3] = rng.random((40, 50)) > 0.5  # saddles everywhere
    stack[4], stack[5] = True, False  # touching every edge; empty

    def vertex_sets(outlines):
        return sorted(sorted(map(tuple, np.rint(outline * 2).astype(int).tolist())) for outline in outlines)

    for k, outlines in enumerate(stack_contours(stack)):
        theirs = find_contours(np.pad(stack[k].astype(float), 1), 0.5, fully_connected="high")
        steps = [np.diff(np.vstack([o[-2:-1], o]), axis=0) for o in theirs]  # drop straight-on vertices
        turning = [o[:-1][np.abs(s[:-1, 0] * s[1:, 1] - s[:-1, 1] * s[1:, 0]) > 1e-9] - 1 for o, s in
                   zip(theirs, steps, strict=True)]
        assert vertex_sets(outlines) == vertex_sets(turning), k
        assert np.array_equal(fill_contours(outlines, stack[k].shape), stack[k]), k


def test_rtstruct_is_valid_and_references_the_source_series(exported):
    _, series, ct, _, path, result, masks = exported
    assert dciodvfy_errors(path) == [], path
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RT_STRUCTURE_SET_STORAGE and ds.Modality == "RTSTRUCT"
    (file,) = [f for f in result.files if f.kind == "rtstruct"]
    assert file.sop_instance_uid == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == series.study_uid and ds.PatientID == "RT-1"
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == ct.source.headers[0].FrameOfReferenceUID
    (referenced_series,) = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == series.series_uid
    slices = {str(item.ReferencedSOPInstanceUID) for item in referenced_series.ContourImageSequence}
    assert slices == {str(h.SOPInstanceUID) for h in ct.source.headers}
    names = [str(item.ROIName) for item in ds.StructureSetROISequence]
    assert names == list(masks) and len(names) == 31
    liver = names.index("liver")
    observation = ds.RTROIObservationsSequence[liver]
    assert observation.RTROIInterpretedType == "ORGAN"
    assert observation.RTROIIdentificationCodeSequence[0].CodeValue == "10200004"  # SCT Liver
    contours = ds.ROIContourSequence[liver]
    assert len(contours.ROIDisplayColor) == 3
    for contour in contours.ContourSequence:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        assert len(points) == contour.NumberOfContourPoints and np.ptp(points[:, 2]) < 1e-6  # axial plane
        assert str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID) in slices


def test_import_rtstruct_gives_back_every_segment(exported, tmp_path, capsys):
    """`aiportal import-rtstruct FILE --reference SERIES --out seg.nrrd`: Dice >= 0.99 for each of the 31 ROIs."""
    runtime, series, ct, _, path, _, masks = exported
    out = tmp_path / "imported.seg.nrrd"
    assert main(["import-rtstruct", str(path), "--reference", str(series.folder), "--out", str(out)]) == 0
    assert "31 ROIs" in capsys.readouterr().out
    node = load_segmentation(out, runtime)
    segmentation = node.GetSegmentation()
    scores = {}
    for segment_id in segment_ids(node):
        name = segmentation.GetSegment(segment_id).GetName()
        scores[name] = dice(segment_mask(node, segment_id, ct.node).astype(bool), masks[name])
    assert set(scores) == set(masks)
    assert min(scores.values()) >= 0.99, scores
    print("import-rtstruct Dice per ROI:", {name: round(value, 4) for name, value in scores.items()})


def test_import_refuses_what_it_cannot_place(exported, tmp_path, capsys):
    _, series, _, _, path, _, _ = exported
    out = tmp_path / "x.seg.nrrd"
    assert main(["import-rtstruct", str(series.files[0]), "--reference", str(series.folder), "--out", str(out)]) == 1
    assert "is not an RT Structure Set" in capsys.readouterr().err
    moved = pydicom.dcmread(path)
    moved.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = pydicom.uid.generate_uid()
    moved.save_as(tmp_path / "moved.dcm")
    assert main(["import-rtstruct", str(tmp_path / "moved.dcm"), "--reference", str(series.folder),
                 "--out", str(out)]) == 1
    assert "another Frame of Reference" in capsys.readouterr().err
    assert not out.exists()


def _rt_utils_order(rt_series, headers) -> list[int]:
    order = [str(ds.SOPInstanceUID) for ds in rt_series]
    return [order.index(str(h.SOPInstanceUID)) for h in headers]


def test_rt_utils_structure_set_is_read_by_ours_and_ours_by_rt_utils(exported, tmp_path):
    """An independent writer and reader: rt-utils (OpenCV contours through pixel centres, filled with their
    boundary). Ours reads rt-utils' file exactly; rt-utils reads ours as ours plus at most its in-plane
    boundary ring (it rounds our voxel-boundary vertices to pixel centres and fills boundary pixels)."""
    from rt_utils import RTStructBuilder

    from aiportal.io.volumes import ijk_to_ras_matrix
    from aiportal.rt.reader import rasterize_structure_set
    from aiportal.segmentation import shape_kji

    _, series, ct, _, path, _, masks = exported
    builder = RTStructBuilder.create_new(str(series.folder))
    order = _rt_utils_order(builder.series_data, ct.source.headers)
    inverse = np.argsort(order)
    for name, mask in masks.items():  # rt-utils takes (rows, columns, slices) in its own slice order
        builder.add_roi(mask=np.transpose(mask[inverse], (1, 2, 0)), name=name)
    builder.save(str(tmp_path / "rt_utils.dcm"))
    read = rasterize_structure_set(pydicom.dcmread(tmp_path / "rt_utils.dcm"), ijk_to_ras_matrix(ct.node),
                                   shape_kji(ct.node))
    ours_reading = {roi.name: dice(roi.mask, masks[roi.name]) for roi in read.rois}
    assert min(ours_reading.values()) >= 0.99, ours_reading

    theirs = RTStructBuilder.create_from(str(series.folder), str(path))
    ring = np.zeros((3, 3, 3), dtype=bool)
    ring[1] = True  # in-plane 8-neighbourhood
    theirs_reading = {}
    for name, mask in masks.items():
        mask_by_rt_utils = np.transpose(theirs.get_roi_mask_by_name(name), (2, 0, 1))[order].astype(bool)
        assert np.all(mask_by_rt_utils >= mask), f"{name}: rt-utils lost voxels of our contours"
        assert np.all(mask_by_rt_utils <= ndimage.binary_dilation(mask, ring)), f"{name}: beyond one pixel"
        theirs_reading[name] = dice(mask_by_rt_utils, mask)
    print("rt-utils reads ours, Dice:", {name: round(value, 3) for name, value in theirs_reading.items()})


def test_export_push_stores_the_structure_set_on_orthanc(exported, tmp_path, monkeypatch):
    """`aiportal export ... --formats rtstruct --push orthanc`: stored, found by QIDO, read back identical."""
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass
    from orthanc_server import OrthancServer, missing_requirements

    from aiportal.pacs.config import PacsEndpoint, add_endpoint
    from aiportal.segmentation import save_segmentation

    if missing := missing_requirements():
        pytest.fail(f"needs Debian's orthanc and orthanc-dicomweb and gcc; missing {missing}")
    _, series, _, node, _, _, _ = exported
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        monkeypatch.setenv("AIPORTAL_PACS_CONFIG", str(tmp_path / "pacs.json"))
        monkeypatch.setenv("AIPORTAL_TEST_ORTHANC_PASSWORD", server.password)
        add_endpoint(PacsEndpoint(name="orthanc", dicomweb_url=server.dicomweb_url, auth="basic",
                                  username=server.user, password_env="AIPORTAL_TEST_ORTHANC_PASSWORD", timeout_s=20))
        out = tmp_path / "out"
        assert main(["export", str(save_segmentation(node, tmp_path / "totalseg.seg.nrrd")), "--source",
                     str(series.folder), "--formats", "rtstruct", "--push", "orthanc", "--out", str(out)]) == 0
        local = pydicom.dcmread(out / "structures.dcm")
        assert dciodvfy_errors(out / "structures.dcm") == []
        client = DICOMwebClient(server.dicomweb_url,
                                session=create_session_from_user_pass(server.user, server.password))
        found = client.search_for_series(series.study_uid, search_filters={"Modality": "RTSTRUCT"})
        assert [pydicom.Dataset.from_json(s).SeriesInstanceUID for s in found] == [local.SeriesInstanceUID]
        remote = client.retrieve_instance(series.study_uid, str(local.SeriesInstanceUID), str(local.SOPInstanceUID))
        assert remote == local
    finally:
        server.stop()


def test_deidentified_run_gives_a_structure_set_that_reidentifies(exported, shared_data, tmp_path):
    """As a server with --deidentify does: export on de-identified images, then put the identity back; the
    re-identified structure set references the original study, series, frame and images, and stays valid."""
    from aiportal.pacs.deidentify import ReidentificationMap, deidentify_files, reidentify_files

    runtime = exported[0]
    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path / "ct", patient_id="REAL-7",
                          patient_name="Real^Patient")
    mapping = ReidentificationMap()
    deidentify_files(series.files, tmp_path / "clean", mapping)
    ct = load_volume(tmp_path / "clean", runtime)
    node = totalseg_segmentation(runtime, shared_data, ct.node)
    export_to_folder(node, ct.node, ct.source, tmp_path / "out", ExportOptions(formats=("rtstruct",)))
    made = pydicom.dcmread(tmp_path / "out" / "structures.dcm")
    assert made.PatientID != "REAL-7" and made.StudyInstanceUID != series.study_uid
    assert dciodvfy_errors(tmp_path / "out" / "structures.dcm") == []
    (restored,) = reidentify_files([tmp_path / "out" / "structures.dcm"], tmp_path / "back", mapping)
    ds = pydicom.dcmread(restored)
    assert (ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName)) == (series.study_uid, "REAL-7", "Real^Patient")
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    originals = [pydicom.dcmread(path, stop_before_pixels=True) for path in series.files]
    assert frame.FrameOfReferenceUID == originals[0].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == series.study_uid
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    referenced = {str(item.ContourImageSequence[0].ReferencedSOPInstanceUID)
                  for roi in ds.ROIContourSequence for item in roi.ContourSequence}
    assert referenced <= {str(o.SOPInstanceUID) for o in originals}
    assert dciodvfy_errors(restored) == [], restored
    runtime.scene.RemoveNode(node)


def test_tilted_series_is_contoured_on_its_acquired_slices(exported, shared_data, tmp_path):
    """Second real case: the Philips phantom with -18.5° gantry tilt (resampled onto a regular grid on load).
    The contours lie on the acquired slices, valid, and import back onto the loaded grid exactly."""
    from aiportal.models.backend import LabelMapResult
    from aiportal.models.catalog import Code, LabelSpec
    from aiportal.provenance import Provenance, now_iso
    from aiportal.rt.importer import import_rtstruct
    from aiportal.segmentation import import_label_map

    runtime = exported[0]
    ct = load_volume(shared_data / "dcm_qa_ct" / "Philips-tilt-minus18.5", runtime)
    assert ct.source.regular_grid is not None
    from aiportal.io.volumes import array_from_volume

    bone = (array_from_volume(ct.node) > 300).astype(np.uint8)  # the phantom's dense parts
    label = LabelSpec(1, "dense", Code("SCT", "91723000", "Anatomical Structure"), Code("SCT", "272673000", "Bone"))
    provenance = Provenance(model_id="threshold", model_version="1", weights_sha256="none", parameters={},
                            device="cpu", started=now_iso(), finished=now_iso())
    node = import_label_map(LabelMapResult(layers=[bone]), [label], ct.node, provenance, runtime=runtime)
    export_to_folder(node, ct.node, ct.source, tmp_path, ExportOptions(formats=("rtstruct",)))
    assert dciodvfy_errors(tmp_path / "structures.dcm") == []
    ds = pydicom.dcmread(tmp_path / "structures.dcm")
    acquired = {str(h.SOPInstanceUID): h for h in ct.source.headers}
    for contour in ds.ROIContourSequence[0].ContourSequence:  # each in the plane of the slice it references
        header = acquired[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        normal = np.cross(*np.asarray(header.ImageOrientationPatient, dtype=float).reshape(2, 3))
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        offsets = (points - np.asarray(header.ImagePositionPatient, dtype=float)) @ normal
        assert np.abs(offsets).max() < 1e-3
    imported = import_rtstruct(tmp_path / "structures.dcm", ct.node,
                               frame_of_reference_uid=str(ct.source.headers[0].FrameOfReferenceUID))
    (roi,) = imported.structure_set.rois
    assert dice(roi.mask, bone > 0) >= 0.99
    for created in (node, imported.segmentation_node):
        runtime.scene.RemoveNode(created)


def test_encoder_loads_without_the_slicer_core():
    """The plain encoder (what the bench times against rt-utils) must not pull in VTK or the Slicer core."""
    import subprocess

    probe = ("import sys, aiportal.rt.encode; "
             "print(sorted(m for m in ('vtk', 'slicer', 'slicer_core', 'vtkmodules') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
