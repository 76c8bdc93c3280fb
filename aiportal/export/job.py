"""Export as a background job, for faces that must stay responsive (the desktop's Export button).

The segmentation and its volume are copied into a private scene when the job is made (on the
scene's thread); :func:`~aiportal.export.exporter.export_to_folder` then runs on the copies in a
worker thread, reading the DICOM source files there too. :meth:`ExportJob.finish`, back on the
scene's thread, gives each scene segment the tracking UID its SEG used (stable across re-exports,
as when exporting in place). Cancel stops at the next progress step; the output folder is left as it
was (the export is staged and moved in only when complete).
"""

from __future__ import annotations

from pathlib import Path

from aiportal.background import BackgroundJob
from aiportal.export.exporter import ExportOptions, ExportResult, export_to_folder
from aiportal.runtime import private_scene_copies


class ExportJob(BackgroundJob):
    """``export_to_folder`` of a scene's segmentation, computed on private copies in a worker thread."""

    def __init__(self, segmentation_node, volume_node, source_files: list[str] | None, out_dir: Path,
                 options: ExportOptions) -> None:
        super().__init__()
        self.segmentation_node, self.out_dir, self.options = segmentation_node, Path(out_dir), options
        self._source_files = list(source_files or [])
        self._copies, self._segmentation, self._volume = private_scene_copies(segmentation_node, volume_node)

    def _compute(self) -> ExportResult:
        from aiportal.io.dicom_series import source_from_files

        source = None
        if self._source_files:
            self._report(0.0, "reading the DICOM source series")
            source = source_from_files(self._source_files)
        return export_to_folder(self._segmentation, self._volume, source, self.out_dir, self.options,
                                progress=self._report_or_stop)

    def _report_or_stop(self, fraction: float, stage: str) -> None:
        """Progress, and the export's safe points: a cancelled export stops there and writes nothing."""
        self._cancel.check(f"export to {self.out_dir}")
        self._report(fraction, stage)

    def start(self) -> None:
        super().start(f"exporting to {self.out_dir}")

    def finish(self) -> ExportResult:
        """The export's result; the scene's segments get the tracking UIDs written in the SEG."""
        from aiportal.export.dicom_seg import TRACKING_UID_TAG
        from aiportal.provenance import read_tag

        result: ExportResult = self._computed()
        exported, scene_segmentation = self._segmentation.GetSegmentation(), self.segmentation_node.GetSegmentation()
        for segment_id in exported.GetSegmentIDs():
            segment = scene_segmentation.GetSegment(segment_id)
            uid = read_tag(exported.GetSegment(segment_id), TRACKING_UID_TAG)
            if segment is not None and uid and not read_tag(segment, TRACKING_UID_TAG):
                segment.SetTag(TRACKING_UID_TAG, uid)
        return result
