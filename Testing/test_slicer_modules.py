"""The desktop face cannot run here (no Slicer application), so check what can be checked
statically: template structure, .ui files, and that every widget the code uses exists in its .ui."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = ["AISegmentPortal", "AIMeasure", "AIRegister"]


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_the_slicer_template(module):
    folder = REPO / module
    tree = ast.parse((folder / f"{module}.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for suffix in ("", "ParameterNode", "Widget", "Logic", "Test"):
        assert f"{module}{suffix}" in classes, f"{module}{suffix} missing"
    decorators = [ast.unparse(d) for d in classes[f"{module}ParameterNode"].decorator_list]
    assert "parameterNodeWrapper" in decorators
    for path in ("CMakeLists.txt", f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png",
                 "Resources/requirements.txt", "Testing/Python/CMakeLists.txt"):
        assert (folder / path).is_file(), path
    cmake = (folder / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {module})" in cmake and "slicerMacroBuildScriptedModule" in cmake
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake
    assert f"add_subdirectory({module})" in (REPO / "CMakeLists.txt").read_text()


@pytest.mark.parametrize("module", MODULES)
def test_every_widget_the_code_uses_is_in_the_ui_file(module):
    ui = ElementTree.parse(REPO / module / "Resources/UI" / f"{module}.ui")
    names = {widget.get("name") for widget in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / module / f"{module}.py").read_text()))
    for helper in (REPO / module / f"{module}Lib").glob("*.py"):  # panels reach the widgets as widget.ui.X
        used |= set(re.findall(r"\bui\.(\w+)", helper.read_text()))
    assert used <= names, f"not in the .ui: {used - names}"
    # the SlicerParameterName bindings are checked with Slicer's own wrapper in test_slicer_conformance.py
