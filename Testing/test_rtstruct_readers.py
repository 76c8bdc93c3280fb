"""Our RT Structure Set read by an independent reader, dicompyler-core: each of the 31 ROIs of the real 20-slice CT
(TotalSegmentator's reference labels) rasterised with dicompyler-core's own code must give back its segment.

dicompyler-core (DicomParser + dvhcalc) is the reader dicompyler and many DVH scripts use: it parses each ROI's
planes with ``DicomParser.GetStructureCoordinates`` and fills them the way its DVH calculation does
(``dvhcalc.get_contour_mask``: pixel centres tested against each contour with matplotlib's Path, contours of a plane
combined by XOR so holes come out). Our contours run on voxel boundaries, so no pixel centre lies on one: this reader
has no rounding to absorb, unlike rt-utils, which moves vertices onto pixel centres (see Testing/test_rtstruct.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from orthanc_server import ct_with_uids  # noqa: E402
from test_dicom_sc_estl import totalseg_segmentation  # noqa: E402

from aiportal.export.exporter import ExportOptions, export_to_folder  # noqa: E402
from aiportal.io.volumes import load_volume  # noqa: E402
from aiportal.segmentation import segment_ids, segment_mask  # noqa: E402


def import_dicompyler_core():
    """dicompyler-core 0.5.6 (the latest) imports ``pydicom.dicomio.read_file``, which pydicom 3 renamed ``dcmread``.
    Lend that name for its import only, then take it back so no other test sees it; its parsing and rasterising run
    as shipped."""
    import importlib

    import pydicom.dicomio

    lent = not hasattr(pydicom.dicomio, "read_file")
    if lent:
        pydicom.dicomio.read_file = pydicom.dcmread
    try:
        parser = importlib.import_module("dicompylercore.dicomparser")
        calc = importlib.import_module("dicompylercore.dvhcalc")
    finally:
        if lent:
            del pydicom.dicomio.read_file
    return parser, calc


dicomparser, dvhcalc = import_dicompyler_core()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def plane_key(z: float) -> str:
    """The key dicompyler-core files a contour plane under (``DicomParser.GetStructureCoordinates``)."""
    return str(round(z, 2)) + "0"


def dicompyler_masks(structure_file: Path, ct_files: list[Path]) -> dict[str, np.ndarray]:
    """Every ROI of ``structure_file`` as a (slice, row, column) mask, slices in ``ct_files``' order, filled on each
    CT slice's own pixel grid by dicompyler-core's DVH mask code."""
    structure_set = dicomparser.DicomParser(str(structure_file))
    slices = [dicomparser.DicomParser(str(path)) for path in ct_files]
    grids = []
    for image in slices:
        lut = image.GetPatientToPixelLUT()  # pixel-centre x of each column, y of each row
        x_index = image.x_lut_index()
        x, y = np.meshgrid(np.array(lut[x_index]), np.array(lut[1 - x_index]))
        grids.append(({"lut": lut, "x_lut_index": x_index}, np.vstack((x.flatten(), y.flatten())).T))
    keys = [plane_key(float(image.ds.ImagePositionPatient[2])) for image in slices]
    masks = {}
    for number, structure in structure_set.GetStructures().items():
        planes = structure_set.GetStructureCoordinates(number)
        assert set(planes) <= set(keys), f"{structure['name']}: a contour plane matches no CT slice"
        mask = np.zeros((len(slices), int(slices[0].ds.Rows), int(slices[0].ds.Columns)), dtype=bool)
        for k, (key, (grid, points)) in enumerate(zip(keys, grids, strict=True)):
            for contour in planes.get(key, []):  # as dvhcalc.calculate_plane_histogram: XOR removes holes
                polygon = [point[0:2] for point in contour["data"]]
                mask[k] ^= dvhcalc.get_contour_mask(grid, None, points, polygon)
        masks[str(structure["name"])] = mask
    return masks


@pytest.fixture(scope="module")
def exported(shared_data, tmp_path_factory):
    """One rtstruct export of the real case, its CT files in the volume's slice order and each segment's mask."""
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    root = tmp_path_factory.mktemp("rtstruct_readers")
    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", root / "ct", patient_id="RT-2",
                          patient_name="Rt^Readers")
    ct = load_volume(series.folder, runtime)
    node = totalseg_segmentation(runtime, shared_data, ct.node)
    export_to_folder(node, ct.node, ct.source, root / "out", ExportOptions(formats=("rtstruct",)))
    segmentation = node.GetSegmentation()
    masks = {segmentation.GetSegment(i).GetName(): segment_mask(node, i, ct.node).astype(bool)
             for i in segment_ids(node)}
    by_uid = {str(dicomparser.DicomParser(str(path)).ds.SOPInstanceUID): path for path in series.files}
    ct_files = [by_uid[str(header.SOPInstanceUID)] for header in ct.source.headers]
    yield root / "out" / "structures.dcm", ct_files, masks
    runtime.scene.Clear(1)


def test_dicompyler_core_reads_every_roi_back(exported):
    """dicompyler-core's rasteriser gives each of the 31 ROIs back with Dice >= 0.98 (voxel-boundary contours)."""
    path, ct_files, masks = exported
    read = dicompyler_masks(path, ct_files)
    assert set(read) == set(masks) and len(read) == 31
    scores = {name: dice(read[name], masks[name]) for name in masks}
    print(f"dicompyler-core Dice per ROI: min {min(scores.values()):.4f} mean {np.mean(list(scores.values())):.4f}",
          {name: round(float(value), 4) for name, value in scores.items()})
    assert all(np.count_nonzero(mask) for mask in masks.values())
    assert min(scores.values()) >= 0.98, scores
    # the check can fail: a reader one column off (half rt-utils' error on each side) loses the thin ROIs
    shifted = {name: dice(read[name], np.roll(masks[name], 1, axis=2)) for name in masks}
    assert min(shifted.values()) < 0.9, shifted
