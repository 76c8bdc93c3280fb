"""Can this torch use this GPU? The doctor's decisions, as pure functions of what it probed.

Inputs are plain values: what ``nvidia-smi`` says (``"NAME, DRIVER_VERSION"``) and what torch says
(``torch.version.cuda``, ``torch.cuda.is_available()``, the device's compute capability,
``torch.cuda.get_arch_list()``). Two rules from NVIDIA's CUDA compatibility documents:

- **Driver vs CUDA runtime**: a torch built with CUDA X.Y runs on any driver at least the minimum of
  major X ("minor version compatibility", CUDA release notes table 2); an older driver makes
  ``torch.cuda.is_available()`` false.
- **Compute capability vs the architectures torch was built for**: SASS for ``sm_XY`` runs on a GPU of
  capability X.Z with Z >= Y (same major; not the arch-specific ``sm_XYa``), PTX ``compute_XY`` is
  JIT-compiled for any capability >= X.Y; anything else fails with "no kernel image is available".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: minimum driver per CUDA major version, by operating system (minor version compatibility)
MIN_DRIVER: dict[str, dict[int, str]] = {
    "Linux": {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"},
    "Windows": {11: "452.39", 12: "528.33", 13: "580.88"},
}
TORCH_INDEX = "https://download.pytorch.org/whl/"
_ARCH = re.compile(r"^(sm|compute)_(\d+?)(\d)([a-z]?)$")


@dataclass(frozen=True)
class GpuFinding:
    ok: bool
    detail: str
    fix: str = ""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def driver_version(nvidia_smi_line: str | None) -> str | None:
    """``"NVIDIA H100 80GB HBM3, 550.54.15"`` -> ``"550.54.15"``."""
    if not nvidia_smi_line or "," not in nvidia_smi_line:
        return None
    version = nvidia_smi_line.rsplit(",", 1)[1].strip()
    return version if re.fullmatch(r"\d+(\.\d+)*", version) else None


def driver_supports(cuda_build: str, driver: str, system: str = "Linux") -> tuple[bool, str | None]:
    """Whether ``driver`` runs torch's CUDA ``cuda_build`` runtime; and the minimum driver (None: unknown major)."""
    major = _version(cuda_build)[0]
    minimum = MIN_DRIVER.get(system, MIN_DRIVER["Linux"]).get(major)
    if minimum is None:
        return True, None  # a CUDA major this table does not know: do not claim a problem
    return _version(driver) >= _version(minimum), minimum


def parse_arch(arch: str) -> tuple[str, int, int, bool] | None:
    """``"sm_86"`` -> ("sm", 8, 6, False); ``"compute_90"`` -> ("compute", 9, 0, False); ``"sm_90a"`` -> (..., True)."""
    match = _ARCH.match(arch.strip())
    if not match:
        return None
    kind, major, minor, suffix = match.groups()
    return kind, int(major), int(minor), bool(suffix)


def arch_support(capability: str, arch_list: list[str]) -> tuple[bool, str]:
    """Whether torch's kernels run on a GPU of ``capability`` (``"sm_86"``), and how."""
    gpu = parse_arch(capability)
    if gpu is None or not arch_list:
        return True, "architectures unknown"
    _, major, minor, _ = gpu
    parsed = [(arch, parse_arch(arch)) for arch in arch_list]
    if capability in arch_list:
        return True, f"built for {capability}"
    same_major = [(item[2], arch) for arch, item in parsed
                  if item and item[0] == "sm" and not item[3] and item[1] == major and item[2] <= minor]
    if same_major:  # the closest older minor: what the CUDA runtime picks
        return True, f"runs its {max(same_major)[1]} kernels (binary compatible within {major}.x)"
    for arch, item in parsed:
        if item and item[0] == "compute" and (item[1], item[2]) <= (major, minor):
            return True, f"JIT-compiles its {arch} PTX (the first run of each kernel is slow)"
    return False, f"built for {', '.join(arch_list)}, not for this GPU's {capability}"


def _cuda_index(cuda: str) -> str:
    return TORCH_INDEX + "cu" + "".join(str(part) for part in _version(cuda)[:2])


def gpu_findings(info: dict, nvidia_smi_line: str | None, python: str, system: str = "Linux") -> list[GpuFinding]:
    """Every finding about torch and the GPU from the torch probe ``info`` and nvidia-smi's line."""
    build = f"torch {info['torch']} (CUDA build {info.get('cuda_build') or 'none: CPU only'})"
    driver = driver_version(nvidia_smi_line)
    cuda_build = info.get("cuda_build")
    if not info.get("cuda"):
        if not nvidia_smi_line:
            return [GpuFinding(True, f"{build}; no NVIDIA GPU: models run on the CPU (slower)")]
        if not cuda_build:
            return [GpuFinding(False, f"{build} sees no GPU, but the machine has {nvidia_smi_line}",
                               f"install a CUDA build of torch into {python}, e.g. `{python} -m pip install torch "
                               f"--index-url {TORCH_INDEX}cu126` (pick the CUDA version your driver supports: "
                               "nvidia-smi shows it)")]
        if driver:
            supported, minimum = driver_supports(cuda_build, driver, system)
            if not supported:
                older = max((major for major, need in MIN_DRIVER.get(system, MIN_DRIVER["Linux"]).items()
                             if _version(driver) >= _version(need)), default=None)
                alternative = (f", or install a torch build for CUDA {older}.x into {python} (`--index-url "
                               f"{_cuda_index('11.8' if older == 11 else f'{older}.6')}`)") if older else ""
                return [GpuFinding(False, f"{build} needs NVIDIA driver >= {minimum} for CUDA {cuda_build}; this "
                                          f"machine has driver {driver}", f"update the NVIDIA driver{alternative}")]
        return [GpuFinding(False, f"{build} and driver {driver or '?'} fit, but torch sees no GPU",
                           "check that the GPU is visible to this process: CUDA_VISIBLE_DEVICES, the container's GPU "
                           "access (docker run --gpus all), and `nvidia-smi` as this user")]
    gpu = f"GPU {info['gpu']} {info['capability']}, {info['memory_gb']:.0f} GiB"
    findings = [GpuFinding(True, f"{build}; {gpu}" + (f"; driver {nvidia_smi_line}" if nvidia_smi_line else ""))]
    supported, how = arch_support(info["capability"], info.get("arch_list") or [])
    if not supported:
        findings.append(GpuFinding(False, f"torch {info['torch']} is {how}",
                                   f"install a torch build that supports {info['capability']} into {python} "
                                   f"(a newer torch, e.g. `--index-url {TORCH_INDEX}cu128` for sm_100/sm_120)"))
    return findings
