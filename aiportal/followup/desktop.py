"""The desktop follow-up's PACS side (GUI-free; AIMeasure's *Fetch priors* and its SRs): the study open in
the scene is found by its own DICOM files, its priors are pulled from a configured PACS in a worker thread
(:mod:`aiportal.followup.priors`, de-identified on request as `aiportal followup --pacs --deidentify` does)
and loaded into the scene on the main thread with their SEGs (:mod:`aiportal.followup.load`); after the
tracking, one longitudinal TID 1500 SR per time point is written as the CLI writes them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from aiportal.background import FunctionJob
from aiportal.errors import InputError
from aiportal.followup.load import NoSegmentation, load_time_point, segment_numbers
from aiportal.followup.sr import write_time_point_sr
from aiportal.followup.tracking import Longitudinal, TimePoint

NOT_DICOM_FIX = "load the current study from Slicer's DICOM database (or a PACS) so its files are known"


def study_uid_of(volume, source_files: Sequence[str | Path]) -> str:
    """The StudyInstanceUID of ``volume``, read from the first of its DICOM files (``source_files``: on the
    desktop, ``slicer.dicomDatabase.fileForInstance`` of each ``DICOM.instanceUIDs`` entry)."""
    for path in source_files:
        if path and Path(path).is_file():
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            if header.get("StudyInstanceUID"):
                return str(header.StudyInstanceUID)
    raise InputError(f"{volume.GetName()} was not loaded from DICOM files, so its study is unknown", NOT_DICOM_FIX)


@dataclass
class FetchedPriors:
    """The priors put into the scene, oldest first, and what was left out (study -> why)."""

    patient_id: str
    points: list[TimePoint]
    excluded: dict[str, str] = field(default_factory=dict)
    work: Path | None = None  # the pulled files (each SR reads its time point's SEG there): see :meth:`remove`
    mapping: object | None = None  # the ReidentificationMap of a de-identified pull
    notes: list[str] = field(default_factory=list)  # e.g. a prior segmented for this follow-up

    def remove(self) -> None:
        """Delete the pulled files (nothing of the PACS is left in temporary folders)."""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


@dataclass
class PulledPriors:
    """What the worker thread made: the pulled studies (the current one's files already deleted), the folder
    holding them, the de-identification mapping, and the SEGs made for priors that had none (folder -> SEG)."""

    studies: object  # aiportal.followup.priors.PulledStudies
    work: Path
    mapping: object | None = None
    segmented: dict[Path, Path] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pull_priors_job(endpoint_name: str, study_uid: str, work: Path, *, deidentify: bool = False,
                    segment_missing: str = "", protocol: str = "auto", description: str = "",
                    max_priors: int = 3) -> FunctionJob:
    """The query and pulls into ``work`` (a folder the caller made, removed on failure) in a worker thread, no
    scene access; ``job.finish()`` is a :class:`PulledPriors`. A prior without a SEG is segmented by the model
    ``segment_missing`` (the pipeline of `aiportal segment`, audited) when one is named. The endpoint is checked
    now, so a wrong name fails before anything starts."""
    from aiportal.followup.priors import deidentify_pulled, pull_current_and_priors
    from aiportal.pacs.config import get_endpoint

    if not (study_uid or "").strip():
        raise InputError("No current study UID", NOT_DICOM_FIX)
    endpoint = get_endpoint(endpoint_name)
    work = Path(work)

    def compute(progress, cancel):
        try:
            progress(0.0, f"finding and pulling the priors on {endpoint.name}")
            pulled = pull_current_and_priors(endpoint, study_uid, work / "pulled", protocol=protocol,
                                             description=description, max_priors=max_priors)
            mapping = None
            if deidentify:
                from aiportal.pacs.deidentify import ReidentificationMap

                progress(0.5, "de-identifying the pulled studies")
                mapping = ReidentificationMap()
                pulled = deidentify_pulled(pulled, work / "deidentified", mapping)
            shutil.rmtree(pulled.current, ignore_errors=True)  # the current study is the one open in the scene
            made = PulledPriors(pulled, work, mapping)
            if segment_missing:
                _segment_missing(made, segment_missing, progress, cancel)
            return made
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    return FunctionJob(compute, "pulling the priors")


def _segment_missing(made: PulledPriors, model_id: str, progress, cancel) -> None:
    """Each prior without a SEG segmented by ``model_id``; one the model cannot segment is left out, said why."""
    from aiportal.errors import AIPortalError
    from aiportal.followup.load import seg_files, segment_folder

    labels = made.studies.labels
    for folder in made.studies.priors:
        cancel.check("the fetch of the priors")
        if seg_files(folder):
            continue
        label = labels.get(Path(folder)) or Path(folder).name
        progress(0.6, f"segmenting {label} with {model_id} (it has no SEG)")
        try:
            made.segmented[Path(folder)] = segment_folder(folder, model_id, made.work / "segmented" / Path(folder).name)
            made.notes.append(f"{label} had no SEG: segmented by {model_id} for this follow-up")
        except AIPortalError as error:
            made.excluded[label] = f"has no SEG, and {model_id} could not segment it: {error}"


def load_pulled_priors(made: PulledPriors, runtime) -> FetchedPriors:
    """Each pulled prior's image series and SEG as scene nodes (main thread), labelled by its study date; one
    without a SEG is left out with the reason, as the CLI does."""
    pulled = made.studies
    labels = pulled.labels
    excluded = {**pulled.skipped, **made.excluded}
    points = []
    try:
        for folder in pulled.priors:
            label = labels.get(Path(folder))
            if (label or Path(folder).name) in made.excluded:
                continue
            try:
                points.append(load_time_point(folder, runtime, label=label, seg=made.segmented.get(Path(folder))))
            except NoSegmentation as error:
                excluded[label or Path(folder).name] = str(error)
    except BaseException:
        shutil.rmtree(made.work, ignore_errors=True)
        raise
    points.sort(key=lambda point: point.label)
    return FetchedPriors(pulled.studies[0].patient_id, points, excluded, made.work, made.mapping, list(made.notes))


def fetch_priors(endpoint_name: str, study_uid: str, work: Path, runtime, **options) -> FetchedPriors:
    """:func:`pull_priors_job` waited for, then :func:`load_pulled_priors` (scripts and tests)."""
    job = pull_priors_job(endpoint_name, study_uid, work, **options)
    job.start()
    job.wait()
    return load_pulled_priors(job.finish(), runtime)


@dataclass
class SrSource:
    """What a time point's SR references: its images (:class:`ExportSource`) and, when read from one, its SEG."""

    source: object
    seg_path: Path | None = None
    segment_numbers: dict[str, int] = field(default_factory=dict)


def sr_source_of_point(point: TimePoint) -> SrSource:
    return SrSource(point.source, point.seg_path, segment_numbers(point) if point.seg_path else {})


def sr_source_of_volume(volume, source_files: Sequence[str | Path]) -> SrSource | None:
    """A volume of Slicer's DICOM database: its files as the SR's evidence; None when it has none (then its
    time point gets no SR, and :func:`write_series_srs` says why). Read before the follow-up puts the volume
    under its registration transform."""
    from aiportal.export.dicom_source import export_source
    from aiportal.io.dicom_series import source_from_files

    files = [Path(path) for path in source_files if path]
    if not files or not all(path.is_file() for path in files):
        return None
    return SrSource(export_source(source_from_files(files), volume))


def write_series_srs(result: Longitudinal, sources: dict[str, SrSource | None], folder: Path
                     ) -> tuple[list[Path], dict[str, str]]:
    """One TID 1500 SR per time point (``sr_<n>_<label>.dcm`` in ``folder``, as `aiportal followup`); a time
    point without DICOM images is skipped with the reason."""
    written, skipped = [], {}
    for index, label in enumerate(result.labels):
        found = sources.get(label)
        if found is None:
            skipped[label] = "not loaded from DICOM files: no SR can reference its images"
            continue
        written.append(write_time_point_sr(result, index, found.source, Path(folder) / f"sr_{index}_{label}.dcm",
                                           seg_path=found.seg_path, segment_numbers=found.segment_numbers))
    return written, skipped
