"""Planning on analytic phantoms (spheres, cylinders, planes) on anisotropic and rotated grids.

Known distances, volumes and angles; every measured value within half a voxel (the largest spacing)
of the analytic one, and every distance equal to a brute-force search over all voxel centres.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from aiportal.errors import InputError
from aiportal.planning.geometry import measure_angle, trajectory_deviation
from aiportal.planning.grid import LabelGrid
from aiportal.planning.outcome import compare_outcome
from aiportal.planning.proximity import proximity, proximity_table
from aiportal.planning.resection import Plane, margin_shell, resect
from aiportal.planning.trajectory import TrajectoryPlanner, brute_force_clearance

SPACING = np.array([0.8, 1.1, 2.0])  # i, j, k (mm): anisotropic


def _rotation(degrees: float) -> np.ndarray:
    """Rotation about an oblique axis, so no grid axis stays aligned with RAS."""
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _grid(rotation_deg: float, shape=(48, 96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """IJK→RAS matrix (centred on the origin) and the RAS position of every voxel centre (k, j, i, 3)."""
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(rotation_deg) @ np.diag(SPACING)
    centre = (np.array(shape[::-1]) - 1) / 2.0
    matrix[:3, 3] = -matrix[:3, :3] @ centre
    kji = np.indices(shape).reshape(3, -1).T
    ras = kji[:, ::-1] @ matrix[:3, :3].T + matrix[:3, 3]
    return matrix, ras.reshape(*shape, 3)


def _phantom(rotation_deg: float, shapes: dict[str, callable]) -> LabelGrid:
    matrix, ras = _grid(rotation_deg)
    labels = np.zeros(ras.shape[:3], np.int16)
    names = {}
    for value, (name, inside) in enumerate(shapes.items(), start=1):
        labels[inside(ras)] = value
        names[value] = name
    return LabelGrid(labels, matrix, names, source="phantom")


def _sphere(centre, radius):
    return lambda ras: np.linalg.norm(ras - np.asarray(centre, float), axis=-1) <= radius


def _cylinder(point, direction, radius):
    direction = np.asarray(direction, float) / np.linalg.norm(direction)

    def inside(ras):
        offset = ras - np.asarray(point, float)
        return np.linalg.norm(offset - (offset @ direction)[..., None] * direction, axis=-1) <= radius
    return inside


HALF_VOXEL = SPACING.max() / 2.0


def _radius_mm(volume_ml: float) -> float:
    return float((3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


@pytest.mark.parametrize("rotation", [0.0, 37.0])
def test_sphere_gaps_are_analytic_and_equal_brute_force(rotation):
    grid = _phantom(rotation, {"tumour": _sphere([0, 0, 0], 12.0), "vessel": _sphere([25.0, 5.0, -3.0], 6.0),
                               "nerve": _cylinder([0, 0, 19.0], [1, 1, 0], 3.5)})
    expected = {"vessel": np.linalg.norm([25.0, 5.0, -3.0]) - 18.0, "nerve": 19.0 - 12.0 - 3.5}
    rows = {row.structure: row for row in proximity_table(grid, "tumour", thresholds={"nerve": 6.0})}
    for name, gap in expected.items():
        row = rows[name]
        # each surface is known to one voxel centre: at worst half a voxel per surface (grid-aligned faces)
        assert abs(row.gap_mm - gap) <= 2 * HALF_VOXEL, (name, row.gap_mm, gap)
        # the centre distance is exactly the brute-force minimum over all voxel-centre pairs
        tumour = grid.ijk_to_ras_points(np.argwhere(grid.mask("tumour")))
        structure = grid.ijk_to_ras_points(np.argwhere(grid.mask(name)))
        brute = cKDTree(structure).query(tumour)[0].min()
        assert row.centre_distance_mm == pytest.approx(brute, abs=1e-3)
        assert np.linalg.norm(np.subtract(row.target_point_ras, row.structure_point_ras)) == pytest.approx(brute,
                                                                                                         abs=2e-3)
    assert rows["nerve"].alert and not rows["vessel"].alert


def test_gap_within_half_a_voxel_at_random_positions_and_rotations():
    rng = np.random.default_rng(1)
    errors = []
    for trial in range(12):
        centre, direction = rng.uniform(-5, 5, 3), rng.normal(size=3)
        radius, other_radius, gap = rng.uniform(6, 14), rng.uniform(3, 8), rng.uniform(2, 10)
        other = centre + direction / np.linalg.norm(direction) * (radius + other_radius + gap)
        grid = _phantom(rng.uniform(0, 90) if trial % 2 else 0.0,
                        {"a": _sphere(centre, radius), "b": _sphere(other, other_radius)})
        errors.append(proximity(grid, "a", "b").gap_mm - gap)
    assert np.abs(errors).max() <= HALF_VOXEL, np.round(errors, 2)


def test_touching_segments_have_no_gap():
    # one label map: the second sphere overwrites the overlap, so the two touch along a face
    grid = _phantom(0.0, {"a": _sphere([0, 0, 0], 10.0), "b": _sphere([15.0, 0, 0], 10.0)})
    row = proximity(grid, "a", "b")
    assert row.centre_distance_mm == pytest.approx(SPACING[0]) and row.gap_mm == 0.0


@pytest.mark.parametrize("rotation", [0.0, 23.0])
def test_margin_shell_volume_and_resection_remnant(rotation):
    grid = _phantom(rotation, {"organ": _sphere([0, 0, 0], 30.0), "tumour": _sphere([10.0, 0, 0], 6.0)})
    shell, mask = margin_shell(grid, "tumour", 5.0)
    grown_ml = shell.shell_ml + np.count_nonzero(grid.mask("tumour")) * grid.voxel_ml
    assert abs(_radius_mm(grown_ml) - 11.0) <= HALF_VOXEL  # the grown sphere's radius: 6 + 5 mm
    assert shell.touches == {"organ": pytest.approx(shell.shell_ml, abs=1e-6)}  # all inside the organ
    # a plane through the centre halves the sphere; remnant is exactly the voxel count
    result, resected = resect(grid, "organ", planes=[Plane((0, 0, 0), (1, 0, 0))], target="tumour")
    organ = grid.mask("organ")
    assert result.remnant_voxels == np.count_nonzero(organ & ~resected)
    assert result.remnant_percent == pytest.approx(100 * result.remnant_voxels / result.organ_voxels, abs=1e-3)
    assert result.organ_ml == pytest.approx(4.0 / 3.0 * np.pi * 30.0 ** 3 / 1000.0, rel=0.01)
    assert result.remnant_percent == pytest.approx(50.0, abs=1.0)
    assert abs(result.target_margin_mm - 4.0) <= HALF_VOXEL and not result.warnings  # tumour 4..16 mm beyond
    # a wedge of two planes (x > 0 and y > 0) removes a quarter
    wedge, _ = resect(grid, "organ", planes=[Plane((0, 0, 0), (1, 0, 0)), Plane((0, 0, 0), (0, 1, 0))])
    assert wedge.remnant_percent == pytest.approx(75.0, abs=1.0)
    union, _ = resect(grid, "organ", planes=[Plane((0, 0, 0), (1, 0, 0)), Plane((0, 0, 0), (0, 1, 0))],
                      combine="any")
    assert union.remnant_percent == pytest.approx(25.0, abs=1.0)
    by_margin, _ = resect(grid, "organ", target="tumour", margin_mm=5.0)
    assert by_margin.resected_ml == pytest.approx(shell.shell_ml, abs=1e-6)  # the tumour is its own label


def _lens_ml(r: float, big: float, d: float) -> float:
    """Volume of the intersection of two spheres (radii r and big, centres d apart), in ml."""
    return np.pi * (big + r - d) ** 2 * (d * d + 2 * d * r - 3 * r * r + 2 * d * big + 6 * r * big - 3 * big * big) / (
        12 * d) / 1000.0


@pytest.mark.parametrize("rotation", [0.0, 33.0])
def test_resection_by_a_drawn_curved_surface(rotation, tmp_path):
    """A sphere (r 25 mm) cut by a spherical cap (R 50 mm, centre 60 mm away) drawn as 7×7 points: every voxel
    farther than half a voxel from the true cap is on its true side; volumes match the analytic lens."""
    from aiportal.planning.surface_cut import CutSurface, read_markups_points

    axis = _rotation(17.0)  # the cut's own orientation: oblique to both grids
    cap_centre, cap_radius = axis @ np.array([0.0, 0.0, -60.0]), 50.0
    grid = _phantom(rotation, {"organ": _sphere([0, 0, 0], 25.0), "tumour": _sphere(axis @ [0, 0, -20.0], 5.0)})
    u, v = np.meshgrid(np.linspace(-32, 32, 7), np.linspace(-32, 32, 7))
    local = np.c_[u.ravel(), v.ravel(), -60.0 + np.sqrt(cap_radius ** 2 - u.ravel() ** 2 - v.ravel() ** 2)]
    points = local @ axis.T
    markups = tmp_path / "cut.mrk.json"  # as Slicer saves a point list: LPS
    lps = points * [-1, -1, 1]
    markups.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
        {"position": p.tolist()} for p in lps]}]}))
    assert np.allclose(read_markups_points(markups), points)
    surface = CutSurface(read_markups_points(markups), side_ras=cap_centre)  # remove what lies inside the cap
    result, resected = resect(grid, "organ", surface=surface, target="tumour")
    organ = grid.mask("organ")
    ras = grid.ijk_to_ras_points(np.argwhere(organ))
    beyond = np.linalg.norm(ras - cap_centre, axis=1) - cap_radius  # < 0: truly removed
    decided = np.abs(beyond) > HALF_VOXEL
    assert np.array_equal(resected[organ][decided], (beyond < 0)[decided])
    assert result.remnant_voxels == np.count_nonzero(organ & ~resected)
    tumour_ml = np.count_nonzero(grid.mask("tumour")) * grid.voxel_ml
    lens = _lens_ml(25.0, cap_radius, 60.0)
    assert result.resected_ml + tumour_ml == pytest.approx(lens, rel=0.03)
    assert abs(result.target_margin_mm - 5.0) <= HALF_VOXEL and not result.warnings
    assert result.method == "drawn surface (49 points)"


def test_drawn_surface_refusals():
    from aiportal.planning.surface_cut import CutSurface

    with pytest.raises(InputError, match="at least 3 points"):
        CutSurface([[0, 0, 0], [1, 0, 0]], [0, 0, 1])
    with pytest.raises(InputError, match="on one line"):
        CutSurface([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [0, 0, 1])
    with pytest.raises(InputError, match="lies on the cut surface"):
        CutSurface([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [0.5, 0.5, 0])
    plane = CutSurface([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 0]], [0, 0, -3])  # 4 coplanar points: a plane
    assert np.allclose(plane.side(np.array([[3.0, 4.0, -2.0], [7.0, 1.0, 5.0]])), [2.0, -5.0])


@pytest.mark.parametrize("rotation", [0.0, 41.0])
def test_trajectory_clearance_entry_and_length_inside(rotation):
    grid = _phantom(rotation, {"vessel": _cylinder([0, 0, 0], [0, 0, 1], 4.0), "bone": _sphere([0, 30.0, 0], 10.0)})
    planner = TrajectoryPlanner(grid, thresholds={"vessel": 5.0})
    # parallel to the vessel, 12 mm from its axis: clearance 8 mm (minus a 1 mm tool radius)
    report = planner.check([12.0, 0, -20.0], [12.0, 0, 20.0], tool_radius_mm=1.0)
    vessel = next(s for s in report.structures if s.structure == "vessel")
    assert abs(vessel.clearance_mm - 7.0) <= HALF_VOXEL and not vessel.entered and not vessel.alert
    # through the bone along y, 5 mm off its centre: a chord of 17.3 mm inside (screw length)
    report = planner.check([0, 10.0, 5.0], [0, 45.0, 5.0])
    bone = next(s for s in report.structures if s.structure == "bone")
    chord = 2 * np.sqrt(10.0 ** 2 - 5.0 ** 2)
    assert bone.entered and bone.alert
    assert abs(bone.first_entry_mm - (20.0 - chord / 2)) <= HALF_VOXEL
    assert abs(bone.length_inside_mm - chord) <= 2 * HALF_VOXEL
    # clearance equals the brute-force segment-to-voxel-centre distance for arbitrary paths
    rng = np.random.default_rng(0)
    for _ in range(5):
        entry, target = rng.uniform(-30, 30, 3), rng.uniform(-30, 30, 3)
        entry[2], target[2] = entry[2] * 0.5, target[2] * 0.5
        report = planner.check(entry, target)
        for row in report.structures:
            if not row.entered:
                assert row.clearance_mm == pytest.approx(brute_force_clearance(grid, row.structure, entry, target),
                                                         abs=1e-3)


@pytest.mark.parametrize("rotation", [0.0, 41.0])
def test_distance_map_bounds_hold_everywhere(rotation):
    """The precomputed map's lower/upper bounds contain the exact distance to the surface voxel centres."""
    from aiportal.planning.distance_map import DistanceBounds

    grid = _phantom(rotation, {"vessel": _cylinder([3.0, -2.0, 0], [1, 2, 5], 4.0),
                               "bone": _sphere([0, 30.0, 0], 10.0)})
    rng = np.random.default_rng(1)
    shape = np.array(grid.labels.shape)
    kji = rng.uniform(0.0, 1.0, (4000, 3)) * shape - 0.5  # anywhere inside the image
    for name in ("vessel", "bone"):
        bounds = DistanceBounds(grid, grid.surface_kji(name))
        lower, upper = bounds.bounds(kji)
        exact, _ = cKDTree(grid.surface_ras(name)).query(grid.ijk_to_ras_points(kji))
        assert np.all(lower <= exact) and np.all(exact <= upper)
        assert (upper - lower).max() <= 2 * bounds.slack + 1e-9


def test_angles_and_deviation():
    assert measure_angle([([0, 0, 0], [1, 0, 0]), ([0, 0, 0], [1, np.sqrt(3), 0])], [])["angle_deg"] == 60.0
    assert measure_angle([], [([0, 0, 0], [0, 0, 1]), ([5, 5, 5], [0, 1, 1])])["angle_deg"] == 45.0
    assert measure_angle([([0, 0, 0], [0, 0, 1])], [([0, 0, 0], [0, 0, 1])])["angle_deg"] == 90.0
    deviation = trajectory_deviation(([0, 0, 0], [0, 0, 50]), ([1, 0, 0], [0, 3, 54]))
    assert deviation["entry_deviation_mm"] == 1.0 and deviation["target_deviation_mm"] == 5.0
    assert deviation["target_lateral_mm"] == 3.0
    with pytest.raises(InputError, match="exactly two"):
        measure_angle([([0, 0, 0], [1, 0, 0])], [])


def test_outcome_of_a_shifted_sphere():
    planned = _phantom(0.0, {"implant": _sphere([0, 0, 0], 10.0)})
    actual = _phantom(0.0, {"implant": _sphere([0, 0, 4.0], 10.0)})
    row = compare_outcome(planned, actual)[0]
    assert abs(row["hausdorff_mm"] - 4.0) <= HALF_VOXEL
    assert 0 < row["mean_surface_distance_mm"] < 4.0 and 0.5 < row["dice"] < 0.9
    assert abs(row["volume_change_percent"]) < 3.0


def test_bad_input_is_refused_with_a_fix():
    grid = _phantom(0.0, {"tumour": _sphere([0, 0, 0], 10.0), "empty": _sphere([500, 0, 0], 1.0)})
    with pytest.raises(InputError, match="is empty"):
        proximity(grid, "tumour", "empty")
    with pytest.raises(InputError, match="no segment 'liver'.*choose one of"):
        grid.mask("liver")
    with pytest.raises(InputError, match="leaves the image"):
        TrajectoryPlanner(grid, ["tumour"]).check([0, 0, 0], [0, 0, 500.0])
    sheared = grid.ijk_to_ras.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(InputError, match="sheared"):
        LabelGrid(grid.labels, sheared, grid.names)
    with pytest.raises(InputError, match="normal"):
        Plane((0, 0, 0), (0, 0, 0))
