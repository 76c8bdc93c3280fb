"""The model catalog: what each model is, what it segments, and where its weights come from.

One entry per model; every face (desktop, CLI, browser, server) lists models from here and every
backend declares its entry here. Labels carry SNOMED CT codes so results can become DICOM SEG.
"""

from __future__ import annotations

import importlib
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
    environment: str = "main"  # the Python environment it runs in (aiportal.models.envs)
    memory_gb: float = 0.0  # working memory it needs beyond the input (checked before a run)
    single_slice: bool = False  # a per-slice (2D) model that may segment one slice alone; 3D models may not

    def label(self, value: int) -> LabelSpec:
        for spec in self.labels:
            if spec.value == value:
                return spec
        raise KeyError(f"{self.id} has no label {value}")

    @property
    def weights_sha256(self) -> str | None:
        return self.weights.sha256 if self.weights else None


@dataclass(frozen=True)
class BackendRef:
    """How to build a backend anywhere (this process or a child): ``module:Class`` and string arguments."""

    ref: str
    args: tuple[str, ...] = ()

    @classmethod
    def of(cls, backend_class: type, *args: object) -> BackendRef:
        return cls(f"{backend_class.__module__}:{backend_class.__qualname__}", tuple(str(a) for a in args))

    def build(self) -> ModelBackend:
        module_name, _, class_name = self.ref.partition(":")
        return getattr(importlib.import_module(module_name), class_name)(*self.args)


# "nnunet:/path/to/results" -> the entry and backend of that folder (see Catalog.add_source)
SourceResolver = Callable[[str], "tuple[ModelEntry, BackendRef]"]


class Catalog:
    """Models by id, each with the reference of its backend; folder models resolve by prefix."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._backends: dict[str, BackendRef] = {}
        self._sources: dict[str, tuple[SourceResolver, str]] = {}

    def register(self, entry: ModelEntry, backend: type | BackendRef, *args: object) -> None:
        if entry.id in self._entries:
            raise ValueError(f"model id {entry.id!r} registered twice")
        values = [label.value for label in entry.labels]
        if len(set(values)) != len(values) or 0 in values:
            raise ValueError(f"model {entry.id!r}: label values must be unique and non-zero")
        self._entries[entry.id] = entry
        self._backends[entry.id] = backend if isinstance(backend, BackendRef) else BackendRef.of(backend, *args)

    def add_source(self, prefix: str, resolver: SourceResolver, description: str) -> None:
        """Models named ``PREFIX:LOCATION`` (e.g. ``nnunet:/models/Dataset123``) are built on first use."""
        self._sources[prefix] = (resolver, description)

    @property
    def models(self) -> list[ModelEntry]:
        return list(self._entries.values())

    @property
    def sources(self) -> dict[str, str]:
        return {prefix: description for prefix, (_, description) in self._sources.items()}

    def get(self, model_id: str) -> ModelEntry:
        if model_id in self._entries:
            return self._entries[model_id]
        prefix, colon, location = model_id.partition(":")
        if colon and prefix in self._sources:
            entry, backend = self._sources[prefix][0](location)
            self._entries[model_id] = entry
            self._backends[model_id] = backend
            return entry
        folder_kinds = "".join(f", or {prefix}:FOLDER ({text})" for prefix, text in self.sources.items())
        raise ModelError(
            f"Unknown model {model_id!r}",
            f"choose one of: {', '.join(self._entries)}{folder_kinds} (see `aiportal models`)",
        )

    def backend_ref(self, model_id: str) -> BackendRef:
        self.get(model_id)
        return self._backends[model_id]

    def backend(self, model_id: str) -> ModelBackend:
        """The backend built in this process (the runner builds it in a child from :meth:`backend_ref`)."""
        return self.backend_ref(model_id).build()


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
