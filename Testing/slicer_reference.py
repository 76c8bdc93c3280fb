"""Slicer's own Python package (from ../shared/slicer-reference) over the real MRML classes of slicer-core.

`install(version)` makes `import slicer` give slicer-core's MRML/logic classes plus the reference release's
`slicer.util`, `slicer.i18n`, `slicer.parameterNodeWrapper`, `slicer.ScriptedLoadableModule` and (5.12)
`slicer.packaging`, executed from Slicer's sources. `qt` and `ctk`, and slicer's q* widget classes, are
stubs only so that those files import: each stub attribute is a distinct empty class named after the Qt class
it stands for, so the wrapper's GUI connectors (`type(widget) in (qt.QCheckBox, ...)`) decide for real which
widget classes can show which parameter. Call it in a child process (it changes sys.modules for good).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get("AIPORTAL_SLICER_REFERENCE", REPO.parent / "shared" / "slicer-reference"))
SUBMODULES = ("i18n", "util", "parameterNodeWrapper", "ScriptedLoadableModule", "packaging")


class StubModule(types.ModuleType):
    """A module whose every public attribute is a class of that name (made once, so `type(w) is qt.X`)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (StubWidget,), {"__module__": self.__name__})
        setattr(self, name, cls)
        return cls


class StubWidget:
    def __init__(self, *args, **kwargs):
        pass


def widget_class(name: str):
    """The stub class a .ui widget class name stands for (qt.Q*, ctk.ctk*, slicer.qMRML*/qSlicer*)."""
    if name.startswith("ctk"):
        return getattr(sys.modules["ctk"], name)
    if name.startswith(("qMRML", "qSlicer")):
        return getattr(sys.modules["slicer"], name)
    return getattr(sys.modules["qt"], name)


def install(version: str = "5.12") -> types.ModuleType:
    source = REFERENCE / f"slicer-{version}" / "Base" / "Python" / "slicer"
    if not source.is_dir():
        raise FileNotFoundError(f"Slicer {version} sources not found at {source}")
    sys.dont_write_bytecode = True  # never write into the shared reference folder
    sys.modules["qt"] = StubModule("qt")
    sys.modules["ctk"] = StubModule("ctk")
    import slicer  # slicer-core: the real MRML classes

    real_getattr = getattr(slicer, "__getattr__", None)

    def slicer_getattr(name: str):
        if name.startswith(("qMRML", "qSlicer")):
            cls = type(name, (StubWidget,), {"__module__": "slicer"})
            setattr(slicer, name, cls)
            return cls
        if real_getattr:
            return real_getattr(name)
        raise AttributeError(f"module 'slicer' has no attribute '{name}'")

    slicer.__getattr__ = slicer_getattr
    slicer.__path__ = [str(source)] + list(getattr(slicer, "__path__", []))
    for name in SUBMODULES:
        path = source / name / "__init__.py" if (source / name).is_dir() else source / f"{name}.py"
        if not path.is_file():
            continue  # 5.10 has no slicer.packaging
        package = [str(path.parent)] if path.name == "__init__.py" else None
        spec = importlib.util.spec_from_file_location(f"slicer.{name}", path, submodule_search_locations=package)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
        spec.loader.exec_module(module)
    return slicer


def load_module_file(module_name: str):
    """Execute <module>/<module>.py as Slicer would import it (its folder on sys.path)."""
    folder = REPO / module_name
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(module_name, folder / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
