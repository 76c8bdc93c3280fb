"""TID 1500 measurement report (Comprehensive 3D SR) for the segments of a DICOM SEG.

One measurement group per segment (TID 1411): its tracking identifier and UID, a reference to
the SEG segment, the finding (the segment's codes), the algorithm, and one coded NUM item per
scalar statistic. RECIST axes, when given, are linear measurements in a second group per lesion
(TID 1501, method RECIST 1.1) with the SAME tracking identifier and UID, so readers tie them to the
segment: NUM "Long axis" / "Short axis" in mm, each with its line as an SCOORD POLYLINE on the
source image of its slice (or SCOORD3D in the frame of reference when the slices are not the
acquired images). TID 1411 does not allow coordinates on its measurements, hence the second group.
Codes, tracking and algorithm are read from the written SEG itself, so SR and SEG
always agree. Values are rounded first (:func:`sr_number`) so the decimal string every
DICOM reader sees (DS) and the binary float (FD) are the same number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from aiportal.errors import InputError
from aiportal.export.dicom_seg import MANUFACTURER, SegExport, coded, with_utf8
from aiportal.export.dicom_source import ExportSource
from aiportal.export.statistics import Quantity, SegmentStatistics
from aiportal.models.catalog import Code

if TYPE_CHECKING:
    from aiportal.measure.recist import RecistMeasurement
    from aiportal.vessels.analysis import VesselMeasurement

# Procedure reported (CID 100) by source modality.
PROCEDURES_BY_MODALITY = {
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


# an endpoint farther than this from the plane of its slice's image is not on that image
_ON_IMAGE_TOLERANCE_MM = 0.01


def pixel_coordinates(dataset: pydicom.Dataset, points_ras) -> np.ndarray:
    """(column, row) image coordinates of RAS points on a single-frame image, DICOM style: the top-left
    corner of the top-left pixel is (0, 0), so pixel (c, r) has its centre at (c + 0.5, r + 0.5)."""
    lps = np.asarray(points_ras, dtype=float) * np.array([-1.0, -1.0, 1.0])
    origin = np.array([float(v) for v in dataset.ImagePositionPatient])
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)  # between rows, between columns
    offsets = lps - origin
    off_plane = np.abs(offsets @ np.cross(row_cosine, column_cosine)).max()
    if off_plane > _ON_IMAGE_TOLERANCE_MM:
        raise InputError(f"A measured line lies {off_plane:.3f} mm off image {dataset.SOPInstanceUID}",
                         "measure on the volume loaded from the exported series")
    return np.column_stack([offsets @ row_cosine / column_spacing + 0.5, offsets @ column_cosine / row_spacing + 0.5])


def _line_3d(points_ras, source: ExportSource) -> hd.sr.CoordinatesForMeasurement3D:
    """A polyline in the frame of reference (SCOORD3D), for lines that are not on one source image."""
    return hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
        graphic_data=np.asarray(points_ras, dtype=float) * np.array([-1.0, -1.0, 1.0]),  # RAS -> LPS
        frame_of_reference_uid=source.frame_of_reference_uid,
    )


def _finding(description: hd.seg.SegmentDescription) -> dict:
    """What ties a measurement group to its SEG segment: tracking identifier and UID, finding and site."""
    regions = description.anatomic_regions
    return {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=str(description.TrackingUID),
                                                        identifier=str(description.TrackingID)),
        "finding_type": description.segmented_property_type,
        "finding_category": description.segmented_property_category,
        "finding_sites": [hd.sr.FindingSite(regions[0])] if regions else None,
    }


def axis_measurements(axes: RecistMeasurement, source: ExportSource) -> list[hd.sr.Measurement]:
    """The long and short axis as NUM items, each with its line: SCOORD on the slice's source image
    when the slice is an acquired image (slices along k), else SCOORD3D in the frame of reference."""
    on_image = axes.slice_axis == "k" and 0 <= axes.slice_index < len(source.datasets)
    measurements = []
    for concept, length, endpoints in ((codes.SCT.LongAxis, axes.long_axis_mm, axes.long_axis_endpoints_ras),
                                       (codes.SCT.ShortAxis, axes.short_axis_mm, axes.short_axis_endpoints_ras)):
        if on_image:
            image = source.datasets[axes.slice_index]
            coordinates = hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=pixel_coordinates(image, endpoints),
                source_image=hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID)),
            )
        else:
            coordinates = _line_3d(endpoints, source)
        measurements.append(hd.sr.Measurement(name=concept, value=sr_number(length), unit=codes.UCUM.Millimeter,
                                              referenced_coordinates=[coordinates]))
    return measurements


def _axes_group(axes: RecistMeasurement, description: hd.seg.SegmentDescription,
                source: ExportSource) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of a lesion's RECIST axes, tracked as its segment (or, for one of several lesions of a
    segment, as "<segment tracking id> lesion N" with a UID derived from the segment's)."""
    on_image = axes.slice_axis == "k" and 0 <= axes.slice_index < len(source.datasets)
    image = source.datasets[axes.slice_index] if on_image else None
    uid, identifier = str(description.TrackingUID), str(description.TrackingID)
    if axes.lesions_in_segment > 1:  # each lesion of the segment is tracked on its own, the same UID every time
        uid = generate_uid(entropy_srcs=["aiportal-lesion", uid, str(axes.lesion_index)])
        identifier = f"{identifier} lesion {axes.lesion_index}"[:64]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        **{**_finding(description),
           "tracking_identifier": hd.sr.TrackingIdentifier(uid=uid, identifier=identifier)},
        method=codes.cid6147.RECIST1Point1,
        measurements=axis_measurements(axes, source),
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(image.SOPClassUID), str(image.SOPInstanceUID))]
        if image is not None else None,
    )


def _vessel_group(vessel: VesselMeasurement, description: hd.seg.SegmentDescription,
                  source: ExportSource) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of a vessel, tracked as its segment: the maximum diameter perpendicular to the
    centreline (Diameter, derivation Maximum) and the perpendicular diameter there, each with its line
    (SCOORD3D: the cross-section is oblique), that cross-section's area, and the centreline's path
    length with the centreline as a polyline."""
    section = vessel.maximum.section
    items = [
        hd.sr.Measurement(name=codes.SCT.Diameter, value=sr_number(section.max_diameter_mm), unit=codes.UCUM.Millimeter,
                          derivation=codes.SCT.Maximum,
                          referenced_coordinates=[_line_3d(section.max_diameter_endpoints, source)]),
        hd.sr.Measurement(name=codes.SCT.PerpendicularAxis, value=sr_number(section.perpendicular_diameter_mm),
                          unit=codes.UCUM.Millimeter,
                          referenced_coordinates=[_line_3d(section.perpendicular_endpoints, source)]),
        hd.sr.Measurement(name=codes.SCT.Area, value=sr_number(section.area_mm2), unit=codes.UCUM.SquareMillimeter),
    ]
    if vessel.centreline.paths:  # a landmark disc has no centreline
        centreline = vessel.centreline.paths[0].points
        items.append(hd.sr.Measurement(
            name=codes.cid7470.PathLength, value=sr_number(vessel.centerline_length_mm), unit=codes.UCUM.Millimeter,
            referenced_coordinates=[_line_3d(np.vstack([centreline[::10], centreline[-1:]]), source)]))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        **_finding(description),
        measurements=items,
    )


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
    axes: Sequence[RecistMeasurement] = (),
    vessels: Sequence[VesselMeasurement] = (),
    key_images: Sequence[pydicom.Dataset] = (),
) -> SrExport:
    """Write a TID 1500 Comprehensive 3D SR with the statistics of the segments of ``seg``.

    ``statistics`` are matched to SEG segments by segment id (those not in the SEG are skipped);
    ``quantities`` None means each row's own (:attr:`SegmentStatistics.quantities`). Non-scalar
    quantities are left out, and so are NaN values (listed in :attr:`SrExport.skipped`).
    The observer is the device (``device_name``; model: ``model_id`` and ``model_version``, by
    default the algorithm named in the SEG; a UID derived from both, the same for every report of
    that model) and, optionally, a person (``observer_person``, DICOM name form "Family^Given").
    The evidence is the source images and the SEG. The procedure reported defaults to "<modality>
    unspecified body region". ``axes`` (RECIST measurements made on the source volume) add one group per
    lesion with the long and short axis and their lines; ``vessels`` (vessel analyses) one group per
    vessel with its maximum diameter perpendicular to the centreline (:func:`_vessel_group`).
    ``key_images`` (Secondary Capture headers, :mod:`aiportal.export.dicom_sc`) go into the report's
    image library and its evidence.
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
    for measured in axes:
        if measured.segment_id not in seg.segment_numbers:
            skipped.append(f"{measured.lesion_name}: RECIST axes (segment not in the SEG)")
            continue
        groups.append(_axes_group(measured, descriptions[seg.segment_numbers[measured.segment_id]], source))
        count += 2
    for vessel in vessels:
        if vessel.segment_id not in seg.segment_numbers or vessel.maximum is None:
            why = "segment not in the SEG" if vessel.maximum else "no cross-section"
            skipped.append(f"{vessel.name}: vessel diameters ({why})")
            continue
        groups.append(_vessel_group(vessel, descriptions[seg.segment_numbers[vessel.segment_id]], source))
        count += 4
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
    procedure = coded(procedure_reported) if procedure_reported else PROCEDURES_BY_MODALITY.get(
        source.modality, codes.LN.DiagnosticImagingReport)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer_person_context,
                                                     observer_device_context=observer_device),
        procedure_reported=procedure,
        imaging_measurements=groups,
        referenced_images=list(key_images) or None,
    )
    sr = with_utf8(
        hd.sr.Comprehensive3DSR,
        evidence=[*source.datasets, seg_dataset, *key_images],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        series_description=series_description or (f"AI measurements ({model_id})" if model_id else "Measurements")[:64],
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
