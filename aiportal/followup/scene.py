"""The follow-up shown in a Slicer scene, for the desktop and browser faces: one slice view per time point
side by side with linked navigation (each prior moved onto the current study by its registration, so one
slice position shows the same anatomy everywhere), the delta table and a chart of each lesion's diameter.

Everything here is MRML (layout node, view nodes, transforms, table and plot nodes): Slicer's layout
manager shows it on the desktop, and a headless scene holds the same nodes for tests and the browser.
The tracking itself is :func:`aiportal.followup.tracking.track_lesions`, the logic of `aiportal followup`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

from aiportal.background import FunctionJob
from aiportal.errors import InputError
from aiportal.followup.outputs import track_rows
from aiportal.followup.tracking import Longitudinal, TimePoint, track_lesions
from aiportal.runtime import private_scene_copies

LAYOUT_BASE_ID = 41900  # + number of time points: one layout per count, so Slicer keeps each description
VIEW_TAG = "FollowUp{index}"
TABLE_VIEW_TAG = "FollowUpTable"
PLOT_VIEW_TAG = "FollowUpPlot"
MAX_VIEWS = 6
#: the delta table's columns (from followup.csv) and their units
TABLE_COLUMNS = (("tracking_id", ""), ("time_point", ""), ("status", ""), ("segment", ""),
                 ("reported_mm", "mm"), ("volume_ml", "ml"), ("reported_change_from_baseline_mm", "mm"),
                 ("reported_change_from_baseline_pct", "%"), ("volume_change_from_baseline_ml", "ml"),
                 ("volume_change_from_previous_ml", "ml"), ("dice_with_previous", ""))
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass
class SeriesView:
    """What :func:`show_series` put in the scene."""

    layout_id: int
    slice_tags: list[str]  # one slice view per time point, oldest first
    table: object  # vtkMRMLTableNode: one row per lesion and time point
    chart: object  # vtkMRMLPlotChartNode: one series per lesion (RECIST diameter over the time points)
    transforms: list = field(default_factory=list)  # per time point: its registration transform node, or None
    summary: str = ""


def series_job(points: Sequence[tuple[str, object, object]], *, register: bool = True,
               organs: Sequence[str] = (), lymph_nodes: Sequence[str] = ()) -> FunctionJob:
    """Track the lesions of ``points`` — (label, segmentation node, volume node), oldest first, the current
    study last — in a worker thread, on copies made now; ``job.finish()`` is the :class:`Longitudinal`."""
    if len(points) < 2:
        raise InputError(f"Follow-up needs the current study and at least one prior, got {len(points)} time point(s)",
                         "tick one or more earlier segmentations")
    for label, segmentation, volume in points:
        if segmentation is None or volume is None:
            raise InputError(f"Time point {label!r} has no {'segmentation' if segmentation is None else 'volume'}",
                             "give each time point its segmentation and the volume it was made on")
        if volume.GetParentTransformNode() is not None or segmentation.GetParentTransformNode() is not None:
            raise InputError(f"Time point {label!r} is under a transform",
                             "harden or remove the transform: the follow-up registers each prior itself")
    scene, *copies = private_scene_copies(*(node for _, s, v in points for node in (s, v)))
    labels = [label for label, _, _ in points]

    def compute(progress, cancel):
        progress(0.0, "registering the priors and tracking the lesions")
        timepoints = [TimePoint(label, copies[2 * n + 1], copies[2 * n]) for n, label in enumerate(labels)]
        return track_lesions(timepoints, register=register, organs=organs, lymph_nodes=lymph_nodes)

    return FunctionJob(compute, "following the lesions", keep=scene)


def view_tags(count: int) -> list[str]:
    """The singleton tags of the slice views of the newest :data:`MAX_VIEWS` of ``count`` time points."""
    return [VIEW_TAG.format(index=n) for n in range(min(count, MAX_VIEWS))]


def layout_description(count: int) -> str:
    """Slicer layout XML: ``count`` axial slice views in a row over the delta table and the lesion chart."""
    views = "".join(
        f'<item><view class="vtkMRMLSliceNode" singletontag="{VIEW_TAG.format(index=n)}">'
        '<property name="orientation" action="default">Axial</property>'
        f'<property name="viewlabel" action="default">{n + 1}</property>'
        f'<property name="viewcolor" action="default">{_COLOURS[n % len(_COLOURS)]}</property>'
        '<property name="viewgroup" action="default">0</property></view></item>' for n in range(count))
    return ('<layout type="vertical" split="true">'
            f'<item splitSize="600"><layout type="horizontal">{views}</layout></item>'
            '<item splitSize="400"><layout type="horizontal">'
            f'<item><view class="vtkMRMLTableViewNode" singletontag="{TABLE_VIEW_TAG}">'
            '<property name="viewlabel" action="default">T</property></view></item>'
            f'<item><view class="vtkMRMLPlotViewNode" singletontag="{PLOT_VIEW_TAG}">'
            '<property name="viewlabel" action="default">P</property></view></item>'
            '</layout></item></layout>')


def show_series(scene, result: Longitudinal, nodes: dict[str, tuple[object, object]], *,
                layout_node=None, set_layout: bool = True) -> SeriesView:
    """Put ``result`` into ``scene`` (main thread): ``nodes`` maps each time point's label to its
    (segmentation, volume). Priors get their registration as a parent transform; the scene's layout
    (``layout_node``, else the scene's own, else a new one) switches to one linked view per time point
    (the newest :data:`MAX_VIEWS`), the delta table and the diameter chart. ``set_layout=False``: the
    caller's own layout manager (trame-slicer's) made the views :func:`view_tags` names."""
    missing = [label for label in result.labels if label not in nodes]
    if missing:
        raise InputError(f"No nodes for time point(s) {', '.join(missing)}", "give every tracked time point's nodes")
    transforms = [_apply_registration(scene, label, nodes[label], summary)
                  for label, summary in zip(result.labels, result.registrations, strict=True)]
    table = _delta_table(scene, result)
    chart = _diameter_chart(scene, result)
    shown = result.labels[-MAX_VIEWS:]
    layout_id = LAYOUT_BASE_ID + len(shown)
    if set_layout:
        layout_node = layout_node or _layout_node(scene)
        if layout_node.IsLayoutDescription(layout_id):
            layout_node.SetLayoutDescription(layout_id, layout_description(len(shown)))
        else:
            layout_node.AddLayoutDescription(layout_id, layout_description(len(shown)))
        layout_node.SetViewArrangement(layout_id)
    tags = view_tags(len(result.labels))
    ours = set()
    for tag, label in zip(tags, shown, strict=True):
        slice_node = _view_node(scene, "vtkMRMLSliceNode", tag)
        slice_node.SetOrientationToAxial()
        composite = _composite_node(scene, tag)
        composite.SetBackgroundVolumeID(nodes[label][1].GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLinkedControl(True)  # one slice position, zoom and pan for every time point
        ours.add(slice_node.GetID())
    for tag, label in zip(tags, shown, strict=True):
        _show_only_in(scene, nodes[label][0], _view_node(scene, "vtkMRMLSliceNode", tag),
                      also_outside=label == result.labels[-1], ours=ours)
    if set_layout:
        _view_node(scene, "vtkMRMLTableViewNode", TABLE_VIEW_TAG).SetTableNodeID(table.GetID())
        _view_node(scene, "vtkMRMLPlotViewNode", PLOT_VIEW_TAG).SetPlotChartNodeID(chart.GetID())
    _centre_on_first_lesion(scene, result, tags)
    return SeriesView(layout_id, tags, table, chart, transforms, table.GetDescription())


def response_text(result: Longitudinal) -> str:
    """One line per later time point: its RECIST 1.1 response and why; then what was left out or warned."""
    lines = []
    for index, assessment in enumerate(result.responses):
        head = f"{result.labels[index]}: sum {result.sums_mm[index]:.1f} mm"
        lines.append(head + (" (baseline)" if assessment is None else
                             f" — {assessment.response.value} ({assessment.explanation})"))
    lines += [f"left out {label}: {why}" for label, why in result.excluded.items()]
    lines += [f"WARNING: {note}" for note in result.notes if note.startswith("registration")]
    return "\n".join(lines)


# -- helpers -------------------------------------------------------------------------------------
def _layout_node(scene):
    """The scene's layout node (Slicer's layout manager watches it); a headless scene gets one, and
    :func:`_view_node` makes the views a layout manager would."""
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        node = scene.AddNode(slicer.vtkMRMLLayoutNode())
    return node


def _view_node(scene, class_name: str, tag: str):
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetLayoutName() == tag:
            return node
    node = scene.CreateNodeByClass(class_name)  # a layout manager that has not made it yet
    node.SetLayoutName(tag)
    node.SetSingletonTag(tag)
    scene.AddNode(node)
    return node


def _composite_node(scene, tag: str):
    return _view_node(scene, "vtkMRMLSliceCompositeNode", tag)


def _apply_registration(scene, label: str, pair, summary: dict | None):
    """The prior's registration (moving RAS -> current RAS) as its parent transform."""
    if not summary:
        return None
    name = f"Follow-up {label} to current"
    transform = scene.GetFirstNodeByName(name) or scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    matrix = vtk.vtkMatrix4x4()
    for row, values in enumerate(summary["moving_to_fixed_ras"]):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, float(value))
    transform.SetMatrixTransformToParent(matrix)
    for node in pair:
        node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def _show_only_in(scene, segmentation, slice_node, *, also_outside: bool, ours: set[str]) -> None:
    """A prior's lesions only in its own view; the current study's also in every view outside the follow-up."""
    if segmentation.GetDisplayNode() is None:
        segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    display.RemoveAllViewNodeIDs()
    display.AddViewNodeID(slice_node.GetID())
    if also_outside:
        for class_name in ("vtkMRMLSliceNode", "vtkMRMLViewNode"):
            for index in range(scene.GetNumberOfNodesByClass(class_name)):
                view = scene.GetNthNodeByClass(index, class_name)
                if view.GetID() not in ours:
                    display.AddViewNodeID(view.GetID())


def _delta_table(scene, result: Longitudinal):
    rows = track_rows(result)
    table = vtk.vtkTable()
    for column, _ in TABLE_COLUMNS:
        text = not rows or isinstance(rows[0][column], str)
        array = vtk.vtkStringArray() if text else vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows:
            array.InsertNextValue(str(row[column]) if text else float(row[column]))
        table.AddColumn(array)
    name = "Follow-up over time points"
    node = scene.GetFirstNodeByName(name) or scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    for column, unit in TABLE_COLUMNS:
        if unit:
            node.SetColumnUnitLabel(column, unit)
    node.SetDescription(response_text(result))
    return node


def _diameter_chart(scene, result: Longitudinal):
    """One series per lesion: its RECIST diameter (mm) at each time point, a gap where it was not seen."""
    table = vtk.vtkTable()
    index = vtk.vtkDoubleArray()
    index.SetName("time point")
    for n in range(len(result.labels)):
        index.InsertNextValue(float(n))
    table.AddColumn(index)
    for track in result.tracks:
        values = vtk.vtkDoubleArray()
        values.SetName(track.tracking_id)
        for state in track.states:
            values.InsertNextValue(state.reported_mm if state is not None else math.nan)
        table.AddColumn(values)
    name = "Follow-up diameters"
    table_node = scene.GetFirstNodeByName(name) or scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table_node.SetAndObserveTable(table)
    chart = scene.GetFirstNodeByName("Follow-up chart") or scene.AddNewNodeByClass("vtkMRMLPlotChartNode",
                                                                                    "Follow-up chart")
    for n in range(chart.GetNumberOfPlotSeriesNodes()):  # the series of an earlier run
        scene.RemoveNode(chart.GetNthPlotSeriesNode(n))
    chart.RemoveAllPlotSeriesNodeIDs()
    for number, track in enumerate(result.tracks):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"Follow-up {track.tracking_id}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("time point")
        series.SetYColumnName(track.tracking_id)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        colour = _COLOURS[number % len(_COLOURS)]
        series.SetColor(*(int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("RECIST diameter per lesion: " + " → ".join(result.labels))
    chart.SetXAxisTitle("time point (" + ", ".join(f"{n}: {label}" for n, label in enumerate(result.labels)) + ")")
    chart.SetYAxisTitle("diameter (mm)")
    return chart


def _centre_on_first_lesion(scene, result: Longitudinal, tags: list[str]) -> None:
    """Every view at the current study's largest lesion (linked: one offset for all)."""
    current = [t.states[-1].measurement for t in result.tracks
               if t.states[-1] is not None and t.states[-1].measurement is not None]
    if not current:
        return
    largest = max(current, key=lambda m: m.reported_mm)
    centre = np.mean(np.asarray(largest.long_axis_endpoints_ras, float), axis=0)
    for tag in tags:
        _view_node(scene, "vtkMRMLSliceNode", tag).JumpSliceByCentering(*centre)
