"""What a face's "Install weights" button needs (GUI-free): whether it applies, the consent text, the job.

The desktop module (and any other face) asks :func:`weights_offer` when a model is picked, shows
``question`` once before installing, and runs :func:`install_function` in a background job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiportal.errors import AIPortalError
from aiportal.progress import CancelToken, ProgressCallback


@dataclass(frozen=True)
class WeightsOffer:
    model_id: str
    installable: bool  # aiportal knows where to download this model's weights
    installed: bool
    question: str = ""  # licence, size and source, asked once before the download
    tooltip: str = ""
    license: str = ""
    size_text: str = ""


def weights_present(model_id: str) -> bool:
    """The weights are on disk (installed by us, imported by hand, or fetched by TotalSegmentator itself)."""
    from aiportal.weights.install import is_installed
    from aiportal.weights.manifest import manifest_for

    if model_id.startswith("totalseg-"):
        from aiportal.models.backends import totalsegmentator as ts

        variant = next(v for v in ts.VARIANTS if v.model_id == model_id)
        try:
            ts.check_weights(variant.task, variant.mode)
            return True
        except AIPortalError:
            return False
    try:
        return is_installed(manifest_for(model_id))
    except AIPortalError:  # a model only a manifest file names
        return False


def size_text(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 10e6 else f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def weights_offer(model_id: str) -> WeightsOffer:
    from aiportal.weights.manifest import manifest_for

    try:
        weights = manifest_for(model_id)
    except AIPortalError as error:  # no download: classical, embedded in a package, or a folder model
        return WeightsOffer(model_id, False, False, tooltip=error.fix or str(error))
    installed = weights_present(model_id)
    size = size_text(weights.size) if weights.size else "size shown while downloading"
    sources = "\n".join(artifact.origin for artifact in weights.artifacts)
    question = (f"Download the weights of {model_id} ({weights.version}, {size})?\n\n"
                f"Licence: {weights.license}\n\nFrom:\n{sources}\n\n"
                "They are checked (size, sha256) and installed for every later run.")
    tooltip = (f"Weights of {model_id} are installed" if installed else
               f"Download and install the weights of {model_id} ({size}; licence: {weights.license})")
    return WeightsOffer(model_id, True, installed, question, tooltip, weights.license or "see the publisher", size)


def install_function(model_id: str) -> Callable[[ProgressCallback, CancelToken], str]:
    """``function(progress, cancel)`` for a background job; returns a one-line summary."""

    def run(progress: ProgressCallback, cancel: CancelToken) -> str:
        from aiportal.weights.install import install
        from aiportal.weights.manifest import manifest_for

        result = install(manifest_for(model_id), progress=progress, cancel=cancel, force=False)
        summary = f"{model_id}: weights installed" if not result.already else f"{model_id}: already installed"
        return summary + (f" — {result.warning}" if result.warning else "")

    return run
