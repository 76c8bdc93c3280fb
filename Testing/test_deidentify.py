"""De-identification (PS3.15 basic profile) checked against the profile table, and re-identification
of real SEG/SR results made on the de-identified images."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from dicom_validation import dciodvfy_errors  # noqa: E402
from orthanc_server import ct_with_uids  # noqa: E402

from aiportal.pacs.deidentify import (  # noqa: E402
    PROFILE_TABLE,
    ReidentificationMap,
    deidentify,
    deidentify_files,
    reidentify_files,
)

# The table itself, read here independently of the code under test: category -> profile action code.
_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
               "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
_MARK = "PHIMARK"


def _table() -> list[tuple[int, str]]:
    """Every row of PS3.15 Table E.1-1 as (tag, action); repeating groups (50xx, 60xx) as one
    concrete tag each."""
    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{PROFILE_TABLE}")
    rows = []
    for category, code in _CATEGORIES.items():
        for entry in getattr(module, category):
            group, element = entry[0], entry[1]
            if len(entry) == 4:  # (50xx,xxxx), (60xx,3000), (60xx,4000): one instance of the pattern
                group, element = group + 0x0002, element or 0x3000
            rows.append(((group << 16) | element, code))
    return rows


def _sample(tag: int, vr: str):
    """An identifying-looking value of the attribute's VR."""
    vr = vr.split(" or ")[0]
    text = {"AE": "PHIAE", "AS": "042Y", "CS": "PHI MARK", "DA": "20200102", "DS": "1.5", "DT": "20200102030405",
            "IS": "7", "PN": "Phi^Mark", "TM": "101010", "UI": generate_uid(), "UR": f"http://{_MARK}.invalid"}
    if vr in text:
        return vr, text[vr]
    if vr in ("LO", "LT", "SH", "ST", "UC", "UT"):
        return vr, f"{_MARK}{tag:08X}"
    if vr in ("FL", "FD"):
        return vr, 1.5
    if vr in ("SL", "SS", "SV", "UL", "US", "UV"):
        return vr, 7
    if vr == "AT":
        return vr, 0x00100010
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "Phi^Nested"  # (0010,0010) Z: must be emptied inside sequences too
        item.ReferencedSOPInstanceUID = generate_uid()  # U
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # not in the table: kept
        return vr, Sequence([item])
    return vr, _MARK.encode() + b"!!"  # OB, OW, UN, ...


@pytest.fixture(scope="module")
def ct(shared_data: Path, tmp_path_factory) -> Path:
    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path_factory.mktemp("ct"))
    return series.folder


def test_every_basic_profile_attribute_is_handled(ct: Path):
    dataset = pydicom.dcmread(sorted(ct.iterdir())[0])
    rows = _table()
    assert len(rows) > 600, "the PS3.15 table should have hundreds of rows"
    original: dict[int, object] = {}
    unknown_vr = []
    for tag, _code in rows:
        if tag >> 16 in (0x0000, 0x0002):  # command / file meta groups: not dataset attributes
            continue
        if tag in dataset:
            original[tag] = dataset[tag].value
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:  # attributes newer than this pydicom's dictionary: add them as UN
            unknown_vr.append(tag)
            vr = "UN"
        vr, value = _sample(tag, vr)
        dataset.add_new(tag, vr, value)
        original[tag] = dataset[tag].value
    dataset.add_new(0x00091001, "LO", f"{_MARK} private")  # private attributes: removed by the profile
    dataset.add_new(0x00090010, "LO", "SOME CREATOR")
    rows_value = {tag: code for tag, code in rows}
    assert len(original) > 500
    mapping = ReidentificationMap()
    result = deidentify(dataset, mapping)
    reverse = mapping.original_uids()

    problems = []
    for tag, before in original.items():
        code = rows_value[tag]
        present = tag in result
        value = result[tag].value if present else None
        empty = present and result[tag].is_empty
        vr = result[tag].VR if present else ""
        if code == "X" and present:
            problems.append(f"{tag:08X} X but still present")
        elif code == "Z" and not empty:
            problems.append(f"{tag:08X} Z but not empty: {value!r}")
        elif code == "U":
            ok = present and value != before and reverse.get(str(value)) == str(before)
            if not ok:
                problems.append(f"{tag:08X} U but not a mapped new UID: {value!r}")
        elif code in ("D", "Z/D", "X/D", "X/Z", "X/Z/D") and present and not empty:
            if vr != "SQ" and value == before:
                problems.append(f"{tag:08X} {code} still holds its original value {value!r}")
            if code == "X/Z":
                problems.append(f"{tag:08X} X/Z has a value {value!r}")
            if code == "D" and vr != "SQ" and value in (None, ""):
                problems.append(f"{tag:08X} D replaced by nothing")
        elif code == "D" and not present:
            problems.append(f"{tag:08X} D but removed")
        if present and vr == "SQ":  # whatever the action: nothing identifying stays inside
            for item in value:
                if str(item.get("PatientName", "") or ""):
                    problems.append(f"{tag:08X} sequence still holds a patient name")
                uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
                if uid and uid not in reverse:
                    problems.append(f"{tag:08X} sequence still holds an original referenced UID")
    assert not problems, f"{len(problems)} profile violations, e.g. {problems[:10]}"
    assert not [element for element in result if element.tag.is_private], "private attributes must be removed"
    everything = str(result) + str(result.file_meta)
    assert _MARK not in everything
    assert "Test^Pacs" not in everything and "PACS-TEST-001" not in everything and "ACC-0001" not in everything
    assert str(result.PatientIdentityRemoved) == "YES"
    assert result.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    # the pixels and the geometry are what remote inference needs: untouched
    assert result.PixelData == dataset.PixelData
    assert result.ImagePositionPatient == dataset.ImagePositionPatient
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID != dataset.SOPInstanceUID
    assert len(unknown_vr) < 50


def test_reidentification_restores_uids_on_real_results(ct: Path, tmp_path: Path, runtime):
    from aiportal.export.exporter import ExportOptions, export_to_folder
    from aiportal.io.volumes import load_volume
    from aiportal.segment import SegmentationJob

    originals = sorted(ct.iterdir())
    original_headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in originals]
    original_uids = {str(h.SOPInstanceUID) for h in original_headers}
    study_uid, series_uid = str(original_headers[0].StudyInstanceUID), str(original_headers[0].SeriesInstanceUID)
    frame_uid = str(original_headers[0].FrameOfReferenceUID)

    mapping = ReidentificationMap()
    deidentified = deidentify_files(originals, tmp_path / "deid", mapping)
    map_path = mapping.save(tmp_path / "map" / "reidentification.json")
    assert map_path.stat().st_mode & 0o077 == 0, "the map holds identities: owner-only"
    for path in deidentified:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(header.SOPInstanceUID) not in original_uids and str(header.StudyInstanceUID) != study_uid
        assert str(header.PatientID) != "PACS-TEST-001" and not str(header.PatientName)

    # "remote" inference on the de-identified images: a real segmentation, exported as SEG + SR
    loaded = load_volume(tmp_path / "deid", runtime)
    result = SegmentationJob(loaded.node, "classic-ct", runtime=runtime).run()
    export_to_folder(result.segmentation_node, loaded.node, loaded.source, tmp_path / "remote",
                     ExportOptions(formats=("seg", "sr")))
    results = [tmp_path / "remote" / "segmentation.dcm", tmp_path / "remote" / "measurements.dcm"]
    # the de-identified source's emptied sequences (PS3.15 "Z") must not make the results invalid
    assert dciodvfy_errors(results[0]) == [], "SEG made on de-identified images"

    restored = reidentify_files(results, tmp_path / "restored", ReidentificationMap.load(map_path))
    pseudonyms = set(mapping.uids.values())
    for path in restored:
        ds = pydicom.dcmread(path)
        assert str(ds.StudyInstanceUID) == study_uid
        assert str(ds.PatientID) == "PACS-TEST-001" and str(ds.PatientName) == "Test^Pacs"
        assert str(ds.AccessionNumber) == "ACC-0001"
        uids = _all_uids(ds)
        assert not uids & pseudonyms, "no pseudonymous UID may remain in a re-identified result"
        assert series_uid in uids, "the result must reference the original series"
        if ds.Modality == "SEG":
            assert str(ds.FrameOfReferenceUID) == frame_uid
            referenced = {str(item.ReferencedSOPInstanceUID)
                          for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert referenced == original_uids
    seg_before = pydicom.dcmread(results[0])
    seg_after = pydicom.dcmread(restored[0])
    assert seg_after.SOPInstanceUID == seg_before.SOPInstanceUID, "the result's own UID is kept"
    assert seg_after.PixelData == seg_before.PixelData


def _all_uids(dataset: Dataset) -> set[str]:
    found = set()
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                found |= _all_uids(item)
        elif element.VR == "UI" and element.value:
            found |= {str(v) for v in (element.value if element.VM > 1 else [element.value])}
    return found
