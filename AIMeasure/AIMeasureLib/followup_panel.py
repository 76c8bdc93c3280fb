"""AIMeasure's follow-up over several time points: the current study (the panel's segmentation and volume)
and the earlier segmentations the user ticks, tracked by the logic of `aiportal followup`
(:mod:`aiportal.followup`), shown as one linked slice view per time point with the delta table and the
per-lesion diameter chart (:mod:`aiportal.followup.scene`)."""

import re

import slicer
from slicer.i18n import tr as _

#: an 8-digit study date (DICOM DA) at the start of a volume's name sorts the time points by date
_DATE = re.compile(r"^(\d{8})")


def studyLabel(volume) -> str:
    """The time point's label: the study date a DICOM load left on the volume, else the volume's name."""
    return volume.GetAttribute("DICOM.StudyDate") or volume.GetName()


def timePoints(currentSegmentation, currentVolume, priorSegmentations) -> list:
    """(label, segmentation, volume) oldest first, the current study last. Each prior's volume is its
    segmentation's reference geometry volume (the Segment Editor's source volume); priors are sorted by
    label when every label starts with a study date (YYYYMMDD), else kept in the order given."""
    if not currentSegmentation or not currentVolume:
        raise ValueError(_("Select the current segmentation and volume."))
    priors = [s for s in priorSegmentations if s is not None and s is not currentSegmentation]
    if not priors:
        raise ValueError(_("Tick one or more earlier segmentations under 'Earlier studies'."))
    points = []
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    for segmentation in priors:
        volume = segmentation.GetNodeReference(role)
        if volume is None:
            raise ValueError(_("{name} has no reference volume: set its source volume in the Segment Editor "
                               "(or load it with its DICOM series).").format(name=segmentation.GetName()))
        points.append((studyLabel(volume), segmentation, volume))
    if all(_DATE.match(label) for label, _s, _v in points):
        points.sort(key=lambda point: point[0])
    return [*points, (studyLabel(currentVolume), currentSegmentation, currentVolume)]


class FollowUpSeriesLogic:
    """GUI-free: start the tracking job, put its result into the scene."""

    def __init__(self):
        self.result = None
        self.view = None

    def start(self, points: list, register: bool = True):
        from aiportal.followup.scene import series_job

        job = series_job(points, register=register)
        job.start()
        return job

    def apply(self, scene, points: list, result):
        """The layout, transforms, delta table and chart (main thread); returns the SeriesView."""
        from aiportal.followup.scene import show_series

        self.result = result
        self.view = show_series(scene, result, {label: (seg, vol) for label, seg, vol in points})
        return self.view

    def save(self, folder) -> list:
        """followup.json/csv (the delta table, responses, registrations) and followup.png (the per-lesion plot)."""
        from pathlib import Path

        from aiportal.followup.outputs import write_plot, write_table

        return [*write_table(self.result, Path(folder)), write_plot(self.result, Path(folder) / "followup.png")]

    def run(self, scene, points: list, register: bool = True):
        """The panel's job, waited for."""
        job = self.start(points, register)
        job.wait()
        return self.apply(scene, points, job.finish())


class FollowUpSeriesPanel:
    """The 'Earlier studies' row and 'Follow over time points' button of AIMeasure's Follow-up section."""

    def __init__(self, widget):
        self.widget = widget
        self.logic = FollowUpSeriesLogic()
        widget.ui.followSeriesButton.connect("clicked(bool)", self.onFollowSeries)

    def onFollowSeries(self) -> None:
        failure = _("Failed to follow the lesions over the time points.")
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            p = self.widget._parameterNode
            points = timePoints(p.inputSegmentation, p.inputVolume, self.widget.ui.priorSeriesSelector.checkedNodes())
            scene = p.inputSegmentation.GetScene()
            job = self.logic.start(points)
            self.widget._runInBackground(job, lambda done: self.logic.apply(scene, points, done.finish()),
                                         self.show, failure)

    def show(self, view) -> None:
        self.widget.ui.followUpTableView.setMRMLTableNode(view.table)
        self.widget.ui.responseLabel.text = view.summary
        done = _("Followed {count} time points: one linked view each, the table and the chart below.")
        done = done.format(count=len(self.logic.result.labels))
        folder = self.widget._parameterNode.outputFolder
        if folder and str(folder) not in ("", "."):  # the report folder: the table and plot as files too
            done += " " + _("Wrote {files} in {folder}.").format(
                files=", ".join(path.name for path in self.logic.save(folder)), folder=folder)
        self.widget.ui.statusLabel.text = done


def runSelfTest(test) -> None:
    """Three time points of a painted lesion (diameter 20, 16 then 24 mm): stable, then progressive disease
    from the nadir; the layout shows each time point in its own linked view, the table and the chart."""
    import numpy as np

    test.delayDisplay("Follow-up over three time points")
    k, j, i = np.ogrid[:5, :64, :64]
    segmentations = []
    for n, radius in enumerate((10, 8, 12)):
        voxels = np.zeros((5, 64, 64), dtype=np.int16)
        voxels[np.broadcast_to((j - 32) ** 2 + (i - 32) ** 2 <= radius * radius, voxels.shape)] = 100
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"2024010{n + 1} CT")
        slicer.util.updateVolumeFromArray(volume, voxels)
        labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"labels {n}")
        slicer.util.updateVolumeFromArray(labels, (voxels > 0).astype(np.uint8))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"lesions {n}")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, segmentation)
        segmentations.append((segmentation, volume))
    with test.assertRaises(ValueError):
        timePoints(*segmentations[2], [])
    points = timePoints(*segmentations[2], [segmentations[1][0], segmentations[0][0]])  # ticked newest first
    test.assertEqual([label for label, _s, _v in points], ["20240101 CT", "20240102 CT", "20240103 CT"])
    logic = FollowUpSeriesLogic()
    view = logic.run(slicer.mrmlScene, points, register=False)  # one grid: registration has nothing to find
    for found, expected in zip(logic.result.sums_mm, (20.0, 16.0, 24.0), strict=True):  # the discs' diameters
        test.assertAlmostEqual(found, expected, places=6)
    test.assertEqual([a.response.name for a in logic.result.responses[1:]], ["SD", "PD"])
    test.assertEqual(view.table.GetNumberOfRows(), 3)
    test.assertEqual(view.chart.GetNumberOfPlotSeriesNodes(), 1)
    layout = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    test.assertEqual(layout.GetViewArrangement(), view.layout_id)
    for tag, (_label, _segmentation, volume) in zip(view.slice_tags, points, strict=True):
        composite = slicer.mrmlScene.GetSingletonNode(tag, "vtkMRMLSliceCompositeNode")
        test.assertEqual(composite.GetBackgroundVolumeID(), volume.GetID())
        test.assertTrue(composite.GetLinkedControl())
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        written = [path.name for path in logic.save(folder)]
        test.assertEqual(written, ["followup.json", "followup.csv", "followup.png"])
        document = json.loads((Path(folder) / "followup.json").read_text())
        test.assertEqual([r.get("response") for r in document["responses"]], [None, "SD", "PD"])
    test.delayDisplay("Test passed")
