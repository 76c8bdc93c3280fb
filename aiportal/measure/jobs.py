"""Measurement, follow-up and report writing as background jobs (the AIMeasure panel stays responsive).

Each job copies the nodes it reads into a private scene when it is made (on the scene's thread) and
computes on the copies in a worker thread; the caller puts the results into the scene (axis lines,
tables) on its own thread. ``job.run()`` gives the same result in one call.
"""

from __future__ import annotations

from pathlib import Path

from aiportal.background import FunctionJob
from aiportal.runtime import private_scene_copies


def measure_job(segmentation_node, volume_node, segment_id: str | None = None, lymph_node: bool = False) -> FunctionJob:
    """(measurements, skipped): the RECIST measurement of each lesion of one segment, or of every segment."""
    from aiportal.measure.recist import measure_lesions
    from aiportal.measure.report import measure_segmentation

    scene, segmentation, volume = private_scene_copies(segmentation_node, volume_node)

    def compute(progress, cancel):
        progress(0.0, "measuring")
        if segment_id:
            lesions = measure_lesions(segmentation, segment_id, volume, lymph_node=lymph_node)
            return lesions.measurements, lesions.refused
        return measure_segmentation(segmentation, volume)

    return FunctionJob(compute, "measuring", keep=scene)


def vessel_job(segmentation_node, volume_node, segment_id: str) -> FunctionJob:
    """The :class:`~aiportal.vessels.report.VesselMeasurement` of one segment (centreline, cross-sections)."""
    from aiportal.vessels.report import measure_vessel_segment

    scene, segmentation, volume = private_scene_copies(segmentation_node, volume_node)

    def compute(progress, cancel):
        progress(0.0, "measuring the vessel")
        return measure_vessel_segment(segmentation, segment_id, volume)

    return FunctionJob(compute, "measuring the vessel", keep=scene)


def compare_job(prior_segmentation, prior_volume, current_segmentation, current_volume) -> FunctionJob:
    """The follow-up (:class:`~aiportal.measure.followup.FollowUp`) of two studies."""
    from aiportal.measure.followup import compare_studies

    scene, *copies = private_scene_copies(prior_segmentation, prior_volume, current_segmentation, current_volume)

    def compute(progress, cancel):
        progress(0.0, "matching lesions")
        return compare_studies(*copies)

    return FunctionJob(compute, "comparing", keep=scene)


def save_report_job(folder: Path, measurements: list, skipped: dict, follow_up, segmentation_node,
                    volume_node) -> FunctionJob:
    """measurements.csv/json, the follow-up tables (when compared) and one PNG key image per lesion."""
    from aiportal.measure.followup import write_follow_up
    from aiportal.measure.key_images import write_key_images
    from aiportal.measure.report import write_measurements

    scene, segmentation, volume = private_scene_copies(segmentation_node, volume_node)
    folder = Path(folder)

    def compute(progress, cancel):
        progress(0.0, "writing the report")
        folder.mkdir(parents=True, exist_ok=True)
        written = write_measurements(measurements, skipped, folder)
        if follow_up is not None:
            written += write_follow_up(follow_up, folder)
        progress(0.5, "writing key images")
        written += [key.path for key in write_key_images(volume, segmentation, measurements, folder / "key_images")]
        return written

    return FunctionJob(compute, "saving the report", keep=scene)
