"""Any trained nnU-Net v2 results folder as a model, run by nnU-Net's own ``nnUNetPredictor``.

A results folder is ``Dataset###_Name/Trainer__Plans__Configuration`` with ``dataset.json``,
``plans.json`` (``dataset_fingerprint.json`` too, which inference does not read) and
``fold_N/checkpoint_final.pth`` or ``checkpoint_best.pth``: what ``nnUNetv2_train`` writes and
``nnUNetv2_export_model_to_zip`` ships. The catalog entry comes from ``dataset.json`` (labels,
channels) and the folder names; labels whose names match a TotalSegmentator class get its SNOMED
codes, the others the generic "Tissue" codes Slicer gives an unnamed segment.

Inference is nnU-Net's: its preprocessing (crop to non-zero, resampling to the plans' spacing,
normalisation), sliding-window prediction with Gaussian weighting and optional mirroring TTA, fold
ensembling, and resampling back. Our (k, j, i) array is in the axis order nnU-Net's SimpleITK and
NIfTI readers produce, so it goes in as is with the spacing reversed to (k, j, i); models planned
with ``NibabelIOWithReorient`` get the array reoriented to RAS first, as that reader does.

Checkpoints are pickles (nnU-Net loads them with ``weights_only=False``): only load folders you trust.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aiportal import digests
from aiportal.errors import ModelError
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import TISSUE, BackendRef, LabelSpec, ModelEntry, WeightsSpec
from aiportal.progress import CancelToken, ProgressCallback

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
_FOLDER_PATTERN = re.compile(r"^(?P<trainer>.+?)__(?P<plans>.+?)__(?P<configuration>.+)$")
_MR_CHANNEL = re.compile(r"^(mr|mri|t1.*|t2.*|flair|adc|dwi|pd|swi|tof.*|.*weighted)$", re.IGNORECASE)
_TRAIN_FIX = "point to the Trainer__Plans__Configuration folder that nnUNetv2_train wrote (or unzip the exported model)"


@dataclass(frozen=True)
class ResultsFolder:
    """A checked nnU-Net v2 results folder."""

    path: Path
    dataset_name: str  # "Dataset###_Name"
    trainer: str
    plans_name: str
    configuration: str
    dataset_json: dict
    plans: dict
    folds: tuple[str, ...]  # fold names ("0", "1", ..., or "all") that hold the checkpoint
    checkpoint_name: str

    @property
    def checkpoints(self) -> list[Path]:
        return [self.path / f"fold_{fold}" / self.checkpoint_name for fold in self.folds]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"nnU-Net file {path} cannot be read ({error})", "copy the model folder again") from None


def _available_folds(path: Path, checkpoint_name: str) -> list[str]:
    folds = [child.name[len("fold_"):] for child in path.glob("fold_*")
             if (child / checkpoint_name).is_file()]
    numbered = sorted(fold for fold in folds if fold.isdigit())
    return sorted(numbered, key=int) or [fold for fold in folds if fold == "all"]


def read_results_folder(path: str | Path, checkpoint_name: str | None = None) -> ResultsFolder:
    """Check a results folder and read its JSON files; ModelError names what is missing."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ModelError(f"nnU-Net model folder {path} does not exist", _TRAIN_FIX)
    match = _FOLDER_PATTERN.match(path.name)
    if not match:
        raise ModelError(f"{path} is not an nnU-Net results folder (its name is not Trainer__Plans__Configuration)",
                         _TRAIN_FIX)
    for required in ("dataset.json", "plans.json"):
        if not (path / required).is_file():
            raise ModelError(f"nnU-Net model folder {path} has no {required}",
                             f"copy {required} from the training's results folder into it")
    candidates = (checkpoint_name,) if checkpoint_name else CHECKPOINT_NAMES
    for name in candidates:
        folds = _available_folds(path, name)
        if folds:
            break
    else:
        raise ModelError(f"nnU-Net model folder {path} has no fold_N/{' or '.join(candidates)}",
                         "copy the fold folders with their checkpoints from the training's results folder")
    dataset_json, plans = _read_json(path / "dataset.json"), _read_json(path / "plans.json")
    configuration = match["configuration"]
    if configuration not in plans.get("configurations", {}):
        raise ModelError(f"{path / 'plans.json'} has no configuration {configuration!r}",
                         "use the plans.json the model was trained with")
    if "labels" not in dataset_json or ("channel_names" not in dataset_json and "modality" not in dataset_json):
        raise ModelError(f"{path / 'dataset.json'} lacks 'labels' or 'channel_names'",
                         "use the dataset.json the model was trained with")
    return ResultsFolder(path, path.parent.name, match["trainer"], match["plans"], configuration,
                         dataset_json, plans, tuple(folds), name)


def channel_names(dataset_json: dict) -> list[str]:
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    return [str(channels[key]) for key in sorted(channels, key=int)]


def modality_of(channels: list[str]) -> str:
    """"CT", "MR", or the channel names as written, from dataset.json's channel names."""
    if channels and all(name.upper() == "CT" for name in channels):
        return "CT"
    if channels and all(_MR_CHANNEL.match(name.strip()) for name in channels):
        return "MR"
    return "+".join(channels) or "unknown"


def _label_values(dataset_json: dict) -> dict[str, int]:
    """Output value of each foreground label (region-based models write regions_class_order)."""
    labels = {name: value for name, value in dataset_json["labels"].items() if name not in ("background", "ignore")}
    order = dataset_json.get("regions_class_order")
    if order is not None:
        return {name: int(value) for name, value in zip(labels, order, strict=False)}
    return {name: int(value) for name, value in labels.items() if not isinstance(value, (list, tuple))}


def _snomed_candidates(name: str) -> list[str]:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    candidates = [key]
    for side in ("left", "right"):
        if key.startswith(side + "_"):
            candidates.append(f"{key[len(side) + 1:]}_{side}")
    return candidates


def _palette_color(value: int) -> tuple[int, int, int]:
    hue = (value * 0.618033988749895) % 1.0  # golden-ratio steps: neighbouring labels differ clearly
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.55, 0.9)
    return int(red * 255), int(green * 255), int(blue * 255)


def coded_labels(values: dict[str, int]) -> tuple[LabelSpec, ...]:
    """LabelSpecs for label names: TotalSegmentator's SNOMED codes where a name matches, else generic."""
    from aiportal.models.totalseg_labels import installed_snomed_csv, totalsegmentator_labels

    try:
        csv_path: Path | None = installed_snomed_csv()
    except ModelError:  # TotalSegmentator not installed: no mapping to borrow
        csv_path = None
    labels = []
    for name, value in sorted(values.items(), key=lambda item: item[1]):
        spec = None
        for key in _snomed_candidates(name) if csv_path else ():
            try:
                spec = totalsegmentator_labels(class_map={value: key}, snomed_csv=csv_path)[0]
            except ModelError:  # neither in the CSV nor in our supplement
                continue
            spec = replace(spec, name=name)
            break
        labels.append(spec or LabelSpec(value, name, TISSUE, TISSUE, color=_palette_color(value)))
    return tuple(labels)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = digests.file_sha256(path)
    return _SHA_CACHE[key]


def weights_sha256(folder: ResultsFolder) -> str:
    """The checkpoint's sha256; for several folds, the sha256 of their ``sha256sum``-style listing."""
    sums = [(file_sha256(path), path.relative_to(folder.path).as_posix()) for path in folder.checkpoints]
    if len(sums) == 1:
        return sums[0][0]
    listing = "".join(f"{digest}  {name}\n" for digest, name in sorted(sums, key=lambda item: item[1]))
    return hashlib.sha256(listing.encode()).hexdigest()


SOURCE_PREFIX = "nnunet"  # catalog models named "nnunet:FOLDER"


def entry_from_results_folder(path: str | Path) -> ModelEntry:
    """The catalog entry of a trained nnU-Net v2 results folder; its id is ``nnunet:PATH``."""
    folder = read_results_folder(path)
    channels = channel_names(folder.dataset_json)
    modality = modality_of(channels)
    spacing = folder.plans["configurations"][folder.configuration].get("spacing")
    description = folder.dataset_json.get("description") or ""
    return ModelEntry(
        id=f"{SOURCE_PREFIX}:{path}",
        title=f"nnU-Net {folder.dataset_name} ({folder.configuration})",
        modality=modality,
        task=", ".join(name for name in _label_values(folder.dataset_json)) + f" on {modality}",
        description=(f"User-supplied nnU-Net v2 model {folder.dataset_name} from {folder.path}, folds "
                     f"{', '.join(folder.folds)}. {description}").strip(),
        limitations=("A model trained elsewhere: its accuracy, intended population and licence are whatever its "
                     "authors state; nothing here was validated. Runs on one image with "
                     f"{len(channels)} channel(s) ({', '.join(channels)})."),
        version=f"{folder.dataset_name}/{folder.path.name}",
        license=str(folder.dataset_json.get("licence") or folder.dataset_json.get("license") or "unknown"),
        labels=coded_labels(_label_values(folder.dataset_json)),
        weights=WeightsSpec(location=str(folder.path), sha256=weights_sha256(folder)),
        family="AI",
        devices=("cpu", "cuda", "mps"),
        environment="torch",
        input_requirements=(f"{' + '.join(channels)} image(s), any size; resampled to "
                            f"{' x '.join(f'{s:g}' for s in reversed(spacing))} mm" if spacing else ""),
    )


def resolve_source(location: str) -> tuple[ModelEntry, BackendRef]:
    """``Catalog.add_source("nnunet", resolve_source, ...)``: the entry and backend of ``nnunet:LOCATION``."""
    return entry_from_results_folder(location), BackendRef.of(NnUNetBackend, location)


def spacing_kji(ijk_to_ras: np.ndarray) -> list[float]:
    """Voxel size along (k, j, i): the order nnU-Net's readers report for a (k, j, i) array."""
    return [float(s) for s in np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)[::-1]]


def _to_ras(array_ckji: np.ndarray, ijk_to_ras: np.ndarray):
    """Reorient (c, k, j, i) to the closest RAS axes, as nnU-Net's NibabelIOWithReorient does."""
    import nibabel.orientations as orientations

    ornt = orientations.io_orientation(ijk_to_ras)
    data_ijkc = np.moveaxis(array_ckji, 0, -1).transpose(2, 1, 0, 3)
    reoriented = orientations.apply_orientation(data_ijkc, ornt)
    ras_affine = np.asarray(ijk_to_ras) @ orientations.inv_ornt_aff(ornt, data_ijkc.shape[:3])
    return np.moveaxis(reoriented.transpose(2, 1, 0, 3), -1, 0), ras_affine, ornt


def _from_ras(label_kji: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    import nibabel.orientations as orientations

    ras = orientations.axcodes2ornt(("R", "A", "S"))
    back = orientations.apply_orientation(label_kji.transpose(2, 1, 0), orientations.ornt_transform(ras, ornt))
    return np.ascontiguousarray(back.transpose(2, 1, 0))


def _confidences(logits, label_manager, values: list[int], chunk: int = 8) -> dict[int, float]:
    """Mean of the winning class's softmax probability over each label's voxels (network resolution)."""
    import torch

    sums = torch.zeros(label_manager.num_segmentation_heads, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for start in range(0, logits.shape[1], chunk):
        probabilities = torch.softmax(logits[:, start:start + chunk].float(), dim=0)
        best, winner = probabilities.max(dim=0)
        sums += torch.bincount(winner.ravel(), weights=best.ravel().double(), minlength=len(sums))
        counts += torch.bincount(winner.ravel(), minlength=len(sums)).double()
    return {value: float(sums[value] / counts[value]) for value in values if value < len(counts) and counts[value] > 0}


class NnUNetBackend:
    """Runs one nnU-Net v2 results folder; built in the runner's child process from the folder path."""

    def __init__(self, folder: str):
        self.folder_path = str(folder)
        self.entry = entry_from_results_folder(folder)

    def _predictor(self, folder: ResultsFolder, folds: list[str], params: dict[str, Any]):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        device = str(params.get("device") or "cpu")
        predictor = nnUNetPredictor(
            tile_step_size=float(params.get("step_size", 0.5)),
            use_gaussian=True,
            use_mirroring=bool(params.get("use_tta", params.get("mirroring", True))),
            perform_everything_on_device=device != "cpu",
            device=torch.device(device),
            verbose=False,
            allow_tqdm=True,  # its sliding-window bar on stderr is the runner's progress source
        )
        use_folds = tuple(fold if fold == "all" else int(fold) for fold in folds)
        try:
            predictor.initialize_from_trained_model_folder(str(folder.path), use_folds, folder.checkpoint_name)
        except Exception as error:  # torch.load, trainer lookup or state-dict mismatch: all say "unusable"
            raise ModelError(
                f"nnU-Net model {folder.path} cannot be loaded: {type(error).__name__}: {error}",
                "check that the checkpoints are complete copies and that the nnunetv2 version (and any custom "
                "trainer it names) matches the one used for training",
            ) from error
        return predictor

    def _folds(self, folder: ResultsFolder, params: dict[str, Any]) -> list[str]:
        requested = params.get("folds")
        if requested in (None, "", "auto"):
            return list(folder.folds)
        requested = [str(fold) for fold in (requested if isinstance(requested, (list, tuple)) else [requested])]
        missing = [fold for fold in requested if fold not in folder.folds]
        if missing:
            raise ModelError(
                f"nnU-Net model {folder.path} has no fold {', '.join(missing)} with {folder.checkpoint_name}",
                f"choose among folds {', '.join(folder.folds)} (or copy fold_{missing[0]} from the training)",
            )
        return requested

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        folder = read_results_folder(self.folder_path, params.get("checkpoint"))
        channels = channel_names(folder.dataset_json)
        image = np.asarray(volume.array, dtype=np.float32)
        image = image[None] if image.ndim == 3 else image
        if image.ndim != 4 or image.shape[0] != len(channels):
            raise ModelError(
                f"{self.entry.id} needs {len(channels)} input channel(s) ({', '.join(channels)}), but {volume.name} "
                f"has {image.shape[0] if image.ndim == 4 else 'an array of shape ' + str(image.shape)}",
                "choose a model trained for a single image, or give all its channels on one grid",
            )
        if volume.modality and self.entry.modality in ("CT", "MR") and volume.modality.upper() in ("CT", "MR") \
                and volume.modality.upper() != self.entry.modality:
            raise ModelError(f"{self.entry.id} was trained on {self.entry.modality}, but {volume.name} is "
                             f"{volume.modality}", f"choose a {self.entry.modality} series or another model")
        configuration = folder.plans["configurations"][folder.configuration]
        if configuration.get("previous_stage"):
            raise ModelError(f"{self.entry.id} is a cascade stage (needs {configuration['previous_stage']}'s output)",
                             "use the 3d_fullres results folder of the same dataset instead")
        folds = self._folds(folder, params)
        progress(0.02, "loading nnU-Net model")
        predictor = self._predictor(folder, folds, params)
        cancel.check()

        ras_orientation = None
        ijk_to_ras = np.asarray(volume.ijk_to_ras, dtype=float)
        if folder.plans.get("image_reader_writer") == "NibabelIOWithReorient":
            image, ijk_to_ras, ras_orientation = _to_ras(image, ijk_to_ras)
        properties = {"spacing": spacing_kji(ijk_to_ras)}

        progress(0.08, "nnU-Net preprocessing")
        adapter = PreprocessAdapterFromNpy([np.ascontiguousarray(image)], [None], [properties], [None],
                                           predictor.plans_manager, predictor.dataset_json,
                                           predictor.configuration_manager, num_threads_in_multithreaded=1)
        preprocessed = next(adapter)
        cancel.check()

        # the library's fold loop, one fold at a time so progress and cancel work between folds
        all_parameters, logits = predictor.list_of_parameters, None
        for index, parameters in enumerate(all_parameters):
            progress(0.12 + 0.75 * index / len(all_parameters),
                     f"nnU-Net sliding window, fold {folds[index]} ({index + 1} of {len(all_parameters)})")
            predictor.list_of_parameters = [parameters]
            fold_logits = predictor.predict_logits_from_preprocessed_data(preprocessed["data"]).cpu()
            logits = fold_logits if logits is None else logits + fold_logits
            cancel.check()
        predictor.list_of_parameters = all_parameters
        logits = logits / len(all_parameters)

        label_manager = predictor.label_manager
        values = sorted(_label_values(folder.dataset_json).values())
        confidences: dict[int, float] = {}
        if params.get("confidence", True) and not label_manager.has_regions:
            progress(0.88, "nnU-Net label confidences")
            confidences = _confidences(logits, label_manager, values)
        progress(0.92, "nnU-Net resampling to the input grid")
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, label_manager,
            preprocessed["data_properties"], return_probabilities=False)
        segmentation = np.asarray(segmentation)
        if ras_orientation is not None:
            segmentation = _from_ras(segmentation, ras_orientation)
        present = set(np.unique(segmentation).tolist()) - {0}
        progress(1.0, "nnU-Net done")
        return LabelMapResult(
            layers=[segmentation.astype(np.uint8 if segmentation.max(initial=0) < 256 else np.uint16)],
            confidences={value: score for value, score in confidences.items() if value in present},
            details={"folds": folds, "checkpoint": folder.checkpoint_name, "step_size": predictor.tile_step_size,
                     "mirroring": bool(predictor.use_mirroring and predictor.allowed_mirroring_axes),
                     "network_spacing": list(predictor.configuration_manager.spacing),
                     "input_spacing_kji": properties["spacing"], "nnunetv2_folder": str(folder.path),
                     "confidence_note": "" if confidences or not params.get("confidence", True)
                     else "region-based model: no softmax confidences"},
        )
