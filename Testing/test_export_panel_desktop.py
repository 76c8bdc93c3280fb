"""AISegmentPortal's Export section (AISegmentPortalLib/export_panel.py) on a real Slicer core scene: the checked
formats reach the real export job, which writes them in the background; Cancel and missing inputs are handled."""

from __future__ import annotations

import types

import pytest
from desktop_panel_fakes import Button, Timer, import_panel, widget

from aiportal.desktop_jobs import follow
from aiportal.segment import SegmentationJob


class _Logic:
    """AISegmentPortalLogic.createExportJob without the pip check (the packages are installed here)."""

    def createExportJob(self, segmentationNode, volumeNode, outputFolder, options):
        from aiportal.export.job import ExportJob

        return ExportJob(segmentationNode, volumeNode, [], outputFolder, options)


def _ui(folder: str, checked: set[str]) -> types.SimpleNamespace:
    boxes = {f"export{name}CheckBox": widget(checked=name in checked)
             for name in ("Nrrd", "Json", "Csv", "Seg", "Sr", "RtStruct", "Sc", "Estl", "Stl", "Obj")}
    return widget(exportButton=Button("Export"), exportFolderLineEdit=widget(currentPath=folder),
                  exportSegTypeComboBox=widget(currentText="BINARY"), exportAssignUidsCheckBox=widget(checked=False),
                  exportMergedSurfacesCheckBox=widget(checked=False),
                  exportCoordinatesComboBox=widget(currentText="LPS"),
                  exportVolumeTrueSurfacesCheckBox=widget(checked=False), statusLabel=widget(text=""), **boxes)


@pytest.fixture
def export_panel_module(monkeypatch):
    return import_panel(monkeypatch, "export_panel")


def test_the_export_panel_writes_the_checked_formats(export_panel_module, runtime, tmp_path, monkeypatch):
    from aiportal.io.volumes import volume_node_from_array
    from aiportal.sample import make_ct_phantom

    monkeypatch.setenv("AIPORTAL_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    phantom = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.5, 3.5))
    volume = volume_node_from_array(runtime.scene, phantom.hu, phantom.ijk_to_ras, "phantom")
    result = SegmentationJob(volume, "classic-ct", runtime=runtime).run()
    parameters = widget(outputSegmentation=result.segmentation_node, inputVolume=volume)
    timers, progress = [], []

    def followJob(job, onProgress, onDone):
        job.start()
        timers.append(Timer())
        return follow(job, runtime.scene, timers[-1], onProgress, onDone)

    ui = _ui(str(tmp_path / "out"), {"Nrrd", "Csv"})
    options = export_panel_module.exportOptions(ui)
    assert options.formats == ("nrrd", "csv") and options.seg_type == "BINARY" and options.coordinates == "LPS"
    panel = export_panel_module.ExportPanel(ui, _Logic(), lambda: parameters, followJob,
                                            lambda fraction, stage: progress.append(fraction))
    ui.exportButton.click()
    assert ui.exportButton.text == "Cancel export"
    while timers[-1].active:
        timers[-1].tick()
    assert ui.exportButton.text == "Export" and progress
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert ui.statusLabel.text.startswith(f"Exported {len(written)} file(s) to {tmp_path / 'out'}.")
    assert written == ["labels.nrrd", "segmentation.seg.nrrd", "statistics.csv"]  # nrrd: the seg.nrrd and labels

    # Cancel while it runs: nothing is written
    ui = _ui(str(tmp_path / "cancelled"), {"Nrrd", "Json", "Stl"})
    panel = export_panel_module.ExportPanel(ui, _Logic(), lambda: parameters, followJob, lambda *a: None)
    ui.exportButton.click()
    ui.exportButton.click()  # the button is Cancel export now
    while timers[-1].active:
        timers[-1].tick()
    assert ui.statusLabel.text == "Export cancelled: nothing was written."
    assert not (tmp_path / "cancelled").exists() or not any((tmp_path / "cancelled").iterdir())
    panel.cancel()


def test_the_export_panel_asks_for_missing_inputs(export_panel_module, monkeypatch, tmp_path):
    import slicer

    warnings = []
    monkeypatch.setattr(slicer.util, "warningDisplay", lambda text, *a, **k: warnings.append(text), raising=False)
    ui = _ui("", {"Nrrd"})
    export_panel_module.ExportPanel(ui, _Logic(), lambda: None, None, None).onExportButton()
    assert warnings == ["Select the input volume, the output segmentation and an output folder."]
    assert ui.exportButton.text == "Export"
