"""Prompts for promptable models (LiteMedSAM): boxes in voxel indices of the input volume.

A box is ``[i0, j0, k0, i1, j1, k1]`` (inclusive voxel indices; ``k0 == k1`` is a 2D box on one
slice). Users draw boxes in RAS millimetres (a Markups ROI, two clicks on a slice view, ``--box-ras``
on the command line); this module turns those into voxel boxes on the volume the model receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aiportal.errors import InputError

Box = list[int]


def box_from_ras_corners(volume_node, corner_a: Sequence[float], corner_b: Sequence[float]) -> Box:
    """The voxel box covering the RAS box spanned by two opposite corners, clipped to the volume."""
    from aiportal.io.volumes import ijk_to_ras_matrix
    from aiportal.segmentation import shape_kji

    lo, hi = np.minimum(corner_a, corner_b), np.maximum(corner_a, corner_b)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = (np.linalg.inv(ijk_to_ras_matrix(volume_node)) @ corners.T).T[:, :3]
    # a voxel belongs to the box when its centre does; round so a box drawn on a slice stays on it
    first, last = np.ceil(ijk.min(axis=0) - 1e-6), np.floor(ijk.max(axis=0) + 1e-6)
    extent = np.array(shape_kji(volume_node)[::-1]) - 1  # (i, j, k) maxima
    if np.any(last < 0) or np.any(first > extent):
        raise InputError(f"The box {lo.round(1).tolist()}..{hi.round(1).tolist()} mm lies outside "
                         f"{volume_node.GetName()}", "draw the box on the volume being segmented")
    first, last = np.clip(first, 0, extent), np.clip(last, 0, extent)
    last = np.maximum(last, first)  # a box thinner than a voxel still covers the voxel it is in
    return [int(v) for v in (*first, *last)]


def box_from_roi_node(volume_node, roi_node) -> Box:
    """The voxel box of a Markups ROI (any orientation: its axis-aligned RAS bounds are used)."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    if bounds[0] > bounds[1]:
        raise InputError(f"The ROI {roi_node.GetName()} has no extent", "place the ROI around the structure")
    return box_from_ras_corners(volume_node, bounds[0::2], bounds[1::2])


def check_box(box: Sequence[int], shape_kji: Sequence[int], volume_name: str) -> Box:
    """Validate a voxel box given by a user (e.g. ``--box``) against the volume's shape."""
    if len(box) != 6:
        raise InputError(f"A box needs 6 voxel indices (i0 j0 k0 i1 j1 k1), got {len(box)}",
                         "give two opposite corners as voxel indices")
    first, last = np.array(box[:3]), np.array(box[3:])
    extent = np.array(shape_kji[::-1]) - 1
    if np.any(first > last) or np.any(first < 0) or np.any(last > extent):
        raise InputError(f"The box {list(box)} is not inside {volume_name} (i, j, k up to {extent.tolist()})",
                         "give i0 <= i1, j0 <= j1, k0 <= k1 within the volume")
    return [int(v) for v in box]


def box_labels_for(count: int, one_structure: bool) -> list[int]:
    """The structure of each of ``count`` boxes: all one (2D boxes on several slices of one organ, the slices
    between them filled) or one structure per box (what ``--box-labels`` defaults to)."""
    return [1] * count if one_structure else list(range(1, count + 1))


def box_prompt_params(boxes: Sequence[Sequence[int]], box_labels: Sequence[int] = ()) -> dict:
    """A promptable model's ``boxes`` / ``box_labels`` parameters: what ``--box ... --box-labels`` and the
    panels' box lists give the model (empty labels: box *n* is structure *n*)."""
    if box_labels and len(box_labels) != len(boxes):
        raise InputError(f"{len(box_labels)} box label(s) for {len(boxes)} box(es)",
                         "give one label per box (--box ones first, then --box-ras), e.g. 1 1 for two boxes of "
                         "one structure")
    if box_labels and min(box_labels) < 1:
        raise InputError(f"Box labels must be 1 or more, got {list(box_labels)}", "number the structures 1, 2, 3 ...")
    params: dict = {"boxes": [list(box) for box in boxes]} if boxes else {}
    if boxes and box_labels:
        params["box_labels"] = [int(label) for label in box_labels]
    return params


def boxes_from_roi_nodes(volume_node, roi_nodes: Sequence, one_structure: bool) -> dict:
    """The model parameters of several Markups ROIs (the desktop's and the workspace's box lists), in the
    order given: each ROI one structure, or all of them one structure (``--box-labels 1 1 ...``)."""
    if not roi_nodes:
        raise InputError("This model needs a box around the structure", "place a Markups ROI around it")
    boxes = [box_from_roi_node(volume_node, roi) for roi in roi_nodes]
    return box_prompt_params(boxes, box_labels_for(len(boxes), one_structure))
