"""A tiny MONAI bundle in MONAI's real on-disk format, for tests of the bundle backend.

The layout and the inference config follow MONAI model-zoo bundles such as
``spleen_ct_segmentation`` (LoadImaged / EnsureChannelFirstd / Orientationd / Spacingd /
ScaleIntensityRanged, a UNet, SlidingWindowInferer, Activationsd / Invertd / AsDiscreted /
SaveImaged, an ignite SupervisedEvaluator with a CheckpointLoader). The UNet's weights are set by
hand so that its output means something a test can check: after the intensity window it labels
soft tissue (``SOFT_TISSUE_HU`` <= HU < ``BONE_HU``) as 1 and bone-like voxels (HU >= ``BONE_HU``)
as 2, voxel by voxel (3x3x3 kernels with only the centre tap set). Any flip, shift or spacing
error in the pipeline then shows up as a mismatch with the same thresholds applied to the input.
"""

from __future__ import annotations

import json
from pathlib import Path

# intensity window of ScaleIntensityRanged: HU A_MIN..A_MAX -> 0..1
A_MIN, A_MAX = -200.0, 300.0
SOFT_TISSUE_HU = 0.0  # class 1 from here
BONE_HU = 150.0  # class 2 from here
SPACING_MM = (4.0, 4.0, 4.0)

CHANNEL_DEF = {"0": "background", "1": "soft tissue", "2": "dense tissue"}


def _scaled(hu: float) -> float:
    return (hu - A_MIN) / (A_MAX - A_MIN)


def metadata(channel_def: dict[str, str] | None = None, version: str = "0.1.0") -> dict:
    """metadata.json in the model-zoo schema (trimmed to the fields bundles always carry)."""
    channel_def = channel_def or CHANNEL_DEF
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": {version: "tiny test bundle"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.0.0",
        "required_packages_version": {"nibabel": "5.4.2", "pytorch-ignite": "0.5.5"},
        "name": "Tiny CT threshold bundle",
        "task": "Soft tissue and dense tissue by HU thresholds (test bundle)",
        "description": "A hand-weighted 3D UNet that labels soft tissue and dense tissue on CT; for tests only.",
        "authors": "AI portal tests",
        "copyright": "Copyright (c) AI portal tests",
        "license": "Apache-2.0",
        "data_source": "none",
        "data_type": "nibabel",
        "image_classes": "single channel data, intensity scaled to [0, 1]",
        "label_classes": "; ".join(f"{k} is {v}" for k, v in channel_def.items()),
        "pred_classes": "; ".join(f"{k} is {v}" for k, v in channel_def.items()),
        "eval_metrics": {"mean_dice": 1.0},
        "intended_use": "Tests of the bundle machinery only",
        "references": ["https://github.com/Project-MONAI/model-zoo"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [32, 32, 32],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(channel_def),
                    "spatial_shape": [32, 32, 32],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
    }


def inference_config(*, invert: bool = True, sigmoid: bool = False) -> dict:
    """configs/inference.json, shaped like spleen_ct_segmentation's.

    ``invert=False`` saves the prediction on the bundle's own 4 mm RAS grid (no Invertd);
    ``sigmoid=True`` makes one independent binary output per channel (Activationsd sigmoid,
    AsDiscreted threshold), saved as a multi-channel image, like BraTS-style bundles.
    """
    activation = {"sigmoid": True} if sigmoid else {"softmax": True}
    discretize = {"threshold": 0.5} if sigmoid else {"argmax": True}
    invert_step = [{"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                    "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True}] if invert else []
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 4],
            "strides": [1],
            "num_res_units": 0,
            "norm": None,
            "act": "relu",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": list(SPACING_MM), "mode": "bilinear"},
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": A_MIN, "a_max": A_MAX,
                 "b_min": 0.0, "b_max": 1.0, "clip": True},
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 4,
                    "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", **activation},
                *invert_step,
                {"_target_": "AsDiscreted", "keys": "pred", **discretize},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False,
                 "squeeze_end_dims": True},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": True,
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def threshold_unet_state_dict():
    """State dict of the config's UNet, set so that it thresholds the scaled intensity per voxel."""
    import torch
    from monai.networks.nets import UNet

    spec = {k: v for k, v in inference_config()["network_def"].items() if k != "_target_"}
    net = UNet(**spec)
    state = {key: torch.zeros_like(value) for key, value in net.state_dict().items()}
    centre = (1, 1, 1)
    state["model.0.conv.weight"][(0, 0, *centre)] = 1.0  # feature 0 = scaled intensity x (ReLU keeps x >= 0)
    # final transposed conv reads the skip connection's feature 0; logits: background 0,
    # class 1: g (x - t1), class 2: 2 g (x - t2); class 2 wins above 2 t2 - t1, class 1 above t1
    gain, t1, t_bone = 40.0, _scaled(SOFT_TISSUE_HU), _scaled(BONE_HU)
    t2 = (t_bone + t1) / 2
    state["model.2.conv.weight"][(0, 1, *centre)] = gain
    state["model.2.conv.bias"][1] = -gain * t1
    state["model.2.conv.weight"][(0, 2, *centre)] = 2 * gain
    state["model.2.conv.bias"][2] = -2 * gain * t2
    net.load_state_dict(state)
    return net.state_dict()


def write_tiny_bundle(folder: Path, *, channel_def: dict[str, str] | None = None, yaml_config: bool = False,
                      with_weights: bool = True, invert: bool = True, sigmoid: bool = False) -> Path:
    """Write the bundle (configs/metadata.json, configs/inference.json|yaml, models/model.pt) into ``folder``."""
    import torch

    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata(channel_def), indent=2))
    config = inference_config(invert=invert, sigmoid=sigmoid)
    if yaml_config:
        import yaml

        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    if with_weights:
        torch.save(threshold_unet_state_dict(), folder / "models" / "model.pt")
    return folder
