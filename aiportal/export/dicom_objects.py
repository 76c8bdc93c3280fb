"""What every DICOM object we write shares: who made it, its character set, the source's patient and study.

Only pydicom and highdicom: the plain encoders (e.g. :func:`aiportal.rt.encode.encode_rtstruct`) use it
without loading the Slicer core.
"""

from __future__ import annotations

import inspect

import highdicom as hd
import pydicom

MANUFACTURER = "AI Segment Portal"
UTF8 = "ISO_IR 192"


def with_utf8(sop_class, **arguments):
    """``sop_class(**arguments)`` in UTF-8 (names and labels may be non-ASCII; the source's may be empty).

    highdicom 0.28 takes the character set as an argument; 0.27, which Slicer 5.12 bundles (and the
    desktop modules must not replace), does not, and pydicom encodes with the attribute set afterwards.
    """
    if "specific_character_set" in inspect.signature(hd.base.SOPClass).parameters:  # every SOP class passes it on
        return sop_class(**arguments, specific_character_set=UTF8)
    dataset = sop_class(**arguments)
    dataset.SpecificCharacterSet = UTF8
    return dataset


def copy_patient_and_study(dataset, header: pydicom.Dataset) -> None:
    """Give a new object (a highdicom SOP class instance) the patient and study modules of a source image.

    Empty sequences are not copied (see :func:`drop_empty_copied_sequences`).
    """
    dataset.copy_patient_and_study_information(header)
    drop_empty_copied_sequences(dataset, header)


def drop_empty_copied_sequences(dataset, header: pydicom.Dataset) -> None:
    """Remove the empty sequences a new object copied from its source image ``header``.

    A de-identified source holds emptied ones (PS3.15 "Z", e.g. Referenced Study Sequence), and an
    object with an empty optional sequence fails its IOD.
    """
    for element in list(dataset):
        if element.VR == "SQ" and not element.value and element.keyword in header:
            del dataset[element.tag]
