"""Trust on first use for files whose publisher gives no sha256 (TotalSegmentator's release zips).

TotalSegmentator publishes no checksums for its weights, and the project could not download them to
record real ones (its machines reach only package registries). So the first download of such a file
is installed UNVERIFIED and its size and sha256 are pinned in ``<weights dir>/pins.json`` by URL;
every later download of that URL (a reinstall, ``--force``, ``models pack`` for a bundle) must
match the pin, or it is refused and deleted. ``--forget-pin`` drops a pin when the publisher really
re-released a file. A manifest entry with a sha256 always wins over a pin.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aiportal.weights import store
from aiportal.weights.manifest import Artifact, ModelWeights


@dataclass(frozen=True)
class Pin:
    sha256: str
    size: int
    first_seen: str
    model_id: str


def pins_path() -> Path:
    return store.weights_dir() / "pins.json"


def read_pins() -> dict[str, Pin]:
    path = pins_path()
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
        return {url: Pin(**entry) for url, entry in raw.items()}
    except (ValueError, TypeError):
        return {}  # a damaged pins file pins nothing: the next download is first use again, and says so


def _write(pins: dict[str, Pin]) -> None:
    path = pins_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({url: vars(pin) for url, pin in sorted(pins.items())}, indent=2))
    temporary.replace(path)


def _key(artifact: Artifact) -> str:
    # licensed TotalSegmentator tasks share one licence-server URL: the task tells their files apart
    return f"{artifact.url}#{artifact.licensed_task}" if artifact.licensed_task else artifact.origin


def pin(model_id: str, artifact: Artifact, sha256: str, size: int) -> None:
    """Record a first download (call under the install lock)."""
    pins = read_pins()
    if _key(artifact) not in pins:
        pins[_key(artifact)] = Pin(sha256, size, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model_id)
        _write(pins)


def forget(weights: ModelWeights) -> list[str]:
    """Drop the pins of ``weights``' files; returns the URLs forgotten."""
    pins = read_pins()
    gone = [_key(a) for a in weights.artifacts if _key(a) in pins]
    if gone:
        _write({url: entry for url, entry in pins.items() if url not in gone})
    return gone


def with_pins(weights: ModelWeights) -> tuple[ModelWeights, dict[str, Pin]]:
    """``weights`` with pinned sha256 and sizes filled in where the manifest has none, and the pins used."""
    pins = read_pins()
    used = {a.name: pins[_key(a)] for a in weights.artifacts if not a.sha256 and _key(a) in pins}
    artifacts = tuple(replace(a, sha256=used[a.name].sha256, size=used[a.name].size) if a.name in used else a
                      for a in weights.artifacts)
    return replace(weights, artifacts=artifacts), used
