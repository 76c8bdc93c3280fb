"""TID 1500 measurement report (Comprehensive 3D SR) for the segments of a DICOM SEG.

One measurement group per segment: its tracking identifier and UID, a reference to the SEG
segment, the finding (the segment's codes), the algorithm, and one coded NUM item per scalar
statistic. Codes, tracking and algorithm are read from the written SEG itself, so SR and SEG
always agree. Values are rounded first (:func:`sr_number`) so the decimal string every
DICOM reader sees (DS) and the binary float (FD) are the same number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from aiportal.export.dicom_seg import MANUFACTURER, UTF8, SegExport, coded
from aiportal.export.dicom_source import ExportSource
from aiportal.export.statistics import Quantity, SegmentStatistics
from aiportal.models.catalog import Code

# Procedure reported (CID 100) by source modality.
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}


@dataclass
class SrExport:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    measurement_groups: int
    measurements: int
    skipped: list[str]  # "<segment>: <quantity>" values left out (NaN or missing)
    size_bytes: int = 0
    seconds: float = 0.0


def sr_number(value: float, decimals: int = 3) -> float:
    """``value`` rounded to ``decimals`` and then to what a DICOM DS (16 characters) can hold.

    highdicom writes each value twice, as NumericValue (DS) and FloatingPointValue (FD); many
    readers see only DS. The result is ``float(DS text)``, so both give exactly this number.
    """
    return float(format_number_as_ds(round(float(value), decimals)))


def _measurements(
    stats: SegmentStatistics, quantities: tuple[Quantity, ...] | None, skipped: list[str]
) -> list[hd.sr.Measurement]:
    """One NUM item per scalar quantity of a segment; NaN or missing values are left out."""
    measurements = []
    for quantity in quantities or stats.quantities:
        if not quantity.scalar:
            continue
        value = stats.values.get(quantity.key)
        if value is None or isinstance(value, tuple) or not math.isfinite(value):
            skipped.append(f"{stats.name}: {quantity.key}")
            continue
        measurements.append(hd.sr.Measurement(
            name=coded(quantity.concept),
            value=sr_number(value),
            unit=coded(quantity.unit),
            method=coded(quantity.method) if quantity.method else None,
            derivation=coded(quantity.derivation) if quantity.derivation else None,
        ))
    return measurements


def _group_for_segment(
    measurements: list[hd.sr.Measurement],
    description: hd.seg.SegmentDescription,
    seg_export: SegExport,
    seg_sop_class_uid: str,
    source: ExportSource,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    algorithm = None
    if "SegmentationAlgorithmIdentificationSequence" in description:
        item = description.SegmentationAlgorithmIdentificationSequence[0]
        algorithm = hd.sr.AlgorithmIdentification(name=str(item.AlgorithmName), version=str(item.AlgorithmVersion))
    regions = description.anatomic_regions
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=str(description.TrackingUID),
                                                     identifier=str(description.TrackingID)),
        # The source series instead of one item per source image and segment (SR bloat, dicom.md §8.5).
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg_sop_class_uid,
            sop_instance_uid=seg_export.sop_instance_uid,
            segment_number=int(description.SegmentNumber),
            source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid),
        ),
        finding_type=description.segmented_property_type,
        finding_category=description.segmented_property_category,
        finding_sites=[hd.sr.FindingSite(regions[0])] if regions else None,
        algorithm_id=algorithm,
        measurements=measurements,
    )


def write_sr(
    statistics: list[SegmentStatistics],
    quantities: tuple[Quantity, ...] | None,
    seg: SegExport,
    seg_dataset_path,
    source: ExportSource,
    path,
    *,
    observer_person: str | None = None,
    device_name: str = MANUFACTURER,
    manufacturer: str = MANUFACTURER,
    model_id: str | None = None,
    model_version: str | None = None,
    procedure_reported: Code | None = None,
    series_number: int = 301,
    series_description: str | None = None,
) -> SrExport:
    """Write a TID 1500 Comprehensive 3D SR with the statistics of the segments of ``seg``.

    ``statistics`` are matched to SEG segments by segment id (those not in the SEG are skipped);
    ``quantities`` None means each row's own (:attr:`SegmentStatistics.quantities`). Non-scalar
    quantities are left out, and so are NaN values (listed in :attr:`SrExport.skipped`).
    The observer is the device (``device_name``; model: ``model_id`` and ``model_version``, by
    default the algorithm named in the SEG; a UID derived from both, the same for every report of
    that model) and, optionally, a person (``observer_person``, DICOM name form "Family^Given").
    The evidence is the source images and the SEG. The procedure reported defaults to "<modality>
    unspecified body region".
    """
    started = time.monotonic()
    # the header is all the SR needs (descriptions, evidence UIDs); decoding thousands of frames' items is not
    seg_dataset = pydicom.dcmread(seg_dataset_path, stop_before_pixels=True)
    if str(seg_dataset.SOPInstanceUID) != seg.sop_instance_uid:
        raise ValueError(f"{seg_dataset_path} is not the SEG {seg.sop_instance_uid} that was written")
    descriptions = {int(item.SegmentNumber): hd.seg.SegmentDescription.from_dataset(item)
                    for item in seg_dataset.SegmentSequence}
    skipped: list[str] = []
    groups, count = [], 0
    for stats in statistics:
        if stats.segment_id not in seg.segment_numbers:
            continue
        measurements = _measurements(stats, quantities, skipped)
        count += len(measurements)
        description = descriptions[seg.segment_numbers[stats.segment_id]]
        groups.append(_group_for_segment(measurements, description, seg, str(seg_dataset.SOPClassUID), source))
    if model_id is None:  # the model named in the SEG (the first segment an algorithm made)
        algorithm = next((d.algorithm_identification[0] for d in map(descriptions.get, seg.segment_numbers.values())
                          if d.algorithm_identification), None)
        if algorithm is not None:
            model_id, model_version = str(algorithm.AlgorithmName), str(algorithm.AlgorithmVersion)
    device_uid = generate_uid(entropy_srcs=["aiportal-device", device_name, model_id or "", model_version or ""])
    observer_device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=device_name[:64], manufacturer_name=manufacturer[:64],
            model_name=" ".join(filter(None, (model_id, model_version)))[:64] or None,
        ),
    )
    observer_person_context = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=observer_person),
    ) if observer_person else None
    procedure = coded(procedure_reported) if procedure_reported else _PROCEDURES.get(
        source.modality, codes.LN.DiagnosticImagingReport)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer_person_context,
                                                     observer_device_context=observer_device),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source.datasets, seg_dataset],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        series_description=series_description or (f"AI measurements ({model_id})" if model_id else "Measurements")[:64],
        specific_character_set=UTF8,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return SrExport(
        path=path,
        sop_instance_uid=str(sr.SOPInstanceUID),
        series_instance_uid=str(sr.SeriesInstanceUID),
        measurement_groups=len(groups),
        measurements=count,
        skipped=skipped,
        size_bytes=path.stat().st_size,
        seconds=time.monotonic() - started,
    )
