"""AIMeasure's follow-up over several time points: the current study (the panel's segmentation and volume)
and the earlier segmentations the user ticks, tracked by the logic of `aiportal followup`
(:mod:`aiportal.followup`), shown as one linked slice view per time point with the delta table and the
per-lesion diameter chart (:mod:`aiportal.followup.scene`). *Fetch priors* pulls the current study's priors
with their SEGs from a configured PACS and ticks them (:mod:`aiportal.followup.desktop`); with an output
folder, one longitudinal SR per time point is written there beside the table and plot."""

import re
import shutil
import tempfile
from pathlib import Path

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


def sourceFiles(volume) -> list:
    """The DICOM files of a volume loaded by Slicer's DICOM module (none for a file-based volume)."""
    database = getattr(slicer, "dicomDatabase", None)
    uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split()
    return [database.fileForInstance(uid) for uid in uids] if database else []


def segmentationModels() -> list:
    """The catalog's models that segment a series without prompts (for priors that have no SEG)."""
    from aiportal.models.catalog import get_catalog

    return [model.id for model in get_catalog().models if not model.prompts]


class FollowUpSeriesLogic:
    """GUI-free: fetch the priors, start the tracking job, put its result into the scene, write the files."""

    def __init__(self):
        self.result = None
        self.view = None
        self.fetched = None  # FetchedPriors of the last "Fetch priors"
        self.sources = {}  # label -> SrSource (or None: no SR) of the tracked time points
        self.srSkipped = {}
        self.workFolders = []  # the pulls' folders (temporary): see cleanup

    def startFetch(self, pacsName: str, currentVolume, deidentify: bool = False, filesOf=sourceFiles,
                   segmentMissing: str = ""):
        """Pull the priors of the study of ``currentVolume`` from PACS ``pacsName`` in a worker thread; a prior
        without a SEG is segmented by the model ``segmentMissing`` when one is given."""
        from aiportal.followup.desktop import pull_priors_job, study_uid_of

        if not currentVolume:
            raise ValueError(_("Select the current volume: its study's priors are fetched."))
        studyUID = study_uid_of(currentVolume, filesOf(currentVolume))
        work = Path(tempfile.mkdtemp(prefix="aiportal-followup-"))
        self.workFolders.append(work)  # removed by cleanup even when the job is cancelled before it is loaded
        job = pull_priors_job(pacsName, studyUID, work, deidentify=deidentify, segment_missing=segmentMissing)
        job.start()
        return job

    def loadFetched(self, pulled, runtime=None):
        """The pulled priors into the scene (Slicer's, or ``runtime``'s) with their SEGs (main thread); the
        previous fetch's files go."""
        from aiportal.followup.desktop import load_pulled_priors
        from aiportal.runtime import get_runtime

        self.cleanup(keep=pulled.work)
        self.fetched = load_pulled_priors(pulled, runtime or get_runtime())
        return self.fetched

    def cleanup(self, keep=None) -> None:
        """Delete the pulled files (all, or all but the folder ``keep``)."""
        for folder in self.workFolders:
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)
        self.workFolders = [folder for folder in self.workFolders if folder == keep]
        if self.fetched is not None and self.fetched.work != keep:
            self.fetched.remove()

    def start(self, points: list, register: bool = True, filesOf=sourceFiles):
        from aiportal.errors import InputError
        from aiportal.followup.desktop import sr_source_of_point, sr_source_of_volume
        from aiportal.followup.scene import series_job

        job = series_job(points, register=register)
        fetched = {p.volume.GetID(): p for p in (self.fetched.points if self.fetched else [])}
        self.sources = {}
        for label, _segmentation, volume in points:  # read now: the tracking puts the priors under transforms
            try:
                point = fetched.get(volume.GetID())
                self.sources[label] = (sr_source_of_point(point) if point is not None
                                       else sr_source_of_volume(volume, filesOf(volume)))
            except InputError:
                self.sources[label] = None
        job.start()
        return job

    def apply(self, scene, points: list, result):
        """The layout, transforms, delta table and chart (main thread); returns the SeriesView."""
        from aiportal.followup.scene import show_series

        self.result = result
        self.view = show_series(scene, result, {label: (seg, vol) for label, seg, vol in points})
        return self.view

    def save(self, folder) -> list:
        """followup.json/csv (the delta table, responses, registrations), followup.png (the per-lesion plot), one
        TID 1500 SR per time point loaded from DICOM (``srSkipped``: the others, and why) and, after a
        de-identified fetch, reidentification.json (owner-only)."""
        from aiportal.followup.desktop import write_series_srs
        from aiportal.followup.outputs import write_plot, write_table

        folder = Path(folder)
        files = [*write_table(self.result, folder), write_plot(self.result, folder / "followup.png")]
        srs, self.srSkipped = write_series_srs(self.result, self.sources, folder)
        if self.fetched is not None and self.fetched.mapping is not None and srs:
            srs.append(self.fetched.mapping.save(folder / "reidentification.json"))
        return files + srs

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
        widget.ui.fetchPriorsButton.connect("clicked(bool)", self.onFetchPriors)
        self.fillPacsSelector()

    def fillPacsSelector(self) -> None:
        """The configured PACS endpoints (`aiportal pacs add`); none: the button says how to add one."""
        from aiportal.pacs.config import list_endpoints

        ui = self.widget.ui
        try:
            names = [endpoint.name for endpoint in list_endpoints()]
            why = _("No PACS is configured: add one with 'aiportal pacs add NAME --url ...'.")
        except Exception as error:  # noqa: BLE001 - a broken settings file: said on the button, not raised
            names, why = [], str(error)
        ui.priorPacsSelector.clear()
        for name in names:
            ui.priorPacsSelector.addItem(name)
        ui.segmentMissingSelector.clear()
        ui.segmentMissingSelector.addItem(_("(leave them out)"))
        for model in segmentationModels():
            ui.segmentMissingSelector.addItem(model)
        ui.fetchPriorsButton.enabled = bool(names)
        if not names:
            ui.fetchPriorsButton.toolTip = why

    def onFetchPriors(self) -> None:
        failure = _("Failed to fetch the priors from the PACS.")
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            ui = self.widget.ui
            model = ui.segmentMissingSelector.currentText if ui.segmentMissingSelector.currentIndex > 0 else ""
            job = self.logic.startFetch(ui.priorPacsSelector.currentText, self.widget._parameterNode.inputVolume,
                                        ui.deidentifyPriorsCheckBox.checked, segmentMissing=model)
            self.widget._runInBackground(job, lambda done: self.logic.loadFetched(done.finish()), self.showFetched,
                                         failure)

    def showFetched(self, fetched) -> None:
        import qt

        for point in fetched.points:
            self.widget.ui.priorSeriesSelector.setCheckState(point.segmentation, qt.Qt.Checked)
        done = _("Fetched {count} prior(s) of patient {patient}: {labels}. Ticked under 'Earlier studies'.").format(
            count=len(fetched.points), patient=fetched.patient_id, labels=", ".join(p.label for p in fetched.points))
        self.widget.ui.statusLabel.text = "\n".join(
            [done, *fetched.notes,
             *(_("Left out {study}: {why}").format(study=k, why=v) for k, v in fetched.excluded.items())])

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
            done += "".join(" " + _("No SR for {label}: {why}.").format(label=k, why=v)
                            for k, v in self.logic.srSkipped.items())
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

    with tempfile.TemporaryDirectory() as folder:
        written = [path.name for path in logic.save(folder)]
        test.assertEqual(written, ["followup.json", "followup.csv", "followup.png"])
        test.assertEqual(sorted(logic.srSkipped), ["20240101 CT", "20240102 CT", "20240103 CT"])  # not from DICOM
        document = json.loads((Path(folder) / "followup.json").read_text())
        test.assertEqual([r.get("response") for r in document["responses"]], [None, "SD", "PD"])
    test.delayDisplay("Test passed")
