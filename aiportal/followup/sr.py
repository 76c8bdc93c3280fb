"""One TID 1500 measurement report per time point, each lesion under its persistent tracking identifier.

Every tracked lesion measured at a time point is a TID 1501 group (method RECIST 1.1) with the track's
Tracking Identifier and Tracking UID (the same in every time point's report, so a viewer follows the lesion
across studies), its long and short axis with their lines (as :mod:`aiportal.export.dicom_sr` writes them)
and its volume; when the time point was read from a DICOM SEG, a TID 1411 group under the same tracking
identifier references the lesion's segment in that SEG. The evidence is the time point's images and SEG.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from aiportal.export.dicom_seg import MANUFACTURER, coded, with_utf8
from aiportal.export.dicom_sr import PROCEDURES_BY_MODALITY, axis_measurements, sr_number
from aiportal.followup.tracking import Longitudinal, Track
from aiportal.terminology import deserialize

_DEVICE = "AIPortal follow-up"


def _group(track: Track, index: int, source) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The lesion's TID 1501 group: RECIST axes with their lines, and its volume."""
    measurement = track.states[index].measurement
    items = axis_measurements(measurement, source)
    items.append(hd.sr.Measurement(name=codes.SCT.Volume, value=sr_number(measurement.volume_ml * 1000.0),
                                   unit=codes.UCUM.CubicMillimeter))
    on_image = measurement.slice_axis == "k" and 0 <= measurement.slice_index < len(source.datasets)
    image = source.datasets[measurement.slice_index] if on_image else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        **_finding(track), method=codes.cid6147.RECIST1Point1, measurements=items,
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(image.SOPClassUID), str(image.SOPInstanceUID))]
        if image is not None else None,
    )


def _segment_group(track: Track, index: int, source, seg, number: int
                   ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The lesion's TID 1411 group: its segment in the time point's SEG, and the volume (coordinates, as the
    RECIST lines, are not allowed in a volumetric group: they stay in the TID 1501 group)."""
    measurement = track.states[index].measurement
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        **_finding(track), measurements=[hd.sr.Measurement(
            name=codes.SCT.Volume, value=sr_number(measurement.volume_ml * 1000.0), unit=codes.UCUM.CubicMillimeter)],
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID), segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid)))


def _finding(track: Track) -> dict:
    found = deserialize(track.terminology) if track.terminology else None
    return {"tracking_identifier": hd.sr.TrackingIdentifier(uid=track.tracking_uid, identifier=track.tracking_id),
            "finding_type": coded(found.type) if found else codes.SCT.Lesion,
            "finding_category": coded(found.category) if found else None}


def write_time_point_sr(result: Longitudinal, index: int, source, path: Path, *, series_number: int = 310,
                        seg_path: Path | None = None, segment_numbers: dict[str, int] | None = None) -> Path:
    """The report of time point ``index`` (its :class:`ExportSource` ``source``) written to ``path``. With
    ``seg_path`` (the time point's SEG) and ``segment_numbers`` (segment id -> Segment Number in it), each
    lesion's group references its segment there, and the SEG is part of the evidence."""
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True) if seg_path else None
    groups = []
    for track in result.tracks:
        state = track.states[index]
        if state is None or state.measurement is None:
            continue
        groups.append(_group(track, index, source))
        number = (segment_numbers or {}).get(state.measurement.segment_id)
        if seg is not None and number:
            groups.append(_segment_group(track, index, source, seg, number))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["aiportal-device", _DEVICE]), name=_DEVICE,
            manufacturer_name=MANUFACTURER),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURES_BY_MODALITY.get(source.modality, codes.LN.DiagnosticImagingReport),
        imaging_measurements=groups,
    )
    sr = with_utf8(
        hd.sr.Comprehensive3DSR,
        evidence=[*source.datasets, *([seg] if seg is not None else [])],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"Follow-up lesions ({result.labels[index]})"[:64],
    )
    if "ReferencedStudySequence" in sr and not sr.ReferencedStudySequence:
        del sr.ReferencedStudySequence  # Type 3, copied from de-identified images (PS3.15 X/Z emptied it)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return path
