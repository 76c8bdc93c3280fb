"""The doctor's GPU decisions on given values: CUDA runtime vs driver, compute capability vs torch's arch list.

The values are what real machines report (nvidia-smi's name/driver line, torch.version.cuda,
get_device_capability, get_arch_list of the PyTorch wheels); no GPU is needed to check the rules.
"""

from __future__ import annotations

import pytest

from aiportal.weights.gpu_check import arch_support, driver_supports, driver_version, gpu_findings, parse_arch

# torch 2.7 cu128 wheels' get_arch_list(); torch 2.3 cu121's
CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU121 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def test_driver_line_and_version_rules():
    assert driver_version("NVIDIA H200, 570.124.06") == "570.124.06"
    assert driver_version("NVIDIA GeForce RTX 4090, 550.54") == "550.54"
    assert driver_version(None) is None and driver_version("garbage") is None
    assert driver_supports("12.6", "525.60.13") == (True, "525.60.13")  # exactly the minimum
    assert driver_supports("12.8", "570.124.06") == (True, "525.60.13")
    assert driver_supports("12.1", "470.82.01") == (False, "525.60.13")  # an 11.x-era driver
    assert driver_supports("11.8", "470.82.01") == (True, "450.80.02")
    assert driver_supports("13.0", "570.124.06") == (False, "580.65.06")
    assert driver_supports("12.4", "527.41", "Windows") == (False, "528.33")
    assert driver_supports("14.0", "400.1") == (True, None)  # unknown major: no claim


@pytest.mark.parametrize("capability, arch_list, ok, how", [
    ("sm_90", CU128, True, "built for sm_90"),  # H100 / H200
    ("sm_89", CU128, True, "runs its sm_86 kernels (binary compatible within 8.x)"),  # RTX 4090 on 8.6 SASS
    ("sm_120", CU121, False, "not for this GPU's sm_120"),  # RTX 5090 on an old wheel
    ("sm_120", CU128, True, "built for sm_120"),
    ("sm_121", CU128, True, "runs its sm_120 kernels"),
    ("sm_61", CU128, False, "not for this GPU's sm_61"),  # Pascal dropped by cu128 wheels
    ("sm_61", CU121, True, "runs its sm_60 kernels"),
    ("sm_103", ["sm_90", "compute_90"], True, "JIT-compiles its compute_90 PTX"),  # newer GPU, PTX only
    ("sm_80", ["sm_90", "compute_90"], False, "not for this GPU's sm_80"),  # PTX never runs on older GPUs
    ("sm_90", ["sm_90a"], False, "not for this GPU's sm_90"),  # arch-specific: not a generic match
    ("sm_75", [], True, "architectures unknown"),
])
def test_capability_against_arch_list(capability, arch_list, ok, how):
    supported, detail = arch_support(capability, arch_list)
    assert supported is ok and how in detail, detail


def test_parse_arch():
    assert parse_arch("sm_86") == ("sm", 8, 6, False)
    assert parse_arch("sm_120") == ("sm", 12, 0, False)
    assert parse_arch("compute_90") == ("compute", 9, 0, False)
    assert parse_arch("sm_90a") == ("sm", 9, 0, True)
    assert parse_arch("gfx90a") is None  # a ROCm name: not judged


def test_the_h200_this_project_was_lent():
    """Values read on the project's H200 machine (nvidia-smi; torch 2.11.0+cu130 there), 2026-12-04."""
    info = {"torch": "2.11.0+cu130", "cuda_build": "13.0", "cuda": True, "gpu": "NVIDIA H200", "capability": "sm_90",
            "memory_gb": 139.80072021484375, "arch_list": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]}
    assert driver_supports("13.0", driver_version("NVIDIA H200, 580.159.04")) == (True, "580.65.06")
    (finding,) = gpu_findings(info, "NVIDIA H200, 580.159.04", "/opt/torch/.venv/bin/python3")
    assert finding.ok and "torch 2.11.0+cu130 (CUDA build 13.0); GPU NVIDIA H200 sm_90, 140 GiB" in finding.detail
    (too_old,) = gpu_findings(dict(info, cuda=False), "NVIDIA H200, 570.124.06", "python")  # a 12.x-era driver
    assert not too_old.ok and "needs NVIDIA driver >= 580.65.06 for CUDA 13.0" in too_old.detail
    assert "install a torch build for CUDA 12.x" in too_old.fix and "cu126" in too_old.fix


def test_findings_for_machines_we_cannot_have():
    python = "/envs/torch/bin/python"
    old_driver = gpu_findings({"torch": "2.7.1+cu128", "cuda_build": "12.8", "cuda": False},
                              "Tesla V100-SXM2-16GB, 470.82.01", python)
    (finding,) = old_driver
    assert not finding.ok and "needs NVIDIA driver >= 525.60.13 for CUDA 12.8; this machine has driver 470.82.01" \
        in finding.detail
    assert "update the NVIDIA driver, or install a torch build for CUDA 11.x" in finding.fix and "cu118" in finding.fix
    (hidden,) = gpu_findings({"torch": "2.7.1+cu128", "cuda_build": "12.8", "cuda": False},
                             "NVIDIA H200, 570.124.06", python)
    assert not hidden.ok and "fit, but torch sees no GPU" in hidden.detail and "--gpus all" in hidden.fix
    (cpu,) = gpu_findings({"torch": "2.7.1+cpu", "cuda_build": None, "cuda": False}, None, python)
    assert cpu.ok and "models run on the CPU" in cpu.detail
    h200 = {"torch": "2.7.1+cu128", "cuda_build": "12.8", "cuda": True, "gpu": "NVIDIA H200", "capability": "sm_90",
            "memory_gb": 139.8, "arch_list": CU128}
    (ok,) = gpu_findings(h200, "NVIDIA H200, 570.124.06", python)
    assert ok.ok and "GPU NVIDIA H200 sm_90, 140 GiB; driver NVIDIA H200, 570.124.06" in ok.detail
    blackwell = dict(h200, torch="2.3.0+cu121", cuda_build="12.1", gpu="NVIDIA RTX 5090", capability="sm_120",
                     arch_list=CU121)
    seen, problem = gpu_findings(blackwell, "NVIDIA RTX 5090, 575.51", python)
    assert seen.ok and not problem.ok and "not for this GPU's sm_120" in problem.detail
    assert "cu128" in problem.fix and python in problem.fix
