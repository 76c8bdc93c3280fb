"""Slice-by-slice propagation of a box-prompted 2D model (LiteMedSAM, any SAM-like model) to 3D.

The model is a :data:`SliceSegmenter`: slice ``k`` and a box (voxel coordinates i0, j0, i1, j1 of
that slice) in, a mask and the model's own IoU estimate out. From each user box the structure is
followed slice by slice, each slice prompted with the previous slice's mask box plus a margin that
follows the structure both ways: it is a fraction of the mask's size, and a side the mask touches
is pushed out and the slice segmented again (an organ widens toward its dome faster than a fixed
margin allows: a fixed 3-pixel margin made the liver shrink toward its centre and die half-way).

Each slice gets one box per 8-connected part of the previous slice's mask (parts of at least a tenth
of its area), and the masks of these boxes are joined: one box around separate parts (the liver's
lobes toward its lower tip) encloses what lies between them, and the model segments that too.

A structure is followed until there is evidence that it ended or was lost: the mask vanishes, the
model's IoU estimate drops, the mask's mean intensity leaves the range seen on the prompted slice,
or the mask jumps off the previous slice's mask. Shrinking alone does not stop it. Where it stops
while the structure was still large, or before a 3D box's last slice, :func:`stop_warnings` says so.

Prompts of one structure (one label):

* one 2D box: followed up and down from its slice to the volume's ends;
* several 2D boxes on different slices: each slice between two boxes is filled from the nearer box
  (from the farther one where the nearer one's track stopped), beyond the outer boxes as above;
* one 3D box: segmented from its middle slice with its in-plane extent, followed up and down within
  its slices only, every prompt kept inside its in-plane extent.

This module is numpy only, so it runs in any model environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aiportal.errors import InputError
from aiportal.progress import CancelToken, ProgressCallback


@dataclass(frozen=True)
class BoxPrompt:
    """One box on the input grid, voxel indices inclusive; ``label`` is the structure it prompts."""

    label: int
    i0: int
    j0: int
    k0: int
    i1: int
    j1: int
    k1: int

    @property
    def is_3d(self) -> bool:
        return self.k1 > self.k0

    @property
    def start_slice(self) -> int:
        return (self.k0 + self.k1) // 2

    @property
    def in_plane(self) -> tuple[float, float, float, float]:
        return (float(self.i0), float(self.j0), float(self.i1), float(self.j1))


@dataclass
class SliceResult:
    mask: np.ndarray  # bool (rows j, columns i) on the input grid
    iou: float  # the model's own estimate of its mask's IoU


# segments one box (i0, j0, i1, j1 in voxel coordinates of the slice) on slice k
SliceSegmenter = Callable[[int, Sequence[float]], SliceResult]
# mean intensity (0..1 after windowing) of slice k under a mask; also its standard deviation (the spread)
MaskIntensity = Callable[[int, np.ndarray], float]


@dataclass(frozen=True)
class Rules:
    """When to widen a prompt and when to stop (tuned on example_ct's liver, see bench_propagation)."""

    margin_fraction: float = 0.10  # of the mask's extent, added on each side of the next slice's box
    min_margin: float = 2.0  # voxels
    touch_distance: float = 1.0  # voxels: a mask this close to a side of its box presses against it
    max_regrow: int = 3  # times a slice is segmented again with the sides its mask touched pushed out
    min_pixels: int = 4  # a smaller mask is "vanished"
    min_iou: float = 0.55  # the model's IoU estimate below which the mask is not trusted
    max_intensity_shift: float = 0.15  # mean intensity (0..1) away from the prompted slice's mask
    max_step: int = 0  # voxels a mask's edge may move out from the previous slice's (0: unlimited)
    min_overlap: float = 0.2  # part of the new mask that must lie on the previous slice's mask
    large_fraction: float = 0.25  # a stop with a mask above this part of the largest is "early"
    min_part_fraction: float = 0.10  # a part of a slice's mask this large gets its own box on the next slice
    # intensity spread (standard deviation, 0..1) under the prompted slice's mask above which the intensity
    # stop cannot tell the structure from its neighbours: set on example_mr_sm (its five runs above 0.12 had
    # Dice 0.00-0.78); every CT run of the bench stays below 0.07
    max_seed_spread: float = 0.12


@dataclass
class Track:
    """One structure's masks and why each of its fronts stopped."""

    label: int
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    ious: dict[int, float] = field(default_factory=dict)
    stops: list[Stop] = field(default_factory=list)
    bounds: tuple[int, int] | None = None  # a 3D box's slices: nothing is segmented outside them
    box_slices: tuple[int, ...] = ()  # the slices the user's boxes were drawn on
    seed_spread: float = 0.0  # the largest intensity spread under a prompted slice's mask


@dataclass(frozen=True)
class Stop:
    """A front that ended: on ``slice`` (left empty), going ``direction`` (+1 up, -1 down)."""

    slice: int
    direction: int
    reason: str
    last_area: int  # pixels of the last mask kept before the stop
    evidence: bool  # True: the structure ended or was lost; False: a bound (box, volume, other box)


def group_prompts(prompts: Sequence[BoxPrompt], name: str) -> dict[int, list[BoxPrompt]]:
    """The prompts of each label, sorted by slice; raises InputError for combinations that mean nothing."""
    groups: dict[int, list[BoxPrompt]] = {}
    for prompt in prompts:
        groups.setdefault(prompt.label, []).append(prompt)
    for label, group in groups.items():
        group.sort(key=lambda p: p.k0)
        if len(group) > 1 and any(p.is_3d for p in group):
            raise InputError(f"Structure {label} in {name} has a 3D box and other boxes",
                             "give one 3D box per structure, or 2D boxes on different slices")
        slices = [p.k0 for p in group]
        if len(set(slices)) != len(slices):
            raise InputError(f"Structure {label} in {name} has two boxes on one slice",
                             "give each structure at most one box per slice")
    return groups


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return float(columns[0]), float(rows[0]), float(columns[-1]), float(rows[-1])


def _clip(box: Sequence[float], limits: Sequence[float]) -> list[float]:
    return [max(box[0], limits[0]), max(box[1], limits[1]), min(box[2], limits[2]), min(box[3], limits[3])]


def next_box(mask: np.ndarray, limits: Sequence[float], rules: Rules) -> list[float]:
    """The next slice's prompt: this slice's mask box plus a margin in proportion to its size."""
    i0, j0, i1, j1 = _box_of(mask)
    di = max(rules.min_margin, rules.margin_fraction * (i1 - i0 + 1))
    dj = max(rules.min_margin, rules.margin_fraction * (j1 - j0 + 1))
    return _clip([i0 - di, j0 - dj, i1 + di, j1 + dj], limits)


def parts(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected parts of a 2D mask, largest first (runs of each row joined by union-find)."""
    parent: list[int] = []
    runs: list[tuple[int, int, int]] = []  # row, first column, last column
    previous: list[int] = []  # indices into runs of the row above
    previous_row = -2

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for row in np.nonzero(mask.any(axis=1))[0]:
        if row != previous_row + 1:  # an empty row between: nothing above to join
            previous = []
        padded = np.concatenate(([False], mask[row], [False]))
        edges = np.nonzero(padded[1:] != padded[:-1])[0]
        current = []
        for first, end in zip(edges[::2], edges[1::2], strict=True):
            n = len(runs)
            runs.append((int(row), int(first), int(end) - 1))
            parent.append(n)
            for above in previous:  # 8-connected: runs touching diagonally join
                _, a0, a1 = runs[above]
                if a0 <= end and a1 >= first - 1:
                    parent[root(above)] = root(n)
            current.append(n)
        previous, previous_row = current, row
    groups: dict[int, np.ndarray] = {}
    for n, (row, first, last) in enumerate(runs):
        part = groups.setdefault(root(n), np.zeros(mask.shape, dtype=bool))
        part[row, first:last + 1] = True
    return sorted(groups.values(), key=lambda part: -int(part.sum()))


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` voxels (8-connected: a square per step), numpy only."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        out = grown.copy()
        out[:, 1:] |= grown[:, :-1]
        out[:, :-1] |= grown[:, 1:]
    return out


def _touched_sides(mask: np.ndarray, box: Sequence[float], limits: Sequence[float], touch: float) -> list[int]:
    """The sides (0..3 as in the box) the mask reaches while the box could still move out there."""
    found = _box_of(mask)
    sides = []
    for side in range(4):
        low_side = side < 2
        at_box = found[side] <= box[side] + touch if low_side else found[side] >= box[side] - touch
        room = box[side] > limits[side] if low_side else box[side] < limits[side]
        if at_box and room:
            sides.append(side)
    return sides


class _Follower:
    """Segments slices for one structure, widening a prompt while its mask presses against a side."""

    def __init__(self, segment: SliceSegmenter, intensity: MaskIntensity, limits: Sequence[float], rules: Rules,
                 on_slice: Callable[[int], None], spread: MaskIntensity | None = None) -> None:
        self.segment, self.intensity, self.limits, self.rules = segment, intensity, list(limits), rules
        self.spread = spread
        self.on_slice = on_slice
        self.seed_intensity: float | None = None

    def segment_parts(self, k: int, previous: np.ndarray) -> SliceResult:
        """Slice ``k`` prompted with one box per large part of the previous slice's mask; the masks' union.

        One box around separate parts (the liver's lobes toward its lower tip) also encloses what lies
        between them, and the model segments that too: on example_ct the liver ran into its neighbours."""
        self.on_slice(k)
        area = int(previous.sum())
        masks, ious, weights = [], [], []
        for part in parts(previous):
            if part.sum() < self.rules.min_part_fraction * area:
                break  # parts come largest first
            result = self.segment_grown(k, next_box(part, self.limits, self.rules))
            masks.append(result.mask)
            ious.append(result.iou)
            weights.append(max(int(result.mask.sum()), 1))
        return SliceResult(np.any(masks, axis=0), float(np.average(ious, weights=weights)))

    def segment_grown(self, k: int, box: Sequence[float]) -> SliceResult:
        rules, box = self.rules, list(box)
        result = self.segment(k, box)
        for _ in range(rules.max_regrow):
            if result.mask.sum() < rules.min_pixels:
                break
            sides = _touched_sides(result.mask, box, self.limits, rules.touch_distance)
            if not sides:
                break
            i0, j0, i1, j1 = _box_of(result.mask)
            grow = [max(rules.min_margin, rules.margin_fraction * (i1 - i0 + 1)),
                    max(rules.min_margin, rules.margin_fraction * (j1 - j0 + 1))]
            for side in sides:
                box[side] += -grow[side % 2] if side < 2 else grow[side % 2]
            box = _clip(box, self.limits)
            result = self.segment(k, box)
        return result

    def why_stop(self, k: int, result: SliceResult, previous: np.ndarray | None) -> str | None:
        rules = self.rules
        area = int(result.mask.sum())
        if area < rules.min_pixels:
            return "the mask vanished"
        if result.iou < rules.min_iou:
            return f"the model's confidence dropped to {result.iou:.2f}"
        mean = self.intensity(k, result.mask)
        if self.seed_intensity is None:
            self.seed_intensity = mean
        elif abs(mean - self.seed_intensity) > rules.max_intensity_shift:
            return "the mask's intensity left the structure's range"
        if previous is not None and (result.mask & previous).sum() < rules.min_overlap * area:
            return "the mask moved off the previous slice's"
        return None

    def follow(self, track: Track, start: int, mask: np.ndarray, direction: int, last: int,
               cancel: CancelToken, bound_reason: str) -> int:
        """Follow from the kept ``mask`` on ``start`` through slice ``last``; returns the last slice kept."""
        k = start
        while k != last:
            cancel.check("propagation")
            result = self.segment_parts(k + direction, mask)
            if self.rules.max_step:
                result = SliceResult(result.mask & dilate(mask, self.rules.max_step), result.iou)
            why = self.why_stop(k + direction, result, mask)
            if why:
                track.stops.append(Stop(k + direction, direction, f"{why} on slice {k + direction}",
                                        int(mask.sum()), evidence=True))
                return k
            k += direction
            mask = result.mask
            track.masks[k], track.ious[k] = result.mask, result.iou
        track.stops.append(Stop(k + direction, direction, f"{bound_reason} at slice {k}", int(mask.sum()),
                                evidence=False))
        return k


def propagate(prompts: Sequence[BoxPrompt], num_slices: int, image_shape: tuple[int, int], segment: SliceSegmenter,
              intensity: MaskIntensity, progress: ProgressCallback, cancel: CancelToken, name: str = "the image",
              rules: Rules = Rules(), propagate_2d: bool = True, spread: MaskIntensity | None = None) -> list[Track]:
    """Every structure's masks (one :class:`Track` per label, in label order); ``spread`` (the intensity
    standard deviation under a mask) lets :func:`stop_warnings` flag a structure the intensity stop cannot hold."""
    groups = group_prompts(prompts, name)
    planned = sum(_planned_slices(group, num_slices, propagate_2d) for group in groups.values())
    visited = [0]

    def on_slice(k: int) -> None:
        visited[0] += 1
        progress(min(visited[0] / max(planned, 1), 0.99), f"propagating: slice {k + 1}/{num_slices}")

    tracks = []
    for label, group in sorted(groups.items()):
        track = Track(label, box_slices=tuple(p.k0 for p in group))
        rows, columns = image_shape
        limits = group[0].in_plane if group[0].is_3d else (0.0, 0.0, columns - 1.0, rows - 1.0)
        follower = _Follower(segment, intensity, limits, rules, on_slice, spread)
        if group[0].is_3d:
            _follow_3d_box(track, group[0], follower, cancel)
        else:
            _follow_2d_boxes(track, group, follower, num_slices if propagate_2d else 0, cancel)
        tracks.append(track)
    return tracks


def _seed(track: Track, follower: _Follower, k: int, box: Sequence[float]) -> np.ndarray | None:
    """The mask on a prompted slice (kept unless the model finds nothing at all)."""
    result = follower.segment(k, list(box))  # the user's box as drawn: never widened
    follower.on_slice(k)
    if result.mask.sum() < follower.rules.min_pixels:
        track.stops.append(Stop(k, 0, f"the model found nothing in the box on slice {k}", 0, evidence=True))
        return None
    if follower.seed_intensity is None:
        follower.seed_intensity = follower.intensity(k, result.mask)
    if follower.spread is not None:
        track.seed_spread = max(track.seed_spread, follower.spread(k, result.mask))
    track.masks[k], track.ious[k] = result.mask, result.iou
    return result.mask


def _follow_3d_box(track: Track, prompt: BoxPrompt, follower: _Follower, cancel: CancelToken) -> None:
    track.bounds = (prompt.k0, prompt.k1)
    start = prompt.start_slice
    mask = _seed(track, follower, start, prompt.in_plane)
    if mask is None:
        return
    follower.follow(track, start, mask, +1, prompt.k1, cancel, "the box ends")
    follower.follow(track, start, mask, -1, prompt.k0, cancel, "the box ends")


def _follow_2d_boxes(track: Track, group: list[BoxPrompt], follower: _Follower, num_slices: int,
                     cancel: CancelToken) -> None:
    """``num_slices`` 0: each box segments its own slice only."""
    seeds = {p.k0: _seed(track, follower, p.k0, p.in_plane) for p in group}
    if not num_slices:
        return
    slices = sorted(seeds)
    first, last = slices[0], slices[-1]
    if seeds[first] is not None:
        follower.follow(track, first, seeds[first], -1, 0, cancel, "the volume ends")
    if seeds[last] is not None:
        follower.follow(track, last, seeds[last], +1, num_slices - 1, cancel, "the volume ends")
    for low, high in zip(slices, slices[1:], strict=False):
        _fill_between(track, low, high, seeds[low], seeds[high], follower, cancel)


def _fill_between(track: Track, low: int, high: int, low_mask: np.ndarray | None, high_mask: np.ndarray | None,
                  follower: _Follower, cancel: CancelToken) -> None:
    """Slices strictly between two boxes: each half from its nearer box, the rest from the other box."""
    if high - low < 2:
        return
    middle = (low + high) // 2
    reached_up = follower.follow(track, low, low_mask, +1, middle, cancel, "the fill from below") \
        if low_mask is not None else low
    reached_down = follower.follow(track, high, high_mask, -1, middle + 1, cancel, "the fill from above") \
        if high_mask is not None else high
    if reached_up < middle and reached_down == middle + 1:  # the lower half stopped: fill it from above
        follower.follow(track, middle + 1, track.masks[middle + 1], -1, reached_up + 1, cancel, "the fill from above")
    elif reached_down > middle + 1 and reached_up == middle:  # the upper half stopped: fill it from below
        follower.follow(track, middle, track.masks[middle], +1, reached_down - 1, cancel, "the fill from below")
    track.stops = [s for s in track.stops if not (low < s.slice < high and not s.evidence)]
    empty = [k for k in range(low + 1, high) if k not in track.masks]
    if empty:
        track.stops.append(Stop(empty[0], 0, f"slices {empty[0]}..{empty[-1]} between the boxes on slices {low} "
                                f"and {high} stayed empty", 0, evidence=True))


def _planned_slices(group: list[BoxPrompt], num_slices: int, propagate_2d: bool) -> int:
    """A guess of how many slices a structure's prompts visit, for the progress bar."""
    if group[0].is_3d:
        return group[0].k1 - group[0].k0 + 1
    if not propagate_2d:
        return len(group)
    return max(group[-1].k0 - group[0].k0, 0) + max(num_slices // 3, 1)  # organs rarely span a third of a scan


def stop_warnings(track: Track, rules: Rules = Rules()) -> list[str]:
    """One warning per place where the structure was likely cut short, and one where the prompted slice's
    intensities are too uneven for the intensity stop to hold; empty when it ended on evidence with a small
    mask or at a bound."""
    if not track.masks:
        return [f"Box {track.label}: nothing was segmented (the model found nothing in the box)"]
    largest = max(int(mask.sum()) for mask in track.masks.values())
    warnings = []
    if track.seed_spread > rules.max_seed_spread and len(track.masks) > len(track.box_slices):
        warnings.append(f"Box {track.label}: the intensities inside the box's mask vary widely (spread "
                        f"{track.seed_spread:.2f} of the window), so the propagation cannot tell the structure from "
                        "touching tissue by its intensity and may leak or stop early: check every slice")
    for stop in track.stops:
        if stop.direction == 0:  # a prompted slice found nothing, or a gap between boxes
            warnings.append(f"Box {track.label}: {stop.reason}")
            continue
        inside_box = track.bounds is not None and track.bounds[0] <= stop.slice <= track.bounds[1]
        large = stop.last_area > rules.large_fraction * largest
        if stop.evidence and (inside_box or large):
            side = "above" if stop.direction > 0 else "below"
            extent = (f"before the box's last slice {track.bounds[1 if stop.direction > 0 else 0]}" if inside_box
                      else f"while the structure was still {100 * stop.last_area / largest:.0f}% of its largest")
            warnings.append(f"Box {track.label}: propagation {side} stopped {extent} ({stop.reason}); the structure "
                            f"may continue past slice {stop.slice - stop.direction}: check it, or add a box there")
    return warnings
