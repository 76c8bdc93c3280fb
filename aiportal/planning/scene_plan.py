"""The plan bundle and plan vs outcome from scene nodes: what the desktop and browser panels call.

Both panels hand over their nodes (the segmentation, its volume, markups) and get the same results the CLI
gets from files: :func:`aiportal.planning.plan_export.write_plan_bundle` and
:func:`aiportal.planning.outcome.plan_outcome`.
"""

from __future__ import annotations

from pathlib import Path

from aiportal.errors import InputError
from aiportal.planning.grid import LabelGrid, grid_from_segmentation
from aiportal.planning.plan_export import PlanSpec, write_plan_bundle

# the per-structure outcome columns shown by the panels: (result key, title, unit)
OUTCOME_COLUMNS = (("structure", "Structure", ""), ("planned_ml", "Planned", "ml"), ("actual_ml", "Actual", "ml"),
                   ("mean_surface_distance_mm", "Mean surface distance", "mm"),
                   ("hausdorff_mm", "Hausdorff", "mm"), ("hausdorff95_mm", "Hausdorff 95 %", "mm"))


def line_points(line_node) -> tuple[list[float], list[float]]:
    """(entry, target) of a line markup (world RAS); an error when it is not placed."""
    if line_node is None or line_node.GetNumberOfDefinedControlPoints() < 2:
        name = line_node.GetName() if line_node is not None else "the trajectory"
        raise InputError(f"{name} has no two placed points", "place the entry and the target point")
    return tuple(list(line_node.GetNthControlPointPositionWorld(i)) for i in (0, 1))


def plane_of(plane_node) -> tuple[list[float], list[float]]:
    """(point, normal) of a markups plane (world RAS)."""
    origin, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    plane_node.GetOriginWorld(origin)
    plane_node.GetNormalWorld(normal)
    return origin, normal


def bundle_from_scene(grid: LabelGrid, folder: Path, *, target: str | None = None, threshold_mm: float | None = None,
                      trajectories: list | None = None, tool_radius_mm: float = 0.0, organ: str | None = None,
                      planes: list | None = None, surface=None, dicom_volume=None, dicom_options: dict | None = None,
                      runtime=None) -> dict:
    """The plan bundle of the panel's plan (segment names, RAS points) in ``folder``: every segment as STL
    (LPS), the measurements, trajectories as markups and, given the DICOM volume, SEG + SR; the manifest."""
    from aiportal.planning.plan_export import require_empty_folder

    if organ and not planes and surface is None:
        raise InputError(f"no cut for resecting {organ}", "give a cut plane or drawn surface, or no organ")
    require_empty_folder(folder)
    spec = PlanSpec(target=target, default_threshold_mm=threshold_mm or None,
                    trajectories=list(trajectories or []), tool_radius_mm=tool_radius_mm, organ=organ,
                    planes=list(planes or []), surface=surface)
    try:
        return write_plan_bundle(grid, folder, spec, runtime=runtime, dicom_volume=dicom_volume,
                                 dicom_options=dicom_options)
    except BaseException:  # a half-written bundle is not left in the (new or empty) folder
        import shutil

        for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        raise


def outcome_from_nodes(planned: LabelGrid, planned_volume, actual_segmentation, actual_volume, *,
                       mode: str = "auto", planned_source=None, actual_source=None, **deviations) -> dict:
    """Plan vs outcome: the post-operative volume registered to the planning one (rigid, as ``mode`` says),
    its segmentation compared per structure; ``deviations``: planned/actual trajectory and plane (see
    :func:`aiportal.planning.outcome.plan_outcome`)."""
    from aiportal.planning.outcome import plan_outcome
    from aiportal.planning.outcome_registration import frame_for_volumes

    if actual_segmentation is None or actual_volume is None:
        raise InputError("no post-operative segmentation or volume", "pick the post-operative CT and its segmentation")
    actual = grid_from_segmentation(actual_segmentation, actual_volume)
    common = [n for n in planned.present_names() if n in set(actual.present_names())]
    if not common:
        raise InputError(f"{actual.source} has no segment named as in {planned.source}",
                         "segment the post-operative CT with the same model (or name the segments alike)")
    frame = frame_for_volumes(planned_volume, actual_volume, mode, planned_source, actual_source)
    return plan_outcome(planned, actual, frame, common, **deviations)


def outcome_from_files(planned: LabelGrid, planned_volume, segmentation_path: Path, image_path: Path, *,
                       mode: str = "auto", planned_source=None, runtime=None, **deviations) -> dict:
    """As :func:`outcome_from_nodes` for a post-operative segmentation file (``.seg.nrrd``, or a label map with
    TotalSegmentator's names) and its CT, loaded into ``runtime``'s scene and removed afterwards."""
    from aiportal.io.volumes import load_volume
    from aiportal.planning.grid import load_label_grid
    from aiportal.planning.outcome import plan_outcome
    from aiportal.planning.outcome_registration import frame_for_volumes
    from aiportal.runtime import get_runtime

    runtime = runtime or get_runtime()
    scene = runtime.scene
    for label, path in (("post-operative segmentation", segmentation_path), ("post-operative CT", image_path)):
        if not path or not Path(path).exists():
            raise InputError(f"{label} {path or '(none)'} does not exist", f"type the path of the {label}")
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        image = load_volume(Path(image_path), runtime)
        actual = load_label_grid(Path(segmentation_path), volume=Path(image_path), runtime=runtime)
        common = [n for n in planned.present_names() if n in set(actual.present_names())]
        if not common:
            raise InputError(f"{actual.source} has no segment named as in the plan",
                             "segment the post-operative CT with the same model (or name the segments alike)")
        frame = frame_for_volumes(planned_volume, image.node, mode, planned_source, image.source)
        return plan_outcome(planned, actual, frame, common, **deviations)
    finally:  # the post-operative nodes leave the scene again
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before and node.GetScene() is not None:
                scene.RemoveNode(node)


def outcome_table_node(scene, result: dict, table_node=None):
    """A vtkMRMLTableNode (new, or ``table_node`` refilled) with one row per structure."""
    import vtk

    table = vtk.vtkTable()
    for key, title, _ in OUTCOME_COLUMNS:
        array = vtk.vtkStringArray() if key == "structure" else vtk.vtkDoubleArray()
        array.SetName(title)
        for row in result["structures"]:
            array.InsertNextValue(row[key] if key == "structure" else float(row[key]))
        table.AddColumn(array)
    node = table_node or scene.AddNewNodeByClass("vtkMRMLTableNode", "Plan vs outcome")
    node.SetAndObserveTable(table)
    for _, title, unit in OUTCOME_COLUMNS:
        if unit:
            node.SetColumnUnitLabel(title, unit)
    return node


def deviation_text(result: dict) -> str:
    """The frame, trajectory and plane deviations and warnings, as panel text."""
    frame = result["frame"]
    lines = [f"{'Registered' if frame['registered'] else 'Not registered'}: {frame['reason']}"]
    if "trajectory" in result:
        t = result["trajectory"]
        lines.append(f"Trajectory: entry {t['entry_deviation_mm']:.1f} mm, target {t['target_deviation_mm']:.1f} mm "
                     f"(lateral {t['target_lateral_mm']:.1f} mm), angle {t['angle_deg']:.1f}°")
    if "plane" in result:
        plane = result["plane"]
        lines.append(f"Cut plane: angle {plane['angle_deg']:.1f}°, offset {plane['offset_mm']:.1f} mm")
    return "\n".join(lines + [f"WARNING: {w}" for w in frame["warnings"]])
