"""The plan bundle's DICOM objects: the planned segments as a DICOM SEG and their measurements as a
TID 1500 SR, referencing the DICOM series the plan was made on.

Written by the one export path every face uses (:func:`aiportal.export.exporter.export_results`); this
module only gives the plan's segments their SNOMED codes (TotalSegmentator's mapping; a resected or
remnant part keeps its organ's codes under its own label) and checks that the label map lies on the
series' voxel lattice, so the SEG holds exactly the voxels that were measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aiportal.errors import InputError
from aiportal.planning.grid import LabelGrid

PART_SUFFIXES = (" resected", " remnant")


def _labels_by_name(task: str, class_map: dict[int, str], snomed_csv: Path | None) -> dict:
    from aiportal.models.totalseg_labels import installed_snomed_csv, read_snomed_mapping, totalsegmentator_labels

    csv_path = snomed_csv or installed_snomed_csv()
    known = read_snomed_mapping(csv_path)
    coded = {value: name for value, name in class_map.items() if name in known}
    return {label.name: label for label in totalsegmentator_labels(task, class_map=coded, snomed_csv=csv_path)}


def label_spec(name: str, labels: dict, value: int):
    """The SNOMED-coded label of a planned segment; generic tissue codes for names the mapping lacks."""
    from dataclasses import replace

    from aiportal.models.catalog import TISSUE, LabelSpec

    base = name
    for suffix in PART_SUFFIXES:
        base = base.removesuffix(suffix)
    if base in labels:
        return replace(labels[base], value=value, name=name)
    return LabelSpec(value, name, TISSUE, TISSUE)


def require_series_lattice(grid: LabelGrid, volume_node) -> None:
    """The label map's voxels must be the series' voxels (axes may be permuted or flipped, as NIfTI does)."""
    from aiportal.io.volumes import ijk_to_ras_matrix
    from aiportal.segmentation import shape_kji

    volume_to_grid = np.linalg.inv(grid.ijk_to_ras) @ ijk_to_ras_matrix(volume_node)
    rotation, shift = volume_to_grid[:3, :3], volume_to_grid[:3, 3]
    permutation = np.abs(np.rint(rotation))
    volume_ijk_shape = np.array(shape_kji(volume_node)[::-1])
    same = (np.abs(rotation - np.rint(rotation)).max() < 1e-3 and np.array_equal(permutation.sum(0), np.ones(3))
            and np.array_equal(permutation.sum(1), np.ones(3)) and np.abs(shift - np.rint(shift)).max() < 1e-3)
    if same:
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) * (volume_ijk_shape - 1)
        mapped = np.rint(corners @ rotation.T + shift)
        same = bool(mapped.min() == 0 and np.array_equal(mapped.max(0), np.array(grid.labels.shape[::-1]) - 1))
    if not same:
        raise InputError(f"{grid.source or 'the segmentation'} is not on the voxel grid of the DICOM series "
                         f"{volume_node.GetName()}", "give the series the segmentation was made on (or resample "
                         "the label map onto it) to write the SEG and SR")


def write_dicom_objects(grid: LabelGrid, segmentation_node, loaded_volume, folder: Path, *, task: str = "total",
                        snomed_csv: Path | None = None, assign_missing_uids: bool = False,
                        observer_person: str | None = None) -> tuple[list[Path], list[str]]:
    """The SEG (``segmentation.dcm``) and TID 1500 SR (``measurements.dcm``) of the bundle's segments in
    ``folder``; returns the files written (with a corrected source copy when UIDs were assigned) and notes."""
    from aiportal import terminology
    from aiportal.export.exporter import ExportOptions, export_results

    require_series_lattice(grid, loaded_volume.node)
    labels = _labels_by_name(task, grid.names, snomed_csv)
    segmentation = segmentation_node.GetSegmentation()
    for index, segment_id in enumerate(segmentation.GetSegmentIDs(), start=1):
        segment = segmentation.GetSegment(segment_id)
        segment.SetTerminology(terminology.serialize(label_spec(segment.GetName(), labels, index)))
    folder.mkdir(parents=True, exist_ok=True)
    options = ExportOptions(formats=("seg", "sr"), assign_missing_uids=assign_missing_uids,
                            observer_person=observer_person)
    result = export_results(segmentation_node, loaded_volume.node, loaded_volume.source, folder, options)
    return [folder / exported.name for exported in result.files], list(result.notes)
