"""``aiportal doctor``: can this machine run the models, and if not, what exactly to do.

Every line is ``ok`` or ``PROBLEM`` with the fix: Python, each model environment and its torch
(CUDA build vs the driver, the GPU's compute capability vs the architectures torch was built for),
memory, free disk where weights go, installed weights (re-hashed), TotalSegmentator variants ready
to run, configured PACS endpoints and the inference server address.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aiportal import __version__
from aiportal.errors import ModelError, cli_command
from aiportal.weights import store

MIN_FREE_DISK = 10e9  # TotalSegmentator's full set of weights is a few GB, plus room to unpack

# run in a model environment's Python: what its torch sees
_TORCH_PROBE = """
import json, torch
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda": torch.cuda.is_available()}
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}", memory_gb=p.total_memory / 2**30,
                arch_list=torch.cuda.get_arch_list())
print(json.dumps(info))
"""


@dataclass
class Finding:
    topic: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{'ok' if self.ok else 'PROBLEM':<8}{self.topic:<20} {self.detail}" + (
            f"\n{'':<29}fix: {self.fix}" if self.fix and not self.ok else "")


def _driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def torch_findings(name: str, python: str, driver: str | None) -> list[Finding]:
    topic = f"torch [{name}]"
    try:
        probe = subprocess.run([python, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return [Finding(topic, False, "importing torch took over 3 minutes", "check that disk and Python work")]
    if probe.returncode != 0:
        return [Finding(topic, True, "no torch here (models of this environment do not need it)")]
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    from aiportal.weights.gpu_check import gpu_findings

    return [Finding(topic, f.ok, f.detail, f.fix) for f in gpu_findings(info, driver, python, platform.system())]


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _disk(folder: Path, topic: str) -> Finding:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return Finding(topic, free >= MIN_FREE_DISK, f"{free / 1e9:.1f} GB free at {folder}",
                   f"free {MIN_FREE_DISK / 1e9:.0f} GB there, or point {store.WEIGHTS_DIR_ENV} / TOTALSEG_HOME_DIR "
                   "at a bigger disk")


def _totalseg(ready_only: bool = False) -> Finding:
    from aiportal.models.backends import totalsegmentator as ts

    ready, missing = [], []
    for variant in ts.VARIANTS:
        try:
            ts.check_weights(variant.task, variant.mode)
            ready.append(variant.model_id)
        except ModelError:
            missing.append(variant.model_id)
        except Exception:  # TotalSegmentator not importable here: said by the environment line
            return Finding("TotalSegmentator", True, "not installed in this interpreter")
    detail = f"{len(ready)} of {len(ts.VARIANTS)} tasks have weights in {ts.weights_folder()}" + (
        f" ({', '.join(ready)})" if ready else "")
    return Finding("TotalSegmentator", bool(ready), detail,
                   f"`{cli_command('models install totalseg-total-fast')}` (or any of: {', '.join(missing[:4])}, …)")


def diagnose(check_weights: bool = True) -> list[Finding]:
    from aiportal.models.envs import ENVIRONMENTS, python_for

    findings = [Finding("python", sys.version_info >= (3, 10),
                        f"{platform.python_version()} at {sys.executable}; aiportal {__version__}",
                        "use Python 3.10 or newer")]
    driver = _driver()
    pythons_seen: set[str] = set()
    for name, spec in ENVIRONMENTS.items():
        try:
            python = python_for(name)
        except ModelError as error:
            findings.append(Finding(f"env {name}", False, f"not set up ({spec.note})", error.fix or ""))
            continue
        findings.append(Finding(f"env {name}", True, f"{python} ({spec.note})"))
        if python not in pythons_seen and name != "main":
            pythons_seen.add(python)
            findings += torch_findings(name, python, driver)
    memory = _memory_gb()
    if memory is not None:
        from aiportal.models.catalog import get_catalog

        largest = max(get_catalog().models, key=lambda m: m.memory_gb)
        findings.append(Finding("memory", memory >= largest.memory_gb,
                                f"{memory:.1f} GiB available; the largest model ({largest.id}) needs "
                                f"~{largest.memory_gb:.0f} GiB", "close other programs, or use its fast variant"))
    findings.append(_disk(store.weights_dir(), "disk (weights)"))
    try:
        from aiportal.models.backends.totalsegmentator import weights_folder

        findings.append(_disk(weights_folder(), "disk (TotalSeg)"))
        findings.append(_totalseg())
    except ImportError:
        pass
    if check_weights:
        from aiportal.weights.verify import verify

        for check in verify():
            findings.append(Finding(f"weights {check.model_id}", check.ok,
                                    check.detail + "".join(f"; {p}" for p in check.problems), check.fix))
    findings += _services()
    return findings


def _services() -> list[Finding]:
    findings = []
    try:
        from aiportal.pacs.config import list_endpoints

        endpoints = list_endpoints()
    except Exception as error:  # a damaged PACS config is a finding, not a crash of the doctor
        return [Finding("PACS", False, f"the PACS configuration cannot be read ({error})",
                        f"fix or remove it, then `{cli_command('pacs list')}`")]
    for endpoint in endpoints:
        findings.append(Finding(f"PACS {endpoint.name}", True, "configured; reachability: "
                                f"`{cli_command('pacs check ' + endpoint.name)}`"))
    server = os.environ.get("AIPORTAL_SERVER_URL")
    if server:
        findings.append(_server(server))
    return findings


def _server(url: str) -> Finding:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/health", timeout=5) as response:
            return Finding("server", True, f"{url} answers ({response.status})")
    except urllib.error.HTTPError as error:  # 401/403: it answers, and wants a key (which the panels hold)
        return Finding("server", error.code in (401, 403), f"{url} answers {error.code}",
                       "check the server address: it is not an aiportal server")
    except Exception as error:
        return Finding("server", False, f"{url} does not answer ({type(error).__name__})",
                       "start it with `aiportal serve` or correct AIPORTAL_SERVER_URL")
