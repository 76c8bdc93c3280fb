"""The manual-line copilot on real lesion labels (pyradiomics brain and breast MR): deliberately wrong
lines are flagged with the right differences, and the exact axes are suggested."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_recist import _brute_short_axis, _pyradiomics, _slice_boundary_ras

from aiportal.errors import InputError
from aiportal.io.volumes import ijk_to_ras_matrix
from aiportal.measure.copilot import apply_suggestion, check_line, check_line_node
from aiportal.measure.recist import add_axis_lines, lesion_masks, measure_lesions

CASES = ["brain1", "brain2", "breast1"]


def _rotated(endpoints, degrees: float, normal: np.ndarray) -> np.ndarray:
    """The line turned in its slice plane about its midpoint (Rodrigues' formula about the slice normal)."""
    points = np.asarray(endpoints, dtype=float)
    middle = points.mean(axis=0)
    angle = math.radians(degrees)
    offsets = points - middle
    turned = (offsets * math.cos(angle) + np.cross(normal, offsets) * math.sin(angle)
              + np.outer(offsets @ normal, normal) * (1 - math.cos(angle)))
    return middle + turned


def _scaled(endpoints, factor: float) -> np.ndarray:
    points = np.asarray(endpoints, dtype=float)
    middle = points.mean(axis=0)
    return middle + (points - middle) * factor


@pytest.fixture(scope="module", params=CASES)
def lesion(request, shared_data):
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    image, _, node, segment_id = _pyradiomics(runtime, shared_data, request.param)
    matrix = ijk_to_ras_matrix(image)
    normal = np.cross(matrix[:3, 0], matrix[:3, 1])
    # the largest lesion of the label (brain1's holds two): the copilot checks a line against its own lesion
    mask = lesion_masks(node, segment_id, image)[0]
    yield image, mask, node, segment_id, matrix, normal / np.linalg.norm(normal), measure_lesions(
        node, segment_id, image).measurements[0]
    runtime.scene.Clear(1)


def test_exact_axes_pass(lesion):
    image, _, node, segment_id, _, _, exact = lesion
    for kind, endpoints in (("long", exact.long_axis_endpoints_ras), ("short", exact.short_axis_endpoints_ras)):
        check = check_line(node, segment_id, image, endpoints, long_axis_endpoints_ras=exact.long_axis_endpoints_ras,
                           recist=exact)
        assert check.kind == kind and check.ok, check.summary()
        assert check.slice_index == exact.slice_index
        assert check.length_difference_mm == pytest.approx(0.0, abs=1e-9)
        assert check.angle_difference_deg == pytest.approx(0.0, abs=1e-5)
        assert max(check.endpoint_offsets_mm) == pytest.approx(0.0, abs=1e-9)


def test_rotated_long_axis_is_flagged_and_the_exact_one_suggested(lesion):
    image, _, node, segment_id, _, normal, exact = lesion
    placed = _rotated(exact.long_axis_endpoints_ras, 20.0, normal)
    check = check_line(node, segment_id, image, placed)
    assert check.kind == "long"  # chosen by direction: 20° from the long axis, 70° from the short
    assert check.angle_difference_deg == pytest.approx(20.0, abs=1e-6)
    assert check.length_difference_mm == pytest.approx(0.0, abs=1e-9)
    half = exact.long_axis_mm / 2
    for offset in check.endpoint_offsets_mm:  # each endpoint moved on a circle about the midpoint
        assert offset == pytest.approx(2 * half * math.sin(math.radians(10.0)), abs=1e-6)
    assert [f for f in check.flags if "rotated 20.0°" in f] and len(check.flags) == 1, check.flags
    assert np.allclose(sorted(check.suggested_endpoints_ras), sorted(exact.long_axis_endpoints_ras), atol=1e-9)


def test_shortened_long_axis_is_flagged_with_the_difference(lesion):
    image, _, node, segment_id, _, _, exact = lesion
    check = check_line(node, segment_id, image, _scaled(exact.long_axis_endpoints_ras, 0.8), kind="long")
    assert check.length_difference_mm == pytest.approx(-0.2 * exact.long_axis_mm, abs=1e-9)
    assert check.endpoint_offsets_mm == pytest.approx((0.1 * exact.long_axis_mm,) * 2, abs=1e-9)
    assert check.angle_difference_deg == pytest.approx(0.0, abs=1e-5)
    assert any(f.startswith("too short") for f in check.flags) and len(check.flags) == 1, check.flags


def test_line_on_another_slice_gets_that_slices_exact_axes(lesion):
    image, mask, node, segment_id, matrix, normal, exact = lesion
    other = exact.slice_index - 1
    placed = np.asarray(exact.long_axis_endpoints_ras) + matrix[:3, 2] * (other - exact.slice_index)
    check = check_line(node, segment_id, image, placed, kind="long")
    assert check.slice_index == other and check.off_slice_mm == pytest.approx(0.0, abs=1e-9)
    # the suggestion on that slice equals a brute force over its boundary voxel pairs
    boundary = _slice_boundary_ras(mask, other, matrix)
    brute_long = math.sqrt(float(((boundary[:, None] - boundary[None]) ** 2).sum(-1).max()))
    assert check.suggestion.long_axis_mm == pytest.approx(brute_long, abs=1e-9)
    p, q = np.asarray(check.suggestion.long_axis_endpoints_ras)
    window = max(np.linalg.norm(matrix[:3, 0]), np.linalg.norm(matrix[:3, 1]))
    assert check.suggestion.short_axis_mm == pytest.approx(
        _brute_short_axis(boundary, (q - p) / np.linalg.norm(q - p), normal, window), abs=1e-9)
    assert check.length_difference_mm == pytest.approx(exact.long_axis_mm - brute_long, abs=1e-9)
    longer = exact.long_axis_mm - brute_long
    assert longer > 0.5
    assert [f for f in check.flags if f.startswith("not on the long-axis slice") and f"{longer:.1f} mm longer" in f]


def test_short_axis_not_perpendicular_or_on_another_slice(lesion):
    image, _, node, segment_id, matrix, normal, exact = lesion
    tilted = _rotated(exact.short_axis_endpoints_ras, 10.0, normal)
    check = check_line(node, segment_id, image, tilted, kind="short",
                       long_axis_endpoints_ras=exact.long_axis_endpoints_ras)
    assert check.perpendicularity_error_deg == pytest.approx(10.0, abs=1e-6)
    assert check.angle_difference_deg == pytest.approx(10.0, abs=1e-6)
    assert any("not perpendicular to the long axis: 80.0°" in f for f in check.flags), check.flags

    other = exact.slice_index + 1
    moved = np.asarray(exact.short_axis_endpoints_ras) + matrix[:3, 2] * (other - exact.slice_index)
    check = check_line(node, segment_id, image, moved, kind="short",
                       long_axis_endpoints_ras=exact.long_axis_endpoints_ras)
    assert check.slice_index == other
    assert any(f"not on the long axis's slice: short axis on slice k={other}, long axis on k={exact.slice_index}"
               in f for f in check.flags), check.flags


def test_line_off_the_lesion_and_across_slices(lesion):
    image, mask, node, segment_id, matrix, _, exact = lesion
    empty = int(np.flatnonzero(~mask.any(axis=(1, 2)))[0])
    placed = np.asarray(exact.long_axis_endpoints_ras) + matrix[:3, 2] * (empty - exact.slice_index)
    check = check_line(node, segment_id, image, placed, kind="long")
    assert check.suggestion is None
    assert any(f"the lesion is not on slice k={empty}" in f for f in check.flags)
    assert np.allclose(sorted(check.suggested_endpoints_ras), sorted(exact.long_axis_endpoints_ras))

    slanted = np.asarray(exact.long_axis_endpoints_ras)
    slanted[1] += matrix[:3, 2]  # second endpoint one slice over
    check = check_line(node, segment_id, image, slanted, kind="long")
    assert any("endpoints are on different slices" in f for f in check.flags)
    with pytest.raises(InputError, match="same place"):
        check_line(node, segment_id, image, [exact.long_axis_endpoints_ras[0]] * 2)


def test_markups_line_node_is_checked_and_corrected(lesion):
    image, _, node, segment_id, _, normal, exact = lesion
    long_line, short_line = add_axis_lines(node.GetScene(), exact, node, segment_id, "lesion")
    for index, point in enumerate(_rotated(exact.short_axis_endpoints_ras, 30.0, normal)):
        short_line.SetNthControlPointPositionWorld(index, *point)
    check = check_line_node(short_line, node, segment_id, image, long_axis_node=long_line, recist=exact)
    assert check.kind == "short" and not check.ok
    assert check.perpendicularity_error_deg == pytest.approx(30.0, abs=1e-6)
    apply_suggestion(short_line, check)
    again = check_line_node(short_line, node, segment_id, image, long_axis_node=long_line, recist=exact)
    assert again.ok, again.summary()
    assert short_line.GetLineLengthWorld() == pytest.approx(exact.short_axis_mm, abs=1e-6)
