"""Facts about the modules under a Slicer release's real parameterNodeWrapper (run in a child process).

    python slicer_conformance_driver.py 5.12  ->  one JSON line: per module, its parameters (type, default,
    what a fresh parameter node on a real MRML scene holds, choice round trips) and its .ui bindings (the
    widget class and the wrapper's registered GUI connectors that can represent the parameter with it).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree

import slicer_reference

MODULES = ("AISegmentPortal", "AIMeasure", "AIRegister")


def ui_bindings(module: str) -> list[tuple[str, str, str]]:
    """(widget class, widget name, SlicerParameterName) for every bound widget of the module's .ui."""
    ui = ElementTree.parse(slicer_reference.REPO / module / "Resources" / "UI" / f"{module}.ui")
    return [(widget.get("class"), widget.get("name"), prop.find("string").text)
            for widget in ui.iter("widget") for prop in widget.findall("property")
            if prop.get("name") == "SlicerParameterName"]


def node_facts(slicer, wrapper_class, name: str, info) -> dict:
    """Write and read the parameter on a real scripted module node through the wrapper."""
    from slicer.parameterNodeWrapper.util import getNodeTypes, isNodeOrUnionOfNodes, splitAnnotations
    from slicer.parameterNodeWrapper.validators import Choice

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    parameters = wrapper_class(node)
    facts = {"type": repr(info.unalteredType), "declared_default": repr(info.default.value),
             "fresh_value": repr(getattr(parameters, name)), "stored": node.GetParameter(name) or None}
    if isNodeOrUnionOfNodes(info.unalteredType):
        node_class = getNodeTypes(info.unalteredType)[0]  # class names
        value = scene.AddNewNodeByClass(node_class)
        setattr(parameters, name, value)
        facts["node_round_trip"] = getattr(parameters, name) is value
        other = scene.AddNewNodeByClass("vtkMRMLTextNode")
        try:
            setattr(parameters, name, other)
            facts["wrong_node_class_refused"] = False
        except (TypeError, ValueError):
            facts["wrong_node_class_refused"] = True
    _, annotations = splitAnnotations(info.unalteredType)
    choices = [a for a in annotations if isinstance(a, Choice)]
    if choices:
        facts["choices"] = [repr(c) for c in choices[0].choices]
        trips = []
        for choice in choices[0].choices:
            setattr(parameters, name, choice)
            trips.append(getattr(parameters, name) == choice)
        facts["choice_round_trips"] = all(trips)
        try:
            setattr(parameters, name, "not-a-choice")
            facts["non_choice_refused"] = False
        except ValueError:
            facts["non_choice_refused"] = True
    return facts


def module_facts(slicer, module: str) -> dict:
    from slicer.parameterNodeWrapper import guiConnectors

    loaded = slicer_reference.load_module_file(module)
    wrapper_class = getattr(loaded, f"{module}ParameterNode")
    parameters = {name: node_facts(slicer, wrapper_class, name, info)
                  for name, info in wrapper_class.allParameters.items()}
    bindings = []
    for widget_class, widget_name, parameter in ui_bindings(module):
        binding = {"widget_class": widget_class, "widget": widget_name, "parameter": parameter,
                   "known_parameter": parameter in wrapper_class.allParameters}
        if binding["known_parameter"]:
            widget = slicer_reference.widget_class(widget_class)()
            datatype = wrapper_class.dataType(parameter)
            binding["connectors"] = [connector.__name__ for connector in guiConnectors._registeredGuiConnectors
                                     if connector.canRepresent(widget, datatype)]
        bindings.append(binding)
    return {"parameters": parameters, "bindings": bindings}


def main(version: str) -> dict:
    slicer = slicer_reference.install(version)
    return {module: module_facts(slicer, module) for module in MODULES}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
