"""DICOM SEG from a segmentation node, with highdicom: coded segments that reference their CT/MR.

Every segment carries its name, SNOMED codes (from its terminology), the algorithm that made it
(from its provenance), a tracking id and UID and its colour. Pixels come from the segmentation
resampled on the source volume's grid, slice k paired with source header k of
(a tilted or unevenly spaced series resampled onto a regular grid: mapped back onto its acquired slices)
:class:`~aiportal.export.dicom_source.ExportSource` (whose order was checked against the volume).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from aiportal import __version__, terminology
from aiportal.errors import AIPortalError, InputError
from aiportal.export.dicom_objects import MANUFACTURER, UTF8, drop_empty_copied_sequences, with_utf8  # noqa: F401 (re-exported)
from aiportal.export.dicom_source import ExportSource
from aiportal.io.geometry import labels_to_acquired
from aiportal.models.catalog import Code, ModelEntry, get_catalog
from aiportal.provenance import TAG_PREFIX, Provenance, read_tag, software_versions
from aiportal.segmentation import REVIEW_TAG, segment_mask, segment_number_map, segment_voxel_counts, shape_kji
from aiportal.segmentation import segment_ids as all_segment_ids

#: Segment tag holding the segment's DICOM tracking UID, so re-exports keep the same identity.
TRACKING_UID_TAG = TAG_PREFIX + "tracking_uid"
# CID 7162 Algorithm Family: classical models are thresholds plus morphology on the image.
_FAMILIES = {"AI": codes.cid7162.ArtificialIntelligence, "classical": codes.cid7162.MorphologicalOperations}


@dataclass
class SegExport:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    segmentation_type: str
    segment_numbers: dict[str, int]  # segment id -> SEG segment number
    tracking_uids: dict[str, str]  # segment id -> tracking UID
    tracking_ids: dict[str, str]  # segment id -> tracking id
    empty_segments: list[str] = field(default_factory=list)  # names of segments left out: no voxel
    number_of_frames: int = 0
    size_bytes: int = 0
    seconds: float = 0.0


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _model_entry(model_id: str) -> ModelEntry | None:
    try:
        return get_catalog().get(model_id)
    except AIPortalError:  # a model this installation does not know (e.g. a result from elsewhere)
        return None


def algorithm_identification(provenance: Provenance) -> hd.AlgorithmIdentificationSequence:
    """Name, version and family of the model that made a segment, with its run parameters."""
    entry = _model_entry(provenance.model_id)
    parameters = {key: value if isinstance(value, str) else json.dumps(value)
                  for key, value in sorted(provenance.parameters.items())}
    return hd.AlgorithmIdentificationSequence(
        name=entry.title if entry else provenance.model_id,
        family=_FAMILIES[entry.family if entry else "AI"],
        version=provenance.model_version or (entry.version if entry else "unknown"),
        source=MANUFACTURER,
        parameters=parameters or None,
    )


def _algorithm_type(segment, provenance: Provenance | None) -> str:
    if provenance is None:
        return "MANUAL"
    return "SEMIAUTOMATIC" if read_tag(segment, REVIEW_TAG) == "modified" else "AUTOMATIC"


def _tracking_uid(segment) -> str:
    uid = read_tag(segment, TRACKING_UID_TAG)
    if not uid:
        uid = hd.UID()
        segment.SetTag(TRACKING_UID_TAG, uid)
    return uid


def _display_color(segment) -> hd.color.CIELabColor:
    red, green, blue = (int(round(channel * 255)) for channel in segment.GetColor())
    return hd.color.CIELabColor.from_rgb(red, green, blue)


def _pixel_array(segmentation_node, volume_node, ids: list[str], shape: tuple[int, ...], names: list[str],
                 segmentation_type: str) -> np.ndarray:
    """Segment numbers as one label array when the segments are disjoint (n_slices x rows x columns),
    read in one pass per shared layer; else one boolean plane per segment (LABELMAP must be disjoint)."""
    numbers = segment_number_map(segmentation_node, volume_node, ids)
    if numbers is not None:
        return numbers
    # overlapping segments (or layers off the volume grid): one mask per segment, kept bit-packed
    # so that only the array handed to highdicom is full size
    packed = [np.packbits(segment_mask(segmentation_node, segment_id, volume_node)) for segment_id in ids]
    labels = np.zeros(shape, dtype=np.uint8 if len(packed) < 256 else np.uint16)
    for number, bits in enumerate(packed, start=1):
        mask = _unpack(bits, shape)
        if (overlapped := labels[mask]).any():
            if segmentation_type == "LABELMAP":
                other = names[int(overlapped[overlapped != 0][0]) - 1]
                raise InputError(
                    f"Segments {other} and {names[number - 1]} overlap, so they cannot be written as a LABELMAP SEG "
                    "(one segment per voxel)",
                    "export as BINARY (the default), or remove the overlaps",
                )
            del labels, mask, overlapped  # free the label array before the full-size stack
            stack = np.empty((*shape, len(packed)), dtype=bool)
            for index, segment_bits in enumerate(packed):
                stack[..., index] = _unpack(segment_bits, shape)
            return stack
        labels[mask] = number
    return labels


def _unpack(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def _series_description(models: list[str]) -> str:
    return f"AI segmentation ({', '.join(models)})"[:64] if models else "Segmentation"


@dataclass
class SegPlan:
    """Everything a SEG needs, read from the scene: encoding it (:func:`encode_seg`) touches no VTK object."""

    arguments: dict  # keyword arguments of highdicom's Segmentation
    kept: list[str]  # segment ids, in SEG segment number order
    empty_segments: list[str]
    started: float


def write_seg(segmentation_node, volume_node, source: ExportSource, path, **options) -> SegExport:
    """Write the segments (default: all) as a DICOM SEG that references ``source``'s images (see :func:`plan_seg`)."""
    return encode_seg(plan_seg(segmentation_node, volume_node, source, **options), path)


def plan_seg(
    segmentation_node,
    volume_node,
    source: ExportSource,
    *,
    segmentation_type: str = "BINARY",
    segment_ids: list[str] | None = None,
    series_number: int = 300,
    series_description: str | None = None,
    content_creator_name: str | None = None,
    manufacturer: str = MANUFACTURER,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> SegPlan:
    """Read what the DICOM SEG of the segments (default: all) needs from the scene.

    BINARY (default) is what PACS and viewers support best; LABELMAP (Supplement 243, 2024) is
    smaller for many segments but still unknown to many tools. Empty frames are left out and
    empty segments skipped (listed in :attr:`SegExport.empty_segments`). Segments without
    terminology are refused: a SEG segment needs its SNOMED codes. Stores a tracking UID on each
    exported segment (tag ``AIPortal.tracking_uid``) so later exports keep its identity.
    """
    started = time.monotonic()
    if segmentation_type not in ("BINARY", "LABELMAP"):
        raise ValueError(f"segmentation_type must be BINARY or LABELMAP, not {segmentation_type!r}")
    if source.volume_node_id != volume_node.GetID():  # the source was checked against another volume
        raise ValueError(f"source describes volume {source.volume_node_id}, not {volume_node.GetID()}")
    segmentation = segmentation_node.GetSegmentation()
    ids = list(segment_ids) if segment_ids is not None else all_segment_ids(segmentation_node)
    segments = {segment_id: segmentation.GetSegment(segment_id) for segment_id in ids}
    unknown = [segment_id for segment_id, segment in segments.items() if segment is None]
    if unknown:
        raise ValueError(f"no such segments in {segmentation_node.GetName()}: {', '.join(unknown)}")
    codes_by_id = {segment_id: terminology.deserialize(segment.GetTerminology())
                   for segment_id, segment in segments.items()}
    uncoded = [segments[segment_id].GetName() for segment_id, c in codes_by_id.items() if c is None]
    if uncoded:
        raise InputError(
            f"Segments without terminology cannot go into a DICOM SEG: {', '.join(uncoded)}",
            "set each segment's terminology (category and type) in the Segment Editor, or leave those segments out",
        )

    descriptions, kept, empty, models = [], [], [], []
    shape = shape_kji(volume_node)
    voxels = segment_voxel_counts(segmentation_node)
    for segment_id, segment in segments.items():
        if not voxels.get(segment_id):
            empty.append(segment.GetName())
            continue
        number = len(kept) + 1
        segment_codes = codes_by_id[segment_id]
        assert segment_codes is not None  # refused above
        provenance = Provenance.of_segment(segment)
        algorithm = algorithm_identification(provenance) if provenance else None
        if algorithm is not None and algorithm[0].AlgorithmName not in models:
            models.append(str(algorithm[0].AlgorithmName))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.GetName()[:64],
            segmented_property_category=coded(segment_codes.category),
            segmented_property_type=coded(segment_codes.type),
            algorithm_type=_algorithm_type(segment, provenance),
            algorithm_identification=algorithm,
            tracking_uid=_tracking_uid(segment),
            tracking_id=f"{segment.GetName()} #{number}"[:64],
            anatomic_regions=[coded(segment_codes.region)] if segment_codes.region else None,
            display_color=_display_color(segment),
        ))
        # Modifiers (e.g. laterality) sit inside the item they modify; highdicom has no argument for them.
        if segment_codes.type_modifier is not None:
            descriptions[-1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                coded(segment_codes.type_modifier)]
        if segment_codes.region is not None and segment_codes.region_modifier is not None:
            descriptions[-1].AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                coded(segment_codes.region_modifier)]
        kept.append(segment_id)
    if not kept:
        raise InputError(
            f"Segmentation {segmentation_node.GetName()} has no voxels in the chosen segments",
            "segment something first, or choose non-empty segments",
        )

    pixels = _pixel_array(segmentation_node, volume_node, kept, shape, [d.SegmentLabel for d in descriptions],
                          segmentation_type)
    if source.regular_grid is not None:  # resampled (tilted / uneven) series: frames on the acquired slices
        first = source.datasets[0]
        pixels = labels_to_acquired(pixels, source.regular_grid, int(first.Rows), int(first.Columns))
    arguments = dict(
        source_images=source.datasets,
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=", ".join(models)[:64] or MANUFACTURER,
        software_versions=software_versions()[:64],
        device_serial_number=__version__,
        series_description=series_description or _series_description(models),
        content_description="Segmentation made with the AI Segment Portal",
        content_creator_name=content_creator_name,
        content_label="SEGMENTATION",
        omit_empty_frames=True,
        transfer_syntax_uid=transfer_syntax_uid,
    )
    return SegPlan(arguments, kept, empty, started)


def encode_seg(plan: SegPlan, path) -> SegExport:
    """Encode and save a planned SEG (pure highdicom / pydicom: may run in a forked process)."""
    seg = with_utf8(hd.seg.Segmentation, **plan.arguments)
    drop_empty_copied_sequences(seg, plan.arguments["source_images"][0])
    descriptions, kept = plan.arguments["segment_descriptions"], plan.kept
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    tracking_uids = {segment_id: str(d.TrackingUID) for segment_id, d in zip(kept, descriptions, strict=True)}
    tracking_ids = {segment_id: str(d.TrackingID) for segment_id, d in zip(kept, descriptions, strict=True)}
    return SegExport(
        path=path,
        sop_instance_uid=str(seg.SOPInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID),
        segmentation_type=plan.arguments["segmentation_type"],
        segment_numbers={segment_id: number for number, segment_id in enumerate(kept, start=1)},
        tracking_uids=tracking_uids,
        tracking_ids=tracking_ids,
        empty_segments=plan.empty_segments,
        number_of_frames=int(seg.NumberOfFrames),
        size_bytes=path.stat().st_size,
        seconds=time.monotonic() - plan.started,
    )
