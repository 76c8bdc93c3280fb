"""AISegmentPortal's Server section (AISegmentPortalLib/server_panel.py) against a real `aiportal serve`: the
connection check with a valid and a wrong key, and the consent asked once per server before any upload."""

from __future__ import annotations

import pytest
from desktop_panel_fakes import Button, Timer, import_panel, widget
from server_fixtures import ApiServer

from aiportal.desktop_jobs import follow


class _Logic:
    """AISegmentPortalLogic.serverClient (the client every face uses)."""

    def serverClient(self, serverURL: str, apiKey: str):
        from aiportal.server.client import ServerClient

        if not serverURL:
            raise ValueError("Enter the server address, e.g. https://ai-server.hospital.org")
        return ServerClient(serverURL, api_key=apiKey or None)


class _Settings:
    def __init__(self) -> None:
        self.values = {}

    def value(self, key: str):
        return self.values.get(key)

    def setValue(self, key: str, value) -> None:
        self.values[key] = value


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    api = ApiServer(tmp_path_factory.mktemp("panel-server"), args=["--executor", "thread", "--workers", "1"])
    key = api.key("desktop", "read,submit")
    api.start()
    yield api, key
    api.stop()


@pytest.fixture
def panel_module(monkeypatch):
    import slicer

    module = import_panel(monkeypatch, "server_panel")
    settings, shown = _Settings(), {"errors": [], "questions": [], "answer": False}
    monkeypatch.setattr(slicer.app, "settings", lambda: settings, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: shown["errors"].append(text),
                        raising=False)
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                        lambda text, *a, **k: shown["questions"].append(text) or shown["answer"], raising=False)
    return module, settings, shown


def _panel(module, runtime, url: str, key: str):
    timers = []

    def followJob(job, onProgress, onDone):
        job.start()
        timers.append(Timer())
        return follow(job, runtime.scene, timers[-1], onProgress, onDone)

    ui = widget(testConnectionButton=Button("Test connection"), serverKeyLineEdit=widget(text=""),
                serverStatusLabel=widget(text=""))
    panel = module.ServerPanel(ui, _Logic(), lambda: widget(serverURL=url), followJob)
    ui.serverKeyLineEdit.text = key
    return panel, ui, timers


def test_the_connection_check_names_the_models_or_the_refusal(server, panel_module, runtime):
    api, key = server
    module, _settings, shown = panel_module
    panel, ui, timers = _panel(module, runtime, api.url, key)
    ui.testConnectionButton.click()
    assert ui.serverStatusLabel.text == f"Connecting to {api.url}..."
    while timers[-1].active:
        timers[-1].tick()
    assert ui.serverStatusLabel.text.startswith("Connected: ") and "classic-ct" in ui.serverStatusLabel.text
    assert shown["errors"] == []

    panel, ui, timers = _panel(module, runtime, api.url, "wrong-key")
    ui.testConnectionButton.click()
    while timers[-1].active:
        timers[-1].tick()
    assert ui.serverStatusLabel.text == "Not connected."
    assert len(shown["errors"]) == 1 and shown["errors"][0].startswith("The server cannot be used.")
    panel.cancel()


def test_consent_is_asked_once_per_server_and_a_no_is_not_kept(panel_module, runtime):
    module, settings, shown = panel_module
    panel, _ui, _timers = _panel(module, runtime, "https://ai.example.org", "k")
    assert panel.askConsent("https://ai.example.org") is False  # the user said no: asked again next time
    assert settings.values == {} and len(shown["questions"]) == 1
    shown["answer"] = True
    assert panel.askConsent("https://ai.example.org") is True
    assert panel.askConsent("https://ai.example.org") is True  # kept: not asked again
    assert len(shown["questions"]) == 2 and "https://ai.example.org" in shown["questions"][-1]
    assert settings.values == {module.consentKey("https://ai.example.org"): "yes"}
