"""RECIST on lesions, not segments: a segment's separate lesions measured one by one (real multi-lesion
labels and a phantom with known axes), speckle dropped and counted, vessels refused with a pointer to
--vessels (real TotalSegmentator aorta and veins, an aortic-arch phantom), compact organs and lesions kept."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from test_recist import _pyradiomics, _segmentation

from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, volume_node_from_array
from aiportal.measure.lesions import TUBULAR_RATIO, split_components, tubularity, vessel_terminology
from aiportal.measure.recist import measure_lesions, measure_segment
from aiportal.measure.report import measure_segmentation, write_axis_lines, write_measurements
from aiportal.models.backend import LabelMapResult
from aiportal.models.totalseg_labels import read_class_map_json, totalsegmentator_labels
from aiportal.provenance import Provenance, now_iso
from aiportal.segmentation import import_label_map, segment_ids, segment_mask


def test_real_multi_lesion_label_is_measured_lesion_by_lesion(runtime, shared_data, tmp_path):
    """pyradiomics brain1's one label holds two separate lesions: each is measured as if it were alone."""
    image, mask, node, segment_id = _pyradiomics(runtime, shared_data, "brain1")
    lesions = measure_lesions(node, segment_id, image)
    assert [m.lesion_name for m in lesions.measurements] == ["Label_1 lesion 1", "Label_1 lesion 2"]
    assert lesions.refused == {} and lesions.speckle_dropped == 0
    labels, count = ndimage.label(mask, np.ones((3, 3, 3), bool))
    assert count == 2
    by_size = sorted(range(1, count + 1), key=lambda value: -np.count_nonzero(labels == value))
    for measured, value in zip(lesions.measurements, by_size, strict=True):
        alone = _segmentation(runtime, labels == value, image)
        expected = measure_segment(alone, segment_ids(alone)[0], image)
        assert measured.long_axis_mm == pytest.approx(expected.long_axis_mm, abs=1e-9)
        assert measured.short_axis_mm == pytest.approx(expected.short_axis_mm, abs=1e-9)
        assert measured.volume_ml == pytest.approx(expected.volume_ml, abs=1e-12)
        assert measured.lesions_in_segment == 2 and "2 separate lesions" in measured.notes[0]
    whole = measure_segment(node, segment_id, image)  # the old answer: one "lesion" across both
    assert whole.max_3d_diameter_mm > max(m.max_3d_diameter_mm for m in lesions.measurements)

    measured, skipped = measure_segmentation(node, image)
    write_measurements(measured, skipped, tmp_path)
    document = json.loads((tmp_path / "measurements.json").read_text())
    assert document["lesions"] == 2 and "holds 2 separate lesions" in document["warnings"][0]
    lines = write_axis_lines(runtime.scene, measured, node, tmp_path / "axes")
    assert sorted(p.name for p in lines)[:2] == ["Label_1 lesion 1 long axis.mrk.json",
                                                 "Label_1 lesion 1 short axis.mrk.json"]


def test_phantom_lesions_with_known_axes_and_speckle(runtime):
    """Three boxes (known in-plane diagonals) and five single-voxel specks in one segment, 1 mm voxels."""
    mask = np.zeros((20, 60, 60), bool)
    boxes = [(slice(2, 8), slice(5, 26), slice(5, 14)), (slice(2, 5), slice(40, 50), slice(40, 46)),
             (slice(12, 16), slice(5, 9), slice(40, 56))]
    for box in boxes:
        mask[box] = True
    for k, j, i in [(18, 30, 30), (18, 2, 58), (10, 58, 2), (0, 30, 58), (14, 30, 30)]:
        mask[k, j, i] = True
    image = volume_node_from_array(runtime.scene, np.zeros(mask.shape, np.int16), np.eye(4), "phantom")
    node = _segmentation(runtime, mask, image)
    lesions = measure_lesions(node, segment_ids(node)[0], image)
    assert lesions.speckle_dropped == 5 and len(lesions.measurements) == 3
    expected = [math.hypot(20, 8), math.hypot(3, 15), math.hypot(9, 5)]  # voxel-centre diagonals, largest first
    assert [m.long_axis_mm for m in lesions.measurements] == pytest.approx(expected, abs=1e-9)
    assert [m.volume_ml for m in lesions.measurements] == pytest.approx([6 * 21 * 9 / 1000, 4 * 4 * 16 / 1000,
                                                                         3 * 10 * 6 / 1000])
    assert all("5 speckle component(s)" in m.notes[-1] for m in lesions.measurements)
    # a lower minimum keeps nothing more: single voxels have no diameter
    assert len(measure_lesions(node, segment_ids(node)[0], image, min_lesion_mm3=0).measurements) == 3
    # a higher one drops the smallest box (240 mm³) too
    assert len(measure_lesions(node, segment_ids(node)[0], image, min_lesion_mm3=200).measurements) == 2


def test_aortic_arch_phantom_is_refused_as_tubular(runtime):
    """A 25 mm tube bent over like the aortic arch: its axial slices cut the ascending and descending
    parts, so a segment-wide 'long axis' would span both. Refused by shape, pointing to --vessels."""
    k, j, i = np.mgrid[0:80, 0:60, 0:100].astype(float)  # 2 mm voxels; tube radius 6.25 voxels = 12.5 mm
    limbs = ((i - 25) ** 2 + (j - 30) ** 2 <= 6.25**2) | ((i - 75) ** 2 + (j - 30) ** 2 <= 6.25**2)
    arch = (np.hypot(np.hypot(i - 50, k - 45) - 25, j - 30) <= 6.25) & (k >= 45)
    mask = (limbs & (k < 46) & (k > 2)) | arch  # two limbs 25 voxels apart, joined by a half torus above
    matrix = np.diag([2.0, 2.0, 2.0, 1.0])
    image = volume_node_from_array(runtime.scene, np.zeros(mask.shape, np.int16), matrix, "chest")
    node = _segmentation(runtime, mask, image)
    node.GetSegmentation().GetNthSegment(0).SetName("vessel")
    shape = tubularity(mask, matrix[:3, :3])
    assert shape.tubular and shape.ratio > TUBULAR_RATIO
    whole = measure_segment(node, segment_ids(node)[0], image)
    assert whole.long_axis_mm > 100  # the failure seen: one axial "long axis" across both limbs
    lesions = measure_lesions(node, segment_ids(node)[0], image)
    assert lesions.measurements == []
    (why,) = lesions.refused.values()
    assert "is tubular" in why and "aiportal measure --vessels vessel" in why


@pytest.fixture(scope="module")
def totalseg_structures(shared_data):
    """TotalSegmentator's example result on its CT, imported with its SNOMED terminology."""
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    folder = shared_data / "totalseg"
    ct = load_volume(folder / "example_ct_sm.nii.gz", runtime).node
    reference = load_volume(folder / "example_seg.nii.gz", runtime).node
    labels = array_from_volume(reference).astype(np.uint8)
    runtime.scene.RemoveNode(reference)
    table = totalsegmentator_labels("total", class_map=read_class_map_json(folder / "class_map_total_totalmr.json",
                                                                           "total"),
                                    snomed_csv=folder / "totalsegmentator_snomed_mapping.csv")
    provenance = Provenance(model_id="totalseg-total", model_version="2.18.0", weights_sha256="none",
                            parameters={}, device="cpu", started=now_iso(), finished=now_iso())
    node = import_label_map(LabelMapResult(layers=[labels]), table, ct, provenance, runtime=runtime)
    by_name = {node.GetSegmentation().GetSegment(s).GetName(): s for s in segment_ids(node)}
    yield runtime, ct, node, by_name
    runtime.scene.Clear(1)


@pytest.mark.parametrize("name", ["aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein"])
def test_real_vessels_are_refused_with_the_vessels_pointer(totalseg_structures, name):
    runtime, ct, node, by_name = totalseg_structures
    lesions = measure_lesions(node, by_name[name], ct)
    assert lesions.measurements == []
    assert f"aiportal measure --vessels {name}" in lesions.refused[name]


def test_real_vessel_shapes_without_terminology(totalseg_structures):
    """By shape alone: the portal/splenic vein (ratio 19.6) is tubular, and so is the 90 mm cut of abdominal
    aorta (6.0) by its round cross-sections of steady size; the oval IVC (4.7) is not (that is why the
    terminology is checked too); organs stay compact."""
    runtime, ct, node, by_name = totalseg_structures
    linear = ijk_to_ras_matrix(ct)[:3, :3]

    def shape_of(name):
        components = split_components(segment_mask(node, by_name[name], ct), 27.0)
        return tubularity(components.labels == 1, linear)

    def largest_ratio(name):
        return shape_of(name).ratio

    assert largest_ratio("portal_vein_and_splenic_vein") == pytest.approx(19.6, abs=0.1)
    aorta = shape_of("aorta")
    assert aorta.ratio == pytest.approx(6.0, abs=0.1) and aorta.tubular
    assert aorta.sections.area_variation < 0.08 and aorta.sections.roundness < 1.2
    assert "cross-section stays round" in aorta.describe()
    assert not shape_of("inferior_vena_cava").tubular
    for organ in ("stomach", "adrenal_gland_left", "adrenal_gland_right", "rib_left_8", "rib_right_8",
                  "iliopsoas_right", "small_bowel"):  # ratios 4-8: their sections say no tube
        shape = shape_of(organ)
        assert 4 <= shape.ratio < 8 and not shape.tubular, organ
    for organ in ("spleen", "kidney_right", "kidney_left", "liver", "gallbladder"):
        assert largest_ratio(organ) < 3.5, organ
        lesions = measure_lesions(node, by_name[organ], ct)
        assert len(lesions.measurements) == 1 and lesions.refused == {}, organ
    assert vessel_terminology("Aorta") and vessel_terminology("Common iliac vein")
    assert not vessel_terminology("Kidney") and not vessel_terminology("Mass")


def test_several_structures_merged_are_several_lesions(totalseg_structures):
    """Spleen, right kidney and gall bladder as one segment: three lesions, each measured as the organ alone.
    Structures that touch are one lesion: with the left kidney (it touches the spleen) there are still three."""
    runtime, ct, node, by_name = totalseg_structures
    organs = ("spleen", "kidney_right", "gallbladder")
    merged = np.zeros(tuple(reversed(ct.GetImageData().GetDimensions())), bool)
    for organ in organs:
        merged |= segment_mask(node, by_name[organ], ct)
    touching = _segmentation(runtime, merged | segment_mask(node, by_name["kidney_left"], ct), ct)
    assert len(measure_lesions(touching, segment_ids(touching)[0], ct).measurements) == 3
    together = _segmentation(runtime, merged, ct)
    lesions = measure_lesions(together, segment_ids(together)[0], ct)
    alone = sorted((measure_segment(node, by_name[organ], ct) for organ in organs), key=lambda m: -m.volume_ml)
    assert len(lesions.measurements) == 3 and lesions.refused == {}
    for measured, organ in zip(lesions.measurements, alone, strict=True):
        assert measured.long_axis_mm == pytest.approx(organ.long_axis_mm, abs=1e-9)
        assert measured.volume_ml == pytest.approx(organ.volume_ml, abs=1e-12)


@pytest.mark.parametrize("case", ["brain2", "breast1"])
def test_real_single_lesions_stay_single_and_compact(runtime, shared_data, case):
    image, _, node, segment_id = _pyradiomics(runtime, shared_data, case)
    lesions = measure_lesions(node, segment_id, image)
    (measured,) = lesions.measurements
    assert measured.lesion_name == "Label_1" and measured.lesions_in_segment == 1
    assert measured.long_axis_mm == measure_segment(node, segment_id, image).long_axis_mm


def test_copilot_checks_a_line_against_the_lesion_it_is_drawn_on(runtime, shared_data):
    """On brain1's two-lesion label, a caliper on the small lesion is checked against that lesion, not
    against the segment as a whole (whose long axis is the big lesion's)."""
    from aiportal.measure.copilot import check_line

    image, _, node, segment_id = _pyradiomics(runtime, shared_data, "brain1")
    big, small = measure_lesions(node, segment_id, image).measurements
    check = check_line(node, segment_id, image, small.long_axis_endpoints_ras, kind="long")
    assert check.recist.lesion_name == "Label_1 lesion 2" and check.ok, check.summary()
    assert check.suggested_length_mm == pytest.approx(small.long_axis_mm, abs=1e-9)
    assert check_line(node, segment_id, image, big.long_axis_endpoints_ras, kind="long").recist.lesion_index == 1


@pytest.mark.parametrize("label", ["liver_seg.nrrd", "spine_seg.nrrd", "heart_seg.nrrd"])
def test_structures_on_three_slices_are_measured_not_refused_as_tubes(runtime, shared_data, label):
    """dcmqi's 3-slice labels: a sheet's path over width (liver 13.9, spine 9.5, heart 8.2) measures its
    flatness, not a tube: measured as a lesion."""
    folder = shared_data / "dcmqi" / "data" / "segmentations"
    image = load_volume(folder / label, runtime).node
    mask = array_from_volume(image) > 0
    shape = tubularity(split_components(mask, 1.0).labels == 1, ijk_to_ras_matrix(image)[:3, :3])
    assert shape.ratio >= TUBULAR_RATIO and shape.sheet and not shape.tubular
    node = _segmentation(runtime, mask, image)
    lesions = measure_lesions(node, segment_ids(node)[0], image)
    assert lesions.refused == {} and len(lesions.measurements) >= 1
