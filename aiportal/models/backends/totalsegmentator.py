"""TotalSegmentator tasks as models, run through its own Python API (resampling, reorientation, nnU-Net).

One catalog entry per task and variant (``totalseg-total``, ``totalseg-total-fast``, ...). The
backend hands ``totalsegmentator.python_api.totalsegmentator`` a nibabel image made from our
(k, j, i) array and ``ijk_to_ras`` and takes its image back on the same grid.

Offline by construction: before TotalSegmentator runs we check that every weights folder it will
load is present (it would otherwise try to download it and hang without a network) and say which
dataset is missing, how to download it on a connected machine and how to import it here
(:func:`import_weights`). Its ``config.json`` gets ``send_usage_stats: false`` before every run, and
licence keys are written there directly (:func:`set_license`) because TotalSegmentator's own
``set_license_number`` validates them online.

Weights live in ``<home>/nnunet/results`` (or ``$TOTALSEG_WEIGHTS_PATH``); home is, first found:
an explicit argument or ``params["totalseg_home"]``, ``$AIPORTAL_TOTALSEG_HOME``,
``$TOTALSEG_HOME_DIR``, TotalSegmentator's default ``~/.totalsegmentator``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiportal.errors import InputError, ModelError, cli_command
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import BackendRef, ModelEntry, WeightsSpec
from aiportal.progress import CancelToken, ProgressCallback

IMPORT_ARGUMENTS = "models import-weights"  # the CLI face of import_weights(): cli_command(IMPORT_ARGUMENTS)
LICENSE_ARGUMENTS = "models totalseg-license"  # the CLI face of set_license()
LICENSE_URL = "https://backend.totalsegmentator.com/license-academic/"
RELEASES_URL = "https://github.com/wasserth/TotalSegmentator/releases/download"
_DATASET_FOLDER = re.compile(r"^Dataset\d{3,}_")
_TASK_ENV = ("TOTALSEG_HOME_DIR", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


# rough peak working memory on a whole-body CT (TotalSegmentator's own guidance: 1.5 mm needs far more than 3 mm)
_MEMORY_GB = {"default": 8.0, "fast": 3.0, "fastest": 2.0}


@dataclass(frozen=True)
class Variant:
    task: str
    mode: str  # "default", "fast" or "fastest" (TotalSegmentator's sub-modes)
    title: str
    description: str

    @property
    def model_id(self) -> str:
        return f"totalseg-{self.task}" + ("" if self.mode == "default" else f"-{self.mode}")


VARIANTS = (
    Variant("total", "default", "TotalSegmentator total (CT, 1.5 mm)",
            "117 anatomical structures on CT (organs, bones, muscles, vessels), five 1.5 mm nnU-Nets."),
    Variant("total", "fast", "TotalSegmentator total fast (CT, 3 mm)",
            "The same 117 structures on CT with one 3 mm nnU-Net: several times faster, coarser."),
    Variant("total", "fastest", "TotalSegmentator total fastest (CT, 6 mm)",
            "The same 117 structures on CT with one 6 mm nnU-Net: a rough overview in seconds."),
    Variant("total_mr", "default", "TotalSegmentator total_mr (MR, 1.5 mm)",
            "50 anatomical structures on MR of any sequence, two 1.5 mm nnU-Nets."),
    Variant("total_mr", "fast", "TotalSegmentator total_mr fast (MR, 3 mm)",
            "The same 50 structures on MR with one 3 mm nnU-Net."),
    Variant("body", "default", "TotalSegmentator body (CT)", "Body trunk and extremities on CT, 1.5 mm."),
    Variant("body", "fast", "TotalSegmentator body fast (CT, 6 mm)", "Body trunk and extremities on CT, 6 mm."),
    Variant("body_mr", "default", "TotalSegmentator body_mr (MR)", "Body trunk and extremities on MR, 1.5 mm."),
    Variant("vertebrae_mr", "default", "TotalSegmentator vertebrae_mr (MR)", "Vertebrae and sacrum on MR."),
    Variant("pleural_pericard_effusion", "default", "TotalSegmentator pleural/pericardial effusion (CT)",
            "Pleural and pericardial effusion on CT, inside a lung crop from the 6 mm total model."),
    Variant("liver_vessels", "default", "TotalSegmentator liver vessels (CT)",
            "Liver vessels and tumour on contrast CT, inside a liver crop from the 6 mm total model."),
    Variant("tissue_types", "default", "TotalSegmentator tissue types (CT, licensed)",
            "Subcutaneous fat, torso fat and skeletal muscle on CT."),
    Variant("heartchambers_highres", "default", "TotalSegmentator heart chambers (CT, licensed)",
            "Heart chambers, myocardium, aorta and pulmonary artery on CT at high resolution."),
    Variant("appendicular_bones", "default", "TotalSegmentator appendicular bones (CT, licensed)",
            "Bones of the limbs (patella, tibia, fibula, hand and foot bones) on CT."),
)


# ----------------------------------------------------------------------------- folders and config


def totalseg_home(explicit: str | Path | None = None) -> Path:
    """TotalSegmentator's home folder (config.json, and the weights under nnunet/results)."""
    for candidate in (explicit, os.environ.get("AIPORTAL_TOTALSEG_HOME"), os.environ.get("TOTALSEG_HOME_DIR")):
        if candidate:
            return Path(candidate).expanduser()
    home = Path.home()
    return (Path("/tmp") if str(home) == "/" else home) / ".totalsegmentator"  # TotalSegmentator's own default


def weights_folder(home: str | Path | None = None) -> Path:
    """Where TotalSegmentator looks for the nnU-Net results folders of its tasks."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"]).expanduser()
    return totalseg_home(home) / "nnunet" / "results"


def _config_path(home: Path) -> Path:
    return home / "config.json"


def prepare_config(home: str | Path | None = None) -> dict:
    """Create or update config.json so TotalSegmentator never sends usage statistics."""
    home = totalseg_home(home)
    home.mkdir(parents=True, exist_ok=True)
    path = _config_path(home)
    config: dict = {}
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except ValueError:
            config = {}  # a damaged file is replaced; it holds nothing but ids and counters
    config.setdefault("totalseg_id", "totalseg_aiportal")
    config.setdefault("prediction_counter", 0)
    config["send_usage_stats"] = False
    config["statistics_disclaimer_shown"] = True
    path.write_text(json.dumps(config, indent=4))
    return config


def set_license(license_key: str, home: str | Path | None = None) -> Path:
    """Store a TotalSegmentator licence key offline (TotalSegmentator's own setter checks it online)."""
    key = license_key.strip()
    if len(key) != 18:  # the only check TotalSegmentator makes offline (has_valid_license_offline)
        raise InputError(f"TotalSegmentator licence key {key!r} has {len(key)} characters, not 18",
                         f"copy the whole key from the licence e-mail (request one at {LICENSE_URL})")
    config = prepare_config(home)
    config["license_number"] = key
    path = _config_path(totalseg_home(home))
    path.write_text(json.dumps(config, indent=4))
    return path


def _license_key(home: Path) -> str | None:
    path = _config_path(home)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("license_number") or None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- required weights


@dataclass(frozen=True)
class RequiredModel:
    """One nnU-Net results folder a TotalSegmentator run loads."""

    dataset_id: int | str
    folder_name: str  # Dataset###_Name, as in TotalSegmentator's TASK_ID_WEIGHTS_CONFIGS
    rel_path: str | None
    trainer: str
    plans: str
    configuration: str
    folds: tuple[int, ...] | None  # None: nnU-Net picks every fold present
    release: str | None  # GitHub release tag; None for licensed weights
    licensed: bool

    def dataset_path(self, weights: Path) -> Path:
        return weights / self.rel_path / self.folder_name if self.rel_path else weights / self.folder_name

    def model_path(self, weights: Path) -> Path:
        return self.dataset_path(weights) / f"{self.trainer}__{self.plans}__{self.configuration}"

    def missing(self, weights: Path) -> str | None:
        """What is missing of this model under ``weights``; None when it is complete."""
        model = self.model_path(weights)
        if not self.dataset_path(weights).is_dir():
            return f"folder {self.dataset_path(weights)}"
        for name in ("dataset.json", "plans.json"):
            if not (model / name).is_file():
                return f"file {model / name}"
        if self.folds is None:
            return None if any(model.glob("fold_*/checkpoint_final.pth")) else f"{model}/fold_*/checkpoint_final.pth"
        for fold in self.folds:
            if not (model / f"fold_{fold}" / "checkpoint_final.pth").is_file():
                return f"file {model / f'fold_{fold}' / 'checkpoint_final.pth'}"
        return None


def _mode_config(task: str, mode: str) -> dict:
    from totalsegmentator.map_tasks_config import DEFAULT_CONFIG, TASK_CONFIGS

    if task not in TASK_CONFIGS:
        raise ModelError(f"TotalSegmentator {_version()} has no task {task!r}", "update TotalSegmentator")
    raw = TASK_CONFIGS[task]
    config = dict(DEFAULT_CONFIG)
    if "sub_modes" in raw:
        if mode not in raw["sub_modes"]:
            raise ModelError(f"TotalSegmentator task {task!r} has no {mode!r} variant",
                             f"choose one of: {', '.join(raw['sub_modes'])}")
        config.update(raw["sub_modes"][mode])
    else:
        if mode != "default":
            raise ModelError(f"TotalSegmentator task {task!r} has no {mode!r} variant", "run it without fast")
        config.update(raw)
    return config


def _required(dataset_id: int | str, trainer: str, plans: str, configuration: str,
              folds: list[int] | None) -> RequiredModel:
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import commercial_models

    info = TASK_ID_WEIGHTS_CONFIGS[dataset_id]
    licensed = bool(info.get("commercial")) or dataset_id in commercial_models.values()
    return RequiredModel(dataset_id, info["foldername"], info.get("rel_path"), trainer, plans, configuration,
                         tuple(folds) if folds is not None else None,
                         None if licensed else info.get("version"), licensed)


def required_models(task: str, mode: str = "default", roi_subset: list[str] | None = None) -> list[RequiredModel]:
    """Every results folder ``totalsegmentator(task=..., fast/fastest, roi_subset)`` will load (2.18 logic)."""
    config = _mode_config(task, mode)
    plans = config.get("plans") or "nnUNetPlans"
    ids = config["task_id"] if isinstance(config["task_id"], list) else [config["task_id"]]
    models = [_required(i, config["trainer"], plans, config.get("model") or "3d_fullres", config.get("folds"))
              for i in ids]
    if task == "vertebrae_pp_refined":
        models.append(_required(305, "nnUNetTrainer_DASegOrd0", "nnUNetPlans", "3d_fullres", [0]))
    crop = config.get("crop")
    if crop is not None or roi_subset is not None or config.get("cascade"):
        if config.get("crop_model") is not None:
            models += required_models(config["crop_model"], "default")
        else:
            crop_id = 852 if task.endswith("_mr") else (297 if config.get("robust_crop") else 298)
            trainer = "nnUNetTrainer_2000epochs_NoMirroring" if task.endswith("_mr") \
                else "nnUNetTrainer_4000epochs_NoMirroring"
            if crop is not None and ("body_trunc" in crop or "body_extremities" in crop):
                crop_id, trainer = 300, "nnUNetTrainer"
            models.append(_required(crop_id, trainer, "nnUNetPlans", "3d_fullres", [0]))
    unique: dict[tuple, RequiredModel] = {}
    for model in models:
        unique.setdefault((model.dataset_id, model.trainer, model.plans, model.configuration), model)
    return list(unique.values())


def _download_task_name(dataset_id: int | str, task: str) -> str | None:
    """The ``totalseg_download_weights -t`` choice that fetches this dataset."""
    with contextlib.redirect_stdout(sys.stderr):
        from totalsegmentator.bin.totalseg_download_weights import TASK_TO_ID
    choices = [name for name, ids in TASK_TO_ID.items() if dataset_id in ids]
    preferred = [name for name in choices if name.startswith(task)]
    return (preferred or choices or [None])[0]


def check_weights(task: str, mode: str = "default", roi_subset: list[str] | None = None,
                  home: str | Path | None = None) -> list[RequiredModel]:
    """The models a run needs, all present; else ModelError naming the first missing one and how to get it."""
    weights = weights_folder(home)
    models = required_models(task, mode, roi_subset)
    for model in models:
        missing = model.missing(weights)
        if missing is None:
            continue
        download = _download_task_name(model.dataset_id, task) or task
        model_id = f"totalseg-{task}" + ("" if mode == "default" else f"-{mode}")
        how = (f"run `{cli_command(f'models install {model_id}')}` (downloads and checks them; without internet "
               f"here: `models pack {model_id} --out FILE` on a connected machine, then `models import FILE`); or "
               f"on a machine with internet run `TOTALSEG_HOME_DIR=<folder> totalseg_download_weights -t {download}`"
               + (f" (or download {RELEASES_URL}/{model.release}/{model.folder_name}.zip)" if model.release else
                  f" after `totalseg_set_license -l <key>` (licence: {LICENSE_URL})")
               + f", copy <folder>/nnunet/results/{model.folder_name} (or the zip) here and run "
               f"`{cli_command(IMPORT_ARGUMENTS)} <zip or folder>`, which puts it into {weights}")
        raise ModelError(
            f"TotalSegmentator weights for task {task!r}"
            + ("" if mode == "default" else f" ({mode})")
            + f" are missing: dataset {model.folder_name} ({missing} not found)", how)
    return models


# ----------------------------------------------------------------------------- offline import


def _safe_members(archive: zipfile.ZipFile, source: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Members under a Dataset###_ folder, with the path from that folder on; refuses unsafe names."""
    chosen = []
    for info in archive.infolist():
        parts = Path(info.filename).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts:
            raise InputError(f"{source} contains an unsafe path {info.filename!r}", "use the original weights zip")
        for index, part in enumerate(parts):
            if _DATASET_FOLDER.match(part):
                if not info.is_dir():
                    chosen.append((info, Path(*parts[index:])))
                break
    return chosen


def _dataset_folders(folder: Path, depth: int = 4) -> list[Path]:
    if _DATASET_FOLDER.match(folder.name):
        return [folder]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        found += _dataset_folders(child, depth - 1)
    return found


def import_weights(source: str | Path, home: str | Path | None = None) -> list[Path]:
    """Copy TotalSegmentator weights downloaded elsewhere (release zip, or a folder holding Dataset###_
    folders, e.g. a copied ``~/.totalsegmentator``) into the weights folder; returns the datasets placed."""
    source = Path(source).expanduser()
    weights = weights_folder(home)
    weights.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=weights, prefix=".import-") as staging_name:
        staging = Path(staging_name)
        if source.is_file() and zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                from aiportal.weights.archive import members as checked_members

                members = _safe_members(archive, source)
                checked_members(source, archive)  # links, zip bombs, size caps: refused before a byte is written
                for info, relative in members:
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as reader, open(target, "wb") as writer:
                        shutil.copyfileobj(reader, writer, 1 << 20)
        elif source.is_dir():
            for dataset in _dataset_folders(source):
                shutil.copytree(dataset, staging / dataset.name)
        else:
            raise InputError(f"{source} is neither a zip file nor a folder",
                             "give the downloaded weights zip (Dataset###_....zip) or the folder holding it unzipped")
        datasets = sorted(p for p in staging.iterdir() if p.is_dir() and _DATASET_FOLDER.match(p.name))
        if not datasets:
            raise InputError(f"{source} holds no TotalSegmentator weights (no Dataset###_ folder)",
                             "give the zip from the TotalSegmentator releases or totalseg_download_weights' folder")
        for dataset in datasets:
            if not any(dataset.glob("*__*__*/fold_*/checkpoint_final.pth")):
                raise InputError(f"{source}: {dataset.name} has no Trainer__Plans__Config/fold_N/checkpoint_final.pth",
                                 "the download is incomplete: download it again")
        placed = []
        for dataset in datasets:
            target = weights / dataset.name
            if target.exists():
                shutil.rmtree(target)
            dataset.rename(target)
            placed.append(target)
    return placed


# ----------------------------------------------------------------------------- catalog entries


def _version() -> str:
    try:
        return importlib.metadata.version("TotalSegmentator")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _is_licensed(task: str) -> bool:
    from totalsegmentator.map_to_binary import commercial_models

    return task in commercial_models


def entry_for(variant: Variant, home: str | Path | None = None) -> ModelEntry:
    from totalsegmentator.registry import task_modality

    from aiportal.models.totalseg_labels import totalsegmentator_labels

    modality = task_modality(variant.task)
    config = _mode_config(variant.task, variant.mode)
    resample = config.get("resample")
    licensed = _is_licensed(variant.task)
    weights = weights_folder(home)
    folders = ", ".join(str(m.dataset_path(weights)) for m in required_models(variant.task, variant.mode))
    licence = ("TotalSegmentator licence: free for non-commercial use, key required "
               f"({LICENSE_URL}); commercial use needs a commercial licence") if licensed else "Apache-2.0"
    return ModelEntry(
        id=variant.model_id,
        title=variant.title,
        modality=modality,
        task=f"TotalSegmentator task {variant.task}" + ("" if variant.mode == "default" else f" ({variant.mode})"),
        description=variant.description + " Wasserthal et al., Radiology: AI 2023 (TotalSegmentator).",
        limitations=("Research tool, not for diagnosis. Trained on routine scans of adults; children, unusual "
                     "anatomy, implants and strong artefacts lower accuracy. Structures cut by the field of view are "
                     "partial. Lower-resolution variants miss small structures."
                     + (" Needs a licence key." if licensed else "")),
        version=f"TotalSegmentator {_version()}",
        license=licence,
        labels=totalsegmentator_labels(variant.task),
        weights=WeightsSpec(location=folders, sha256=None, license=licence),
        family="AI",
        devices=("cpu", "cuda", "mps"),
        environment="torch",
        memory_gb=_MEMORY_GB.get(variant.mode, 8.0),
        input_requirements=(f"{modality}" + (" in Hounsfield units" if modality == "CT" else "")
                            + (f"; resampled internally to {resample} mm" if resample else "")),
    )


def entries(home: str | Path | None = None) -> list[tuple[ModelEntry, BackendRef]]:
    """Every offered TotalSegmentator task/variant with the reference of its backend (imports no torch)."""
    return [(entry_for(variant, home), BackendRef.of(TotalSegmentatorBackend, variant.task, variant.mode))
            for variant in VARIANTS]


# ----------------------------------------------------------------------------- the backend


@contextlib.contextmanager
def _totalseg_environment(home: Path) -> Iterator[None]:
    """Point TotalSegmentator at ``home`` for one run and put the environment back afterwards."""
    saved = {name: os.environ.get(name) for name in _TASK_ENV}
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_DEVICES = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}


class TotalSegmentatorBackend:
    """One TotalSegmentator task/variant; constructed in the runner's child as (task, mode)."""

    def __init__(self, task: str = "total", mode: str = "default", home: str | None = None):
        variant = next((v for v in VARIANTS if v.task == task and v.mode == mode), None)
        self.task, self.mode, self.home = task, mode, home
        self.entry = entry_for(variant or Variant(task, mode, f"TotalSegmentator {task}", ""), home)

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        home = totalseg_home(params.get("totalseg_home") or self.home)
        if volume.modality and volume.modality.upper() in ("CT", "MR") \
                and volume.modality.upper() != self.entry.modality:
            raise ModelError(f"{self.entry.id} segments {self.entry.modality}, but {volume.name} is {volume.modality}",
                             f"choose a {self.entry.modality} series, or the matching TotalSegmentator task")
        roi_subset = params.get("roi_subset") or None
        if roi_subset is not None:
            roi_subset = [roi_subset] if isinstance(roi_subset, str) else list(roi_subset)
            known = {label.name for label in self.entry.labels}
            unknown = [name for name in roi_subset if name not in known]
            if unknown or not self.task.startswith("total"):
                raise ModelError(f"roi_subset {', '.join(unknown or roi_subset)} is not a class of {self.entry.id}",
                                 "roi_subset works with the total / total_mr tasks; choose among their classes")
        if params.get("license_key"):
            set_license(str(params["license_key"]), home)
        if _is_licensed(self.task) and not _license_key(home):
            raise ModelError(f"{self.entry.id} needs a TotalSegmentator licence key (none in {_config_path(home)})",
                             f"request a key at {LICENSE_URL} and store it with "
                             f"`{cli_command(LICENSE_ARGUMENTS)} <key>`")
        progress(0.02, "checking TotalSegmentator weights")
        models = check_weights(self.task, self.mode, roi_subset, home)
        prepare_config(home)
        cancel.check()

        import nibabel as nib

        image = nib.Nifti1Image(np.asarray(volume.array).transpose(2, 1, 0), np.asarray(volume.ijk_to_ras, float))
        device = _DEVICES.get(str(params.get("device") or "cpu"), "cpu")
        progress(0.05, f"TotalSegmentator {self.task}" + ("" if self.mode == "default" else f" {self.mode}"))
        with _totalseg_environment(home), contextlib.redirect_stdout(sys.stderr):  # stdout may be the runner's pipe
            from totalsegmentator.python_api import totalsegmentator

            result = totalsegmentator(
                image, None, ml=True, task=self.task, fast=self.mode == "fast", fastest=self.mode == "fastest",
                roi_subset=roi_subset, device=device, quiet=False, nr_thr_resamp=int(params.get("threads", 1)),
                nr_thr_saving=1, statistics=False, skip_saving=True)
        cancel.check()
        labels = np.asarray(result.dataobj).transpose(2, 1, 0)
        if labels.shape != volume.array.shape[-3:]:
            raise ModelError(f"TotalSegmentator returned shape {labels.shape} for {volume.name} of shape "
                             f"{volume.array.shape}", "report this with the input's geometry")
        progress(1.0, "TotalSegmentator done")
        checkpoints = [path for model in models
                       for path in sorted(model.model_path(weights_folder(home)).glob("fold_*/checkpoint_final.pth"))
                       if model.folds is None or path.parent.name in {f"fold_{fold}" for fold in model.folds}]
        from aiportal.models.backends.nnunet import file_sha256

        return LabelMapResult(
            layers=[np.ascontiguousarray(labels).astype(np.uint8)],
            details={"task": self.task, "mode": self.mode, "roi_subset": roi_subset,
                     "totalsegmentator": _version(), "device": device,
                     "weights_sha256": {str(path): file_sha256(path) for path in checkpoints}
                     if params.get("hash_weights", True) else {}},
        )
