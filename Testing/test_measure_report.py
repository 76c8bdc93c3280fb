"""RECIST measurements in the reports: linear measurements (with their lines on the source images) in
the TID 1500 SR, read back exactly and validated by dciodvfy; tables and clear messages for segments
that cannot be measured; PNG key images with the axes drawn."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from pydicom.sr.codedict import codes
from test_dicom_export import EXAMPLES, SEGMENTATIONS, dcmqi_labels, segmentation_from_label_maps

from aiportal.errors import InputError
from aiportal.export.dicom_seg import write_seg
from aiportal.export.dicom_source import export_source
from aiportal.export.dicom_sr import pixel_coordinates, sr_number, write_sr
from aiportal.export.statistics import compute_statistics
from aiportal.io.volumes import load_volume
from aiportal.measure.recist import measure_segment
from aiportal.measure.report import measure_segmentation, write_measurements
from aiportal.segmentation import segment_ids


def _lps_from_pixels(dataset: pydicom.Dataset, column_row: np.ndarray) -> np.ndarray:
    """Image coordinates back to LPS with the image's own header (written independently of the SR code)."""
    origin = np.array(dataset.ImagePositionPatient, dtype=float)
    orientation = np.array(dataset.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    centres = column_row - 0.5
    return origin + np.outer(centres[:, 0] * column_spacing, orientation[:3]) + np.outer(
        centres[:, 1] * row_spacing, orientation[3:])


def test_sr_linear_measurements_validate_and_read_back(shared_data, runtime, tmp_path):
    ct = load_volume(shared_data / SEGMENTATIONS / "ct-3slice", runtime)
    labels = dcmqi_labels(shared_data / EXAMPLES / "seg-example_liver_spine.json")
    node = segmentation_from_label_maps(runtime, ct, [shared_data / SEGMENTATIONS / "liver_spine_seg.nrrd"], labels)
    source = export_source(ct.source, ct.node)
    seg = write_seg(node, ct.node, source, tmp_path / "seg.dcm")
    axes = [measure_segment(node, segment_id, ct.node) for segment_id in segment_ids(node)]
    statistics = compute_statistics(node, ct.node, modality="CT")
    written = write_sr(statistics, None, seg, seg.path, source, tmp_path / "sr.dcm", axes=axes)

    assert dciodvfy_errors(written.path) == []
    report = hd.sr.srread(written.path)
    volumetric = {g.tracking_uid: g for g in report.content.get_volumetric_roi_measurement_groups()}
    linear = {g.tracking_uid: g for g in report.content.get_image_measurement_groups()}
    assert len(volumetric) == len(linear) == len(axes) == 2 and written.measurement_groups == 4
    plain = written.measurements - 2 * len(axes)
    assert plain == sum(sum(q.scalar for q in row.quantities) for row in statistics)  # statistics still there
    for measured in axes:
        tracking_uid = seg.tracking_uids[measured.segment_id]  # the segment's: ties the axes to it
        group = linear[tracking_uid]
        segment_group = volumetric[tracking_uid]
        assert segment_group.referenced_segment.referenced_segment_numbers == [
            seg.segment_numbers[measured.segment_id]]
        assert group.tracking_identifier == segment_group.tracking_identifier == seg.tracking_ids[measured.segment_id]
        assert group.finding_type == segment_group.finding_type
        image = source.datasets[measured.slice_index]
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [image.SOPInstanceUID]
        for concept, length, endpoints in (
                (codes.SCT.LongAxis, measured.long_axis_mm, measured.long_axis_endpoints_ras),
                (codes.SCT.ShortAxis, measured.short_axis_mm, measured.short_axis_endpoints_ras)):
            (item,) = group.get_measurements(name=concept)
            assert item.value == sr_number(length) and item.unit == codes.UCUM.Millimeter
            (line,) = item.referenced_coordinates
            assert line.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            (selected_from,) = line.ContentSequence  # SCOORD -- SELECTED FROM --> IMAGE
            assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
            assert selected_from.ReferencedSOPSequence[0].ReferencedSOPClassUID == image.SOPClassUID
            stored = np.asarray(line.value, dtype=float)
            # GraphicData is FL: exactly the float32 of what was computed ...
            assert np.array_equal(stored, pixel_coordinates(image, endpoints).astype(np.float32).astype(float))
            # ... and, through the image's header, the measured RAS endpoints (float32: within 10 µm)
            ras = _lps_from_pixels(image, stored) * np.array([-1.0, -1.0, 1.0])
            assert np.abs(ras - np.array(endpoints)).max() < 1e-5 * max(1.0, np.abs(ras).max())
            assert np.linalg.norm(ras[1] - ras[0]) == pytest.approx(length, abs=1e-3)


def test_sr_refuses_a_line_off_its_image(shared_data, runtime):
    ct = load_volume(shared_data / SEGMENTATIONS / "ct-3slice", runtime)
    source = export_source(ct.source, ct.node)
    image = source.datasets[0]
    on_image = pixel_coordinates(image, [[0.0, 0.0, float(image.ImagePositionPatient[2])]] * 2)
    assert on_image.shape == (2, 2)
    with pytest.raises(InputError, match="mm off image"):
        pixel_coordinates(image, [[0.0, 0.0, float(image.ImagePositionPatient[2]) + 1.0]] * 2)


def test_segments_that_cannot_be_measured_are_listed_with_the_reason(shared_data, runtime, tmp_path):
    from test_recist import _pyradiomics, _segmentation

    image, mask, node, _ = _pyradiomics(runtime, shared_data, "brain2")
    node.GetSegmentation().AddEmptySegment("empty", "empty lesion")
    single = np.zeros_like(mask)
    single[10, 100, 100] = True
    one_voxel = _segmentation(runtime, single, image)
    node.GetSegmentation().CopySegmentFromSegmentation(one_voxel.GetSegmentation(), segment_ids(one_voxel)[0])
    measured, skipped = measure_segmentation(node, image)
    assert len(measured) == 1
    assert len(skipped) == 2
    assert "is empty" in skipped["empty lesion"]
    assert any("only 1 speckle component" in why for why in skipped.values())  # under the minimum lesion size
    write_measurements(measured, skipped, tmp_path)
    table = json.loads((tmp_path / "measurements.json").read_text())
    assert table["not_measured"] == skipped

    empty = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing here")
    with pytest.raises(InputError, match="nothing here has no segments"):
        measure_segmentation(empty, image)


def test_key_image_draws_the_axes_on_the_windowed_slice(shared_data, runtime, tmp_path):
    from PIL import Image
    from scipy import ndimage
    from test_recist import _pyradiomics

    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix
    from aiportal.measure.key_images import LONG_AXIS_COLOR, OUTLINE_COLOR, SHORT_AXIS_COLOR, write_key_images

    image, _, node, segment_id = _pyradiomics(runtime, shared_data, "brain1")
    measured = measure_segment(node, segment_id, image)
    (key,) = write_key_images(image, node, [measured], tmp_path, size=400)
    assert key.path.name == f"{measured.segment_name}.png"
    pixels = np.asarray(Image.open(key.path).convert("RGB"))
    assert pixels.shape == (400, 400, 3)
    for endpoints, length, color in ((key.long_axis_pixels, measured.long_axis_mm, LONG_AXIS_COLOR),
                                     (key.short_axis_pixels, measured.short_axis_mm, SHORT_AXIS_COLOR)):
        (x0, y0), (x1, y1) = endpoints
        assert np.hypot(x1 - x0, y1 - y0) * key.mm_per_pixel == pytest.approx(length, abs=1e-6)
        for fraction in (0.2, 0.8):  # drawn where the axis is (away from where the two axes cross)
            x, y = round(x0 + fraction * (x1 - x0)), round(y0 + fraction * (y1 - y0))
            around = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)  # Pillow rounds the line to whole pixels
            assert (around == color).all(axis=-1).any(), (fraction, around)
    assert (pixels == OUTLINE_COLOR).all(axis=-1).sum() > 50
    # radiological convention: the endpoint farther to the patient's right is farther left in the image
    p, q = measured.long_axis_endpoints_ras
    assert (p[0] > q[0]) == (key.long_axis_pixels[0][0] < key.long_axis_pixels[1][0])
    # a pixel 10 to the right of the centre is the windowed intensity 10 pixels to the patient's left of the
    # long axis's midpoint (linear interpolation); the slice is axial, so left is -R
    middle = (np.array(p) + np.array(q)) / 2
    probe = middle - np.array([10 * 40.0 / 401, 0.0, 0.0])
    ijk = np.linalg.inv(ijk_to_ras_matrix(image)) @ np.append(probe, 1.0)
    value = ndimage.map_coordinates(array_from_volume(image).astype(float), [[ijk[2]], [ijk[1]], [ijk[0]]], order=1)[0]
    expected = np.clip((value - (key.level - key.window / 2)) / key.window * 255, 0, 255)
    corner = pixels[60:62, 380:382]  # far from the lesion: no drawing there
    assert (corner[..., 0] == corner[..., 1]).all() and (corner[..., 1] == corner[..., 2]).all()
    rendered = render_plain_centre(image, middle, key)
    assert abs(rendered - expected) < 1.0


def render_plain_centre(image, middle, key) -> float:
    """The grey value the key image would have at the axis midpoint, re-rendered without outline or lines."""
    from PIL import Image

    from aiportal.measure.key_images import render_key_image
    from aiportal.measure.recist import RecistMeasurement

    point = tuple(float(v) for v in middle)
    dot = RecistMeasurement("x", "x", 0.0, 0.0, (point, point), (point, point), "k", 0, 0.0, 0.0)
    plain = render_key_image(image, None, dot, key.path.with_name("plain.png"), size=401, window=key.window,
                             level=key.level, outline=False)
    assert plain.mm_per_pixel == 40.0 / 401  # the smallest field
    return float(np.asarray(Image.open(plain.path).convert("L"))[200, 210])


def test_measurement_table_node_and_report_text(shared_data, runtime):
    from test_recist import _pyradiomics

    from aiportal.measure.report import add_measurement_table, report_text

    image, _, node, segment_id = _pyradiomics(runtime, shared_data, "brain2")
    measured = measure_segment(node, segment_id, image)
    table = add_measurement_table(runtime.scene, [measured])
    assert table.GetNumberOfRows() == 1
    assert table.GetTable().GetColumnByName("long_axis_mm").GetValue(0) == measured.long_axis_mm
    assert table.GetColumnUnitLabel("volume_ml") == "ml"
    assert add_measurement_table(runtime.scene, [], table_node=table) is table and table.GetNumberOfRows() == 0
    text = report_text([measured])
    assert f"{measured.long_axis_mm:.1f} mm long axis" in text and "Sum of diameters" in text


def test_sr_tracks_each_lesion_of_a_multi_lesion_segment(shared_data, runtime, tmp_path):
    """A segment of two separate lesions on the real 3-slice CT: two RECIST groups, each with its own
    tracking id and UID (the same on every export), referencing the one SEG segment; dciodvfy passes."""
    from test_dicom_export import provenance

    from aiportal.measure.recist import measure_lesions
    from aiportal.models.backend import LabelMapResult
    from aiportal.segmentation import import_label_map

    ct = load_volume(shared_data / SEGMENTATIONS / "ct-3slice", runtime)
    labels = dcmqi_labels(shared_data / EXAMPLES / "seg-example_liver_spine.json")[:1]
    two = np.zeros(tuple(reversed(ct.node.GetImageData().GetDimensions())), np.uint8)
    two[:, 100:140, 100:150] = labels[0].value
    two[:, 300:330, 300:320] = labels[0].value
    node = import_label_map(LabelMapResult(layers=[two]), labels, ct.node, provenance(), runtime=runtime)
    source = export_source(ct.source, ct.node)
    seg = write_seg(node, ct.node, source, tmp_path / "seg.dcm")
    axes = measure_lesions(node, segment_ids(node)[0], ct.node).measurements
    assert [m.lesion_index for m in axes] == [1, 2]
    statistics = compute_statistics(node, ct.node, modality="CT")
    written = write_sr(statistics, None, seg, seg.path, source, tmp_path / "sr.dcm", axes=axes)
    assert dciodvfy_errors(written.path) == []
    report = hd.sr.srread(written.path)
    linear = report.content.get_image_measurement_groups()
    assert len(linear) == 2 and len({g.tracking_uid for g in linear}) == 2
    assert sorted(str(g.tracking_identifier) for g in linear) == [
        f"{seg.tracking_ids[axes[0].segment_id]} lesion {n}" for n in (1, 2)]
    assert seg.tracking_uids[axes[0].segment_id] not in {g.tracking_uid for g in linear}
    again = write_sr(statistics, None, seg, seg.path, source, tmp_path / "again.dcm", axes=axes)
    assert {g.tracking_uid for g in hd.sr.srread(again.path).content.get_image_measurement_groups()} == {
        g.tracking_uid for g in linear}
    long_axes = sorted(float(g.get_measurements(name=codes.SCT.LongAxis)[0].value) for g in linear)
    assert long_axes == pytest.approx(sorted(sr_number(m.long_axis_mm) for m in axes))
