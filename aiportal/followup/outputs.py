"""What a longitudinal follow-up writes: followup.json, followup.csv (one row per lesion and time point) and
followup.png (each lesion's RECIST diameter and volume over time)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from aiportal.followup.tracking import Longitudinal

COLUMNS = ("tracking_id", "tracking_uid", "time_point", "index", "status", "segment", "parent", "merged_into",
           "long_axis_mm", "short_axis_mm", "reported_mm", "volume_ml", "reported_change_from_baseline_mm",
           "reported_change_from_baseline_pct", "volume_change_from_baseline_ml", "volume_change_from_baseline_pct",
           "volume_change_from_previous_ml", "dice_with_previous", "centroid_distance_mm")


def _pct(after: float, before: float) -> float:
    return 100.0 * (after - before) / before if before > 0 else math.nan


def track_rows(result: Longitudinal) -> list[dict]:
    """One row per tracked lesion and time point from its first appearance on. Changes are against the
    lesion's first measurement (its baseline) and its previous time point."""
    rows = []
    for track in result.tracks:
        first = track.states[track.first_seen]
        previous = None
        for index, state in enumerate(track.states):
            if state is None:
                continue
            m = state.measurement
            rows.append({
                "tracking_id": track.tracking_id, "tracking_uid": track.tracking_uid,
                "time_point": result.labels[index], "index": index, "status": state.status,
                "segment": m.lesion_name if m else track.segment_name, "parent": track.parent,
                "merged_into": state.merged_into,
                "long_axis_mm": m.long_axis_mm if m else 0.0, "short_axis_mm": m.short_axis_mm if m else 0.0,
                "reported_mm": state.reported_mm, "volume_ml": state.volume_ml,
                "reported_change_from_baseline_mm": state.reported_mm - first.reported_mm,
                "reported_change_from_baseline_pct": _pct(state.reported_mm, first.reported_mm),
                "volume_change_from_baseline_ml": state.volume_ml - first.volume_ml,
                "volume_change_from_baseline_pct": _pct(state.volume_ml, first.volume_ml),
                "volume_change_from_previous_ml": state.volume_ml - previous.volume_ml if previous else math.nan,
                "dice_with_previous": state.dice, "centroid_distance_mm": state.distance_mm,
            })
            previous = state
    return rows


def summary(result: Longitudinal) -> dict:
    responses = []
    for index, assessment in enumerate(result.responses):
        entry = {"time_point": result.labels[index], "sum_of_diameters_mm": result.sums_mm[index]}
        if assessment is not None:
            entry.update(response=assessment.response.name, response_text=assessment.response.value,
                         explanation=assessment.explanation,
                         change_from_baseline_pct=assessment.change_from_baseline_pct,
                         change_from_nadir_mm=assessment.change_from_nadir_mm,
                         nadir_sum_mm=min(result.sums_mm[:index]))
        responses.append(entry)
    organs = {name: {"volume_ml": values,
                     "change_from_baseline_ml": [v - values[0] for v in values],
                     "change_from_previous_ml": [math.nan] + [b - a for a, b in zip(values, values[1:], strict=False)]}
              for name, values in result.organ_volumes_ml.items()}
    return {"time_points": result.labels, "responses": responses, "organs": organs,
            "registrations": result.registrations, "excluded": result.excluded,
            "not_measured": result.not_measured, "notes": result.notes,
            "lesions": [{"tracking_id": t.tracking_id, "tracking_uid": t.tracking_uid, "parent": t.parent,
                         "statuses": [s.status if s else None for s in t.states]} for t in result.tracks]}


def _plain(value):
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write_table(result: Longitudinal, folder: Path) -> list[Path]:
    """followup.json (summary, responses, rows) and followup.csv (the rows)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = track_rows(result)
    document = {**summary(result), "rows": rows}
    (folder / "followup.json").write_text(json.dumps(_plain(document), indent=2, ensure_ascii=False))
    with open(folder / "followup.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else round(v, 3) if isinstance(v, float)
                             else v for v in (row[c] for c in COLUMNS)])
    return [folder / "followup.json", folder / "followup.csv"]


def write_plot(result: Longitudinal, path: Path) -> Path:
    """Each lesion's RECIST diameter (left) and volume (right) at every time point (PNG, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), dpi=100)
    diameter, volume = figure.subplots(1, 2)
    positions = list(range(len(result.labels)))
    for track in result.tracks:
        seen = [(i, s) for i, s in enumerate(track.states) if s is not None]
        x = [i for i, _ in seen]
        label = track.tracking_id + (f" (from {track.parent})" if track.parent else "")
        line, = diameter.plot(x, [s.reported_mm for _, s in seen], marker="o", label=label)
        volume.plot(x, [s.volume_ml for _, s in seen], marker="o", color=line.get_color())
    for axes, title, unit in ((diameter, "RECIST diameter", "mm"), (volume, "Volume", "ml")):
        axes.set_xticks(positions, result.labels, rotation=20)
        axes.set_title(title)
        axes.set_ylabel(unit)
        axes.grid(alpha=0.3)
    responses = " → ".join(a.response.name for a in result.responses if a is not None)
    figure.suptitle(f"Follow-up: {responses}")
    diameter.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path

