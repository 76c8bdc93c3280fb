"""``deepbet``: brain extraction on T1-weighted MR, with the weights shipped inside the deepbet wheel.

The volume goes to deepbet's own ``BrainExtraction.run`` (the function ``deepbet.run_bet`` calls for
each file) as an in-memory NIfTI image with our geometry, so deepbet's own preprocessing
(reorientation to RAS, bounding-box model, resizing, normalisation) and postprocessing (largest
component, hole filling, dilation) apply unchanged and the mask equals ``run_bet``'s.

torch and deepbet are imported inside ``run``: listing the catalog must not load them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from aiportal.errors import InputError, ModelError
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import ANATOMICAL_STRUCTURE, Code, LabelSpec, ModelEntry, WeightsSpec
from aiportal.progress import CancelToken, ProgressCallback

DEEPBET_VERSION = "1.0.2"
# sha256 of data/models/model.pt in the deepbet 1.0.2 wheel (the segmentation network, TorchScript)
MODEL_SHA256 = "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd"
# deepbet alone without its dependencies (its own pull in a GUI toolkit); theirs with theirs (cc3d needs fastremap)
_INSTALL_FIX = ("install it with `pip install connected-components-3d fill_voids pandas nibabel && pip install "
                f"--no-deps deepbet=={DEEPBET_VERSION}` (torch must already be installed)")

BRAIN = LabelSpec(1, "Brain", ANATOMICAL_STRUCTURE, Code("SCT", "12738006", "Brain"), color=(216, 54, 149))

ENTRY = ModelEntry(
    id="deepbet",
    title="deepbet brain extraction (T1 MR)",
    modality="MR",
    task="brain mask (skull stripping) on T1-weighted MR",
    description=(
        "deepbet (Fisch et al. 2024): two small 3D networks, one finds the brain's bounding box, the other "
        "segments the brain inside it; then the largest component with its holes filled. About 5 s per "
        "volume on a CPU."
    ),
    limitations=(
        "Trained on T1-weighted MR of adult heads; other contrasts (T2, FLAIR), CT, infants and images "
        "without the whole brain in view give unreliable masks. The mask includes the brain and its "
        "surrounding CSF (intracranial volume convention); it does not separate tissues or lesions. "
        "Not for diagnosis."
    ),
    version=DEEPBET_VERSION,
    license="MIT",
    labels=(BRAIN,),
    weights=WeightsSpec(f"deepbet {DEEPBET_VERSION} wheel: data/models/model.pt (TorchScript)", MODEL_SHA256, "MIT"),
    family="AI",
    devices=("cpu", "cuda", "mps"),
    environment="torch",
    input_requirements="T1-weighted MR with skull",
    references=("https://doi.org/10.1016/j.compbiomed.2024.108845", "https://github.com/wwu-mmll/deepbet"),
)


def refuse_non_t1_input(volume: ModelInput) -> None:
    """Refuse CT (by its DICOM modality, or by Hounsfield-like air when the modality is unknown)."""
    modality = (volume.modality or "").upper()
    if modality and modality != "MR":
        raise ModelError(
            f"deepbet extracts the brain from T1-weighted MR, but {volume.name} is {volume.modality}",
            "choose a T1-weighted MR series of the head",
        )
    if not modality:
        sample = np.asarray(volume.array)[:: max(1, volume.array.shape[0] // 32)].astype(np.float32, copy=False)
        air_fraction = float(np.mean(sample <= -500))
        if air_fraction >= 0.05:
            raise ModelError(
                f"{volume.name} looks like a CT in Hounsfield units ({air_fraction:.0%} of voxels at or below "
                "-500), and deepbet extracts the brain from T1-weighted MR only",
                "choose a T1-weighted MR series of the head",
            )


def model_weights_path() -> Path:
    """deepbet's TorchScript segmentation model, checked against the checksum in the catalog entry."""
    try:
        from deepbet.utils import DATA_PATH
    except ImportError as error:
        missing = error.name or "deepbet"
        raise ModelError(f"deepbet cannot be loaded: the package {missing!r} is not installed",
                         _INSTALL_FIX if missing == "deepbet" else f"install {missing} ({_INSTALL_FIX})") from None
    path = Path(DATA_PATH) / "models" / "model.pt"
    if not path.is_file():
        raise ModelError(f"deepbet's model file is missing at {path}", "reinstall deepbet: " + _INSTALL_FIX)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise ModelError(
            f"deepbet's model file {path} is not the one of deepbet {DEEPBET_VERSION} (sha256 {digest[:12]}…)",
            f"install deepbet=={DEEPBET_VERSION}, the version this catalog entry describes",
        )
    return path


def _parameters(params: dict[str, Any]) -> tuple[float, int, str]:
    threshold = float(params.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise InputError(f"deepbet threshold must be between 0 and 1, got {threshold}",
                         "use 0.5 (deepbet's default); lower keeps more tissue")
    n_dilate = params.get("n_dilate", 0)
    try:
        whole = int(n_dilate) == float(n_dilate)
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise InputError(f"deepbet n_dilate must be a whole number of voxel layers, got {n_dilate}",
                         "use 0, a positive number to grow the mask or a negative one to shrink it")
    return threshold, int(n_dilate), str(params.get("device") or "cpu")


class DeepbetBackend:
    entry = ENTRY

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        refuse_non_t1_input(volume)
        threshold, n_dilate, device = _parameters(params)
        if volume.array.ndim != 3 or min(volume.array.shape) < 2:
            raise InputError(f"deepbet needs a 3D volume, but {volume.name} has shape {volume.array.shape}",
                             "choose a 3D T1-weighted series")
        progress(0.0, "loading deepbet")
        model_weights_path()
        import nibabel as nib
        from deepbet import BrainExtraction

        extraction = BrainExtraction(no_gpu=device == "cpu")
        cancel.check("deepbet")
        probabilities: list[np.ndarray] = []
        run_model = extraction.run_model

        def recording_run_model(*args: Any, **kwargs: Any) -> np.ndarray:  # keeps the network's map for confidence
            result = run_model(*args, **kwargs)
            probabilities.append(result)
            return result

        extraction.run_model = recording_run_model
        progress(0.1, "extracting the brain")
        affine = np.asarray(volume.ijk_to_ras, dtype=float)
        image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(volume.array).transpose(2, 1, 0)), affine)
        image.header.set_sform(affine, code=1)
        image.header.set_qform(affine, code=1)
        try:
            _, mask_image, tiv_cm3 = extraction.run(image, threshold=threshold, n_dilate=n_dilate)
        except (AssertionError, ValueError) as error:  # deepbet's own checks: no foreground, no brain component
            raise ModelError(f"deepbet found no brain in {volume.name} ({error or type(error).__name__})",
                             "check that it is a T1-weighted MR of the whole head") from error
        cancel.check("deepbet")
        mask = np.asarray(mask_image.dataobj).astype(bool).transpose(2, 1, 0)  # same grid as the input
        confidences = {}
        if probabilities and mask.any():
            # the network's map lies on deepbet's RAS-closest grid (nib.as_closest_canonical): move the mask there
            mask_ras = nib.as_closest_canonical(nib.Nifti1Image(mask.transpose(2, 1, 0).astype(np.uint8), affine))
            confidences[BRAIN.value] = float(probabilities[0][np.asarray(mask_ras.dataobj).astype(bool)].mean())
        progress(1.0, "done")
        return LabelMapResult(
            layers=[mask.astype(np.uint8) * BRAIN.value],
            confidences=confidences,
            details={"tiv_cm3": float(tiv_cm3), "threshold": threshold, "n_dilate": n_dilate,
                     "deepbet_version": DEEPBET_VERSION},
        )
