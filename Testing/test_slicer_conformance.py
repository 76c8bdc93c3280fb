"""The desktop face against Slicer's own code (../shared/slicer-reference), without a Slicer application.

- Each module file runs under Slicer 5.12's and 5.10's real `parameterNodeWrapper` over slicer-core's MRML
  classes (child process, Testing/slicer_conformance_driver.py): every parameter's default is what a fresh
  parameter node on a real scene holds, node parameters round-trip and refuse other node classes, every
  Choice round-trips and refuses other values, and every `SlicerParameterName` of the .ui files names a
  parameter that one of the wrapper's registered GUI connectors can show in that widget class.
- Every qMRML / CTK property, slot, signal and invokable the modules use (.ui properties and connections,
  `self.ui.<widget>.<member>` in Python) is declared in the widget headers of that release (or is Qt's own).
- Every `slicer.util` / `slicer.packaging` function the modules call exists with a signature that accepts the
  call (parsed from the release's sources); `slicer.packaging` (5.12+) is only imported where an ImportError
  is handled, so the modules still load on 5.10.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from functools import cache
from pathlib import Path

import pytest
import widget_headers
from slicer_reference import REFERENCE, REPO

MODULES = ["AISegmentPortal", "AIMeasure", "AIRegister"]
VERSIONS = ["5.12", "5.10"]

# Qt's own members that the modules use on qMRML/CTK widgets (Qt's API is not in the reference): the Qt class
# each belongs to, and Qt's inheritance between them.
QT_MEMBERS = {
    "QObject": {"connect", "disconnect", "objectName", "property", "setProperty"},  # PythonQt's QObject API
    "QWidget": {"enabled", "visible", "toolTip", "geometry", "minimumSize", "sizePolicy", "setEnabled",
                "setVisible", "setToolTip"},
    "QAbstractButton": {"text", "checked", "checkable", "clicked", "toggled", "setText", "setChecked"},
    "QLineEdit": {"text", "placeholderText", "textChanged", "setText", "setPlaceholderText"},
    "QTableView": set(),
}
QT_BASES = {"QWidget": "QObject", "QAbstractButton": "QWidget", "QLineEdit": "QWidget", "QTableView": "QWidget"}
QT_SIGNALS = {"QAbstractButton": {"clicked(bool)", "toggled(bool)"}, "QLineEdit": {"textChanged(QString)"}}


@cache
def wrapper_facts(version: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "Testing")])}
    run = subprocess.run([sys.executable, str(REPO / "Testing" / "slicer_conformance_driver.py"), version],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, f"the modules do not load under Slicer {version}'s wrapper:\n{run.stderr[-3000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def module_source(module: str) -> str:
    """The module file and its <module>Lib/ helpers (panels kept out of it), checked as one source."""
    helpers = sorted((REPO / module / f"{module}Lib").glob("*.py"))
    texts = [path.read_text().replace("from __future__ import annotations", "") for path in helpers]
    return "\n".join([(REPO / module / f"{module}.py").read_text(), *texts])


def ui_tree(module: str) -> ElementTree.ElementTree:
    return ElementTree.parse(REPO / module / "Resources" / "UI" / f"{module}.ui")


@pytest.fixture(scope="module", autouse=True)
def reference_present():
    if not (REFERENCE / "slicer-5.12").is_dir():
        pytest.fail(f"Slicer reference sources not found at {REFERENCE}: check out ../shared beside the "
                    "repository or set AIPORTAL_SLICER_REFERENCE")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("module", MODULES)
def test_parameters_under_slicers_own_wrapper(module, version):
    parameters = wrapper_facts(version)[module]["parameters"]
    assert parameters, f"{module}: no parameters"
    for name, facts in parameters.items():
        assert facts["fresh_value"] == facts["declared_default"], (name, facts)
        if "node_round_trip" in facts:
            assert facts["node_round_trip"] and facts["wrong_node_class_refused"], (name, facts)
        if "choices" in facts:
            assert facts["declared_default"] in facts["choices"], (name, facts)
            assert facts["choice_round_trips"] and facts["non_choice_refused"], (name, facts)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("module", MODULES)
def test_every_ui_parameter_binding_has_a_gui_connector(module, version):
    bindings = wrapper_facts(version)[module]["bindings"]
    assert bindings, f"{module}: no widget is bound with SlicerParameterName"
    for binding in bindings:
        assert binding["known_parameter"], f"{module}.ui: {binding['widget']} is bound to unknown " \
                                           f"parameter {binding['parameter']!r}"
        assert binding["connectors"], f"{module}.ui: no GUI connector of Slicer {version} shows " \
                                      f"{binding['parameter']!r} in a {binding['widget_class']}"


def _qt_members(qt_class: str) -> set[str]:
    members = set()
    while qt_class:
        members |= QT_MEMBERS.get(qt_class, set())
        qt_class = QT_BASES.get(qt_class)
    return members


def _qt_signals(qt_class: str) -> set[str]:
    signals = set()
    while qt_class:
        signals |= QT_SIGNALS.get(qt_class, set())
        qt_class = QT_BASES.get(qt_class)
    return signals


def _widget_uses(module: str) -> list[tuple[str, str, str]]:
    """(widget class, member, how) for qMRML/CTK widgets: .ui properties and connections, Python accesses."""
    tree = ui_tree(module)
    classes = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    uses = []
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") != "SlicerParameterName":  # a dynamic property, read by the wrapper
                uses.append((widget.get("class"), prop.get("name"), "property"))
    for connection in tree.iter("connection"):
        uses.append((classes[connection.findtext("sender")], connection.findtext("signal"), "signal"))
        uses.append((classes[connection.findtext("receiver")], connection.findtext("slot"), "slot"))
    for node in ast.walk(ast.parse(module_source(module))):
        # self.ui.<widget>.<member>
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui"
                and node.value.attr in classes):
            uses.append((classes[node.value.attr], node.attr, "member"))
        # self.ui.<widget>.connect("signal(args)", ...)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr in classes
                and node.args and isinstance(node.args[0], ast.Constant)):
            uses.append((classes[node.func.value.attr], node.args[0].value, "signal"))
    return [use for use in uses if use[0].startswith(("qMRML", "qSlicer", "ctk"))]


@pytest.mark.parametrize("version", ["5.12"])  # the reference holds 5.12's headers only
@pytest.mark.parametrize("module", MODULES)
def test_widget_members_exist_in_the_headers(module, version):
    classes = widget_headers.widget_classes(version)
    missing = []
    for widget_class, member, how in _widget_uses(module):
        chain, qt_class = widget_headers.chain(classes, widget_class)
        assert chain, f"{module}: widget class {widget_class} not in Slicer {version}'s or CTK's headers"
        if how in ("signal", "slot"):
            declared = set().union(*(getattr(c, how + "s") | c.invokables for c in chain)) | _qt_signals(qt_class)
            if widget_headers.normalise(member) not in declared:
                missing.append(f"{widget_class}: {how} {member}")
        elif member not in set().union(*(c.members() for c in chain)) | _qt_members(qt_class):
            missing.append(f"{widget_class}.{member} ({how}; chain ends at {qt_class})")
    assert not missing, f"{module} uses what Slicer {version} does not declare: {missing}"


# What the application object hands out (qSlicerLayoutManager's header is not in the reference; its base is).
APP_RETURNS = {"slicer.app.layoutManager()": "qMRMLLayoutManager"}


def _typed_calls(module: str, classes: dict) -> list[tuple[str, str, int]]:
    """(class, member, line) for each method call on a qMRML/CTK object the code reaches from slicer.app:
    the object's class follows the return types the headers declare (layoutManager.threeDWidget(i) is a
    qMRMLThreeDWidget, its threeDController() a qMRMLThreeDViewControllerWidget, ...), through variables."""
    tree = ast.parse(module_source(module))
    assignments: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assignments.setdefault(node.targets[0].id, []).append(node.value)

    def class_of(expression: ast.expr, seen: frozenset = frozenset()) -> str | None:
        if isinstance(expression, ast.IfExp):
            return class_of(expression.body, seen)
        if ast.unparse(expression) in APP_RETURNS:
            return APP_RETURNS[ast.unparse(expression)]
        if isinstance(expression, ast.Name) and expression.id not in seen:
            found = {class_of(value, seen | {expression.id}) for value in assignments.get(expression.id, [])}
            return found.pop() if len(found) == 1 else None
        if isinstance(expression, ast.Call) and isinstance(expression.func, ast.Attribute):
            owner = class_of(expression.func.value, seen)
            chain, _ = widget_headers.chain(classes, owner) if owner else ([], None)
            return next((c.returns[expression.func.attr] for c in chain if expression.func.attr in c.returns), None)
        return None

    uses, called = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            called.add(id(node.func))
            owner = class_of(node.func.value)
            if owner in classes and node.func.attr == "connect" and node.args and \
                    isinstance(node.args[0], ast.Constant):
                uses.append((owner, node.args[0].value, node.lineno, "signal"))
            elif owner in classes:
                uses.append((owner, node.func.attr, node.lineno, "call"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in called and (owner := class_of(node.value)) in classes:
            uses.append((owner, node.attr, node.lineno, "attribute"))
    return uses


@pytest.mark.parametrize("module", MODULES)
def test_view_and_layout_calls_exist_in_the_headers(module):
    classes = widget_headers.widget_classes("5.12")
    missing = []
    for owner, member, line, how in _typed_calls(module, classes):
        chain, qt_class = widget_headers.chain(classes, owner)
        if how == "signal":
            declared = set().union(*(c.signals for c in chain)) | _qt_signals(qt_class)
            if widget_headers.normalise(member) not in declared:
                missing.append(f"line {line}: {owner} signal {member}")
        elif member not in set().union(*(c.members() for c in chain)) | _qt_members(qt_class):
            missing.append(f"line {line}: {owner}.{member} ({how})")
    assert not missing, f"{module} calls what Slicer 5.12's headers do not declare: {missing}"


def test_view_calls_are_found():
    """The inference above does reach the 3D-view button code (else the test before checks nothing)."""
    uses = {(owner, member) for owner, member, _, _ in
            _typed_calls("AISegmentPortal", widget_headers.widget_classes("5.12"))}
    assert {("qMRMLLayoutManager", "threeDWidget"), ("qMRMLThreeDWidget", "threeDController"),
            ("qMRMLThreeDViewControllerWidget", "barWidget"), ("qMRMLLayoutManager", "threeDViewCount"),
            ("qMRMLLayoutManager", "layoutChanged(int)")} <= uses, uses


# --- slicer.util / slicer.packaging -------------------------------------------------------------------------


def _functions(path: Path) -> dict[str, ast.arguments | None]:
    """Module-level functions (their arguments) and other names (None) of a reference source file."""
    names: dict[str, ast.arguments | None] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = node.args
        elif isinstance(node, ast.ClassDef):
            names[node.name] = None
        elif isinstance(node, ast.Assign):
            names.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
    return names


def _accepts(arguments: ast.arguments, call: ast.Call) -> str | None:
    """Why the call cannot bind to the signature, or None."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None  # *args / **kwargs at the call site: not decidable statically
    positional = [a.arg for a in arguments.posonlyargs + arguments.args]
    if len(call.args) > len(positional) and not arguments.vararg:
        return f"{len(call.args)} positional arguments, takes {len(positional)}"
    bound = set(positional[:len(call.args)])
    for keyword in call.keywords:
        if keyword.arg not in positional + [a.arg for a in arguments.kwonlyargs] and not arguments.kwarg:
            return f"no parameter {keyword.arg!r}"
        bound.add(keyword.arg)
    required = positional[:len(positional) - len(arguments.defaults)]
    required += [a.arg for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True) if d is None]
    unbound = [name for name in required if name not in bound]
    return f"missing {unbound}" if unbound else None


def _slicer_calls(module: str, submodule: str) -> list[tuple[str, ast.Call | None]]:
    """(function, call) for slicer.<submodule>.f(...) and calls through aliases of slicer.<submodule>;
    (name, None) for `from slicer.<submodule> import name`."""
    tree = ast.parse(module_source(module))
    aliases = {f"slicer.{submodule}"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "slicer":
            aliases |= {a.asname or a.name for a in node.names if a.name == submodule}
        if isinstance(node, ast.ImportFrom) and node.module == f"slicer.{submodule}":
            found += [(a.name, None) for a in node.names]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and ast.unparse(node.func.value) in aliases):
            found.append((node.func.attr, node))
    return found


def _call_problems(module: str, submodule: str, version: str) -> list[str]:
    """Each ``slicer.<submodule>`` call of the module that the release lacks or whose arguments it refuses."""
    functions = _functions(REFERENCE / f"slicer-{version}" / "Base" / "Python" / "slicer" / f"{submodule}.py")
    problems = []
    for name, call in _slicer_calls(module, submodule):
        if name not in functions:
            problems.append(f"slicer.{submodule}.{name} does not exist")
        elif call is not None and functions[name] is not None and (why := _accepts(functions[name], call)):
            problems.append(f"slicer.{submodule}.{name}(...) at line {call.lineno}: {why}")
    return problems


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("module", MODULES)
def test_slicer_util_calls_match_the_release(module, version):
    problems = _call_problems(module, "util", version)
    assert not problems, f"{module} on Slicer {version}: {problems}"


@pytest.mark.parametrize("module", MODULES)
def test_slicer_packaging_calls_match_5_12(module):
    problems = _call_problems(module, "packaging", "5.12")
    assert not problems, f"{module}: {problems}"


def _guarded_nodes(tree: ast.AST) -> set[int]:
    """Nodes that run only where slicer.packaging exists: in a try that handles ImportError, or under an if
    that asks for it (hasattr(slicer, "packaging"), a version test)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                handler.type is None or any(name in ast.unparse(handler.type) for name in
                                            ("ImportError", "ModuleNotFoundError", "Exception"))
                for handler in node.handlers):
            guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
        if isinstance(node, ast.If) and any(word in ast.unparse(node.test) for word in ("packaging", "Version")):
            guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return guarded


@pytest.mark.parametrize("module", MODULES)
def test_slicer_packaging_is_guarded_for_5_10(module):
    """5.10 has no slicer.packaging: the modules reach it only behind a guard, so they load and run there."""
    assert not (REFERENCE / "slicer-5.10" / "Base" / "Python" / "slicer" / "packaging.py").exists()
    tree = ast.parse(module_source(module))
    guarded = _guarded_nodes(tree)
    for node in ast.walk(tree):
        uses_packaging = (
            (isinstance(node, ast.ImportFrom) and (node.module == "slicer.packaging" or (
                node.module == "slicer" and any(a.name == "packaging" for a in node.names))))
            or (isinstance(node, ast.Import) and any(a.name == "slicer.packaging" for a in node.names))
            or (isinstance(node, ast.Attribute) and ast.unparse(node) == "slicer.packaging"))
        assert not uses_packaging or id(node) in guarded, \
            f"{module} line {node.lineno}: slicer.packaging used without a guard (Slicer 5.10 has none)"
