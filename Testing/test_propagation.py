"""Propagation of a box-prompted 2D model to 3D (aiportal.propagation).

An analytic phantom stands in for the model where the rule itself is tested (a "model" that returns
the true cross-section inside the box, and loses confidence where told); LiteMedSAM on real CT
checks the Dice per organ (test_real_ct_* below, in the LiteMedSAM environment).
"""

from __future__ import annotations

import numpy as np
import pytest

from aiportal.errors import InputError
from aiportal.progress import CancelToken
from aiportal.propagation.propagate import BoxPrompt, Rules, SliceResult, propagate, stop_warnings

SLICES, ROWS, COLUMNS = 40, 96, 96


def widening_organ() -> np.ndarray:
    """(k, j, i) a cone from a tip at slice 5 widening 4 voxels a slice up to radius 40, then a cylinder:
    faster than a fixed 3-pixel margin follows."""
    k, j, i = np.mgrid[:SLICES, :ROWS, :COLUMNS].astype(float)
    radius = np.clip(4.0 * (k - 5), 0.0, 40.0)
    return ((j - 48) ** 2 + (i - 48) ** 2 <= radius**2) & (radius > 2)


def phantom_model(organ: np.ndarray, low_confidence: set[int] = frozenset()):
    """A "model" that returns the organ's pixels inside the box, over-trusting nothing: its IoU
    estimate is 0.9, or 0.3 on the slices in ``low_confidence``."""
    def segment(k: int, box) -> SliceResult:
        i0, j0, i1, j1 = (int(round(v)) for v in box)
        mask = np.zeros(organ.shape[1:], dtype=bool)
        mask[j0:j1 + 1, i0:i1 + 1] = organ[k, j0:j1 + 1, i0:i1 + 1]
        return SliceResult(mask, 0.3 if k in low_confidence else 0.9)

    return segment


def run(prompts, organ, low_confidence=frozenset(), rules: Rules | None = None):
    rules = rules or Rules()
    tracks = propagate(prompts, SLICES, (ROWS, COLUMNS), phantom_model(organ, low_confidence),
                       lambda k, mask: 0.5, lambda f, s: None, CancelToken(), rules=rules)
    (track,) = tracks
    result = np.zeros(organ.shape, dtype=bool)
    for k, mask in track.masks.items():
        result[k] = mask
    return track, result


def box_on(organ: np.ndarray, k: int, label: int = 1) -> BoxPrompt:
    rows, columns = np.nonzero(organ[k])
    return BoxPrompt(label, int(columns.min()), int(rows.min()), k, int(columns.max()), int(rows.max()), k)


def test_the_prompt_widens_with_a_widening_organ():
    """From a box on a narrow slice the mask must grow with the organ, not shrink toward its centre."""
    organ = widening_organ()
    track, result = run([box_on(organ, 12)], organ)
    assert np.array_equal(result, organ)  # every slice, every pixel: nothing clipped by a too-small box
    assert stop_warnings(track) == []  # ended at the organ's tip (vanished) and at the volume's end


def test_a_stop_while_the_structure_is_large_warns():
    organ = widening_organ()
    track, result = run([box_on(organ, 20)], organ, low_confidence={30})
    assert result[:30].sum() > 0 and not result[30:].any()
    (warning,) = stop_warnings(track)
    assert "above stopped" in warning and "confidence dropped to 0.30 on slice 30" in warning
    assert "may continue past slice 29" in warning


def test_a_3d_box_bounds_the_propagation_and_warns_when_it_stops_inside():
    organ = widening_organ()
    rows, columns = np.nonzero(organ.any(axis=0))
    box = BoxPrompt(1, int(columns.min()), int(rows.min()), 10, int(columns.max()), int(rows.max()), 30)
    track, result = run([box], organ)
    assert np.array_equal(result[10:31], organ[10:31]) and not result[:10].any() and not result[31:].any()
    assert stop_warnings(track) == []
    track, _ = run([box], organ, low_confidence={14})
    (warning,) = stop_warnings(track)
    assert "below stopped before the box's last slice 10" in warning


def test_several_boxes_of_one_structure_fill_the_slices_between_them():
    """The model loses the organ on slices 16..18 from below; the box on slice 26 fills them from above."""
    organ = widening_organ()
    lost_going_up = {16}
    track, result = run([box_on(organ, 10), box_on(organ, 26)], organ, low_confidence=lost_going_up)
    assert track.box_slices == (10, 26)
    # slice 16 is low-confidence from either side: everything else between the boxes is filled
    filled = sorted(track.masks)
    assert [k for k in range(10, 27) if k not in filled] == [16]
    assert np.array_equal(result[17:27], organ[17:27]) and np.array_equal(result[:16], organ[:16])
    assert any("slices 16..16 between the boxes on slices 10 and 26 stayed empty" in w for w in stop_warnings(track))
    # without the trap, the two boxes' fronts meet and nothing warns
    track, result = run([box_on(organ, 10), box_on(organ, 26)], organ)
    assert np.array_equal(result, organ) and stop_warnings(track) == []


def test_prompts_that_mean_nothing_are_refused():
    organ = widening_organ()
    with pytest.raises(InputError, match="two boxes on one slice"):
        run([box_on(organ, 20), box_on(organ, 20)], organ)
    three_d = BoxPrompt(1, 0, 0, 10, 50, 50, 20)
    with pytest.raises(InputError, match="a 3D box and other boxes"):
        run([three_d, box_on(organ, 25)], organ)


def two_lobed_organ_beside_a_neighbour() -> tuple[np.ndarray, np.ndarray]:
    """(k, j, i) an organ that is one disc from slice 20 up and two lobes below it (slices 5..19, as the
    liver's lobes toward its lower tip), and a neighbour of the same look between the lobes on slices 5..15."""
    k, j, i = np.mgrid[:SLICES, :ROWS, :COLUMNS].astype(float)
    disc = ((j - 48) ** 2 + (i - 48) ** 2 <= 40**2) & (k >= 20)
    lobes = (((j - 48) ** 2 + (i - 22) ** 2 <= 14**2) | ((j - 48) ** 2 + (i - 74) ** 2 <= 14**2)) & (k >= 5) & (k < 20)
    neighbour = (np.abs(j - 48) <= 10) & (np.abs(i - 48) <= 5) & (k >= 5) & (k <= 15)
    return disc | lobes, neighbour


def test_separate_parts_get_a_box_each_so_what_lies_between_them_stays_out():
    """A model that segments whatever of the look lies in its box: one box around both lobes takes in the
    neighbour between them (the old rule: the liver ran into its neighbours); a box per part does not."""
    organ, neighbour = two_lobed_organ_beside_a_neighbour()
    tracks = propagate([box_on(organ, 30)], SLICES, (ROWS, COLUMNS), phantom_model(organ | neighbour),
                       lambda k, mask: 0.5, lambda f, s: None, CancelToken())
    result = np.zeros(organ.shape, dtype=bool)
    for k, mask in tracks[0].masks.items():
        result[k] = mask
    assert not (result & neighbour).any()
    assert np.array_equal(result, organ) and stop_warnings(tracks[0]) == []


def test_parts_are_the_8_connected_components_largest_first():
    from aiportal.propagation.propagate import parts

    mask = np.zeros((7, 9), dtype=bool)
    mask[0:3, 0:3] = True  # 9 pixels
    mask[3, 3] = True  # touches the first diagonally: same part
    mask[5:7, 6:9] = True  # 6 pixels, apart
    mask[0, 8] = True  # 1 pixel, apart
    found = parts(mask)
    assert [int(p.sum()) for p in found] == [10, 6, 1]
    assert np.array_equal(np.any(found, axis=0), mask) and not (found[0] & found[1]).any()
    assert parts(np.zeros((4, 4), dtype=bool)) == []


def test_a_prompted_slice_of_uneven_intensity_warns_that_the_intensity_stop_cannot_hold():
    organ = widening_organ()

    def spread_of(value: float):
        return lambda k, mask: value

    for spread, warns in ((0.2, True), (0.05, False)):
        tracks = propagate([box_on(organ, 20)], SLICES, (ROWS, COLUMNS), phantom_model(organ), lambda k, mask: 0.5,
                           lambda f, s: None, CancelToken(), spread=spread_of(spread))
        warnings = stop_warnings(tracks[0])
        assert any("intensities inside the box's mask vary widely (spread 0.20" in w for w in warnings) == warns
