"""A server job that runs the follow-up of a study (`aiportal followup --pacs`) instead of a segmentation.

Made by the auto-dispatch for a rule with ``"followup": true`` (see :mod:`aiportal.server.dispatch`): when a
study's series arrives (e.g. its SEG), the server finds the patient's priors on its PACS, pulls them with the
current study, de-identifies them all with one mapping when the server de-identifies (``--deidentify``:
one pseudonymous patient, each SEG still referencing its images, the study dates kept as labels), tracks
the lesions and stores followup.json/csv/png and one SR per time point as the job's results. In silent-pilot
mode nothing is pushed; otherwise the SRs go to the PACS, re-identified, as any job's results.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom


def followup_params(rule_params: dict, *, max_priors: int = 3, description: str = "",
                    segment_missing: bool = False) -> dict:
    """A dispatch rule's job parameters that make its job a follow-up."""
    return {**rule_params, "followup": {"max_priors": int(max_priors), "description": str(description),
                                        "segment_missing": bool(segment_missing)}}


def run_followup_job(settings, record, reporter, folder: Path, out_dir: Path) -> dict:
    from aiportal.followup.outputs import summary
    from aiportal.followup.priors import deidentify_pulled, pull_current_and_priors
    from aiportal.followup.run import describe, run_follow_up
    from aiportal.server.engine import pacs_gateway, push_results

    options = record.params.get("followup") or {}
    work = Path(folder) / "input" / "followup"
    shutil.rmtree(work, ignore_errors=True)
    reporter.progress(0.0, "finding the priors on the PACS")
    pulled = pull_current_and_priors(pacs_gateway(settings).endpoint, record.study_uid, work,
                                     description=options.get("description", ""),
                                     max_priors=int(options.get("max_priors", 3)))
    mapping = None
    if record.deidentify:
        from aiportal.pacs.deidentify import ReidentificationMap

        reporter.progress(0.05, "de-identifying")
        mapping = ReidentificationMap()
        pulled = deidentify_pulled(pulled, work / "deidentified", mapping)
        mapping.save(Path(folder) / "reidentification.json")  # stays on site, owner-only
    reporter.progress(0.1, f"registering {len(pulled.priors)} prior(s) and tracking the lesions")
    run = run_follow_up(pulled.current, pulled.priors, out_dir, skipped=pulled.skipped, labels=pulled.labels,
                        segment_missing=record.model if options.get("segment_missing") else "")
    shutil.rmtree(work, ignore_errors=True)  # the pulled images are not kept; the results are
    files = [{"name": path.relative_to(out_dir).as_posix(), "kind": "sr" if path.suffix == ".dcm" else path.suffix[1:],
              "sop_instance_uid": str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
              if path.suffix == ".dcm" else ""} for path in run.files]
    document = summary(run.result)
    result = {"kind": "followup", "files": files, "run_id": "", "study_uid": record.study_uid,
              "series_uid": record.series_uid, "time_points": document["time_points"],
              "responses": document["responses"], "lesions": document["lesions"], "excluded": document["excluded"],
              "lines": describe(run), "warnings": [n for n in run.result.notes if n.startswith("registration")],
              "seconds": {k: round(v, 2) for k, v in run.seconds.items()}, "push": None}
    if record.push:
        reporter.progress(0.99, "pushing the follow-up SRs to the PACS")
        result["push"] = push_results(settings, record.id, result, mapping)
    return result
