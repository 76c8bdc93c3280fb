"""Key images as DICOM Secondary Capture (``sc``) and 3D models as DICOM Encapsulated STL (``estl``), on the
real 20-slice CT with TotalSegmentator's 31-label reference segmentation: dciodvfy, pixels equal to the PNG,
the SR's image library, the encapsulated meshes read back closed with the segment's volume, and
re-identification of both after a de-identified run."""

from __future__ import annotations

import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from orthanc_server import ct_with_uids  # noqa: E402

from aiportal.export.dicom_estl import ENCAPSULATED_STL_STORAGE, encapsulated_bytes, stl_mesh  # noqa: E402
from aiportal.export.exporter import ExportOptions, dicom_object_names, export_to_folder  # noqa: E402
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, nearest_on_grid  # noqa: E402
from aiportal.models.backend import LabelMapResult  # noqa: E402
from aiportal.models.totalseg_labels import read_class_map_json, totalsegmentator_labels  # noqa: E402
from aiportal.provenance import Provenance, now_iso  # noqa: E402
from aiportal.segmentation import import_label_map, segment_ids, segment_voxel_counts  # noqa: E402

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def totalseg_segmentation(runtime, shared_data: Path, ct_node):
    """TotalSegmentator's reference labels of the series, coded from its SNOMED table, on the CT's grid."""
    folder = shared_data / "totalseg"
    reference = nibabel_load(folder / "example_seg_dicom.nii.gz")
    labels, _ = nearest_on_grid(np.asarray(reference.dataobj).transpose(2, 1, 0).astype(np.int16), reference.affine,
                                array_from_volume(ct_node).shape, ijk_to_ras_matrix(ct_node))
    table = totalsegmentator_labels("total", class_map=read_class_map_json(folder / "class_map_total_totalmr.json",
                                                                           "total"),
                                    snomed_csv=folder / "totalsegmentator_snomed_mapping.csv")
    provenance = Provenance(model_id="totalseg-total", model_version="2.18.0", weights_sha256="none", parameters={},
                            device="cpu", started=now_iso(), finished=now_iso())
    return import_label_map(LabelMapResult(layers=[labels.astype(np.uint8)]), table, ct_node, provenance,
                            runtime=runtime)


def nibabel_load(path: Path):
    import nibabel

    return nibabel.load(path)


@pytest.fixture(scope="module")
def exported(shared_data, tmp_path_factory):
    """One export of seg,sr,sc,estl of the real case (module scope: it is the slow part)."""
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    root = tmp_path_factory.mktemp("sc_estl")
    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", root / "ct", patient_id="SC-ESTL-1",
                          patient_name="Key^Images")
    ct = load_volume(series.folder, runtime)
    node = totalseg_segmentation(runtime, shared_data, ct.node)
    out = root / "out"
    result = export_to_folder(node, ct.node, ct.source, out, ExportOptions(formats=("seg", "sr", "sc", "estl")))
    yield runtime, series, ct, node, out, result
    runtime.scene.Clear(1)


def test_key_images_are_valid_secondary_captures_with_the_png_pixels(exported):
    _, series, ct, node, out, result = exported
    scs = [file for file in result.files if file.kind == "sc"]
    pngs = [file for file in result.files if file.kind == "png"]
    assert len(scs) == len(pngs) >= 10  # one per measured lesion (organs here)
    source_uids = {str(ds.SOPInstanceUID) for ds in ct.source.headers}
    for file in scs:
        path = out / file.name
        assert dciodvfy_errors(path) == [], path
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.SOPInstanceUID == file.sop_instance_uid
        assert (ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName)) == (series.study_uid, "SC-ESTL-1",
                                                                            "Key^Images")
        assert ds.PhotometricInterpretation == "RGB" and ds.BurnedInAnnotation == "NO"
        png = np.asarray(Image.open(path.with_suffix(".png")))
        assert ds.pixel_array.shape == png.shape and np.array_equal(ds.pixel_array, png)  # the PNG, unchanged
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in source_uids  # the acquired slice shown
        assert list(ds.PatientOrientation) == ["L", "P"]  # axial, radiological: patient's left on the right
    assert len({pydicom.dcmread(out / f.name, stop_before_pixels=True).SeriesInstanceUID for f in scs}) == 1


def test_the_sr_lists_the_key_images_and_their_axes(exported):
    _, _, _, _, out, result = exported
    sr_path = out / "measurements.dcm"
    assert dciodvfy_errors(sr_path) == []
    sc_uids = {file.sop_instance_uid for file in result.files if file.kind == "sc"}
    sr = pydicom.dcmread(sr_path)
    library = next(item for item in sr.ContentSequence
                   if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library")
    listed = {image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for group in library.ContentSequence for image in group.ContentSequence if image.ValueType == "IMAGE"}
    assert listed == sc_uids
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series_item in study.ReferencedSeriesSequence for ref in series_item.ReferencedSOPSequence}
    assert sc_uids <= evidence
    report = hd.sr.srread(sr_path)
    axes_groups = [g for g in report.content.get_image_measurement_groups()
                   if g.get_measurements(name=pydicom.sr.codedict.codes.SCT.LongAxis)]
    assert len(axes_groups) == len(sc_uids)  # each key image's lesion has its RECIST axes in the report


def test_models_are_valid_encapsulated_stl_with_the_segment_volumes(exported):
    _, series, ct, node, out, result = exported
    models = [file for file in result.files if file.kind == "estl"]
    segmentation = node.GetSegmentation()
    counts = segment_voxel_counts(node)
    voxel_mm3 = abs(np.linalg.det(ijk_to_ras_matrix(ct.node)[:3, :3]))
    names = [segmentation.GetSegment(s).GetName() for s in segment_ids(node) if counts.get(s)]
    assert len(models) == len(names) >= 20
    seg = pydicom.dcmread(out / "segmentation.dcm", stop_before_pixels=True)
    lps_corners = _volume_bounds_lps(ct.node)
    for file, name, segment_id in zip(models, names, [s for s in segment_ids(node) if counts.get(s)], strict=True):
        path = out / file.name
        assert dciodvfy_errors(path) == [], path
        ds = pydicom.dcmread(path)
        assert (ds.SOPClassUID, ds.Modality, ds.MIMETypeOfEncapsulatedDocument) == (ENCAPSULATED_STL_STORAGE, "M3D",
                                                                                     "model/stl")
        assert ds.DocumentTitle == name and ds.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
        frame_of_reference = ct.source.headers[0].FrameOfReferenceUID
        assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (series.study_uid, frame_of_reference)
        assert ds.Manufacturer and ds.ManufacturerModelName and ds.SoftwareVersions and ds.DeviceSerialNumber
        assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert {item.SeriesInstanceUID for item in ds.ReferencedSeriesSequence} == {series.series_uid,
                                                                                   seg.SeriesInstanceUID}
        mesh = stl_mesh(encapsulated_bytes(ds))
        assert mesh.closed, name
        # volume-true: the surface encloses the segment's voxel volume (float32 STL: well within 0.2 %)
        assert mesh.volume_mm3 == pytest.approx(counts[segment_id] * voxel_mm3, rel=2e-3), name
        assert (mesh.points.min(0) >= lps_corners[0] - 3).all() and (mesh.points.max(0) <= lps_corners[1] + 3).all()


def _volume_bounds_lps(volume_node) -> tuple[np.ndarray, np.ndarray]:
    dims = np.array(volume_node.GetImageData().GetDimensions()) - 1
    corners = np.array([[i, j, k, 1] for i in (0, dims[0]) for j in (0, dims[1]) for k in (0, dims[2])], float)
    lps = (corners @ ijk_to_ras_matrix(volume_node).T)[:, :3] * np.array([-1, -1, 1])
    return lps.min(0), lps.max(0)


def test_every_dicom_object_is_chosen_for_a_push(exported):
    _, _, _, _, out, result = exported
    names = dicom_object_names(result.files)
    kinds = {file.kind for file in result.files if file.name in names}
    assert kinds == {"seg", "sr", "sc", "estl"}
    assert all(pydicom.dcmread(out / name, stop_before_pixels=True).SOPInstanceUID for name in names)
    assert not any(name.endswith(".png") for name in names)


def test_deidentified_run_gives_key_images_and_models_that_reidentify(shared_data, runtime, tmp_path):
    """As a server with --deidentify does: export on de-identified images, then put the identity back."""
    from aiportal.pacs.deidentify import ReidentificationMap, deidentify_files, reidentify_files

    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path / "ct", patient_id="REAL-42",
                          patient_name="Real^Patient")
    mapping = ReidentificationMap()
    clean = deidentify_files(series.files, tmp_path / "clean", mapping)
    ct = load_volume(tmp_path / "clean", runtime)
    node = totalseg_segmentation(runtime, shared_data, ct.node)
    keep = {"liver", "spleen"}
    for segment_id in segment_ids(node):
        if node.GetSegmentation().GetSegment(segment_id).GetName() not in keep:
            node.GetSegmentation().RemoveSegment(segment_id)
    result = export_to_folder(node, ct.node, ct.source, tmp_path / "out", ExportOptions(formats=("sc", "estl")))
    names = dicom_object_names(result.files)
    assert {f.kind for f in result.files if f.name in names} == {"seg", "sc", "estl"}
    assert pydicom.dcmread(tmp_path / "out" / names[-1]).PatientID != "REAL-42"  # made on the pseudonym
    restored = reidentify_files([tmp_path / "out" / name for name in names], tmp_path / "back", mapping)
    assert len({path.name for path in restored}) == len(names)  # key_images/liver.dcm and models/liver.dcm both kept
    original_images = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in series.files}
    assert len(clean) == len(original_images)
    for path in restored:
        ds = pydicom.dcmread(path)
        assert (ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName)) == (series.study_uid, "REAL-42", "Real^Patient")
        referenced = {str(item.ReferencedSOPInstanceUID) for item in [*ds.get("SourceImageSequence", []),
                                                                      *ds.get("SourceInstanceSequence", [])]}
        assert referenced and (referenced - original_images) <= {str(ds.get("SOPInstanceUID"))} | _seg_uids(restored)
        if ds.Modality != "SEG":  # (the SEG keeps the de-identified source's empty ReferencedStudySequence)
            assert dciodvfy_errors(path) == [], path


def _seg_uids(paths) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
            if ds.Modality == "SEG"}


def test_segment_from_pacs_pushes_key_images_and_models_verified_and_audited(exported, shared_data, tmp_path,
                                                                              monkeypatch):
    """`aiportal segment --pacs NAME --study UID --formats seg,sr,rtstruct,sc,estl,stl --push` against a real Orthanc:
    every DICOM object stored, found by QIDO, retrieved identical, and named with its UIDs in the audit trail; then
    `aiportal export --formats seg --push` of the 31-label segmentation stores its SEG."""
    import json
    import os

    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass
    from orthanc_server import OrthancServer, missing_requirements

    from aiportal.cli import main
    from aiportal.pacs.config import DimsePeer, PacsEndpoint, add_endpoint
    from aiportal.pacs.workflow import push_files

    if missing := missing_requirements():
        pytest.fail(f"needs Debian's orthanc and orthanc-dicomweb and gcc; missing {missing}")
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        monkeypatch.setenv("AIPORTAL_PACS_CONFIG", str(tmp_path / "pacs.json"))
        monkeypatch.setenv("AIPORTAL_TEST_ORTHANC_PASSWORD", server.password)
        peer = DimsePeer(server.ae_title, "127.0.0.1", server.dicom_port, server.client_ae_title, server.client_port,
                         listen_host="127.0.0.1")
        endpoint = PacsEndpoint(name="orthanc", dicomweb_url=server.dicomweb_url, auth="basic", username=server.user,
                                password_env="AIPORTAL_TEST_ORTHANC_PASSWORD", timeout_s=20, dimse=peer)
        add_endpoint(endpoint)
        series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path / "ct")
        server.upload(series.files)
        out = tmp_path / "out"
        assert main(["segment", "--pacs", "orthanc", "--study", series.study_uid, "--push", "--protocol", "dicomweb",
                     "--formats", "seg,sr,rtstruct,sc,estl,stl", "--out", str(out)]) == 0
        assert list(out.rglob("*.stl")), "the STL files (for 3D printing; not pushed: a PACS stores DICOM only)"
        local = [pydicom.dcmread(path) for path in sorted(out.rglob("*.dcm"))]
        modalities = sorted({ds.Modality for ds in local})
        assert modalities == ["M3D", "OT", "RTSTRUCT", "SEG", "SR"]
        client = DICOMwebClient(server.dicomweb_url,
                                session=create_session_from_user_pass(server.user, server.password))
        for modality in ("OT", "M3D", "RTSTRUCT"):
            found = client.search_for_series(series.study_uid, search_filters={"Modality": modality})
            assert len(found) == 1, modality
        for ds in local:
            assert str(ds.StudyInstanceUID) == series.study_uid
            remote = client.retrieve_instance(series.study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            assert remote == ds, f"{ds.Modality} {ds.SOPInstanceUID} read back differs"
        # the PACS takes Secondary Capture, Encapsulated STL and RT Structure Set over DIMSE (C-STORE, C-FIND) too
        over_dimse = push_files(endpoint, sorted(out.rglob("*.dcm")), protocol="dimse")
        assert over_dimse.protocol == "DIMSE" and len(over_dimse.objects) == len(local)
        records = [json.loads(line) for line in Path(os.environ["AIPORTAL_AUDIT_LOG"]).read_text().splitlines()]
        push = [r for r in records if r.get("destination") == "pacs"][-1]
        assert push["verified"] and {item["sop_instance_uid"] for item in push["pushed"]} == \
            {str(ds.SOPInstanceUID) for ds in local}

        from aiportal.segmentation import save_segmentation

        _, totalseg_series, _, node, _, _ = exported
        again = tmp_path / "again"
        assert main(["export", str(save_segmentation(node, tmp_path / "totalseg.seg.nrrd")), "--source",
                     str(totalseg_series.folder), "--formats", "seg", "--push", "orthanc", "--out", str(again)]) == 0
        (seg,) = (pydicom.dcmread(p, stop_before_pixels=True) for p in again.rglob("*.dcm"))
        stored = client.search_for_instances(totalseg_series.study_uid)
        assert [pydicom.Dataset.from_json(item).SOPInstanceUID for item in stored] == [seg.SOPInstanceUID]
    finally:
        server.stop()
