"""Put loaded volumes under patient/study items of the subject hierarchy, as Slicer's DICOM loader does.

DICOM volumes get patient and study items identified by their DICOM UIDs (PatientID,
StudyInstanceUID), reused when another series of the same study is loaded; anonymised series
with empty identifiers fall back to matching items by name. Non-DICOM files get a study named
after the file, so that results derived from them (segmentations, reports) have a home.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import slicer
import vtk

if TYPE_CHECKING:
    from aiportal.io.dicom_series import SourceSeries
    from aiportal.runtime import SlicerRuntime

_DICOM = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()  # "DICOM"
_LEVEL_PATIENT = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient()
_LEVEL_STUDY = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
_ANONYMOUS = "Anonymous"


def _child_by_name(shnode, parent: int, level: str, name: str) -> int:
    """A child item of ``parent`` at ``level`` named ``name`` that has no DICOM UID, or 0."""
    children = vtk.vtkIdList()
    shnode.GetItemChildren(parent, children)
    for index in range(children.GetNumberOfIds()):
        item = children.GetId(index)
        if (
            shnode.GetItemLevel(item) == level
            and shnode.GetItemName(item) == name
            and not shnode.GetItemUID(item, _DICOM)
        ):
            return item
    return 0


def _find_or_create(shnode, parent: int, level: str, name: str, uid: str) -> int:
    """Reuse the item with this DICOM UID (or, without a UID, this name); else create it."""
    if uid:
        item = shnode.GetItemByUID(_DICOM, uid)
        if item and shnode.GetItemLevel(item) == level:
            return item
    else:
        item = _child_by_name(shnode, parent, level, name)
        if item:
            return item
    create = shnode.CreateSubjectItem if level == _LEVEL_PATIENT else shnode.CreateStudyItem
    item = create(parent, name)
    if uid:
        shnode.SetItemUID(item, _DICOM, uid)
    return item


def _display_date(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else date


def place_in_study(runtime: SlicerRuntime, node, source: SourceSeries | None, fallback_name: str) -> int:
    """Move ``node`` under its patient/study items (created or reused); return the study item id.

    ``source`` None (a NIfTI/NRRD file) gives a study named ``fallback_name`` at the top level.
    """
    shnode = runtime.shnode
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    scene_item = shnode.GetSceneItemID()
    node_item = shnode.GetItemByDataNode(node) or shnode.CreateItem(scene_item, node)
    if source is None:
        study = _find_or_create(shnode, scene_item, _LEVEL_STUDY, fallback_name, "")
    else:
        patient_name = source.patient_name.replace("^", " ").strip()
        patient = _find_or_create(
            shnode, scene_item, _LEVEL_PATIENT, patient_name or source.patient_id or _ANONYMOUS, source.patient_id
        )
        shnode.SetItemAttribute(patient, constants.GetDICOMPatientNameAttributeName(), source.patient_name)
        shnode.SetItemAttribute(patient, constants.GetDICOMPatientIDAttributeName(), source.patient_id)
        study_name = (
            source.study_description
            or (f"Study {_display_date(source.study_date)}" if source.study_date else "")
            or fallback_name
        )
        study = _find_or_create(shnode, patient, _LEVEL_STUDY, study_name, source.study_uid)
        shnode.SetItemAttribute(study, constants.GetDICOMStudyInstanceUIDAttributeName(), source.study_uid)
        shnode.SetItemAttribute(study, constants.GetDICOMStudyDescriptionAttributeName(), source.study_description)
        shnode.SetItemAttribute(study, constants.GetDICOMStudyDateAttributeName(), source.study_date)
        if source.series_uid:
            shnode.SetItemUID(node_item, _DICOM, source.series_uid)
        if source.instance_uids_text:
            shnode.SetItemUID(node_item, constants.GetDICOMInstanceUIDName(), source.instance_uids_text)
        shnode.SetItemAttribute(node_item, constants.GetDICOMSeriesModalityAttributeName(), source.modality)
        if source.series_number is not None:
            shnode.SetItemAttribute(node_item, constants.GetDICOMSeriesNumberAttributeName(), str(source.series_number))
    shnode.SetItemParent(node_item, study)
    return study
