"""A whole follow-up from folders: load the time points, track the lesions, write the table, plot and SRs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from aiportal.errors import InputError
from aiportal.followup.load import NoSegmentation, load_time_point, model_of_seg, segment_and_load, segment_numbers
from aiportal.followup.outputs import write_plot, write_table
from aiportal.followup.sr import write_time_point_sr
from aiportal.followup.tracking import Longitudinal, track_lesions


@dataclass
class FollowUpRun:
    result: Longitudinal
    files: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)


def run_follow_up(current: Path, priors: list[Path], out: Path, *, runtime=None, register: bool = True,
                  organs: tuple[str, ...] = (), lymph_nodes: tuple[str, ...] = (),
                  skipped: dict[str, str] | None = None, segment_missing: str = "",
                  labels: dict[Path, str] | None = None) -> FollowUpRun:
    """Follow the lesions of the study in ``current`` against those in ``priors`` (folders of DICOM images
    with the SEG made on them). Priors are put in study-date order; one without a SEG is left out with the
    reason (``skipped`` adds reasons found before, e.g. by the PACS retrieval), unless ``segment_missing`` names
    a model to segment it with ("auto": the model named in the current study's SEG; it also segments a
    current study without a SEG). ``labels`` (folder -> study date) name time points whose headers lost their
    dates (de-identified pulls)."""
    from aiportal.runtime import get_runtime

    runtime = runtime or get_runtime()
    seconds: dict[str, float] = {}
    started = time.monotonic()
    excluded = dict(skipped or {})
    points, notes = [], []
    labels = {Path(k): v for k, v in (labels or {}).items()}
    try:
        now = load_time_point(current, runtime, label=labels.get(Path(current)))
    except NoSegmentation:  # the current study needs its SEG, unless a model is named to make it
        if segment_missing in ("", "auto"):
            raise
        now = segment_and_load(current, runtime, segment_missing, Path(out) / "segmented" / "current",
                               label=labels.get(Path(current)))
        notes.append(f"{now.label} (current) had no SEG: segmented by {segment_missing} for this follow-up")
    model = model_of_seg(now.seg_path) if segment_missing == "auto" else segment_missing
    for folder in priors:
        try:
            points.append(load_time_point(folder, runtime, label=labels.get(Path(folder))))
        except NoSegmentation as error:
            if not model:
                why = (" (the current study's SEG names no model: give --segment-missing MODEL)"
                       if segment_missing else "")
                excluded[Path(folder).name] = str(error) + why
                continue
            points.append(segment_and_load(folder, runtime, model, Path(out) / "segmented" / Path(folder).name,
                                           label=labels.get(Path(folder))))
            notes.append(f"{points[-1].label} had no SEG: segmented by {model} for this follow-up")
    if not points:
        raise InputError("No prior study could be followed: " + ("; ".join(f"{k}: {v}" for k, v in excluded.items())
                                                                 or "none was given"),
                         "give at least one prior study folder with its SEG (--prior DIR)")
    points.sort(key=lambda point: point.label)  # labels are study dates (YYYYMMDD) when the headers have them
    labels = [point.label for point in points]
    for index, point in enumerate(points):  # two studies on one day: told apart by their order
        if labels.count(point.label) > 1:
            point.label = f"{point.label}-{labels[:index].count(point.label) + 1}"
    if now.label in {point.label for point in points}:
        now.label += "-current"
    seconds["load"] = time.monotonic() - started
    started = time.monotonic()
    result = track_lesions([*points, now], register=register, organs=organs, lymph_nodes=lymph_nodes)
    result.excluded.update(excluded)
    result.notes[:0] = notes
    seconds["register_and_track"] = time.monotonic() - started
    started = time.monotonic()
    out = Path(out)
    files = [*write_table(result, out), write_plot(result, out / "followup.png")]
    kept = {point.label: point for point in [*points, now]}
    for index, label in enumerate(result.labels):
        point = kept[label]
        files.append(write_time_point_sr(result, index, point.source, out / f"sr_{index}_{label}.dcm",
                                         seg_path=point.seg_path, segment_numbers=segment_numbers(point)))
    seconds["outputs"] = time.monotonic() - started
    return FollowUpRun(result, files, seconds)


def describe(run: FollowUpRun) -> list[str]:
    """The lines the CLI prints: each time point's response, and what was left out."""
    result = run.result
    lines = []
    for index, assessment in enumerate(result.responses):
        head = f"{result.labels[index]}: sum {result.sums_mm[index]:.1f} mm"
        lines.append(head + (" (baseline)" if assessment is None else
                             f" — {assessment.response.value} ({assessment.explanation})"))
    lines.append(f"{len(result.tracks)} lesion(s) tracked: " + ", ".join(
        f"{t.tracking_id} [{' → '.join(s.status if s else '-' for s in t.states)}]" for t in result.tracks))
    lines += [f"left out {label}: {why}" for label, why in result.excluded.items()]
    lines += [f"{'WARNING' if note.startswith('registration') else 'note'}: {note}" for note in result.notes]
    return lines
