"""What Python can reach on a qMRML / CTK widget, read from the C++ headers in ../shared/slicer-reference.

PythonQt exposes a QObject's Q_PROPERTYs, signals, public slots and Q_INVOKABLE methods (not other public
methods), so a module's `widget.foo` must be one of those, in the class or one of its qMRML/CTK bases. The
chain ends at a Qt class (QWidget, QAbstractButton, ...), whose own API is not in the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slicer_reference import REFERENCE

HEADER_FOLDERS = ("slicer-{version}/Libs/MRML/Widgets", "slicer-{version}/Modules/Loadable/Segmentations/Widgets",
                  "ctk/Libs/Widgets")


@dataclass
class WidgetClass:
    name: str
    base: str
    properties: set[str] = field(default_factory=set)
    slots: set[str] = field(default_factory=set)  # "name(type,type)" normalised
    signals: set[str] = field(default_factory=set)
    invokables: set[str] = field(default_factory=set)
    returns: dict[str, str] = field(default_factory=dict)  # invokable / slot name -> the class it returns

    def members(self) -> set[str]:
        return self.properties | {s.split("(")[0] for s in self.slots | self.signals | self.invokables}


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL))


def normalise(signature: str) -> str:
    """Qt's normalised signature: `name(const QString& text, int = 0)` -> `name(QString,int)`."""
    name, _, arguments = signature.partition("(")
    types = []
    for argument in filter(None, (a.strip() for a in arguments.rstrip(") ;").split(","))):
        argument = argument.split("=")[0].strip()
        argument = re.sub(r"\bconst\b|&", " ", argument)
        tokens = argument.replace("*", " * ").split()
        if len(tokens) > 1 and re.fullmatch(r"[A-Za-z_]\w*", tokens[-1]) and tokens[-2] != "unsigned":
            tokens = tokens[:-1]  # the parameter's name
        types.append("".join(tokens))
    return f"{name.strip()}({','.join(types)})"


def _declarations(section: str) -> set[str]:
    found = set()
    for match in re.finditer(r"([A-Za-z_]\w*)\s*\(([^)]*)\)\s*(?:const)?\s*(?:override)?\s*[;{]", section):
        found.add(normalise(f"{match.group(1)}({match.group(2)})"))
    return found


def parse_header(path: Path) -> WidgetClass | None:
    text = _strip_comments(path.read_text(errors="replace"))
    declared = re.search(r"class\s+(?:\w+_EXPORT\s+)?(\w+)\s*:\s*public\s+(\w+)", text)
    if not declared:
        return None
    widget = WidgetClass(declared.group(1), declared.group(2))
    widget.properties = set(re.findall(r"Q_PROPERTY\s*\(\s*[\w:<>,*&\s]+?[\s*&](\w+)\s+(?:READ|MEMBER)", text))
    for line in re.findall(r"Q_INVOKABLE\s+([^;{]+\))", text):
        widget.invokables |= _declarations(line + ";")
        returned = re.match(r"(?:virtual\s+|static\s+|const\s+)*(\w+)\s*[*&]?\s*(\w+)\s*\(", line)
        if returned:
            widget.returns[returned.group(2)] = returned.group(1)
    # access sections: from "public slots:" / "signals:" up to the next access specifier
    for kind, body in re.findall(r"\b(public\s+(?:slots|Q_SLOTS)|signals|Q_SIGNALS)\s*:(.*?)(?=\b(?:public|protected|"
                                 r"private)\b[^:]*:|\bsignals\s*:|\bQ_SIGNALS\s*:|\Z)", text, re.DOTALL):
        (widget.signals if "sig" in kind.lower() else widget.slots).update(_declarations(body))
    return widget


def widget_classes(version: str = "5.12") -> dict[str, WidgetClass]:
    classes: dict[str, WidgetClass] = {}
    for folder in HEADER_FOLDERS:
        for header in sorted((REFERENCE / folder.format(version=version)).glob("*.h")):
            parsed = parse_header(header)
            if parsed and parsed.name not in classes:
                classes[parsed.name] = parsed
    return classes


def chain(classes: dict[str, WidgetClass], name: str) -> tuple[list[WidgetClass], str]:
    """The class and its qMRML/CTK bases, and the Qt class the chain ends at."""
    found = []
    while name in classes:
        found.append(classes[name])
        name = classes[name].base
    return found, name
