"""Run the modules' own self-tests (their ScriptedLoadableModuleTest classes) without the Slicer application.

``python Testing/slicer_self_tests.py SLICER_REFERENCE REPO MODULE...`` — SLICER_REFERENCE is one of
``../shared/slicer-reference/slicer-5.1x``. What runs is real: the MRML classes and module logics of
the slicer-core wheel (a headless scene as ``slicer.mrmlScene``), and Slicer's own ``slicer.util``,
``slicer.i18n``, ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` from that
release's sources. Stubbed, only so the files import: ``qt`` and ``ctk`` (a ``QTimer`` whose slots
``slicer.app.processEvents()`` calls), the Qt widget classes of ``slicer``, and ``slicer.app``.
"""

import importlib
import importlib.util
import sys
import time
import types

REFERENCE, REPO, MODULES = sys.argv[1] + "/Base/Python/slicer", sys.argv[2], sys.argv[3:]
sys.path.insert(0, REPO)


class _Any:
    def __getattr__(self, name):
        return _Any()

    def __call__(self, *args, **kwargs):
        return _Any()


class _StubMeta(type):
    def __getattr__(cls, name):
        return _Any()


_stubs: dict = {}


def _stub_class(name: str) -> type:
    return _stubs.setdefault(name, _StubMeta(name, (), {"__init__": lambda self, *a, **k: None,
                                                         "__getattr__": lambda self, n: _Any()}))


timers = []


class QTimer:
    """The one Qt class the modules use for behaviour: its slots run from slicer.app.processEvents()."""

    def __init__(self):
        self.slots, self.active = [], False

    def setInterval(self, milliseconds):
        self.interval = milliseconds

    def connect(self, signal, slot):
        self.slots.append(slot)

    def start(self):
        self.active = True
        timers.append(self)

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active


qt = types.ModuleType("qt")
qt.QTimer = QTimer
qt.__getattr__ = lambda name: _stub_class("qt." + name)
ctk = types.ModuleType("ctk")
ctk.__getattr__ = lambda name: _stub_class("ctk." + name)
sys.modules["qt"], sys.modules["ctk"] = qt, ctk

import slicer  # noqa: E402 - slicer-core: the real MRML classes

from aiportal.runtime import build_headless_runtime  # noqa: E402

runtime = build_headless_runtime()
QT_WIDGETS = ["qMRMLNodeComboBox", "qMRMLRangeWidget", "qMRMLScreenShotDialog", "qMRMLSliderWidget", "qMRMLSpinBox",
              "qMRMLUtils", "qMRMLWidget", "qSlicerScriptedLoadableModule", "qSlicerScriptedLoadableModuleWidget",
              "qSlicerWidget"]
for widget in QT_WIDGETS:
    setattr(slicer, widget, _stub_class("slicer." + widget))


class App:
    applicationVersion = f"reference sources of {sys.argv[1].rsplit('/', 1)[-1]} on slicer-core"

    def translate(self, context, text):
        return text

    def testingEnabled(self):
        return True

    def connect(self, *args):
        pass

    def processEvents(self):
        for timer in list(timers):
            if timer.active:
                for slot in timer.slots:
                    slot()
        time.sleep(0.01)

    def layoutManager(self):
        return None  # no main window, as in Slicer's --no-main-window test runs

    def applicationLogic(self):
        return runtime.app_logic


slicer.app, slicer.mrmlScene = App(), runtime.scene
slicer.modules = types.SimpleNamespace(**{
    name: types.SimpleNamespace(logic=lambda logic=logic: logic)
    for name, logic in (("segmentations", runtime.segmentations), ("volumes", runtime.volumes),
                        ("markups", runtime.markups), ("colors", runtime.colors),
                        ("terminologies", runtime.terminologies), ("transforms", runtime.transforms),
                        ("subjecthierarchy", runtime.subject_hierarchy))})


def load(name: str, package: bool = False):
    """Slicer's own ``slicer.NAME`` from the reference sources."""
    path = f"{REFERENCE}/{name}/__init__.py" if package else f"{REFERENCE}/{name}.py"
    spec = importlib.util.spec_from_file_location(f"slicer.{name}", path, submodule_search_locations=(
        [f"{REFERENCE}/{name}"] if package else None))
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"slicer.{name}"] = module
    setattr(slicer, name, module)
    spec.loader.exec_module(module)
    return module


load("i18n")
load("util")
load("parameterNodeWrapper", package=True)
load("ScriptedLoadableModule").ScriptedLoadableModuleTest.delayDisplay = lambda self, message, *a, **k: print(
    "  ", message)

for module in MODULES:
    sys.path.insert(0, f"{REPO}/{module}")
    test = getattr(importlib.import_module(module), f"{module}Test")()
    test.runTest()
    print(f"{module} self-test passed", flush=True)
