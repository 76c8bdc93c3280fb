"""Stand-ins for the few Qt widgets AISegmentPortal's panels (AISegmentPortal/AISegmentPortalLib) touch, so their
own code runs here on the real Slicer core scene and real `slicer.util` (no Slicer application runs here)."""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Item:
    """A QTableWidgetItem: its text, its data by role, its row."""

    def __init__(self, text: str) -> None:
        self.text, self.values, self.rowIndex = text, {}, -1

    def setData(self, role, value) -> None:
        self.values[role] = value

    def data(self, role):
        return self.values.get(role)

    def row(self) -> int:
        return self.rowIndex


class Table:
    """What the panels use of a QTableWidget: rows of items and the rows the reader selected."""

    def __init__(self) -> None:
        self.rows: list[list[Item | None]] = []
        self.selected: list[int] = []
        self.slots = []

    def setRowCount(self, count: int) -> None:
        self.rows = [[None, None] for _ in range(count)]

    def setItem(self, row: int, column: int, item: Item) -> None:
        item.rowIndex = row
        self.rows[row][column] = item

    def item(self, row: int, column: int) -> Item:
        return self.rows[row][column]

    def selectedItems(self) -> list[Item]:
        return [item for row in self.selected for item in self.rows[row]]

    def connect(self, signal: str, slot) -> None:
        self.slots.append(slot)

    def select(self, name: str) -> None:
        """The reader clicks the row of this segment name (itemSelectionChanged follows)."""
        self.selected = [index for index, row in enumerate(self.rows) if row[0].text == name]
        for slot in self.slots:
            slot()

    def states(self) -> dict[str, str]:
        return {row[0].text: row[1].text for row in self.rows}


class Button:
    """A push button: its text and the slots connected to clicked(bool)."""

    def __init__(self, text: str = "") -> None:
        self.text, self.slots = text, []

    def connect(self, signal: str, slot) -> None:
        self.slots.append(slot)

    def click(self) -> None:
        for slot in self.slots:  # PythonQt drops the signal's arguments a slot does not take
            try:
                inspect.signature(slot).bind(False)
            except TypeError:
                slot()
            else:
                slot(False)


class Timer:
    """A QTimer whose timeout slots the test calls (`tick`) instead of Qt's event loop."""

    def __init__(self) -> None:
        self.slots, self.active = [], False

    def setInterval(self, milliseconds: int) -> None:
        pass

    def connect(self, signal: str, slot) -> None:
        self.slots.append(slot)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def tick(self) -> None:
        for slot in self.slots:
            slot()


def widget(**properties) -> types.SimpleNamespace:
    return types.SimpleNamespace(**properties)


def import_panel(monkeypatch, name: str):
    """AISegmentPortalLib.<name>, with `qt`, `slicer.i18n` and `slicer.app` (absent from slicer-core) stood in for."""
    qt = types.ModuleType("qt")
    qt.QTableWidgetItem = Item
    qt.Qt = types.SimpleNamespace(UserRole=32, WaitCursor=3)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    import slicer

    app = types.SimpleNamespace(setOverrideCursor=lambda shape: None, restoreOverrideCursor=lambda: None,
                                layoutManager=lambda: None)  # tryWithErrorDisplay(waitCursor=True); no main window
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.syspath_prepend(str(REPO / "AISegmentPortal"))
    monkeypatch.delitem(sys.modules, f"AISegmentPortalLib.{name}", raising=False)
    return __import__(f"AISegmentPortalLib.{name}", fromlist=[name])
