"""TotalSegmentator's label tables, with SNOMED codes and colours, read from TotalSegmentator itself.

Nothing is copied: label names come from ``totalsegmentator.map_to_binary.class_map`` and codes
from the ``totalsegmentator_snomed_mapping.csv`` the package ships, located at run time. Explicit
paths (a class-map JSON and the CSV) are accepted too, e.g. for a results folder without the
package installed.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

from aiportal.errors import ModelError
from aiportal.models.catalog import ANATOMICAL_STRUCTURE, LEFT, RIGHT, Code, LabelSpec

_INSTALL_FIX = "install it with `pip install TotalSegmentator` (or pass the class map and SNOMED CSV paths)"


def _package_folder() -> Path:
    spec = importlib.util.find_spec("totalsegmentator")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("TotalSegmentator is not installed", _INSTALL_FIX)
    return Path(next(iter(spec.submodule_search_locations)))


def installed_snomed_csv() -> Path:
    path = _package_folder() / "resources" / "totalsegmentator_snomed_mapping.csv"
    if not path.is_file():
        raise ModelError(f"TotalSegmentator's SNOMED mapping is missing at {path}", _INSTALL_FIX)
    return path


def installed_class_map(task: str) -> dict[int, str]:
    _package_folder()
    class_maps = importlib.import_module("totalsegmentator.map_to_binary").class_map  # plain data module
    if task not in class_maps:
        raise ModelError(f"TotalSegmentator has no task {task!r}", f"choose one of: {', '.join(class_maps)}")
    return {int(value): name for value, name in class_maps[task].items()}


def read_class_map_json(path: Path, task: str) -> dict[int, str]:
    """A ``{task: {label value: class name}}`` JSON file, as parsed from TotalSegmentator."""
    tasks = json.loads(Path(path).read_text())
    if task not in tasks:
        raise ModelError(f"{path} has no task {task!r}", f"choose one of: {', '.join(tasks)}")
    return {int(value): name for value, name in tasks[task].items()}


_LUNG = Code("SCT", "39607008", "Lung")

# Classes of TotalSegmentator tasks that its SNOMED mapping CSV (2.18) does not list; our own codes.
_SUPPLEMENT: dict[str, LabelSpec] = {
    spec.name: spec
    for spec in (
        LabelSpec(0, "lung_left", ANATOMICAL_STRUCTURE, _LUNG, LEFT, color=(197, 165, 145)),
        LabelSpec(0, "lung_right", ANATOMICAL_STRUCTURE, _LUNG, RIGHT, color=(172, 138, 115)),
        LabelSpec(0, "vertebrae", ANATOMICAL_STRUCTURE, Code("SCT", "51282000", "Vertebra"),
                  color=(241, 213, 144)),
        LabelSpec(0, "intervertebral_discs", ANATOMICAL_STRUCTURE,
                  Code("SCT", "360499006", "Intervertebral disc"), color=(127, 187, 222)),
    )
}


def _code(row: dict[str, str], sequence: str) -> Code | None:
    value = row.get(f"{sequence}.CodeValue", "").strip()
    if not value:
        return None
    scheme, meaning = row[f"{sequence}.CodingSchemeDesignator"], row[f"{sequence}.CodeMeaning"]
    return Code(scheme.strip(), value, meaning.strip())


def read_snomed_mapping(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["Structure"].strip(): row for row in csv.DictReader(handle)}


def totalsegmentator_labels(
    task: str = "total", *, class_map: dict[int, str] | None = None, snomed_csv: Path | None = None
) -> tuple[LabelSpec, ...]:
    """The label table of a TotalSegmentator task, every label SNOMED-coded."""
    class_map = class_map if class_map is not None else installed_class_map(task)
    mapping = read_snomed_mapping(snomed_csv or installed_snomed_csv())
    missing = [name for name in class_map.values() if name not in mapping and name not in _SUPPLEMENT]
    if missing:
        raise ModelError(
            f"no SNOMED codes for TotalSegmentator classes {', '.join(missing)}",
            "update TotalSegmentator, or add those classes to the mapping CSV",
        )
    labels = []
    for value, name in sorted(class_map.items()):
        if name not in mapping:
            labels.append(replace(_SUPPLEMENT[name], value=value))
            continue
        row = mapping[name]
        category, type_ = _code(row, "SegmentedPropertyCategoryCodeSequence"), _code(
            row, "SegmentedPropertyTypeCodeSequence"
        )
        assert category and type_, f"mapping row for {name} lacks category or type"
        red, green, blue = (int(c) for c in row["DicomRGBColor"].split(","))
        labels.append(
            LabelSpec(
                value=value,
                name=name,
                category=category,
                type=type_,
                type_modifier=_code(row, "SegmentedPropertyTypeModifierCodeSequence"),
                region=_code(row, "AnatomicRegionSequence"),
                region_modifier=_code(row, "AnatomicRegionModifierSequence"),
                color=(red, green, blue),
            )
        )
    return tuple(labels)
