"""Segment terminology: between our coded labels and Slicer's terminology entries.

Slicer stores a segment's SNOMED codes as one serialized terminology entry (a segment tag, kept
in seg.nrrd). We let Slicer's own terminologies logic do the (de)serialization so the format is
always the one the running Slicer version expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer

from aiportal.models.catalog import Code, LabelSpec
from aiportal.runtime import ANATOMIC_REGION_CONTEXT, DICOM_MASTER_CONTEXT

_Logic = slicer.vtkSlicerTerminologiesModuleLogic


@dataclass(frozen=True)
class SegmentCodes:
    category: Code
    type: Code
    type_modifier: Code | None
    region: Code | None
    region_modifier: Code | None


def _set(code_object, code: Code | None) -> None:
    if code is not None:
        code_object.SetCodingSchemeDesignator(code.scheme)
        code_object.SetCodeValue(code.value)
        code_object.SetCodeMeaning(code.meaning)


def _get(code_object) -> Code | None:
    value = code_object.GetCodeValue() if code_object is not None else None
    if not value:
        return None
    return Code(code_object.GetCodingSchemeDesignator() or "", value, code_object.GetCodeMeaning() or "")


def serialize(label: LabelSpec) -> str:
    """The terminology entry string Slicer stores in a segment for this label."""
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(DICOM_MASTER_CONTEXT)
    _set(entry.GetCategoryObject(), label.category)
    _set(entry.GetTypeObject(), label.type)
    _set(entry.GetTypeModifierObject(), label.type_modifier)
    if label.region is not None:
        entry.SetRegionContextName(ANATOMIC_REGION_CONTEXT)
        _set(entry.GetRegionObject(), label.region)
        _set(entry.GetRegionModifierObject(), label.region_modifier)
    return _Logic.SerializeTerminologyEntry(entry)


def deserialize(serialized: str) -> SegmentCodes | None:
    """Codes of a serialized terminology entry; None when the segment has no terminology."""
    entry = slicer.vtkSlicerTerminologyEntry()
    if not serialized or not _Logic.DeserializeTerminologyEntry(serialized, entry):
        return None
    category, type_ = _get(entry.GetCategoryObject()), _get(entry.GetTypeObject())
    if category is None or type_ is None:
        return None
    return SegmentCodes(
        category=category,
        type=type_,
        type_modifier=_get(entry.GetTypeModifierObject()),
        region=_get(entry.GetRegionObject()),
        region_modifier=_get(entry.GetRegionModifierObject()),
    )
