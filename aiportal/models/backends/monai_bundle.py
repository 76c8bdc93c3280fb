"""MONAI bundles: any folder in MONAI's bundle format becomes a catalog entry and a backend.

A bundle is ``configs/metadata.json`` + ``configs/inference.json`` (or ``.yaml``) +
``models/model.pt`` (or ``model.ts``). :func:`entry_from_bundle` reads the label table, version and
input description from the metadata; :class:`MonaiBundleBackend` runs the bundle's own inference
config through MONAI's bundle machinery (``ConfigWorkflow``: its preprocessing, inferer and
postprocessing, its checkpoint loader), fed with our volume written as a temporary NIfTI with the
exact geometry. The bundle's saved label map is read back and put on the input grid.

torch and monai are imported inside functions: listing the catalog must not load them.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiportal.digests import file_sha256
from aiportal.errors import AIPortalError, InputError, ModelError
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import Code, LabelSpec, ModelEntry, WeightsSpec
from aiportal.progress import CancelToken, ProgressCallback

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
MODEL_NAMES = ("model.pt", "model.ts")
BACKGROUND_NAMES = {"background", "bg", "_background_", "other"}
# the honest generic codes for a class that has no known SNOMED code: Slicer's own default segment terms
GENERIC_CATEGORY = Code("SCT", "85756007", "Tissue")
GENERIC_TYPE = Code("SCT", "85756007", "Tissue")
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))
_MODALITIES = {"ct": "CT", "mr": "MR", "mri": "MR", "pet": "PT", "pt": "PT", "us": "US", "xr": "DX", "x-ray": "DX"}
_FORMAT_MODALITIES = {"hounsfield": "CT", "magnitude": "MR"}
_NOT_A_BUNDLE_FIX = ("point to a MONAI bundle folder (configs/metadata.json, configs/inference.json, "
                     "models/model.pt), e.g. one downloaded with `python -m monai.bundle download`")


@dataclass(frozen=True)
class BundleLayout:
    """The files of a bundle folder that inference needs."""

    root: Path
    metadata_file: Path
    config_file: Path
    model_file: Path


def locate_bundle(path: str | Path) -> BundleLayout:
    """The bundle's metadata, inference config and model file; a clear error for whatever is missing."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"MONAI bundle folder {root} does not exist", _NOT_A_BUNDLE_FIX)
    configs = root / "configs"
    metadata_file = configs / "metadata.json"
    if not metadata_file.is_file():
        raise InputError(f"{root} is not a MONAI bundle: configs/metadata.json is missing", _NOT_A_BUNDLE_FIX)
    config_file = next((configs / name for name in CONFIG_NAMES if (configs / name).is_file()), None)
    if config_file is None:
        present = ", ".join(sorted(p.name for p in configs.iterdir())) or "nothing"
        raise ModelError(
            f"MONAI bundle {root.name} has no inference config (configs/ holds {present})",
            "this bundle cannot segment as it is: use a bundle with configs/inference.json or inference.yaml",
        )
    model_file = next((root / "models" / name for name in MODEL_NAMES if (root / "models" / name).is_file()), None)
    if model_file is None:
        raise ModelError(
            f"MONAI bundle {root.name} has no weights: models/model.pt or models/model.ts is missing",
            "download the bundle with its weights (`python -m monai.bundle download --name ...`) "
            "or copy the model file into models/",
        )
    return BundleLayout(root, metadata_file, config_file, model_file)


def _read_metadata(layout: BundleLayout) -> dict[str, Any]:
    try:
        return json.loads(layout.metadata_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {layout.metadata_file}: {error}",
                         "repair the bundle's metadata.json (it must be JSON)") from None


def _first_item(section: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(section, dict) and section:
        key = next(iter(section))
        return key, section[key] if isinstance(section[key], dict) else {}
    return "", {}


def bundle_io(metadata: dict[str, Any]) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """(input key, input description, output key, output description) from ``network_data_format``."""
    data_format = metadata.get("network_data_format") or {}
    input_key, input_desc = _first_item(data_format.get("inputs"))
    output_key, output_desc = _first_item(data_format.get("outputs"))
    return input_key or "image", input_desc, output_key or "pred", output_desc


def output_channels(output_desc: dict[str, Any], bundle_name: str) -> dict[int, str]:
    """Output channel index -> class name, from ``channel_def`` (or ``num_channels`` when that is all there is)."""
    channel_def = output_desc.get("channel_def") or {}
    channels = {int(index): str(name) for index, name in channel_def.items() if str(index).lstrip("-").isdigit()}
    if not channels:
        count = int(output_desc.get("num_channels") or 0)
        if count < 1:
            raise ModelError(
                f"MONAI bundle {bundle_name} describes no output classes "
                "(network_data_format.outputs has no channel_def nor num_channels)",
                "add the output channel_def to the bundle's metadata.json",
            )
        channels = {index: f"class {index}" for index in range(count)}
    return dict(sorted(channels.items()))


def background_first(channels: dict[int, str]) -> bool:
    """True for a softmax-style output whose channel 0 is background (saved as an argmax label map)."""
    return len(channels) > 1 and channels.get(0, "").strip().lower() in BACKGROUND_NAMES


def channel_label_value(channel: int, channels: dict[int, str]) -> int:
    """Label value of an output channel: the argmax index when channel 0 is background, else channel + 1."""
    return channel if background_first(channels) else channel + 1


def _normalized(name: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    side = re.match(r"^(left|right)_(.+)$", name)  # "left kidney" -> TotalSegmentator's "kidney_left"
    return f"{side.group(2)}_{side.group(1)}" if side else name


def _snomed_labels(names: dict[int, str], snomed_csv: Path | None) -> dict[int, LabelSpec]:
    """Coded labels for the class names TotalSegmentator's SNOMED mapping knows (none if it is not available)."""
    from aiportal.models import totalseg_labels

    try:
        csv_path = snomed_csv or totalseg_labels.installed_snomed_csv()
        known = set(totalseg_labels.read_snomed_mapping(csv_path)) | set(totalseg_labels._SUPPLEMENT)
    except ModelError:
        return {}
    matched = {value: _normalized(name) for value, name in names.items() if _normalized(name) in known}
    if not matched:
        return {}
    specs = totalseg_labels.totalsegmentator_labels(class_map=matched, snomed_csv=csv_path)
    return {spec.value: spec for spec in specs}


def bundle_labels(channels: dict[int, str], snomed_csv: Path | None = None) -> tuple[LabelSpec, ...]:
    """The label table: SNOMED codes where a name matches TotalSegmentator's mapping, generic codes otherwise."""
    with_background = background_first(channels)
    multi_label = not with_background and len(channels) > 1
    names = {channel_label_value(c, channels): name for c, name in channels.items() if not (with_background and c == 0)}
    coded = _snomed_labels(names, snomed_csv)
    labels = []
    for position, (value, name) in enumerate(sorted(names.items())):
        layer = value - 1 if multi_label else 0  # independent sigmoid channels may overlap
        if value in coded:
            spec = coded[value]
            labels.append(LabelSpec(value, name, spec.category, spec.type, spec.type_modifier, spec.region,
                                    spec.region_modifier, spec.color, layer))
        else:
            labels.append(LabelSpec(value, name, GENERIC_CATEGORY, GENERIC_TYPE,
                                    color=_PALETTE[position % len(_PALETTE)], layer=layer))
    return tuple(labels)


def bundle_modality(metadata: dict[str, Any], input_desc: dict[str, Any]) -> str:
    """DICOM modality of the bundle's input: from its ``modality``, else its ``format``, else "OT"."""
    modality = str(input_desc.get("modality", "")).strip().lower()
    if modality in _MODALITIES:
        return _MODALITIES[modality]
    fmt = str(input_desc.get("format", "")).strip().lower()
    if fmt in _FORMAT_MODALITIES:
        return _FORMAT_MODALITIES[fmt]
    text = " ".join(str(metadata.get(key, "")) for key in ("name", "task", "image_classes", "description"))
    for word, code in (("CT", "CT"), ("MRI", "MR"), ("MR", "MR")):
        if re.search(rf"\b{word}\b", text):
            return code
    return "OT"


def _license(metadata: dict[str, Any], root: Path) -> str:
    if metadata.get("license"):
        return str(metadata["license"])
    for candidate in (root / "LICENSE", root / "docs" / "LICENSE", root / "LICENSE.txt"):
        if candidate.is_file():
            first_line = next((line.strip() for line in candidate.read_text(errors="replace").splitlines()
                               if line.strip()), "")
            return first_line[:80] or f"see {candidate}"
    return "see the bundle's documentation"


def entry_from_bundle(path: str | Path, snomed_csv: Path | None = None) -> ModelEntry:
    """A catalog entry for a MONAI bundle folder (labels, codes, version, weights checksum, modality)."""
    layout = locate_bundle(path)
    metadata = _read_metadata(layout)
    _, input_desc, _, output_desc = bundle_io(metadata)
    name = str(metadata.get("name") or layout.root.name)
    channels = output_channels(output_desc, name)
    modality = bundle_modality(metadata, input_desc)
    license_text = _license(metadata, layout.root)
    requirement = ", ".join(str(part) for part in (
        modality if modality != "OT" else "modality not stated by the bundle",
        input_desc.get("format"),
        f"{input_desc['num_channels']} channel(s)" if input_desc.get("num_channels") else None,
    ) if part)
    references = metadata.get("references") or ()
    return ModelEntry(
        id="monai-bundle-" + re.sub(r"[^a-z0-9]+", "-", layout.root.name.lower()).strip("-"),
        title=f"{name} (MONAI bundle)",
        modality=modality,
        task=str(metadata.get("task") or name),
        description=str(metadata.get("description") or f"MONAI bundle {name}"),
        limitations=(
            "Runs the bundle exactly as its inference config defines; not validated by AI portal. "
            + (f"Intended use stated by the bundle: {metadata['intended_use']}" if metadata.get("intended_use")
               else "The bundle states no intended use.")
        ),
        version=str(metadata.get("version") or "unknown"),
        license=license_text,
        labels=bundle_labels(channels, snomed_csv),
        weights=WeightsSpec(str(layout.model_file), file_sha256(layout.model_file), license_text),
        family="AI",
        devices=("cpu", "cuda"),
        environment="torch",
        input_requirements=requirement,
        references=tuple(str(ref) for ref in references) if isinstance(references, list) else (str(references),),
    )


# --- probabilities captured inside the bundle's postprocessing, for per-label confidence -------------

_CAPTURED: dict[str, dict[int, float]] = {}


class ChannelConfidence:
    """A dictionary transform for a bundle's postprocessing: mean probability of each channel where it wins.

    Inserted just before the bundle's ``AsDiscreted`` (after its ``Activationsd``); it records and passes
    the data through unchanged.
    """

    def __init__(self, keys: str, token: str, argmax: bool = True, threshold: float = 0.5):
        self.key, self.token, self.argmax, self.threshold = keys, token, argmax, threshold

    def __call__(self, data: dict) -> dict:
        import torch

        probabilities = torch.as_tensor(data[self.key]).detach().float()
        if probabilities.ndim < 2 or probabilities.shape[0] < 1:
            return data
        winners = probabilities.argmax(0) if self.argmax else None
        found: dict[int, float] = {}
        for channel in range(probabilities.shape[0]):
            selected = winners == channel if self.argmax else probabilities[channel] >= self.threshold
            if bool(selected.any()):
                found[channel] = float(probabilities[channel][selected].mean())
        _CAPTURED[self.token] = found
        return data


def _target_name(transform: Any) -> str:
    return str(transform.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(transform, dict) else ""


def _insert_confidence_capture(parser: Any, output_key: str, token: str) -> bool:
    """Put :class:`ChannelConfidence` before the bundle's discretisation; False when the config has none."""
    transforms = parser.get("postprocessing#transforms")
    if not isinstance(transforms, list):
        return False
    for index, transform in enumerate(transforms):
        if _target_name(transform) != "AsDiscreted":
            continue
        if not transform.get("argmax") and transform.get("threshold") is None:
            continue
        if output_key not in str(transform.get("keys")):
            continue
        threshold = transform.get("threshold")
        capture = {"_target_": f"{__name__}.ChannelConfidence", "keys": output_key, "token": token,
                   "argmax": bool(transform.get("argmax")),
                   "threshold": float(threshold) if isinstance(threshold, (int, float)) else 0.5}
        parser["postprocessing#transforms"] = [*transforms[:index], capture, *transforms[index:]]
        return True
    return False


def _redirect_saving(parser: Any, output_dir: Path) -> int:
    """Point every SaveImaged of the postprocessing at ``output_dir`` as NIfTI; the number redirected."""
    transforms = parser.get("postprocessing#transforms")
    if not isinstance(transforms, list):
        return 0
    count = 0
    for index, transform in enumerate(transforms):
        if _target_name(transform) in ("SaveImaged", "SaveImage"):
            transform = dict(transform, output_dir=str(output_dir / f"save{index}"), output_ext=".nii.gz")
            transforms[index] = transform
            count += 1
    parser["postprocessing#transforms"] = transforms
    return count


# --- geometry ------------------------------------------------------------------------------------------


def write_input_nifti(volume: ModelInput, path: Path) -> None:
    """Our (k, j, i) array with its ijk->RAS matrix as a NIfTI file with the same geometry."""
    import nibabel as nib

    data = np.asarray(volume.array)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    affine = np.asarray(volume.ijk_to_ras, dtype=float)
    image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    nib.save(image, str(path))


def onto_input_grid(values: np.ndarray, affine: np.ndarray, volume: ModelInput) -> np.ndarray:
    """A saved (i, j, k) label array with its affine, as (k, j, i) on the input grid (nearest neighbour)."""
    shape_kji = volume.array.shape
    ijk_to_ras = np.asarray(volume.ijk_to_ras, dtype=float)
    if values.shape == shape_kji[::-1] and np.allclose(affine, ijk_to_ras, atol=1e-3):
        return np.ascontiguousarray(values.transpose(2, 1, 0))
    # the bundle saved on its own grid (no Invertd): sample it at every input voxel centre
    to_saved = np.linalg.inv(affine) @ ijk_to_ras
    result = np.zeros(shape_kji, dtype=values.dtype)
    j, i = np.meshgrid(np.arange(shape_kji[1]), np.arange(shape_kji[2]), indexing="ij")
    for k in range(shape_kji[0]):
        points = np.stack([i.ravel(), j.ravel(), np.full(i.size, k), np.ones(i.size)])
        index = np.rint((to_saved @ points)[:3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(values.shape)[:, None]), axis=0)
        plane = np.zeros(i.size, dtype=values.dtype)
        plane[inside] = values[index[0, inside], index[1, inside], index[2, inside]]
        result[k] = plane.reshape(i.shape)
    return result


def _read_saved(output_dir: Path, save_index: int | None) -> tuple[np.ndarray, np.ndarray, Path]:
    import nibabel as nib

    folder = output_dir / f"save{save_index}" if save_index is not None else output_dir
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise ModelError("the MONAI bundle ran but saved no label map",
                         "its inference config must save its prediction with SaveImaged in `postprocessing`")
    image = nib.load(str(files[0]))
    data = np.asarray(image.dataobj)
    data = data.reshape(data.shape[:3] + (-1,))  # (i, j, k, channels): MONAI writes channels last
    return data, np.asarray(image.affine, dtype=float), files[0]


def _root_cause(error: BaseException) -> str:
    """The innermost error of a chain, in one short line (MONAI wraps it in config-evaluation errors)."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}{'…' if len(text) > 300 else ''}"


# --- the backend -----------------------------------------------------------------------------------------


class MonaiBundleBackend:
    """Runs a MONAI bundle's own inference config on one volume."""

    def __init__(self, folder: str):
        self.folder = str(folder)
        self.layout = locate_bundle(folder)
        self.entry = entry_from_bundle(folder)

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        modality = (volume.modality or "").upper()
        if modality and self.entry.modality != "OT" and modality != self.entry.modality:
            raise ModelError(
                f"{self.entry.title} needs {self.entry.modality}, but {volume.name} is {volume.modality}",
                f"choose a {self.entry.modality} series, or a model made for {volume.modality}",
            )
        progress(0.0, "preparing the MONAI bundle")
        metadata = _read_metadata(self.layout)
        input_key, input_desc, output_key, output_desc = bundle_io(metadata)
        channels = output_channels(output_desc, self.entry.title)
        if int(input_desc.get("num_channels") or 1) > 1:
            raise ModelError(
                f"{self.entry.title} needs {input_desc['num_channels']} input images per case "
                f"({', '.join(map(str, (input_desc.get('channel_def') or {}).values())) or 'several channels'}), "
                "but AI portal gives it one volume",
                "use a bundle that takes a single image",
            )
        with tempfile.TemporaryDirectory(prefix="aiportal-bundle-") as scratch:
            scratch_dir = Path(scratch)
            input_path = scratch_dir / "input" / "image.nii"
            input_path.parent.mkdir()
            write_input_nifti(volume, input_path)
            cancel.check("the MONAI bundle")
            token = uuid.uuid4().hex
            workflow, save_index = self._workflow(input_key, output_key, input_path, scratch_dir / "output",
                                                  params, token)
            progress(0.1, "running the MONAI bundle")
            try:
                workflow.initialize()
                cancel.check("the MONAI bundle")
                workflow.run()
                workflow.finalize()
            except AIPortalError:
                raise
            except FileNotFoundError as error:
                raise ModelError(f"the MONAI bundle {self.layout.root.name} could not find a file: {error}",
                                 "check the bundle's files; pass overrides for paths it expects") from error
            except Exception as error:  # the bundle's own code failed: say which bundle, keep the cause
                raise ModelError(
                    f"the MONAI bundle {self.layout.root.name} failed: {_root_cause(error)}",
                    f"check that it runs with `python -m monai.bundle run --config_file {self.layout.config_file}`",
                ) from error
            cancel.check("the MONAI bundle")
            progress(0.9, "reading the bundle's result")
            data, affine, saved = _read_saved(scratch_dir / "output", save_index)
        layers = self._layers(data, affine, volume, channels)
        confidences = {channel_label_value(c, channels): p for c, p in _CAPTURED.pop(token, {}).items()
                       if not (background_first(channels) and c == 0)}
        progress(1.0, "done")
        return LabelMapResult(
            layers=layers,
            confidences={value: confidence for value, confidence in confidences.items()
                         if any(value == label.value for label in self.entry.labels)},
            details={"bundle": str(self.layout.root), "bundle_version": self.entry.version,
                     "config": self.layout.config_file.name, "saved_output": saved.name},
        )

    def _workflow(self, input_key: str, output_key: str, input_path: Path, output_dir: Path,
                  params: dict[str, Any], token: str) -> tuple[Any, int | None]:
        from monai.bundle import ConfigWorkflow

        device = str(params.get("device") or "cpu")
        workflow = ConfigWorkflow(config_file=str(self.layout.config_file), meta_file=str(self.layout.metadata_file),
                                  logging_file=False, workflow_type="inference")
        parser = workflow.parser
        if "dataset#data" not in parser:
            raise ModelError(
                f"the inference config of MONAI bundle {self.layout.root.name} has no `dataset#data`, so the "
                "image to segment cannot be given to it",
                "use a bundle whose inference config follows MONAI's convention (a `dataset` with a `data` list), "
                "or pass overrides that define `dataset#data`",
            )
        overrides: dict[str, Any] = {
            "bundle_root": str(self.layout.root),
            "output_dir": str(output_dir),
            "device": f"$torch.device('{device}')",
            "dataset#data": [{input_key: str(input_path)}],
        }
        if isinstance(parser.get("dataloader"), dict):
            overrides["dataloader#num_workers"] = 0  # no worker processes inside the runner's child process
        if "SlidingWindow" in _target_name(parser.get("inferer")):
            overrides["inferer#progress"] = True  # a tqdm bar on stderr, which the runner shows as progress
        parser.update(overrides)
        parser.update(dict(params.get("overrides") or {}))
        saves = [index for index, t in enumerate(parser.get("postprocessing#transforms") or [])
                 if _target_name(t) in ("SaveImaged", "SaveImage")]
        # the save folders are named by the transforms' original positions (before the capture is inserted)
        chosen = next((i for i in saves if output_key in str(parser.get(f"postprocessing#transforms#{i}#keys"))),
                      saves[0] if saves else None)
        _redirect_saving(parser, output_dir)
        _insert_confidence_capture(parser, output_key, token)
        return workflow, chosen

    def _layers(self, data: np.ndarray, affine: np.ndarray, volume: ModelInput,
                channels: dict[int, str]) -> list[np.ndarray]:
        known = {label.value for label in self.entry.labels}
        if data.shape[3] == 1:
            values = np.rint(data[..., 0]).astype(np.int64)
            found = set(np.unique(values).tolist()) - {0}
            if not found <= known:
                raise ModelError(
                    f"the MONAI bundle {self.layout.root.name} produced label values {sorted(found - known)} that its "
                    "metadata.json does not describe",
                    "fix network_data_format.outputs channel_def in the bundle's metadata.json",
                )
            dtype = np.uint8 if max(known, default=0) < 256 else np.uint16
            return [onto_input_grid(values.astype(dtype), affine, volume)]
        # one binary channel per class (sigmoid outputs): one layer each, since classes may overlap
        layers = []
        for channel in range(data.shape[3]):
            value = channel_label_value(channel, channels)
            if value not in known:
                continue
            mask = (data[..., channel] > 0.5).astype(np.uint16 if value > 255 else np.uint8) * value
            layers.append(onto_input_grid(mask, affine, volume))
        return layers
