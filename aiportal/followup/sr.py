"""One TID 1500 measurement report per time point, each lesion under its persistent tracking identifier.

Every tracked lesion measured at a time point is a TID 1501 group (method RECIST 1.1) with the track's
Tracking Identifier and Tracking UID (the same in every time point's report, so a viewer follows the lesion
across studies), its long and short axis with their lines (as :mod:`aiportal.export.dicom_sr` writes them)
and its volume. The evidence is that time point's source images.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from aiportal.export.dicom_seg import MANUFACTURER, coded, with_utf8
from aiportal.export.dicom_sr import PROCEDURES_BY_MODALITY, axis_measurements, sr_number
from aiportal.followup.tracking import Longitudinal, Track
from aiportal.terminology import deserialize

_DEVICE = "AIPortal follow-up"


def _group(track: Track, index: int, source) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurement = track.states[index].measurement
    items = axis_measurements(measurement, source)
    items.append(hd.sr.Measurement(name=codes.SCT.Volume, value=sr_number(measurement.volume_ml * 1000.0),
                                   unit=codes.UCUM.CubicMillimeter))
    found = deserialize(track.terminology) if track.terminology else None
    on_image = measurement.slice_axis == "k" and 0 <= measurement.slice_index < len(source.datasets)
    image = source.datasets[measurement.slice_index] if on_image else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=track.tracking_uid, identifier=track.tracking_id),
        finding_type=coded(found.type) if found else codes.SCT.Lesion,
        finding_category=coded(found.category) if found else None,
        method=codes.cid6147.RECIST1Point1,
        measurements=items,
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(image.SOPClassUID), str(image.SOPInstanceUID))]
        if image is not None else None,
    )


def write_time_point_sr(result: Longitudinal, index: int, source, path: Path, *, series_number: int = 310) -> Path:
    """The report of time point ``index`` (its :class:`ExportSource` ``source``) written to ``path``."""
    groups = [_group(track, index, source) for track in result.tracks
              if track.states[index] is not None and track.states[index].measurement is not None]
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
        evidence=list(source.datasets),
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"Follow-up lesions ({result.labels[index]})"[:64],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return path
