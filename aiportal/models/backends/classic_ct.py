"""``classic-ct``: the embedded default model — HU thresholds, connected components, morphology."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiportal import __version__
from aiportal.errors import ModelError
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import ANATOMICAL_STRUCTURE, LEFT, RIGHT, TISSUE, Code, LabelSpec, ModelEntry
from aiportal.models.classic_ct import check_ct_intensities, segment_classic_ct
from aiportal.progress import CancelToken, ProgressCallback

LUNG = Code("SCT", "39607008", "Lung")

BODY = LabelSpec(1, "Body", ANATOMICAL_STRUCTURE, Code("SCT", "38266002", "Entire body"),
                 color=(177, 122, 101), layer=0)
LEFT_LUNG = LabelSpec(2, "Left lung", ANATOMICAL_STRUCTURE, LUNG, type_modifier=LEFT,
                      color=(197, 165, 145), layer=1)
RIGHT_LUNG = LabelSpec(3, "Right lung", ANATOMICAL_STRUCTURE, LUNG, type_modifier=RIGHT,
                       color=(172, 138, 115), layer=1)
AIRWAYS = LabelSpec(4, "Airways", ANATOMICAL_STRUCTURE, Code("SCT", "110726009", "Trachea and bronchus"),
                    color=(182, 228, 255), layer=1)
BONE = LabelSpec(5, "Bone", TISSUE, Code("SCT", "272673000", "Bone"), color=(241, 214, 145), layer=1)

ENTRY = ModelEntry(
    id="classic-ct",
    title="Classic CT (body, lungs, airways, bone)",
    modality="CT",
    task="body, left/right lung, airways and bone on CT",
    description=(
        "Rule-based CT segmentation that needs no weights: Hounsfield-unit thresholds, connected "
        "components and morphology. Runs in seconds on a CPU."
    ),
    limitations=(
        "Not an AI model and not for diagnosis. CT in Hounsfield units only (refuses MR). No organs "
        "other than the lungs, no lobes, no individual bones or vertebrae, no lesions. Bone includes "
        "calcifications and metal; dense contrast touching bone may be included. Lungs with "
        "consolidation, effusion or collapse are under-segmented; severe emphysema may merge with "
        "airways. Airways stop at the main bronchi and are empty when the trachea is not in view."
    ),
    version=__version__,
    license="Apache-2.0",
    labels=(BODY, LEFT_LUNG, RIGHT_LUNG, AIRWAYS, BONE),
    weights=None,
    family="classical",
    devices=("cpu",),
    input_requirements="CT in Hounsfield units, any orientation",
)


class ClassicCTBackend:
    entry = ENTRY

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        if volume.modality and volume.modality.upper() != "CT":
            raise ModelError(
                f"classic-ct needs a CT, but {volume.name} is {volume.modality}",
                "choose a CT series, or a model made for " + volume.modality,
            )
        check_ct_intensities(volume.array, volume.name)
        masks = segment_classic_ct(volume.array, volume.ijk_to_ras, progress, cancel)
        organs = np.zeros(volume.array.shape, dtype=np.uint8)
        for spec, mask in ((BONE, masks.bone), (LEFT_LUNG, masks.lung_left),
                           (RIGHT_LUNG, masks.lung_right), (AIRWAYS, masks.airways)):
            organs[mask] = spec.value  # later wins: airways over lungs where they touch
        return LabelMapResult(layers=[masks.body.astype(np.uint8) * BODY.value, organs])
