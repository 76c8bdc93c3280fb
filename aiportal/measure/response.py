"""RECIST 1.1 response of the target lesions (Eisenhauer et al., Eur J Cancer 2009, section 4.3).

- CR: all non-nodal target lesions gone and every pathological lymph node (target or not) below
  10 mm short axis.
- PR: sum of diameters at least 30 % below the BASELINE sum.
- PD: sum at least 20 % above the NADIR (smallest sum on study, baseline included) AND at least
  5 mm above it; or a new lesion; or unequivocal progression of non-target lesions.
- SD: none of these.

PD is checked first: a new lesion is progression whatever the target lesions do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from aiportal.errors import InputError
from aiportal.measure.recist import RecistMeasurement

PR_DECREASE = 0.30
PD_INCREASE = 0.20
PD_ABSOLUTE_MM = 5.0
NODE_NORMAL_MM = 10.0
# sums of float diameters: a borderline case (exactly -30 %, +20 %, +5 mm) must not flip on rounding
_EPSILON_MM = 1e-6


class Response(enum.Enum):
    CR = "Complete response"
    PR = "Partial response"
    SD = "Stable disease"
    PD = "Progressive disease"


@dataclass(frozen=True)
class ResponseAssessment:
    response: Response
    explanation: str
    change_from_baseline_pct: float
    change_from_nadir_mm: float


def sum_of_diameters(measurements: Iterable[RecistMeasurement]) -> float:
    """RECIST sum: long axis of non-nodal lesions plus short axis of lymph nodes."""
    return float(sum(measurement.reported_mm for measurement in measurements))


def classify_response(
    baseline_sum_mm: float,
    nadir_sum_mm: float,
    current_sum_mm: float,
    *,
    new_lesions: bool = False,
    all_target_lesions_gone: bool = False,
    nodes_short_axis_mm: list[float] | None = None,
    nontarget_progression: bool = False,
) -> ResponseAssessment:
    """Target-lesion response at the current study.

    ``nadir_sum_mm`` is the smallest sum before this study, baseline included (so ≤ baseline);
    ``nodes_short_axis_mm`` are the current short axes of the lymph nodes that were pathological.
    """
    if baseline_sum_mm <= 0:
        raise InputError(f"Baseline sum of diameters is {baseline_sum_mm} mm",
                         "RECIST needs at least one measurable target lesion at baseline")
    if min(nadir_sum_mm, current_sum_mm) < 0:
        raise InputError("A sum of diameters is negative", "give sums in millimetres, 0 or more")
    if nadir_sum_mm > baseline_sum_mm + _EPSILON_MM:
        raise InputError(f"Nadir sum {nadir_sum_mm} mm is above the baseline sum {baseline_sum_mm} mm",
                         "the nadir is the smallest sum on study, baseline included")
    nodes = list(nodes_short_axis_mm or [])
    change_pct = 100.0 * (current_sum_mm - baseline_sum_mm) / baseline_sum_mm
    increase_mm = current_sum_mm - nadir_sum_mm

    def assessment(response: Response, why: str) -> ResponseAssessment:
        return ResponseAssessment(response, why, change_pct, increase_mm)

    if new_lesions:
        return assessment(Response.PD, "new lesion(s)")
    if nontarget_progression:
        return assessment(Response.PD, "unequivocal progression of non-target lesions")
    relative = increase_mm >= PD_INCREASE * nadir_sum_mm - _EPSILON_MM
    absolute = increase_mm >= PD_ABSOLUTE_MM - _EPSILON_MM
    from_nadir = (f"{increase_mm:+.1f} mm"
                  + (f" ({100.0 * increase_mm / nadir_sum_mm:+.1f} %)" if nadir_sum_mm > 0 else "")
                  + f" from the nadir {nadir_sum_mm:.1f} mm")
    if relative and absolute:
        return assessment(Response.PD, f"sum {from_nadir}: ≥ 20 % and ≥ 5 mm")
    if all_target_lesions_gone:
        enlarged = [size for size in nodes if size >= NODE_NORMAL_MM - _EPSILON_MM]
        if not enlarged:
            return assessment(Response.CR, "all target lesions gone and every lymph node < 10 mm short axis")
        not_cr = f"not CR: {len(enlarged)} lymph node(s) still ≥ 10 mm short axis; "
    else:
        not_cr = ""
    if baseline_sum_mm - current_sum_mm >= PR_DECREASE * baseline_sum_mm - _EPSILON_MM:
        return assessment(Response.PR, f"{not_cr}sum {change_pct:+.1f} % from baseline {baseline_sum_mm:.1f} mm")
    why = f"{not_cr}sum {change_pct:+.1f} % from baseline (PR needs -30 %), {from_nadir} (PD needs +20 % and +5 mm)"
    return assessment(Response.SD, why)
