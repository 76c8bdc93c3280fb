"""DICOM SEG and TID 1500 SR export on real CT series, checked against dcmqi's golden SEGs,
highdicom read-back and dciodvfy."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validation import LABELMAP_FALSE_POSITIVES, LABELMAP_SR_FALSE_POSITIVE, dciodvfy_errors
from pydicom.sr.codedict import codes

from aiportal.errors import InputError
from aiportal.export.dicom_seg import TRACKING_UID_TAG, write_seg
from aiportal.export.dicom_source import export_source
from aiportal.export.dicom_sr import sr_number, write_sr
from aiportal.export.statistics import compute_statistics
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume
from aiportal.models.backend import LabelMapResult
from aiportal.models.catalog import ANATOMICAL_STRUCTURE, LEFT, Code, LabelSpec
from aiportal.provenance import Provenance, now_iso, read_tag
from aiportal.segment import SegmentationJob
from aiportal.segmentation import REVIEW_TAG, import_label_map, segment_ids, segment_mask

SEGMENTATIONS = "dcmqi/data/segmentations"
CLASSIC_CT_TITLE = "Classic CT (body, lungs, airways, bone)"
COPY_LATERALITY_ERROR = "Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>"
EXAMPLES = "dcmqi/doc/examples"
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
# dcmqi's golden SEGs, the label maps they were made from and the metadata that coded them
GOLDEN = {
    "liver": ("liver.dcm", ["liver_seg.nrrd"], "seg-example.json"),
    "partial_overlaps": ("partial_overlaps.dcm", [f"partial_overlaps-{n}.nrrd" for n in (1, 2, 3)],
                         "seg-example_partial_overlaps.json"),
}


def _code(item: dict) -> Code:
    return Code(item["CodingSchemeDesignator"], item["CodeValue"], item["CodeMeaning"])


def dcmqi_labels(path: Path) -> list[LabelSpec]:
    """The segments of a dcmqi metadata file as our label specs (codes and colours as dcmqi used)."""
    return [
        LabelSpec(value=item["labelID"], name=item["SegmentLabel"],
                  category=_code(item["SegmentedPropertyCategoryCodeSequence"]),
                  type=_code(item["SegmentedPropertyTypeCodeSequence"]),
                  color=tuple(item.get("recommendedDisplayRGBValue", (128, 174, 128))))
        for group in json.loads(path.read_text())["segmentAttributes"] for item in group
    ]


def provenance() -> Provenance:
    """classic-ct's provenance, as if it had made the label maps (segments then read as AI segments)."""
    return Provenance(model_id="classic-ct", model_version="1.0", weights_sha256="none",
                      parameters={"threshold_hu": -400, "fast": True}, device="cpu",
                      started=now_iso(), finished=now_iso())


def segmentation_from_label_maps(runtime, ct, paths: list[Path], labels: list[LabelSpec]):
    """A segmentation on the CT from label map files, each first checked to lie on the CT's grid."""
    layers = []
    for path in paths:
        label_map = load_volume(path, runtime)
        assert label_map.node.GetImageData().GetDimensions() == ct.node.GetImageData().GetDimensions()
        assert np.allclose(ijk_to_ras_matrix(label_map.node), ijk_to_ras_matrix(ct.node), atol=1e-4), path
        layers.append(array_from_volume(label_map.node).astype(np.uint8))
    return import_label_map(LabelMapResult(layers=layers), labels, ct.node, provenance(), runtime=runtime)


def seg_masks(path: Path, source_uids: list[str], dcmqi: bool = False) -> dict[str, np.ndarray]:
    """Segment label -> (k, j, i) mask, read with highdicom in the order of ``source_uids``."""
    seg = hd.seg.segread(path)
    masks = {}
    for number in seg.segment_numbers:
        if number == 0:  # LABELMAP background
            continue
        pixels = seg.get_pixels_by_source_instance(
            source_uids, segment_numbers=[number], ignore_spatial_locations=dcmqi,
            assert_missing_frames_are_empty=dcmqi)
        masks[seg.get_segment_description(number).segment_label] = pixels[..., 0] > 0
    return masks


def assert_seg_valid(path: Path, segmentation_type: str) -> None:
    """dciodvfy: no errors for BINARY; for LABELMAP exactly the validator's two known false positives."""
    errors = dciodvfy_errors(path)
    if segmentation_type == "LABELMAP":  # the validator predates LABELMAP (dicom.md §4)
        assert len(errors) == 2, errors
        assert {known for known in LABELMAP_FALSE_POSITIVES for line in errors if line.startswith(known)} == set(
            LABELMAP_FALSE_POSITIVES), errors
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == LABELMAP_SEG_STORAGE
    else:
        assert errors == []


@pytest.fixture
def ct_3slice(shared_data, runtime):
    return load_volume(shared_data / SEGMENTATIONS / "ct-3slice", runtime)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_binary_seg_matches_dcmqi_golden_seg(shared_data, runtime, ct_3slice, tmp_path, case):
    golden, label_maps, metadata = GOLDEN[case]
    labels = dcmqi_labels(shared_data / EXAMPLES / metadata)
    node = segmentation_from_label_maps(runtime, ct_3slice, [shared_data / SEGMENTATIONS / n for n in label_maps],
                                        labels)
    source = export_source(ct_3slice.source, ct_3slice.node)
    exported = write_seg(node, ct_3slice.node, source, tmp_path / "seg.dcm")

    assert dciodvfy_errors(exported.path) == []
    uids = source.sop_instance_uids
    ours = seg_masks(exported.path, uids)
    theirs = seg_masks(shared_data / SEGMENTATIONS / golden, uids, dcmqi=True)
    assert sorted(ours) == sorted(theirs) == sorted(label.name for label in labels)
    for name, mask in ours.items():
        assert mask.any()
        assert np.array_equal(mask, theirs[name]), name
    read = hd.seg.segread(exported.path)
    golden_seg = hd.seg.segread(shared_data / SEGMENTATIONS / golden)
    for label in labels:
        description = read.get_segment_description(exported.segment_numbers[_segment_named(node, label.name)])
        assert description.segmented_property_type.value == label.type.value
        assert description.segmented_property_category.value == label.category.value
        # the segment colour becomes the same recommended CIELab display colour that dcmqi wrote
        golden_item = next(d for d in golden_seg.SegmentSequence if d.SegmentLabel == label.name)
        assert list(description.RecommendedDisplayCIELabValue) == list(golden_item.RecommendedDisplayCIELabValue)


def _segment_named(node, name: str) -> str:
    return next(s for s in segment_ids(node) if node.GetSegmentation().GetSegment(s).GetName() == name)


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_seg_and_sr_round_trip_and_validate(shared_data, runtime, ct_3slice, tmp_path, segmentation_type):
    labels = dcmqi_labels(shared_data / EXAMPLES / "seg-example_liver_spine.json")
    node = segmentation_from_label_maps(runtime, ct_3slice, [shared_data / SEGMENTATIONS / "liver_spine_seg.nrrd"],
                                        labels)
    segmentation = node.GetSegmentation()
    liver, spine = _segment_named(node, "Liver"), _segment_named(node, "Thoracic spine")
    segmentation.GetSegment(liver).SetTag(REVIEW_TAG, "modified")  # AI result edited by the reader
    for tag in provenance().as_tags():  # the spine drawn by hand: no provenance
        segmentation.GetSegment(spine).RemoveTag(tag)
    empty = segmentation.AddEmptySegment("", "Empty")
    segmentation.GetSegment(empty).SetTerminology(segmentation.GetSegment(liver).GetTerminology())
    source = export_source(ct_3slice.source, ct_3slice.node)

    exported = write_seg(node, ct_3slice.node, source, tmp_path / "seg.dcm", segmentation_type=segmentation_type,
                         content_creator_name="Doe^Jane")
    assert exported.empty_segments == ["Empty"]
    assert set(exported.segment_numbers) == {liver, spine}
    assert_seg_valid(exported.path, segmentation_type)

    # pixels, codes, algorithm and tracking read back exactly
    read = hd.seg.segread(exported.path)
    assert read.SOPInstanceUID == exported.sop_instance_uid
    assert read.StudyInstanceUID == source.study_uid and read.FrameOfReferenceUID == source.frame_of_reference_uid
    referenced = read.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == set(
        source.sop_instance_uids)  # every slice holds liver or spine
    masks = seg_masks(exported.path, source.sop_instance_uids)
    for segment_id in (liver, spine):
        name = segmentation.GetSegment(segment_id).GetName()
        assert np.array_equal(masks[name], segment_mask(node, segment_id, ct_3slice.node)), name
        description = read.get_segment_description(exported.segment_numbers[segment_id])
        assert description.tracking_uid == exported.tracking_uids[segment_id]
        assert description.tracking_uid == read_tag(segmentation.GetSegment(segment_id), TRACKING_UID_TAG)
        assert description.tracking_id == exported.tracking_ids[segment_id]
    assert read.get_segment_description(exported.segment_numbers[liver]).algorithm_type.value == "SEMIAUTOMATIC"
    assert read.get_segment_description(exported.segment_numbers[spine]).algorithm_type.value == "MANUAL"
    algorithm = read.get_segment_description(exported.segment_numbers[liver]).algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (CLASSIC_CT_TITLE, "1.0")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.MorphologicalOperations.value
    assert read.ContentCreatorName == "Doe^Jane"

    # a second export keeps each segment's tracking UID
    again = write_seg(node, ct_3slice.node, source, tmp_path / "again.dcm", segmentation_type=segmentation_type)
    assert again.tracking_uids == exported.tracking_uids and again.sop_instance_uid != exported.sop_instance_uid

    _check_sr(node, ct_3slice, source, exported, tmp_path, observer_person="Doe^Jane")


def _check_sr(node, ct, source, exported, tmp_path: Path, observer_person: str | None = None) -> None:
    """Write the SR of the segments' statistics and check it against them, the SEG and dciodvfy."""
    statistics = compute_statistics(node, ct.node, modality="CT")
    written = write_sr(statistics, None, exported, exported.path, source, tmp_path / "sr.dcm",
                       observer_person=observer_person)
    errors = dciodvfy_errors(written.path)
    if exported.segmentation_type == "LABELMAP":  # one per group; same validator gap (dicom.md §4)
        assert errors == [LABELMAP_SR_FALSE_POSITIVE] * written.measurement_groups
    else:
        assert errors == []
    by_uid = {exported.tracking_uids[row.segment_id]: row for row in statistics
              if row.segment_id in exported.tracking_uids}
    report = hd.sr.srread(written.path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == written.measurement_groups == len(by_uid) == len(exported.segment_numbers)
    count = 0
    for group in groups:
        row = by_uid[group.tracking_uid]
        segment_number = exported.segment_numbers[row.segment_id]
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == exported.sop_instance_uid
        assert reference.referenced_sop_class_uid == pydicom.dcmread(exported.path, stop_before_pixels=True).SOPClassUID
        assert reference.referenced_segment_numbers == [segment_number]
        assert reference.source_series_for_segmentation.value == source.series_uid
        assert group.tracking_identifier == exported.tracking_ids[row.segment_id]
        expected = {(q.concept.value, q.derivation.value if q.derivation else None): sr_number(row.values[q.key])
                    for q in row.quantities if q.scalar}
        got = {(m.name.value, m.derivation.value if m.derivation else None): m.value for m in group.get_measurements()}
        assert got == expected  # FD, exactly the rounded statistics
        count += len(got)
    assert written.measurements == count
    # every NUM's decimal string (what DCMTK-based readers see) equals its float
    dataset = pydicom.dcmread(written.path)
    numbers = list(_numeric_values(dataset.ContentSequence))
    assert len(numbers) == count
    assert all(float(ds) == fd for ds, fd in numbers)
    evidence = {str(i.ReferencedSOPInstanceUID) for s in dataset.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {*source.sop_instance_uids, exported.sop_instance_uid}
    assert dataset.StudyInstanceUID == source.study_uid
    observers = {str(item.ConceptNameCodeSequence[0].CodeMeaning): str(item.get("TextValue", item.get("UIDValue", "")))
                 for item in dataset.ContentSequence if item.ValueType in ("PNAME", "TEXT", "UIDREF")}
    # the device is the model named in the SEG (segment 1 is an AI segment in every test)
    algorithm = hd.seg.segread(exported.path).get_segment_description(1).algorithm_identification[0]
    assert observers["Device Observer Model Name"] == f"{algorithm.AlgorithmName} {algorithm.AlgorithmVersion}"
    assert ("Person Observer Name" in observers) == (observer_person is not None)


def _numeric_values(sequence):
    for item in sequence:
        if item.get("ValueType") == "NUM":
            value = item.MeasuredValueSequence[0]
            yield value.NumericValue, value.FloatingPointValue
        if "ContentSequence" in item:
            yield from _numeric_values(item.ContentSequence)


def test_segment_without_terminology_is_refused(shared_data, runtime, ct_3slice, tmp_path):
    labels = dcmqi_labels(shared_data / EXAMPLES / "seg-example.json")
    node = segmentation_from_label_maps(runtime, ct_3slice, [shared_data / SEGMENTATIONS / "liver_seg.nrrd"], labels)
    scribble = node.GetSegmentation().AddEmptySegment("", "Scribble")
    node.GetSegmentation().GetSegment(scribble).SetTerminology("")  # Slicer's default would be Tissue/Tissue
    source = export_source(ct_3slice.source, ct_3slice.node)
    with pytest.raises(InputError, match="without terminology.*Scribble"):
        write_seg(node, ct_3slice.node, source, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_nifti_input_is_refused_naming_the_file(shared_data, runtime):
    path = shared_data / "totalseg/example_ct_sm.nii.gz"
    volume = load_volume(path, runtime)
    with pytest.raises(InputError, match=r"example_ct_sm\.nii\.gz.*load the DICOM series"):
        export_source(volume.source, volume.node)


def test_unsorted_source_files_give_a_registered_seg(shared_data, runtime, tmp_path):
    folder = tmp_path / "shuffled"
    folder.mkdir()
    original = shared_data / SEGMENTATIONS / "ct-3slice"
    # names now sort 02, 03, 01 — neither spatial nor instance order
    for name, new in (("01.dcm", "c.dcm"), ("02.dcm", "a.dcm"), ("03.dcm", "b.dcm")):
        shutil.copy(original / name, folder / new)
    ct = load_volume(folder, runtime)
    assert [path.name for path in ct.source.files] == ["b.dcm", "a.dcm", "c.dcm"]  # along the slice normal
    labels = dcmqi_labels(shared_data / EXAMPLES / "seg-example.json")
    node = segmentation_from_label_maps(runtime, ct, [shared_data / SEGMENTATIONS / "liver_seg.nrrd"], labels)
    source = export_source(ct.source, ct.node)
    exported = write_seg(node, ct.node, source, tmp_path / "seg.dcm")
    liver = seg_masks(exported.path, source.sop_instance_uids)["Liver"]
    golden = seg_masks(shared_data / SEGMENTATIONS / "liver.dcm", source.sop_instance_uids, dcmqi=True)["Liver"]
    assert np.array_equal(liver, golden)
    # per slice: it is the slice differences that a mis-sorted SEG gets wrong
    assert [int(m.sum()) for m in liver] == [int(m.sum()) for m in golden] and len(set(int(m.sum()) for m in liver)) > 1

    # headers out of the volume's k order are refused, never written
    reversed_source = dataclasses.replace(ct.source, headers=ct.source.headers[::-1], files=ct.source.files[::-1])
    with pytest.raises(InputError, match="not at slice 0"):
        export_source(reversed_source, ct.node)


def test_classic_ct_on_series_with_empty_uids(shared_data, runtime, tmp_path):
    ct = load_volume(shared_data / "totalseg/example_ct_dicom", runtime)
    result = SegmentationJob(ct.node, "classic-ct", runtime=runtime).run()
    node = result.segmentation_node
    with pytest.raises(InputError, match="StudyInstanceUID, SeriesInstanceUID, SOPClassUID, SOPInstanceUID"):
        export_source(ct.source, ct.node)

    copy = tmp_path / "corrected"
    source = export_source(ct.source, ct.node, assign_missing_uids=True, corrected_copy_folder=copy)
    assert source.corrected_folder == copy and len(source.changes) == 5
    files = sorted(copy.iterdir())
    assert len(files) == 20 and sorted(source.files) == files
    for original, written in zip(ct.source.files, source.files, strict=True):
        before, after = pydicom.dcmread(original), pydicom.dcmread(written)
        assert after.PixelData == before.PixelData  # pixels untouched (still JPEG 2000)
        assert after.SOPInstanceUID == before.file_meta.MediaStorageSOPInstanceUID
        assert after.SOPClassUID == before.file_meta.MediaStorageSOPClassUID
        changed = {e.keyword for e in after if e.tag not in before or before[e.tag].value != e.value}
        assert changed == {"StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"}
        # the original fails dciodvfy on its empty UIDs (no IOD check at all); the copy passes but for
        # the scanner's own missing Laterality, which an export must not invent
        assert any("SOPInstanceUID" in line for line in dciodvfy_errors(original))
        assert dciodvfy_errors(written) == [COPY_LATERALITY_ERROR]
    # the same files give the same UIDs on a second export (no duplicate study in the PACS)
    again = export_source(ct.source, ct.node, assign_missing_uids=True, corrected_copy_folder=tmp_path / "again")
    assert again.sop_instance_uids == source.sop_instance_uids and again.study_uid == source.study_uid

    exported = write_seg(node, ct.node, source, tmp_path / "seg.dcm")
    assert dciodvfy_errors(exported.path) == []
    seg = hd.seg.segread(exported.path)
    assert seg.StudyInstanceUID == source.study_uid
    referenced = [str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert set(referenced) <= set(source.sop_instance_uids)
    assert seg.SeriesDescription == f"AI segmentation ({CLASSIC_CT_TITLE})"
    masks = seg_masks(exported.path, source.sop_instance_uids)
    for segment_id, number in exported.segment_numbers.items():
        name = seg.get_segment_description(number).segment_label
        assert np.array_equal(masks[name], segment_mask(node, segment_id, ct.node)), name
        assert seg.get_segment_description(number).algorithm_type.value == "AUTOMATIC"

    _check_sr(node, ct, source, exported, tmp_path)  # evidence = the corrected copy + the SEG


@pytest.mark.parametrize("value", [139.7014674225006, 706348.125, -1023.9996, 1e-7, 2.5e-4, 1234567890123.4567,
                                   1.2345678901234567e20, 0.1 + 0.2])
def test_sr_number_makes_ds_and_fd_agree(value):
    number = sr_number(value)
    item = hd.sr.NumContentItem(name=codes.SCT.Volume, value=number, unit=codes.UCUM.CubicMillimeter)
    measured = item.MeasuredValueSequence[0]
    assert float(measured.NumericValue) == measured.FloatingPointValue == number
    assert abs(number - value) <= max(5e-4, abs(value) * 1e-10)  # 3 decimals, or DS's 16 characters


def test_type_modifier_and_anatomic_region_are_written(shared_data, runtime, ct_3slice, tmp_path):
    # a coding check only: the codes are not what these masks show
    altered = Code("SCT", "49755003", "Morphologically Altered Structure")
    neoplasm = Code("SCT", "108369006", "Neoplasm")
    liver, kidney = Code("SCT", "10200004", "Liver"), Code("SCT", "64033007", "Kidney")
    labels = [LabelSpec(1, "Liver lesion", altered, neoplasm, region=liver),
              LabelSpec(2, "Left kidney", ANATOMICAL_STRUCTURE, kidney, type_modifier=LEFT)]
    node = segmentation_from_label_maps(runtime, ct_3slice, [shared_data / SEGMENTATIONS / "liver_spine_seg.nrrd"],
                                        labels)
    source = export_source(ct_3slice.source, ct_3slice.node)
    exported = write_seg(node, ct_3slice.node, source, tmp_path / "seg.dcm")
    assert dciodvfy_errors(exported.path) == []
    read = hd.seg.segread(exported.path)
    lesion = read.get_segment_description(exported.segment_numbers[_segment_named(node, "Liver lesion")])
    assert [c.value for c in lesion.anatomic_regions] == [liver.value]
    left_kidney = read.get_segment_description(exported.segment_numbers[_segment_named(node, "Left kidney")])
    assert left_kidney.segmented_property_type.value == kidney.value
    modifier = left_kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeValue == LEFT.value

    written = write_sr(compute_statistics(node, ct_3slice.node), None, exported, exported.path, source,
                       tmp_path / "sr.dcm")
    assert dciodvfy_errors(written.path) == []
    groups = {g.tracking_uid: g for g in hd.sr.srread(written.path).content.get_volumetric_roi_measurement_groups()}
    group = groups[lesion.tracking_uid]
    assert group.finding_type.value == neoplasm.value and group.finding_category.value == altered.value
    assert [site.value.value for site in group.finding_sites] == [liver.value]


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_seg_matches_dcmqi_golden_labelmap_seg(shared_data, runtime, tmp_path, segmentation_type):
    folder = shared_data / SEGMENTATIONS
    ct = load_volume(folder / "24x38x3/image", runtime)
    labels = [LabelSpec(1, "Liver", Code("SCT", "85756007", "Tissue"), Code("SCT", "10200004", "Liver"))]
    node = segmentation_from_label_maps(runtime, ct, [folder / "sparse_labelmap_noppv_seg.nrrd"], labels)
    source = export_source(ct.source, ct.node)
    exported = write_seg(node, ct.node, source, tmp_path / "seg.dcm", segmentation_type=segmentation_type)
    assert_seg_valid(exported.path, segmentation_type)
    ours = seg_masks(exported.path, source.sop_instance_uids)["Liver"]
    theirs = seg_masks(folder / "sparse-labelmap-noppv.dcm", source.sop_instance_uids, dcmqi=True)["Liver"]
    assert ours.any() and np.array_equal(ours, theirs)


def test_multiframe_source_is_refused(shared_data, runtime):
    ct = load_volume(shared_data / SEGMENTATIONS / "24x38x3/multiframe", runtime)
    with pytest.raises(InputError, match="multi-frame"):
        export_source(ct.source, ct.node)


def test_seg_made_in_a_forked_process_equals_the_one_made_in_process(shared_data, runtime, ct_3slice, tmp_path,
                                                                      monkeypatch):
    from aiportal.export.exporter import ExportOptions, export_results

    case = sorted(GOLDEN)[0]
    _, label_maps, metadata = GOLDEN[case]
    node = segmentation_from_label_maps(runtime, ct_3slice, [shared_data / SEGMENTATIONS / n for n in label_maps],
                                        dcmqi_labels(shared_data / EXAMPLES / metadata))
    options = ExportOptions(formats=("nrrd", "seg", "sr", "stl"))
    results = {}
    for fork in ("1", "0"):
        monkeypatch.setenv("AIPORTAL_EXPORT_FORK", fork)
        folder = tmp_path / f"fork{fork}"
        folder.mkdir()
        results[fork] = (folder, export_results(node, ct_3slice.node, ct_3slice.source, folder, options))
    (forked, by_fork), (inline, by_thread) = results["1"], results["0"]
    assert [(f.kind, f.name) for f in by_fork.files] == [(f.kind, f.name) for f in by_thread.files]
    uids = export_source(ct_3slice.source, ct_3slice.node).sop_instance_uids
    a, b = seg_masks(forked / "segmentation.dcm", uids), seg_masks(inline / "segmentation.dcm", uids)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[name], b[name]) for name in a)
    assert dciodvfy_errors(forked / "segmentation.dcm") == [] and dciodvfy_errors(forked / "measurements.dcm") == []
    # the tracking UIDs the SEG carries were stored on the segments in this process (seg.nrrd keeps them)
    seg = hd.seg.segread(forked / "segmentation.dcm")
    tagged = {read_tag(node.GetSegmentation().GetSegment(i), TRACKING_UID_TAG) for i in segment_ids(node)}
    assert {str(item.TrackingUID) for item in seg.SegmentSequence} <= tagged
