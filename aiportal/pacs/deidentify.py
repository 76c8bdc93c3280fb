"""De-identification of images that leave the site, and re-identification of the results.

Implements the DICOM PS3.15 Annex E Basic Application Confidentiality Profile: every attribute
of Table E.1-1 is removed (X), emptied (Z), replaced by a dummy (D) or given a new UID (U); all
private attributes are removed. The table is not typed in by hand: it is read from the
``dicom-anonymizer`` package (KitwareMedical, BSD-3), module
``dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c``, which that project generates
from the standard's own Table E.1-1 (PS3.15 2026c). Where the table leaves a choice
(``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``) we take the one that keeps the object valid for
its IOD: D, Z, D, D and "replace the UIDs inside".

The local :class:`ReidentificationMap` (pseudonymous UID → original, pseudonymous patient ID →
original patient and study attributes) stays on site, in a private file; :func:`reidentify`
puts the original UIDs and patient/study attributes back into results (SEG, SR) made remotely
on the de-identified images. Pixel data is not cleaned: images flagged with burned-in
annotation are refused.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from aiportal.errors import InputError

PROFILE_TABLE = "dicomfields_2026c"  # dicom-anonymizer's copy of PS3.15 Table E.1-1
PROFILE_SOURCE = ("PS3.15 Table E.1-1 (2026c), as shipped by dicom-anonymizer in "
                  f"dicomanonymizer.dicom_anonymization_databases.{PROFILE_TABLE}")
_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
               "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
# The table's choices resolved so the result stays valid for its IOD (Type 1 needs D, Type 2 Z).
_RESOLVED = {"D": "D", "Z": "Z", "X": "X", "U": "U", "Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D",
             "X/Z/U*": "U*"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D", "IS": "0",
            "DS": "0", "UR": "urn:anonymized"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
# What re-identification restores on results: the patient and the study they belong to.
_PATIENT_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                     "PatientAge", "OtherPatientIDsSequence")
_STUDY_KEYWORDS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
                   "StudyDescription")
_METHOD = "PS3.15 E.1 Basic Application Confidentiality Profile"


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1: action code per tag, and per (group, element, group mask, element mask) pattern."""

    exact: dict[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]

    def action(self, tag: int) -> str | None:
        """The table's action code for ``tag`` (e.g. ``"X/Z"``), None when it is not in the table."""
        found = self.exact.get(int(tag))
        if found is not None:
            return found
        group, element = int(tag) >> 16, int(tag) & 0xFFFF
        for g, e, group_mask, element_mask, code in self.masked:
            if group & group_mask == g and element & element_mask == e:
                return code
        return None


def profile_table() -> ProfileTable:
    """PS3.15 Table E.1-1 (basic profile column) from the dicom-anonymizer package."""
    import importlib

    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{PROFILE_TABLE}")
    exact: dict[int, str] = {}
    masked = []
    for category, code in _CATEGORIES.items():
        for entry in getattr(module, category):
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = code
            else:
                masked.append((*entry, code))
    return ProfileTable(exact, tuple(masked))


@dataclass
class ReidentificationMap:
    """Kept on site: how to turn pseudonymous UIDs and patient IDs back into the originals."""

    uids: dict[str, str] = field(default_factory=dict)  # original UID -> pseudonymous UID
    patients: dict[str, str] = field(default_factory=dict)  # original PatientID -> pseudonymous PatientID
    studies: dict[str, dict] = field(default_factory=dict)  # original StudyInstanceUID -> attributes (DICOM JSON)

    def pseudonym_uid(self, original: str) -> str:
        if original not in self.uids:
            self.uids[original] = generate_uid()
        return self.uids[original]

    def original_uids(self) -> dict[str, str]:
        return {pseudonym: original for original, pseudonym in self.uids.items()}

    def pseudonym_patient_id(self, original: str) -> str:
        if original not in self.patients:
            self.patients[original] = "AIP-" + secrets.token_hex(6).upper()
        return self.patients[original]

    def save(self, path: Path) -> Path:
        """Write as JSON readable by its owner only (it holds patient identities)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            json.dump({"profile": PROFILE_SOURCE, "uids": self.uids, "patients": self.patients,
                       "studies": self.studies}, stream, indent=1)
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ReidentificationMap:
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(dict(data["uids"]), dict(data["patients"]), dict(data["studies"]))
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"Re-identification map {path} cannot be read: {error}",
                             "restore it from a backup; without it the results cannot be re-identified") from error


def _empty(element: DataElement) -> None:
    if element.VR == "SQ":
        element.value = Sequence([])
    elif element.VR in _NUMERIC_VRS or element.VR in _BINARY_VRS:
        element.value = None
    else:
        element.value = ""


def _dummy(element: DataElement) -> None:
    vr = element.VR
    if vr in _DUMMIES:
        element.value = _DUMMIES[vr]
    elif vr in _NUMERIC_VRS:
        element.value = 0
    elif vr in _BINARY_VRS:
        element.value = b"\x00\x00"
    else:  # text VRs: AE, CS, LO, LT, SH, ST, UC, UT
        element.value = _DUMMY_TEXT


def _new_uids(element: DataElement, mapping: ReidentificationMap) -> None:
    if element.VR != "UI" or element.value in (None, ""):
        return
    if element.VM > 1:
        element.value = [mapping.pseudonym_uid(str(value)) for value in element.value]
    else:
        element.value = mapping.pseudonym_uid(str(element.value))


class _Cleaner:
    def __init__(self, table: ProfileTable, mapping: ReidentificationMap) -> None:
        self.table, self.mapping = table, mapping

    def clean(self, dataset: Dataset) -> None:
        for element in list(dataset):
            tag = element.tag
            if tag.is_private:
                del dataset[tag]
                continue
            code = self.table.action(tag)
            if code is None:
                if element.VR == "SQ":
                    self._items(element)
                continue
            action = _RESOLVED[code]
            if tag == 0x00100020:  # Patient ID: a pseudonym the map can turn back into the original
                element.value = self.mapping.pseudonym_patient_id(str(element.value or ""))
            elif action == "X":
                del dataset[tag]
            elif element.VR == "SQ":  # sequences: keep the structure, clean what is inside
                if action == "Z":
                    element.value = Sequence([])
                else:
                    self._items(element)
            elif action == "Z":
                _empty(element)
            elif action in ("U", "U*") or element.VR == "UI":
                _new_uids(element, self.mapping)
            else:
                _dummy(element)

    def _items(self, element: DataElement) -> None:
        for item in element.value or []:
            self.clean(item)


def deidentify(dataset: Dataset, mapping: ReidentificationMap, table: ProfileTable | None = None) -> Dataset:
    """A de-identified copy of ``dataset`` (the original is unchanged); ``mapping`` learns the UIDs."""
    if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
        raise InputError(f"Image {dataset.get('SOPInstanceUID', '?')} has burned-in annotation (text in its pixels)",
                         "such images cannot leave the site de-identified: use another series")
    table = table or profile_table()
    result = copy.deepcopy(dataset)  # a shallow copy would share (and change) the original's elements
    study_uid = str(dataset.get("StudyInstanceUID", "") or "")
    if study_uid and study_uid not in mapping.studies:
        kept = Dataset()
        for keyword in (*_PATIENT_KEYWORDS, *_STUDY_KEYWORDS):
            if keyword in dataset:
                setattr(kept, keyword, dataset[keyword].value)
        mapping.studies[study_uid] = kept.to_json_dict()
    _Cleaner(table, mapping).clean(result)
    if hasattr(result, "file_meta"):
        meta = result.file_meta
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = mapping.pseudonym_uid(str(meta.MediaStorageSOPInstanceUID))
        for tag in [tag for tag in meta if tag.is_private]:
            del meta[tag]
    result.PatientIdentityRemoved = "YES"
    result.DeidentificationMethod = _METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    result.DeidentificationMethodCodeSequence = Sequence([code])
    return result


def _restore_uids(dataset: Dataset, originals: dict[str, str]) -> int:
    changed = 0
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value or []:
                changed += _restore_uids(item, originals)
        elif element.VR == "UI" and element.value not in (None, ""):
            values = list(element.value) if element.VM > 1 else [element.value]
            restored = [originals.get(str(value), str(value)) for value in values]
            if restored != [str(value) for value in values]:
                element.value = restored if element.VM > 1 else restored[0]
                changed += 1
    return changed


def reidentify(dataset: Dataset, mapping: ReidentificationMap) -> Dataset:
    """A copy of a result (SEG, SR, ...) with original UIDs and patient/study attributes put back.

    The result's own new UIDs (its SOP Instance and Series UIDs) are kept: they are not in the map.
    """
    result = copy.deepcopy(dataset)
    originals = mapping.original_uids()
    _restore_uids(result, originals)
    if hasattr(result, "file_meta"):
        _restore_uids(result.file_meta, originals)
    kept = mapping.studies.get(str(result.get("StudyInstanceUID", "") or ""))
    if kept is not None:
        for element in Dataset.from_json(kept):
            result[element.tag] = element
    for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in result:
            delattr(result, keyword)
    if "PatientIdentityRemoved" in result:
        result.PatientIdentityRemoved = "NO"
    return result


def deidentify_files(files: list[Path], out_folder: Path, mapping: ReidentificationMap) -> list[Path]:
    """De-identified copies of ``files`` in ``out_folder``, named by their new SOP Instance UIDs."""
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    table = profile_table()
    written = []
    for path in files:
        result = deidentify(pydicom.dcmread(path), mapping, table)
        target = out_folder / f"{result.SOPInstanceUID}.dcm"
        result.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def reidentify_files(files: list[Path], out_folder: Path, mapping: ReidentificationMap) -> list[Path]:
    """Re-identified copies of result ``files`` in ``out_folder`` (same file names; a name met twice, as
    ``key_images/Liver.dcm`` and ``models/Liver.dcm``, gets a number)."""
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        target, number = out_folder / Path(path).name, 2
        while target in written:
            target, number = out_folder / f"{Path(path).stem}-{number}{Path(path).suffix}", number + 1
        reidentify(pydicom.dcmread(path), mapping).save_as(target, enforce_file_format=True)
        written.append(target)
    return written
