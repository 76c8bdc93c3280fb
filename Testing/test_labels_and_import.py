"""Label tables, terminology and result import, on real TotalSegmentator outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from aiportal import terminology
from aiportal.io.volumes import array_from_volume, load_volume
from aiportal.models.backend import LabelMapResult
from aiportal.models.catalog import get_catalog
from aiportal.models.totalseg_labels import read_class_map_json, totalsegmentator_labels
from aiportal.provenance import Provenance, now_iso
from aiportal.segmentation import (
    export_label_map,
    import_label_map,
    label_value,
    load_segmentation,
    save_segmentation,
    segment_ids,
)


def _csv_rows(shared_data):
    with open(shared_data / "totalseg/totalsegmentator_snomed_mapping.csv", newline="") as handle:
        return {row["Structure"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("task", ["total", "total_mr", "body", "tissue_types"])
def test_totalsegmentator_table_from_package_matches_its_published_files(shared_data, task):
    from_package = totalsegmentator_labels(task)  # class map + CSV found inside the installed package
    class_map = read_class_map_json(shared_data / "totalseg/class_map_total_totalmr.json", task)
    assert {label.value: label.name for label in from_package} == class_map
    rows = _csv_rows(shared_data)
    for label in from_package:
        row = rows.get(label.name)
        if row is None:  # the CSV lacks a few total_mr classes; ours must still be coded
            assert label.category.value and label.type.value, label
            continue
        assert label.type.value == row["SegmentedPropertyTypeCodeSequence.CodeValue"]
        assert label.category.value == row["SegmentedPropertyCategoryCodeSequence.CodeValue"]
        assert (label.type_modifier.value if label.type_modifier else "") == row[
            "SegmentedPropertyTypeModifierCodeSequence.CodeValue"]
        assert ",".join(map(str, label.color)) == row["DicomRGBColor"].replace(" ", "")
    from_files = totalsegmentator_labels(task, class_map=class_map,
                                         snomed_csv=shared_data / "totalseg/totalsegmentator_snomed_mapping.csv")
    assert from_files == from_package


def test_terminology_round_trips_every_totalsegmentator_label():
    for label in totalsegmentator_labels("total"):
        codes = terminology.deserialize(terminology.serialize(label))
        assert codes is not None
        assert (codes.category, codes.type, codes.type_modifier, codes.region, codes.region_modifier) == (
            label.category, label.type, label.type_modifier, label.region, label.region_modifier)


def test_catalog_entries_are_complete():
    catalog = get_catalog()
    entry = catalog.get("classic-ct")
    assert entry.weights is None and entry.family == "classical"
    assert "not" in entry.limitations.lower()
    for label in entry.labels:
        assert label.category.scheme == "SCT" and label.type.scheme == "SCT"
        assert terminology.deserialize(terminology.serialize(label)).type == label.type
    with pytest.raises(Exception, match="classic-ct"):
        catalog.get("no-such-model")


def test_totalsegmentator_label_map_becomes_segmentation_and_survives_seg_nrrd(shared_data, runtime, tmp_path):
    ct = load_volume(shared_data / "totalseg/example_ct_sm.nii.gz", runtime)
    reference = load_volume(shared_data / "totalseg/example_seg.nii.gz", runtime)
    labels_kji = array_from_volume(reference.node).astype(np.uint8)
    table = totalsegmentator_labels("total")
    provenance = Provenance(model_id="totalsegmentator-total", model_version="2.18.0", weights_sha256="none",
                            parameters={"fast": False, "roi": "all"}, device="cpu",
                            started=now_iso(), finished=now_iso())
    node = import_label_map(LabelMapResult(layers=[labels_kji], confidences={5: 0.93}), table, ct.node,
                            provenance, runtime=runtime)

    present = sorted(set(np.unique(labels_kji).tolist()) - {0})
    assert len(present) > 10
    segmentation = node.GetSegmentation()
    by_value = {label.value: label for label in table}
    assert sorted(label_value(segmentation.GetSegment(s)) for s in segment_ids(node)) == present
    # the segmentation sits under the CT's study in the subject hierarchy
    shnode = runtime.shnode
    assert shnode.GetItemParent(shnode.GetItemByDataNode(node)) == shnode.GetItemParent(
        shnode.GetItemByDataNode(ct.node))
    assert np.array_equal(export_label_map(node, ct.node), labels_kji)

    path = save_segmentation(node, tmp_path / "ts.seg.nrrd")
    reloaded = load_segmentation(path, runtime)
    reloaded_segmentation = reloaded.GetSegmentation()
    assert reloaded_segmentation.GetNumberOfSegments() == len(present)
    for segment_id in segment_ids(reloaded):
        segment = reloaded_segmentation.GetSegment(segment_id)
        label = by_value[label_value(segment)]
        assert segment.GetName() == label.name
        assert np.allclose(segment.GetColor(), np.array(label.color) / 255.0, atol=1e-3)
        codes = terminology.deserialize(segment.GetTerminology())
        assert (codes.category, codes.type, codes.type_modifier) == (label.category, label.type,
                                                                     label.type_modifier)
        assert Provenance.of_segment(segment) == provenance
    liver = next(s for s in segment_ids(reloaded) if reloaded_segmentation.GetSegment(s).GetName() == "liver")
    from aiportal.provenance import read_tag
    from aiportal.segmentation import CONFIDENCE_TAG, REVIEW_TAG
    assert read_tag(reloaded_segmentation.GetSegment(liver), CONFIDENCE_TAG) == "0.9300"
    assert read_tag(reloaded_segmentation.GetSegment(liver), REVIEW_TAG) == "suggested"
    assert np.array_equal(export_label_map(reloaded, ct.node), labels_kji)
    json.dumps(provenance.as_tags())  # tags are plain strings


def test_label_map_from_layers_equals_slicers_per_segment_export(shared_data, runtime):
    from aiportal.segment import SegmentationJob
    from aiportal.segmentation import segment_mask

    volume = load_volume(shared_data / "totalseg/example_ct.nii.gz", runtime).node
    node = SegmentationJob(volume, "classic-ct", runtime=runtime).run().segmentation_node
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfLayers() > 1  # body and organs overlap: the case that needs care
    expected = np.zeros(array_from_volume(volume).shape, dtype=np.uint8)
    for segment_id in segment_ids(node):  # Slicer resamples each segment; the later one wins
        expected[segment_mask(node, segment_id, volume)] = label_value(segmentation.GetSegment(segment_id))
    assert np.array_equal(export_label_map(node, volume), expected)
