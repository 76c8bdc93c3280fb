"""The current study and its priors from a PACS: the same Patient ID's earlier studies, each pulled with
its image series and the SEG made on it (by the same pull as `aiportal pacs pull`, DICOMweb or DIMSE).

Relevance rules: an earlier study date than the current one (same date: earlier by UID order is not
assumed, so it is left out), the same modality when the PACS lists ``ModalitiesInStudy``, and
``description`` (a word the study description must contain) when given. A prior without a SEG is pulled
but left out of the follow-up with the reason (segment it first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiportal.pacs import PacsError
from aiportal.pacs.model import QueryFilters, StudyRecord
from aiportal.pacs.workflow import choose_image_series, pull_series, query_series, query_studies


@dataclass
class PulledStudies:
    current: Path
    priors: list[Path]
    studies: list[StudyRecord]  # current first, then the priors, newest first
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[Path, str]:
        """Each folder's study date from the PACS query (kept when the files are de-identified)."""
        return {folder: study.study_date for folder, study in zip([self.current, *self.priors], self.studies,
                                                                  strict=True) if study.study_date}


def find_priors(endpoint, study_uid: str, *, protocol: str = "auto", description: str = "",
                max_priors: int = 3) -> tuple[StudyRecord, list[StudyRecord], dict[str, str]]:
    """The current study's record and its relevant priors (newest first, at most ``max_priors``)."""
    found = query_studies(endpoint, QueryFilters(study_uid=study_uid), protocol)
    if not found:
        raise PacsError(f"Study {study_uid} is not on PACS {endpoint.name!r}",
                        "check the StudyInstanceUID with `aiportal pacs query`")
    current = found[0]
    if not current.patient_id:
        raise PacsError(f"Study {study_uid} on PACS {endpoint.name!r} has no Patient ID",
                        "priors are found by Patient ID; give them by hand with --current DIR --prior DIR")
    others = [s for s in query_studies(endpoint, QueryFilters(patient_id=current.patient_id), protocol)
              if s.study_uid != study_uid]
    priors, skipped = [], {}
    for study in others:
        why = ""
        if not study.study_date or not current.study_date or study.study_date >= current.study_date:
            why = f"dated {study.study_date or '?'}, not before the current study ({current.study_date or '?'})"
        elif current.modalities and study.modalities and not set(current.modalities) & set(study.modalities):
            why = f"modality {'/'.join(study.modalities)} differs from {'/'.join(current.modalities)}"
        elif description and description.lower() not in study.description.lower():
            why = f"description {study.description!r} does not contain {description!r}"
        if why:
            skipped[study.study_uid] = why
        else:
            priors.append(study)
    priors.sort(key=lambda s: s.study_date, reverse=True)
    for study in priors[max_priors:]:
        skipped[study.study_uid] = f"older than the {max_priors} most recent priors"
    return current, priors[:max_priors], skipped


def pull_study(endpoint, study: StudyRecord, destination: Path, protocol: str = "auto") -> Path:
    """The study's image series and its SEG series into ``destination`` (one folder)."""
    series = query_series(endpoint, study.study_uid, protocol=protocol)
    image = choose_image_series(endpoint, study.study_uid, series)
    pull_series(endpoint, study.study_uid, image.series_uid, destination / "image", protocol=protocol)
    for number, seg in enumerate(s for s in series if s.modality.upper() == "SEG"):
        pull_series(endpoint, study.study_uid, seg.series_uid, destination / f"seg{number}", protocol=protocol)
    return destination


def pull_current_and_priors(endpoint, study_uid: str, work: Path, *, protocol: str = "auto",
                            description: str = "", max_priors: int = 3) -> PulledStudies:
    current, priors, skipped = find_priors(endpoint, study_uid, protocol=protocol, description=description,
                                           max_priors=max_priors)
    if not priors:
        reasons = "; ".join(f"{uid}: {why}" for uid, why in skipped.items()) or "the PACS holds no other study"
        raise PacsError(f"No prior study of patient {current.patient_id} on PACS {endpoint.name!r} ({reasons})",
                        "store the prior studies on the PACS, or give them by hand with --prior DIR")
    folder = pull_study(endpoint, current, Path(work) / "current", protocol)
    prior_folders = [pull_study(endpoint, study, Path(work) / f"prior_{study.study_date}_{n}", protocol)
                     for n, study in enumerate(priors)]
    return PulledStudies(folder, prior_folders, [current, *priors], skipped)


def deidentify_pulled(pulled: PulledStudies, destination: Path, mapping) -> PulledStudies:
    """Every pulled study de-identified (PS3.15 Basic Profile, :mod:`aiportal.pacs.deidentify`) with one
    ``mapping``, so the time points stay one pseudonymous patient and each SEG still references its images;
    the study dates, which the profile removes, stay as the time points' labels. The originals are deleted."""
    import shutil

    from aiportal.pacs.deidentify import deidentify_files

    folders = []
    for n, folder in enumerate([pulled.current, *pulled.priors]):
        clean = Path(destination) / ("current" if n == 0 else f"prior_{n}")
        deidentify_files(sorted(p for p in Path(folder).rglob("*") if p.is_file()), clean, mapping)
        shutil.rmtree(folder, ignore_errors=True)
        folders.append(clean)
    return PulledStudies(folders[0], folders[1:], pulled.studies, pulled.skipped)
