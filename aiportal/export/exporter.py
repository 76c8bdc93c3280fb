"""Export a segmentation in the formats a hospital uses — the one entry point for every face.

Formats: ``nrrd`` (seg.nrrd + label map), ``json`` (label table + statistics), ``csv``
(statistics), ``seg`` (DICOM SEG), ``sr`` (DICOM TID 1500 SR; implies ``seg``), ``rtstruct`` (DICOM RT
Structure Set: planar contours for radiotherapy planning), ``sc`` (key images as DICOM
Secondary Capture), ``estl`` (3D models as DICOM Encapsulated STL; implies ``seg``), ``stl``, ``obj``.
Everything is written into a caller-given folder (a staging folder: see :mod:`aiportal.outputs`).
DICOM prerequisites are checked before any heavy work, so a refusal costs nothing.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiportal.errors import InputError
from aiportal.export.files import ExportedFile
from aiportal.io.dicom_series import SourceSeries
from aiportal.progress import ProgressCallback, no_progress, scaled

FORMATS = ("nrrd", "json", "csv", "seg", "sr", "rtstruct", "sc", "estl", "stl", "obj")
#: Formats written as DICOM objects of the source study: they need the DICOM source series.
DICOM_FORMATS = frozenset({"seg", "sr", "rtstruct", "sc", "estl"})
DEFAULT_FORMATS = ("nrrd", "json")


def parse_formats(text: str) -> tuple[str, ...]:
    """``"seg,sr,stl"`` → validated formats in canonical order; SR needs its SEG, so it brings it."""
    asked = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = asked - set(FORMATS)
    if unknown or not asked:
        raise InputError(f"unknown output format(s) {', '.join(sorted(unknown)) or '(none given)'}",
                         f"use a comma-separated list of: {', '.join(FORMATS)}")
    if asked & {"sr", "estl"}:  # the SR measures the SEG's segments; a model references the SEG it shows
        asked.add("seg")
    return tuple(name for name in FORMATS if name in asked)


_OUTPUT_NAMES = {
    "nrrd": ("segmentation.seg.nrrd", "labels.nrrd"),
    "json": ("segments.json",),
    "csv": ("statistics.csv",),
    "seg": ("segmentation.dcm", "source"),  # source/: corrected copy of an anonymised series, when made
    "sr": ("measurements.dcm",),
    "rtstruct": ("structures.dcm",),
    "sc": ("key_images",),
    "estl": ("models",),
    "stl": ("surfaces",),
    "obj": ("surfaces",),
}


def dicom_object_names(files) -> list[str]:
    """The names of every DICOM object an export wrote (each has a SOP Instance UID): what a push sends.

    ``files`` are :class:`ExportedFile` or their JSON form (run results); any DICOM format, present
    or future, is included without being named here.
    """
    def field_of(file, name: str):
        return file.get(name) if isinstance(file, dict) else getattr(file, name)

    return [field_of(file, "name") for file in files if field_of(file, "sop_instance_uid")]


def expected_outputs(formats: tuple[str, ...]) -> list[str]:
    """Top-level names these formats may write, to refuse clashes before any work."""
    return list(dict.fromkeys(name for fmt in formats for name in _OUTPUT_NAMES[fmt]))


def check_export_possible(source: SourceSeries | None, volume_node, options: ExportOptions) -> None:
    """Refuse a DICOM export that cannot succeed (no DICOM source, empty UIDs) before any model runs."""
    if DICOM_FORMATS & set(options.formats) and not options.assign_missing_uids:
        from aiportal.export.dicom_source import export_source

        export_source(source, volume_node)  # raises with the reason and the fix; writes nothing


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    seg_type: str = "BINARY"  # or "LABELMAP"
    assign_missing_uids: bool = False  # for anonymised series with empty UIDs: write a corrected copy
    observer_person: str | None = None  # the person in the SR's observer context, besides the device
    surfaces_merged: bool = False
    coordinates: str = "LPS"  # of STL/OBJ files: LPS (DICOM, most planning software) or RAS
    smoothing: float = 0.5
    decimation: float = 0.0
    volume_true_surfaces: bool = True  # surfaces enclose the voxel volume; False: Slicer's 3D-view surfaces


@dataclass
class ExportResult:
    files: list[ExportedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # the AI runs whose segments were exported


def export_results(
    segmentation_node,
    volume_node,
    source: SourceSeries | None,
    folder: Path,
    options: ExportOptions,
    *,
    modality: str | None = None,
    progress: ProgressCallback = no_progress,
) -> ExportResult:
    """Write ``options.formats`` of the segmentation (on ``volume_node``'s grid) into ``folder``."""
    from aiportal.export.dicom_source import export_source

    folder = Path(folder)
    result = ExportResult()
    # with what each format needs (estl: its SEG)
    formats = set(parse_formats(",".join(options.formats))) if options.formats else set()
    dicom_source = None
    if formats & DICOM_FORMATS:  # refuse early: missing source series or UIDs
        dicom_source = export_source(source, volume_node, assign_missing_uids=options.assign_missing_uids,
                                     corrected_copy_folder=folder / "source")
        result.notes += dicom_source.changes
        if dicom_source.corrected_folder is not None:
            result.files += [ExportedFile("source", str(path.relative_to(folder)), ds.SOPInstanceUID,
                                          ds.SeriesInstanceUID)
                             for path, ds in zip(dicom_source.files, dicom_source.datasets, strict=True)]
        modality = modality or dicom_source.modality

    statistics = None
    if formats & {"json", "csv", "sr"}:
        from aiportal.export.statistics import as_json, compute_statistics, write_csv

        statistics = compute_statistics(segmentation_node, volume_node, modality=modality,
                                        progress=scaled(progress, 0.1, 0.5))
        if "csv" in formats:
            write_csv(statistics, folder / "statistics.csv")
            result.files.append(ExportedFile("csv", "statistics.csv"))
        if "json" in formats:
            from aiportal.segmentation import describe_segments

            (folder / "segments.json").write_text(json.dumps(
                {"segments": describe_segments(segmentation_node), "statistics": as_json(statistics)}, indent=2))
            result.files.append(ExportedFile("json", "segments.json"))

    key_images = None
    if "sc" in formats:  # before the SR, which lists them
        from aiportal.export.dicom_derived import key_image_objects

        progress(0.5, "writing key images")
        key_images = key_image_objects(segmentation_node, volume_node, dicom_source, folder)
        result.files += key_images.files
        result.notes += key_images.notes

    dicom_files, plan = None, None
    if "seg" in formats:
        from aiportal.export.dicom_seg import plan_seg

        progress(0.55, "writing DICOM SEG")
        # planning reads the scene and tags each segment with its tracking UID (which seg.nrrd keeps)
        plan = plan_seg(segmentation_node, volume_node, dicom_source, segmentation_type=options.seg_type)
        write_dicom = functools.partial(_encode_seg_and_sr, plan, folder, statistics if "sr" in formats else None,
                                        dicom_source, options.observer_person, key_images)
        slot = len(result.files)  # SEG and SR are listed here, however they are made
        if formats & {"stl", "obj", "estl"} and _can_fork():
            # pydicom's encoding and VTK's surfaces each hold the GIL: overlap them in two processes
            dicom_files = _ForkedCall(write_dicom)
        else:
            result.files[slot:slot] = write_dicom()

    if "rtstruct" in formats:
        from aiportal.rt.writer import write_rtstruct

        progress(0.7, "writing DICOM RT Structure Set")
        structures = write_rtstruct(segmentation_node, volume_node, dicom_source, folder / "structures.dcm")
        result.files.append(ExportedFile("rtstruct", "structures.dcm", structures.sop_instance_uid,
                                         structures.series_instance_uid))

    if "nrrd" in formats:  # after the SEG: it tags each segment with its tracking UID, which seg.nrrd keeps
        progress(0.75, "writing seg.nrrd")
        _write_nrrd(segmentation_node, volume_node, folder, result)

    stl_paths = None
    for surface_format in ("stl", "obj"):
        if surface_format in formats:
            from aiportal.export.surfaces import export_surfaces

            progress(0.8, f"writing {surface_format.upper()} surfaces")
            (folder / "surfaces").mkdir(exist_ok=True)
            paths = export_surfaces(segmentation_node, folder / "surfaces", file_format=surface_format.upper(),
                                    merged=options.surfaces_merged, coordinates=options.coordinates,
                                    smoothing=options.smoothing, decimation=options.decimation,
                                    volume_true=options.volume_true_surfaces)
            result.files += [ExportedFile(surface_format, str(Path(path).relative_to(folder))) for path in paths]
            stl_paths = paths if surface_format == "stl" and options.coordinates == "LPS" else stl_paths
    if "estl" in formats:
        from aiportal.export.dicom_derived import model_objects, seg_reference

        progress(0.9, "writing DICOM Encapsulated STL models")
        result.files += model_objects(
            segmentation_node, dicom_source, folder, seg_reference(plan.arguments), merged=options.surfaces_merged,
            smoothing=options.smoothing, decimation=options.decimation, volume_true=options.volume_true_surfaces,
            stl_paths=stl_paths)
    if dicom_files is not None:
        result.files[slot:slot] = dicom_files.result()
    progress(1.0, "exported")
    return result


def _encode_seg_and_sr(plan, folder: Path, statistics, dicom_source, observer_person,
                       key_images=None) -> list[ExportedFile]:
    """Encode the planned SEG and, given statistics, its TID 1500 SR (with the key images' RECIST axes and
    the key images in its image library); touches no scene object."""
    from aiportal.export.dicom_seg import encode_seg

    seg = encode_seg(plan, folder / "segmentation.dcm")
    files = [ExportedFile("seg", "segmentation.dcm", seg.sop_instance_uid, seg.series_instance_uid)]
    if statistics is not None:
        from aiportal.export.dicom_sr import write_sr

        sr = write_sr(statistics, None, seg, folder / "segmentation.dcm", dicom_source,
                      folder / "measurements.dcm", observer_person=observer_person,
                      axes=key_images.measurements if key_images else (),
                      key_images=key_images.headers if key_images else ())
        files.append(ExportedFile("sr", "measurements.dcm", sr.sop_instance_uid, sr.series_instance_uid))
    return files


def _can_fork() -> bool:
    from aiportal.runtime import in_slicer_application

    # never inside the Slicer application (a forked Qt app is unsafe); AIPORTAL_EXPORT_FORK=0 turns it off
    return os.name == "posix" and not in_slicer_application() and os.environ.get("AIPORTAL_EXPORT_FORK", "1") != "0"


class _ForkedCall:
    """Run a function that touches no VTK object in a forked child; :meth:`result` waits for its value.

    A child that dies without answering (killed, out of memory) is not an error of the export: the
    function then runs again here, so the result is the same either way.
    """

    def __init__(self, function) -> None:
        context = multiprocessing.get_context("fork")
        self._function = function
        self._receiver, sender = context.Pipe(duplex=False)

        def child() -> None:
            try:
                sender.send(("ok", function()))
            except BaseException as error:  # the parent re-raises it
                sender.send(("error", error))

        self._process = context.Process(target=child, daemon=True)
        self._process.start()
        sender.close()

    def result(self):
        try:
            status, value = self._receiver.recv()
        except EOFError:
            status, value = "died", None
        self._process.join()
        if status == "error":
            raise value
        return value if status == "ok" else self._function()


def _write_nrrd(segmentation_node, volume_node, folder: Path, result: ExportResult) -> None:
    from aiportal.io.volumes import ijk_to_ras_matrix, save_volume, volume_node_from_array
    from aiportal.segmentation import export_label_map, save_segmentation

    save_segmentation(segmentation_node, folder / "segmentation.seg.nrrd")
    scene = segmentation_node.GetScene()
    label_node = volume_node_from_array(scene, export_label_map(segmentation_node, volume_node),
                                        ijk_to_ras_matrix(volume_node), "labels", "vtkMRMLLabelMapVolumeNode")
    try:
        save_volume(label_node, folder / "labels.nrrd")
    finally:
        scene.RemoveNode(label_node)
    result.files += [ExportedFile("nrrd", "segmentation.seg.nrrd"), ExportedFile("nrrd", "labels.nrrd")]


def export_to_folder(
    segmentation_node,
    volume_node,
    source: SourceSeries | None,
    out_dir: Path,
    options: ExportOptions,
    *,
    overwrite: bool = False,
    modality: str | None = None,
    extra_files: dict[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> ExportResult:
    """Export all-or-nothing into ``out_dir`` and add an ``export`` record to the audit trail.

    ``extra_files`` (name → text) are written alongside, e.g. the CLI's run record.
    """
    import getpass

    from aiportal.audit import AuditLog
    from aiportal.outputs import check_output_folder, staged_output
    from aiportal.provenance import Provenance
    from aiportal.segmentation import segment_ids
    from aiportal.settings import Settings

    out_dir = Path(out_dir)
    extra_files = extra_files or {}
    check_output_folder(out_dir, [*expected_outputs(options.formats), *extra_files], overwrite)
    with staged_output(out_dir, overwrite=overwrite) as staging:
        result = export_results(segmentation_node, volume_node, source, staging, options, modality=modality,
                                progress=progress)
        for name, text in extra_files.items():
            (staging / name).write_text(text)
            result.files.append(ExportedFile("record", name))
    segmentation = segmentation_node.GetSegmentation()
    run_ids = sorted({provenance.run_id for segment_id in segment_ids(segmentation_node)
                      if (provenance := Provenance.of_segment(segmentation.GetSegment(segment_id)))})
    result.run_ids = run_ids
    reference = source.reference() if source else {}
    AuditLog(Settings.from_environment().audit_log).append(
        "export", run_id=run_ids[0] if len(run_ids) == 1 else "", run_ids=run_ids,
        study_uid=reference.get("study_uid", ""), series_uid=reference.get("series_uid", ""),
        user=getpass.getuser(), formats=list(options.formats),
        outputs=[{"kind": f.kind, "path": str(out_dir / f.name), "sop_instance_uid": f.sop_instance_uid,
                  "series_uid": f.series_uid} for f in result.files],
    )
    return result
