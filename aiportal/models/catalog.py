"""The model catalog: what each model is, what it segments, and where its weights come from.

One entry per model; every face (desktop, CLI, browser, server) lists models from here and every
backend declares its entry here. Labels carry SNOMED CT codes so results can become DICOM SEG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiportal.errors import ModelError

if TYPE_CHECKING:
    from aiportal.models.backend import ModelBackend


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM Code Sequence item): scheme designator, value, meaning."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"({self.value}, {self.scheme}, \"{self.meaning}\")"


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
LEFT = Code("SCT", "7771000", "Left")
RIGHT = Code("SCT", "24028007", "Right")


@dataclass(frozen=True)
class LabelSpec:
    """One label of a model's label map, with the codes a DICOM SEG segment needs."""

    value: int
    name: str
    category: Code
    type: Code
    type_modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None
    color: tuple[int, int, int] = (128, 174, 128)
    layer: int = 0  # labels in different layers may overlap (e.g. body contains the lungs)


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights are and how to check them."""

    location: str
    sha256: str | None = None
    license: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    id: str
    title: str
    modality: str  # "CT", "MR", ...
    task: str
    description: str
    limitations: str  # said plainly: what the model does not do
    version: str
    license: str
    labels: tuple[LabelSpec, ...]
    weights: WeightsSpec | None = None  # None: no weights (classical method)
    family: str = "AI"  # "AI" or "classical" (DICOM SEG algorithm family)
    devices: tuple[str, ...] = ("cpu",)
    input_requirements: str = ""
    prompts: tuple[str, ...] = ()  # e.g. ("box",) or ("points",)
    references: tuple[str, ...] = field(default_factory=tuple)

    def label(self, value: int) -> LabelSpec:
        for spec in self.labels:
            if spec.value == value:
                return spec
        raise KeyError(f"{self.id} has no label {value}")

    @property
    def weights_sha256(self) -> str | None:
        return self.weights.sha256 if self.weights else None


BackendFactory = Callable[[], "ModelBackend"]


class Catalog:
    """Models by id, each with the factory of its backend."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._factories: dict[str, BackendFactory] = {}

    def register(self, entry: ModelEntry, factory: BackendFactory) -> None:
        if entry.id in self._entries:
            raise ValueError(f"model id {entry.id!r} registered twice")
        values = [label.value for label in entry.labels]
        if len(set(values)) != len(values) or 0 in values:
            raise ValueError(f"model {entry.id!r}: label values must be unique and non-zero")
        self._entries[entry.id] = entry
        self._factories[entry.id] = factory

    @property
    def models(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self._entries[model_id]
        except KeyError:
            raise ModelError(
                f"Unknown model {model_id!r}",
                f"choose one of: {', '.join(self._entries)} (see `aiportal info`)",
            ) from None

    def backend(self, model_id: str) -> ModelBackend:
        self.get(model_id)
        return self._factories[model_id]()


_catalog: Catalog | None = None


def get_catalog() -> Catalog:
    """The catalog of every model this installation knows."""
    global _catalog
    if _catalog is None:
        from aiportal.models.backends import register_builtin_models

        catalog = Catalog()
        register_builtin_models(catalog)
        _catalog = catalog
    return _catalog
