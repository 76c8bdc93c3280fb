"""The contract every model backend implements: ``run(volume, params, progress, cancel)``.

A backend receives the image as a numpy array with its geometry and returns label map layers
plus the label table. It never touches the MRML scene, so it can run in a worker thread, a child
process or on a remote server; turning its result into a segmentation node is
:mod:`aiportal.segmentation`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aiportal.models.catalog import ModelEntry
from aiportal.progress import CancelToken, ProgressCallback


@dataclass
class ModelInput:
    array: np.ndarray  # (k, j, i) = (slice, row, column), modality units (HU for CT)
    ijk_to_ras: np.ndarray  # 4x4, maps (i, j, k, 1) to RAS millimetres
    modality: str | None  # from DICOM when known; None for NIfTI / NRRD
    name: str  # names the input in error messages


@dataclass
class LabelMapResult:
    """Label map layers on the input grid; label values are unique across layers."""

    layers: list[np.ndarray]  # each (k, j, i) unsigned ints; 0 = background
    confidences: dict[int, float] = field(default_factory=dict)  # label value -> 0..1, when known
    details: dict[str, Any] = field(default_factory=dict)  # anything the backend wants recorded
    warnings: list[str] = field(default_factory=list)  # where the result may be wrong (run.json, every face)


class ModelBackend(Protocol):
    entry: ModelEntry

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult: ...
