"""Find, group, sort and decode DICOM image series (pure pydicom/numpy, no Slicer).

The one series loader of the project: everything that turns DICOM files into a voxel array with
its exact IJK→RAS geometry goes through :func:`read_dicom_series`. It keeps the source headers
(:class:`SourceSeries`) so that DICOM SEG/SR exports can reference the images they came from.

Rules (see the DICOM field report, §8): slices are sorted by their position along the slice
normal, never by file name or InstanceNumber; a gantry-tilted or unevenly spaced series (tilt,
missing slices, a change of spacing) is resampled onto a regular grid by default and said so
(:mod:`aiportal.io.geometry`; its acquired slices on request); anything that would give a wrong
volume is an :class:`~aiportal.errors.InputError` that names the input and the fix. Pixels are
decoded in :mod:`aiportal.io.dicom_pixels`.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from aiportal.errors import InputError
from aiportal.io.dicom_pixels import apply_rescale, cut_short, damaged, int_or_none, stack_pixels
from aiportal.io.geometry import POSITION_TOLERANCE_MM, Geometry, RegularGrid, SliceStack, place_on_grid
from aiportal.progress import CancelToken, ProgressCallback, no_progress

#: LPS (DICOM patient coordinates) → RAS (Slicer world coordinates).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Modalities whose objects carry no image volume to load (they reference one).
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RWV", "KO", "PR", "REG", "DOC"})

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Positions and cosines in DICOM files are decimal strings with ~6 significant digits.
_POSITION_TOLERANCE_MM = POSITION_TOLERANCE_MM
_ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in a folder, as listed to the user."""

    series_uid: str
    modality: str
    description: str
    series_number: int | None
    number_of_files: int
    key: str  # SeriesInstanceUID, or a key built from geometry when the UID is empty
    is_image: bool = True  # False for SEG, SR and other objects without an image volume

    def describe(self) -> str:
        """One line for listings: key, modality, description and file count."""
        number = f" #{self.series_number}" if self.series_number is not None else ""
        description = self.description or "(no description)"
        kind = "" if self.is_image else ", not an image series"
        files = f"{self.number_of_files} file{'s' if self.number_of_files != 1 else ''}"
        return f"{self.key}: {self.modality or '?'}{number} '{description}', {files}{kind}"


@dataclass
class SourceSeries:
    """Everything later needed to reference the source images in DICOM SEG/SR."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    patient_id: str
    patient_name: str
    study_date: str
    study_description: str
    series_description: str
    accession_number: str
    files: list[Path]  # sorted along the slice normal (same order as array axis 0)
    headers: list[pydicom.Dataset]  # read with stop_before_pixels=True, same order
    series_number: int | None = None
    # Same order: the 0-based frame of a multi-frame file each slice comes from (None: single-frame).
    # A multi-frame file then appears once per frame in ``files`` and ``headers``.
    frames: list[int | None] = field(default_factory=list)
    key: str = ""  # the grouping key (equals series_uid when the files have one)
    # The regular grid the volume was resampled onto (tilt, uneven spacing); None: the volume's k
    # axis is the acquired slices. A SEG then maps its labels back onto the acquired slices.
    regular_grid: RegularGrid | None = None

    @property
    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUID of each slice (repeated for the frames of a multi-frame file)."""
        return [str(h.get("SOPInstanceUID", "") or "") for h in self.headers]

    def reference(self) -> dict[str, object]:
        """The UIDs that identify these images (no patient data), e.g. for a run record."""
        return {"study_uid": self.study_uid, "series_uid": self.series_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid, "modality": self.modality,
                "series_number": self.series_number, "sop_instance_uids": self.sop_instance_uids}

    @property
    def instance_uids_text(self) -> str:
        """Space-separated distinct SOPInstanceUIDs in slice order, as Slicer's DICOM loader stores
        them (``DICOM.instanceUIDs``); empty when any is missing (anonymised files)."""
        uids = list(dict.fromkeys(self.sop_instance_uids))
        return " ".join(uids) if all(uids) else ""


@dataclass
class ImageData:
    """A decoded volume: voxels in (k, j, i) order and the matrix that places them in RAS."""

    array: np.ndarray  # (slice, row, column); int16 when rescale is integral, else float32
    ijk_to_ras: np.ndarray  # 4x4 float64, maps (i, j, k, 1) -> RAS mm
    source: SourceSeries | None
    warnings: list[str] = field(default_factory=list)
    geometry: dict = field(default_factory=dict)  # which grid the voxels are on, for run records


@dataclass
class _File:
    path: Path
    header: pydicom.Dataset


# ---------------------------------------------------------------------------------------------
# Finding and grouping files


def _text(header: pydicom.Dataset, keyword: str) -> str:
    value = header.get(keyword, "")
    return "" if value is None else str(value).strip()


def _read_header(path: Path, input_path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, None for a non-DICOM file; InputError for a damaged one."""
    # pydicom reads a file cut inside its header without complaint; only reaching the end of the
    # file before the pixel data of an image shows that it was cut short.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with path.open("rb") as stream:
                header = pydicom.dcmread(stream, stop_before_pixels=True)
                at_end = stream.tell() >= path.stat().st_size
        except InvalidDicomError:
            return None
        except Exception as error:  # pydicom raises many types on garbled headers
            raise damaged(path, input_path, f"{type(error).__name__}: {error}") from error
    if cut_short(caught) or (at_end and _expects_pixels(header)):
        raise damaged(path, input_path, "the file ends before its pixel data (cut short?)")
    return header


def _expects_pixels(header: pydicom.Dataset) -> bool:
    """Whether a header belongs to an image (or is too incomplete to say it does not)."""
    if "SOPClassUID" not in header:
        return True
    if "Rows" in header or "ImagePositionPatient" in header:
        return True
    modality = _text(header, "Modality").upper()
    return bool(modality) and modality not in NON_IMAGE_MODALITIES


def _scan(folder: Path, cancel: CancelToken | None) -> list[_File]:
    """All DICOM files under ``folder`` (recursively), skipping DICOMDIR and non-DICOM files."""
    if not folder.exists():
        raise InputError(f"{folder} does not exist", "check the path (a DICOM folder or an image file)")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", "pass the folder that holds the DICOM series")
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if not paths:
        raise InputError(f"Folder {folder} is empty", "choose the folder that holds the DICOM series")
    found: list[_File] = []
    for path in paths:
        if cancel is not None:
            cancel.check("scanning the DICOM folder")
        if path.name.upper() == "DICOMDIR":
            continue
        header = _read_header(path, folder)
        if header is None:
            continue
        media_class = str(getattr(header, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
        if media_class == _DICOMDIR_SOP_CLASS:
            continue
        found.append(_File(path, header))
    if not found:
        raise InputError(
            f"Folder {folder} contains no DICOM files ({len(paths)} other files)",
            "choose the folder that holds the DICOM series, or pass a NIfTI/NRRD file",
        )
    return found


def _relative(path: Path, folder: Path) -> str:
    """How a file is named in messages: relative to the input folder when inside it."""
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _orientation(header: pydicom.Dataset) -> tuple[float, ...] | None:
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return tuple(float(v) for v in iop)


def _group_key(header: pydicom.Dataset) -> str:
    """SeriesInstanceUID, or, when anonymisation emptied it, a key from what a series shares."""
    uid = _text(header, "SeriesInstanceUID")
    if uid:
        return uid
    iop = _orientation(header)
    rounded = tuple(round(v, 3) + 0.0 for v in iop) if iop else None  # + 0.0 folds -0.0 into 0.0
    fields = (
        _text(header, "StudyInstanceUID"),
        _text(header, "FrameOfReferenceUID"),
        _text(header, "SeriesNumber"),
        _text(header, "Modality"),
        rounded,
        header.get("Rows"),
        header.get("Columns"),
    )
    return "nouid-" + hashlib.sha1(repr(fields).encode()).hexdigest()[:10]


def _is_image(header: pydicom.Dataset) -> bool:
    return _text(header, "Modality").upper() not in NON_IMAGE_MODALITIES and "Rows" in header and "Columns" in header


def _group(files: list[_File]) -> dict[str, list[_File]]:
    """Files by series key; objects without images get their own group even when they share
    the images' SeriesInstanceUID (some writers put an SR or SEG into the image series)."""
    images: dict[str, list[_File]] = {}
    others: dict[str, list[_File]] = {}
    for item in files:
        target = images if _is_image(item.header) else others
        target.setdefault(_group_key(item.header), []).append(item)
    groups = dict(images)
    for key, members in others.items():
        groups[f"{key}#{_text(members[0].header, 'Modality') or 'other'}" if key in images else key] = members
    return groups


def _summary(key: str, members: list[_File]) -> SeriesSummary:
    header = members[0].header
    return SeriesSummary(
        series_uid=_text(header, "SeriesInstanceUID"),
        modality=_text(header, "Modality"),
        description=_text(header, "SeriesDescription"),
        series_number=int_or_none(header, "SeriesNumber"),
        number_of_files=len(members),
        key=key,
        is_image=_is_image(header),
    )


def list_series(folder: Path) -> list[SeriesSummary]:
    """Every series under ``folder``: images first, then by series number and key."""
    return _sorted_summaries(_group(_scan(Path(folder), None)))


def _sorted_summaries(groups: dict[str, list[_File]]) -> list[SeriesSummary]:
    summaries = [_summary(key, members) for key, members in groups.items()]
    return sorted(summaries, key=lambda s: (not s.is_image, s.series_number or 0, s.key))


# ---------------------------------------------------------------------------------------------
# Choosing one series


def _listing(summaries: list[SeriesSummary]) -> str:
    return "; ".join(s.describe() for s in summaries)


def _select(folder: Path, groups: dict[str, list[_File]], series_uid: str | None) -> tuple[str, list[_File]]:
    summaries = _sorted_summaries(groups)
    if series_uid:
        for summary in summaries:
            if series_uid in (summary.series_uid, summary.key):
                if not summary.is_image:
                    raise InputError(
                        f"Series {series_uid} in {folder} is a {summary.modality or 'non-image'} object "
                        "without an image volume",
                        "pick an image series: " + (_listing([s for s in summaries if s.is_image]) or "none found"),
                    )
                return summary.key, groups[summary.key]
        raise InputError(f"Series {series_uid} is not in {folder}", f"pass --series with one of: {_listing(summaries)}")
    images = [s for s in summaries if s.is_image]
    if not images:
        raise InputError(
            f"{folder} holds no image series, only {_listing(summaries)}",
            "choose the folder of the image series (CT, MR, ...) these objects refer to",
        )
    if len(images) > 1:
        raise InputError(
            f"{folder} holds {len(images)} image series: {_listing(images)}",
            "pass --series UID to choose one",
        )
    return images[0].key, groups[images[0].key]


# ---------------------------------------------------------------------------------------------
# Slices and geometry


@dataclass
class _Slice:
    """One 2D image of the series: a single-frame file, or one frame of a multi-frame file."""

    item: _File
    frame: int | None  # 0-based frame index in a multi-frame file
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray  # ImageOrientationPatient: row cosine, column cosine
    pixel_spacing: np.ndarray  # (between rows, between columns) in mm
    rescale: tuple[float, float]  # (slope, intercept)

    @property
    def path(self) -> Path:
        return self.item.path

    def name(self, folder: Path) -> str:
        frame = f" frame {self.frame + 1}" if self.frame is not None else ""
        return f"{_relative(self.item.path, folder)}{frame}"


def _numbers(value, count: int, what: str, where: str, folder: Path) -> np.ndarray:
    if value is None or value == "" or len(value) != count:
        raise InputError(
            f"DICOM image {where} in {folder} has no valid {what}, so its place in 3D is unknown",
            "load a series of cross-sectional images (CT, MR, PET), not a screenshot or secondary capture",
        )
    return np.array([float(v) for v in value])


def _rescale(source: pydicom.Dataset) -> tuple[float, float]:
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _functional_group(frame_groups, shared_groups, sequence: str) -> pydicom.Dataset | None:
    """A functional group of an enhanced multi-frame image: per-frame first, then shared."""
    for groups in (frame_groups, shared_groups):
        items = groups.get(sequence) if groups is not None else None
        if items:
            return items[0]
    return None


def _slices(folder: Path, members: list[_File]) -> list[_Slice]:
    slices = []
    for item in members:
        header = item.header
        frames = int_or_none(header, "NumberOfFrames") or 1
        if "PerFrameFunctionalGroupsSequence" in header:
            per_frame = header.PerFrameFunctionalGroupsSequence
            shared = header.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in header else None
            for frame in range(frames):
                where = f"{_relative(item.path, folder)} frame {frame + 1}"
                groups = per_frame[frame] if frame < len(per_frame) else None
                position = _functional_group(groups, shared, "PlanePositionSequence")
                orientation = _functional_group(groups, shared, "PlaneOrientationSequence")
                measures = _functional_group(groups, shared, "PixelMeasuresSequence")
                transform = _functional_group(groups, shared, "PixelValueTransformationSequence")
                slices.append(
                    _Slice(
                        item,
                        frame,
                        _numbers(position and position.get("ImagePositionPatient"), 3, "position", where, folder),
                        _numbers(
                            orientation and orientation.get("ImageOrientationPatient"), 6, "orientation", where, folder
                        ),
                        _numbers(measures and measures.get("PixelSpacing"), 2, "pixel spacing", where, folder),
                        _rescale(transform if transform is not None else header),
                    )
                )
        elif frames > 1:
            raise InputError(
                f"DICOM file {item.path} in {folder} is a {frames}-frame image without per-frame positions "
                "(cine or nuclear medicine)",
                "load a cross-sectional series (CT, MR, PET), single-frame or enhanced multi-frame",
            )
        else:
            where = _relative(item.path, folder)
            slices.append(
                _Slice(
                    item,
                    None,
                    _numbers(header.get("ImagePositionPatient"), 3, "ImagePositionPatient", where, folder),
                    _numbers(header.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where, folder),
                    _numbers(header.get("PixelSpacing"), 2, "PixelSpacing", where, folder),
                    _rescale(header),
                )
            )
    return slices


def _check_consistent(folder: Path, slices: list[_Slice]) -> None:
    """One volume needs one image size, orientation and pixel spacing."""
    first = slices[0]
    size0 = (first.item.header.get("Rows"), first.item.header.get("Columns"))
    for other in slices[1:]:
        size = (other.item.header.get("Rows"), other.item.header.get("Columns"))
        problem = None
        if size != size0:
            problem = (
                f"image sizes: {first.name(folder)} is {size0[0]}x{size0[1]}, "
                f"{other.name(folder)} is {size[0]}x{size[1]}"
            )
        elif np.max(np.abs(other.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            problem = (
                f"image orientations: {first.name(folder)} has {first.orientation.tolist()}, "
                f"{other.name(folder)} has {other.orientation.tolist()} (a localizer or a multi-plane series)"
            )
        elif np.max(np.abs(other.pixel_spacing - first.pixel_spacing)) > _POSITION_TOLERANCE_MM:
            problem = (
                f"pixel spacings: {first.name(folder)} has {first.pixel_spacing.tolist()}, "
                f"{other.name(folder)} has {other.pixel_spacing.tolist()}"
            )
        if problem:
            raise InputError(
                f"Series in {folder} mixes {problem}",
                "the files do not form one volume: remove the odd ones or load them as separate series",
            )


def _sort(folder: Path, slices: list[_Slice]) -> tuple[list[_Slice], SliceStack]:
    """Slices sorted along the normal (duplicates refused), and where they lie."""
    first = slices[0]
    row_cosine = first.orientation[:3] / np.linalg.norm(first.orientation[:3])
    column_cosine = first.orientation[3:] / np.linalg.norm(first.orientation[3:])
    normal = np.cross(row_cosine, column_cosine)
    distances = np.array([s.position @ normal for s in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    duplicates = np.flatnonzero(np.diff(distances) < _POSITION_TOLERANCE_MM)
    if duplicates.size:
        pairs = ", ".join(
            f"{slices[i].name(folder)} and {slices[i + 1].name(folder)} at {distances[i]:.3f} mm"
            for i in duplicates[:5]
        )
        raise InputError(
            f"Series in {folder} has {duplicates.size} duplicate slice position(s): {pairs}",
            "remove duplicate files, or split the series (several phases, echoes or time points share positions)",
        )
    header = first.item.header
    tilt = header.get("GantryDetectorTilt")
    row_spacing, column_spacing = first.pixel_spacing
    stack = SliceStack(
        positions=np.array([s.position for s in slices]), row_cosine=row_cosine, column_cosine=column_cosine,
        pixel_spacing=(float(column_spacing), float(row_spacing)), rows=int(header.get("Rows") or 0),
        columns=int(header.get("Columns") or 0), header_tilt_degrees=float(tilt) if tilt not in (None, "") else None)
    return slices, stack


# ---------------------------------------------------------------------------------------------
# Reading one series


def _resolve(path: Path, series_uid: str | None, cancel: CancelToken | None) -> tuple[Path, str, list[_File]]:
    """The folder to report, and the chosen series' key and files."""
    if path.is_file():
        # A single file stands for its whole series, found in its folder.
        header = _read_header(path, path.parent)
        if header is None:
            raise InputError(f"{path} is not a DICOM file", "pass a DICOM file or folder, NIfTI or NRRD")
        if not _is_image(header):
            raise InputError(
                f"DICOM file {path} is a {_text(header, 'Modality') or 'non-image'} object without an image volume",
                "pass a file or folder of the image series (CT, MR, ...) instead",
            )
        key = _group_key(header)
        if series_uid and series_uid not in (key, _text(header, "SeriesInstanceUID")):
            raise InputError(
                f"DICOM file {path} belongs to series {key}, not to the requested {series_uid}",
                "pass the folder to choose a series, or drop --series",
            )
        groups = _group(_scan(path.parent, cancel))
        return path.parent, key, groups[key]
    groups = _group(_scan(path, cancel))
    key, members = _select(path, groups, series_uid)
    return path, key, members


def _source_series(key: str, slices: list[_Slice]) -> SourceSeries:
    headers = [s.item.header for s in slices]
    first = headers[0]
    return SourceSeries(
        study_uid=_text(first, "StudyInstanceUID"),
        series_uid=_text(first, "SeriesInstanceUID"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        modality=_text(first, "Modality"),
        patient_id=_text(first, "PatientID"),
        patient_name=_text(first, "PatientName"),
        study_date=_text(first, "StudyDate"),
        study_description=_text(first, "StudyDescription"),
        series_description=_text(first, "SeriesDescription"),
        accession_number=_text(first, "AccessionNumber"),
        files=[s.item.path for s in slices],
        headers=headers,
        frames=[s.frame for s in slices],
        series_number=int_or_none(first, "SeriesNumber"),
        key=key,
    )


def source_from_files(files: list[Path]) -> SourceSeries:
    """The source description of a series given as explicit files (headers only, no pixels decoded).

    For volumes whose files are known one by one, e.g. from Slicer's DICOM database
    (``slicer.dicomDatabase.fileForInstance`` of each ``DICOM.instanceUIDs`` entry).
    """
    paths = [Path(path) for path in files]
    if not paths:
        raise InputError("No DICOM files were given for the source series", "load the volume from DICOM first")
    folder = paths[0].parent
    members = []
    for path in paths:
        header = _read_header(path, folder) if path.is_file() else None
        if header is None:
            raise InputError(f"Source DICOM file {path} is missing or not DICOM", "reload the series from the database")
        members.append(_File(path, header))
    groups = _group(members)
    if len(groups) != 1:
        raise InputError(f"The {len(paths)} source files in {folder} belong to {len(groups)} series",
                         "give the files of one series")
    (key, group), = groups.items()
    slices = _slices(folder, group)
    _check_consistent(folder, slices)
    slices, _ = _sort(folder, slices)
    return _source_series(key, slices)


def read_dicom_series(
    folder: Path,
    series_uid: str | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    *,
    geometry: Geometry = "regular",
    slice_spacing: float | None = None,
) -> ImageData:
    """Read one DICOM image series (single-frame files or enhanced multi-frame).

    ``folder`` is searched recursively; a file path loads the series that file belongs to from
    the file's folder.

    ``series_uid`` selects a series by SeriesInstanceUID or by the key :func:`list_series`
    shows; without it the folder must hold exactly one image series.

    ``geometry="regular"`` (the default) resamples a gantry-tilted or unevenly spaced series onto a
    regular grid in the patient frame (see :mod:`aiportal.io.geometry`; ``slice_spacing`` in mm,
    default the smallest acquired gap); ``"acquired"`` keeps the slices as acquired (exact for a
    uniformly spaced tilted stack, approximate and said so for uneven spacing).
    """
    folder = Path(folder)
    progress(0.0, "Scanning DICOM files")
    folder, key, members = _resolve(folder, series_uid, cancel)
    slices = _slices(folder, members)
    _check_consistent(folder, slices)
    slices, stack = _sort(folder, slices)
    array = apply_rescale(stack_pixels(folder, slices, progress, cancel), [s.rescale for s in slices])
    header = slices[0].item.header
    single_spacing = float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 1.0)
    placed = place_on_grid(stack, array, geometry, slice_spacing, single_spacing)
    array, ijk_to_lps, grid, notes, summary = placed.array, placed.ijk_to_lps, placed.grid, placed.notes, placed.summary
    ijk_to_ras = LPS_TO_RAS @ ijk_to_lps

    source = _source_series(key, slices)
    source.regular_grid = grid
    if not source.series_uid or not all(source.sop_instance_uids):
        notes.append(
            f"Series in {folder} has empty UIDs (anonymised): it is grouped as {key}, and DICOM exports "
            "that reference it need new UIDs"
        )
    return ImageData(array=array, ijk_to_ras=ijk_to_ras, source=source, warnings=notes, geometry=summary)
