"""Angles between lines and planes (osteotomy, screw angles) and deviations of planned vs actual ones."""

from __future__ import annotations

import numpy as np

from aiportal.errors import InputError


def _unit(vector, label: str) -> np.ndarray:
    vector = np.asarray(vector, float)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise InputError(f"{label} has zero length", "give two distinct points (or a non-zero normal)")
    return vector / norm


def line_direction(start, end, label: str = "line") -> np.ndarray:
    return _unit(np.asarray(end, float) - np.asarray(start, float), label)


def angle_between_lines(first: np.ndarray, second: np.ndarray) -> float:
    """Angle between two undirected lines, 0..90 degrees."""
    cosine = abs(float(np.clip(first @ second, -1.0, 1.0)))
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def angle_between_planes(first_normal, second_normal) -> float:
    """Dihedral angle between two planes, 0..90 degrees (the angle between their normals' lines)."""
    return angle_between_lines(_unit(first_normal, "plane normal"), _unit(second_normal, "plane normal"))


def angle_line_plane(direction: np.ndarray, normal) -> float:
    """Angle between a line and a plane, 0..90 degrees (90: along the normal)."""
    return 90.0 - angle_between_lines(direction, _unit(normal, "plane normal"))


def measure_angle(lines: list[tuple[list[float], list[float]]], planes: list[tuple[list[float], list[float]]]) -> dict:
    """The angle between exactly two items: two lines, two planes, or a line and a plane."""
    if len(lines) + len(planes) != 2:
        raise InputError(f"an angle needs exactly two lines/planes, got {len(lines)} line(s) and "
                         f"{len(planes)} plane(s)", "pass two of --line / --plane")
    if len(lines) == 2:
        kind, degrees = "line-line", angle_between_lines(line_direction(*lines[0], "first line"),
                                                         line_direction(*lines[1], "second line"))
    elif len(planes) == 2:
        kind, degrees = "plane-plane", angle_between_planes(planes[0][1], planes[1][1])
    else:
        kind, degrees = "line-plane", angle_line_plane(line_direction(*lines[0]), planes[0][1])
    return {"kind": kind, "angle_deg": round(degrees, 3)}


def trajectory_deviation(planned: tuple, actual: tuple) -> dict:
    """Planned vs actual path: entry and target distances (mm) and the angle between them (degrees)."""
    planned_entry, planned_target = (np.asarray(p, float) for p in planned)
    actual_entry, actual_target = (np.asarray(p, float) for p in actual)
    planned_dir = line_direction(planned_entry, planned_target, "planned trajectory")
    actual_dir = line_direction(actual_entry, actual_target, "actual trajectory")
    # lateral offset of the actual target from the planned line (depth errors excluded)
    offset = actual_target - planned_entry
    lateral = offset - (offset @ planned_dir) * planned_dir
    return {"entry_deviation_mm": round(float(np.linalg.norm(actual_entry - planned_entry)), 3),
            "target_deviation_mm": round(float(np.linalg.norm(actual_target - planned_target)), 3),
            "target_lateral_mm": round(float(np.linalg.norm(lateral)), 3),
            "depth_difference_mm": round(float(np.linalg.norm(actual_target - actual_entry)
                                               - np.linalg.norm(planned_target - planned_entry)), 3),
            "angle_deg": round(float(np.degrees(np.arccos(np.clip(planned_dir @ actual_dir, -1.0, 1.0)))), 3)}


def plane_deviation(planned: tuple, actual: tuple) -> dict:
    """Planned vs actual cut plane (point, normal): the angle between them and how far the planned point
    lies from the actual plane (signed along the actual normal, mm)."""
    planned_point, actual_point = np.asarray(planned[0], float), np.asarray(actual[0], float)
    planned_normal, actual_normal = _unit(planned[1], "planned plane normal"), _unit(actual[1], "actual plane normal")
    return {"angle_deg": round(angle_between_planes(planned_normal, actual_normal), 3),
            "offset_mm": round(float((planned_point - actual_point) @ actual_normal), 3)}
