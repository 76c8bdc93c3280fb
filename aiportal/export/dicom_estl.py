"""3D models as DICOM Encapsulated STL (SOP Class 1.2.840.10008.5.1.4.1.1.104.3), for the patient's study.

A PACS cannot store an STL file; wrapped in an Encapsulated STL object it travels with the study.
Each object holds one binary STL of a segment (or of all segments, merged): the volume-true surface
(:mod:`aiportal.export.surfaces`) in the source series' patient coordinates (LPS, mm), in its frame of
reference. The patient and study modules are copied from the source images (as in the SEG), the
object references the SEG it was made from and the source images (Source Instance Sequence), and
names the producing software (Enhanced General Equipment). :func:`stl_mesh` reads the encapsulated
bytes back into a mesh, independently of VTK, so a round trip can check that it is closed and
encloses the same volume.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aiportal import __version__
from aiportal.errors import AIPortalError
from aiportal.export.dicom_seg import MANUFACTURER, with_utf8
from aiportal.export.dicom_source import ExportSource, copy_patient_and_study
from aiportal.provenance import software_versions

ENCAPSULATED_STL_STORAGE = "1.2.840.10008.5.1.4.1.1.104.3"
STL_MIME_TYPE = "model/stl"
_HEADER_BYTES, _TRIANGLE_BYTES = 80, 50


@dataclass
class StlMesh:
    points: np.ndarray  # (n, 3) float64, the distinct vertices
    triangles: np.ndarray  # (m, 3) vertex indices

    @property
    def closed(self) -> bool:
        """Every edge shared by exactly two triangles (no hole, no non-manifold edge)."""
        if not len(self.triangles):
            return False
        edges = np.sort(self.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).astype(np.int64), axis=1)
        _, counts = np.unique(edges[:, 0] * len(self.points) + edges[:, 1], return_counts=True)
        return bool((counts == 2).all())

    @property
    def volume_mm3(self) -> float:
        """Enclosed volume (positive when the triangles face outwards)."""
        a, b, c = (self.points[self.triangles[:, k]] for k in range(3))
        return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def stl_mesh(data: bytes) -> StlMesh:
    """A binary STL's triangles, with coincident vertices merged (STL repeats them per triangle) and
    triangles collapsed to a segment dropped."""
    if len(data) < _HEADER_BYTES + 4:
        raise AIPortalError("not a binary STL: shorter than its header")
    (count,) = struct.unpack_from("<I", data, _HEADER_BYTES)
    if len(data) != _HEADER_BYTES + 4 + count * _TRIANGLE_BYTES:
        raise AIPortalError(f"not a binary STL: {len(data)} bytes for {count} triangles")
    records = np.frombuffer(data, dtype=np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)),
                                                  ("attribute", "<u2")]), count=count, offset=_HEADER_BYTES + 4)
    corners = np.ascontiguousarray(records["vertices"].reshape(-1, 3))
    # exact duplicates only: one 12-byte key per corner is far faster than np.unique(axis=0)
    _, first, inverse = np.unique(corners.view(np.dtype((np.void, 12))).ravel(), return_index=True,
                                  return_inverse=True)
    triangles = inverse.reshape(-1, 3)
    # STL stores float32: two vertices a hundredth of a micrometre apart become one, and a sliver
    # triangle between them collapses to a segment. Such triangles enclose nothing; they are dropped.
    collapsed = (triangles[:, 0] == triangles[:, 1]) | (triangles[:, 1] == triangles[:, 2]) | \
        (triangles[:, 0] == triangles[:, 2])
    return StlMesh(corners[first].astype(np.float64), triangles[~collapsed])


@dataclass
class ModelExport:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    title: str
    triangles: int
    volume_mm3: float
    closed: bool


@dataclass(frozen=True)
class SegReference:
    """The DICOM SEG a model was made from."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _series_reference(series_uid: str, references: list[Dataset]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.ReferencedInstanceSequence = Sequence(references)
    return item


def encapsulated_stl(
    stl: bytes,
    source: ExportSource,
    *,
    title: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    seg_reference: SegReference | None = None,
    concept: hd.sr.CodedConcept | None = None,
    series_number: int = 302,
    series_description: str = "AI segmentation 3D models",
    manufacturer_model_name: str = MANUFACTURER,
) -> tuple[hd.SOPClass, StlMesh]:
    """An Encapsulated STL dataset of ``stl`` (binary STL, LPS mm) in the source study and frame of reference.

    ``seg_reference`` is the SEG the surface was made from; ``concept`` codes the document title (e.g.
    the segment's property type).
    """
    mesh = stl_mesh(stl)  # refuses anything but binary STL
    if not mesh.closed:
        raise AIPortalError(f"The surface of {title} is not closed", "export again with a lower decimation factor")
    first = source.datasets[0]
    dataset = with_utf8(
        hd.SOPClass,
        study_instance_uid=source.study_uid,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=ENCAPSULATED_STL_STORAGE,
        instance_number=instance_number,
        modality="M3D",
        manufacturer=MANUFACTURER,
        manufacturer_model_name=manufacturer_model_name[:64],
        software_versions=software_versions()[:64],
        device_serial_number=__version__,
        series_description=series_description[:64],
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )
    copy_patient_and_study(dataset, first)
    # Frame of Reference: the surface is in the source images' patient coordinates
    dataset.FrameOfReferenceUID = source.frame_of_reference_uid
    dataset.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # Encapsulated Document
    dataset.AcquisitionDateTime = f"{dataset.ContentDate}{dataset.ContentTime}"
    dataset.BurnedInAnnotation = "NO"
    dataset.DocumentTitle = title[:1024]
    dataset.ConceptNameCodeSequence = Sequence([concept] if concept is not None else [])
    dataset.MIMETypeOfEncapsulatedDocument = STL_MIME_TYPE
    images = [_reference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in source.datasets]
    seg = [_reference(seg_reference.sop_class_uid, seg_reference.sop_instance_uid)] if seg_reference else []
    dataset.SourceInstanceSequence = Sequence(copy.deepcopy(seg + images))
    # Common Instance Reference: the same instances by series (all in this study)
    series = [_series_reference(source.series_uid, images)]
    if seg_reference:
        series.append(_series_reference(seg_reference.series_instance_uid, seg))
    dataset.ReferencedSeriesSequence = Sequence(series)
    # an odd-length STL is padded to even length; the length says where the file ends
    dataset.EncapsulatedDocument = stl + (b"\0" if len(stl) % 2 else b"")
    dataset.EncapsulatedDocumentLength = len(stl)
    # Manufacturing 3D Model: coordinates in millimetres
    dataset.MeasurementUnitsCodeSequence = Sequence([hd.sr.CodedConcept("mm", "UCUM", "millimeter")])
    return dataset, mesh


def encapsulated_bytes(dataset: Dataset) -> bytes:
    """The STL file inside an Encapsulated STL object, without its padding."""
    data = bytes(dataset.EncapsulatedDocument)
    length = int(dataset.get("EncapsulatedDocumentLength", len(data)))
    return data[:length]


def write_models(
    stl_files: list[tuple[str, Path, hd.sr.CodedConcept | None]],
    source: ExportSource,
    folder: Path,
    *,
    seg_reference: SegReference | None = None,
    manufacturer_model_name: str = MANUFACTURER,
) -> list[ModelExport]:
    """One Encapsulated STL per (title, STL file, concept) in ``folder`` (one series), named after the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = hd.UID()
    written = []
    for number, (title, stl_path, concept) in enumerate(stl_files, start=1):
        stl = Path(stl_path).read_bytes()  # Slicer writes binary STL
        dataset, mesh = encapsulated_stl(stl, source, title=title, series_instance_uid=series_uid,
                                         sop_instance_uid=hd.UID(), instance_number=number,
                                         seg_reference=seg_reference, concept=concept,
                                         manufacturer_model_name=manufacturer_model_name)
        path = folder / f"{Path(stl_path).stem}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        written.append(ModelExport(path, str(dataset.SOPInstanceUID), series_uid, title, len(mesh.triangles),
                                   mesh.volume_mm3, mesh.closed))
    return written
