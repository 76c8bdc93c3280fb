"""Tiny nnU-Net v2 models in the library's real on-disk format, with outputs a test can predict.

A trained nnU-Net v2 results folder is ``Dataset###_Name/Trainer__Plans__Configuration`` holding
``dataset.json``, ``plans.json``, ``dataset_fingerprint.json`` and ``fold_N/checkpoint_final.pth``
(saved like nnU-Net's trainer saves it). The network is the plans' own architecture built by
nnU-Net's ``get_network_from_plans``, with few features, no normalisation layer and weights SET (not
trained) so that it is an intensity-threshold classifier: each rule ``(label, ">" or "<", HU)``
labels the voxels above or below a Hounsfield threshold. Every tap but the kernel centre is zero, so
the label of a voxel depends on that voxel alone: a test knows the exact answer on any image,
which checks geometry and orientation voxel by voxel.

TotalSegmentator's models are such folders under ``$TOTALSEG_HOME_DIR/nnunet/results``; see
:func:`write_totalseg_fast_model`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# CT intensity statistics of the tiny models' "training set" (nnU-Net's CTNormalization uses them)
CT_INTENSITIES = {"mean": 40.0, "median": 30.0, "std": 300.0, "min": -1024.0, "max": 3000.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1500.0}
RULE_LOGIT = 4.0  # a rule's class logit is +-RULE_LOGIT on either side of its threshold (background: 0)
UNUSED_CLASS_LOGIT = -5.0  # classes without a rule lose clearly against background

Rule = tuple[int, str, float]  # (label value, ">" or "<", threshold in HU)


def _architecture(n_stages: int, features: Sequence[int], kernel_sizes, strides) -> dict:
    """The plans' ``architecture`` block, as nnU-Net's experiment planner writes it (norm_op left out)."""
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": kernel_sizes,
            "strides": strides,
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": None,  # a threshold must not depend on the patch's statistics
            "norm_op_kwargs": None,
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def make_plans(dataset_name: str, spacing_zyx: Sequence[float], patch_size_zyx: Sequence[int],
               n_rules: int, plans_name: str = "nnUNetPlans", configuration: str = "3d_fullres",
               image_reader_writer: str = "SimpleITKIO") -> dict:
    """A plans.json with the keys and layout nnU-Net's ExperimentPlanner writes, for a 3-stage tiny U-Net."""
    n_stages = 3
    base = max(2, 2 * n_rules)
    kernel_sizes = [[3, 3, 3]] * n_stages
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    resampling_data = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    resampling_seg = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    resampling_probabilities = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in spacing_zyx],
        "original_median_shape_after_transp": [int(p) for p in patch_size_zyx],
        "image_reader_writer": image_reader_writer,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            configuration: {
                "data_identifier": f"{plans_name}_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [int(p) for p in patch_size_zyx],
                "median_image_size_in_voxels": [int(p) for p in patch_size_zyx],
                "spacing": [float(s) for s in spacing_zyx],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling_data,
                "resampling_fn_seg_kwargs": resampling_seg,
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": resampling_probabilities,
                "architecture": _architecture(n_stages, [base * 2**i for i in range(n_stages)],
                                              kernel_sizes, strides),
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(CT_INTENSITIES)},
    }


def _set_threshold_weights(network, rules: Sequence[Rule]) -> None:
    """Zero every weight, then make each rule a step function of its voxel's intensity.

    Per rule, stage 0 computes a = s(x - t) + 1 and b = s(x - t) - 1 with s = 2 per HU (in normalised units),
    and after the LeakyReLUs a - b is 2 above t + 0.5 HU and ~0 below t - 0.5 HU. With thresholds at
    half-integers every integer HU value gets a saturated logit: no answer hinges on nnU-Net's
    half-precision tile sums. Only the kernel centre taps are set, so no voxel sees its neighbours.
    """
    import torch

    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        mean, std = CT_INTENSITIES["mean"], CT_INTENSITIES["std"]
        slope = 2.0 * std  # per normalised unit = 2 per HU

        def centre(conv) -> tuple[int, ...]:
            return tuple(k // 2 for k in conv.kernel_size)

        def identity(conv, in_offset: int = 0) -> None:
            for channel in range(conv.out_channels):
                conv.weight[(channel, in_offset + channel, *centre(conv))] = 1.0

        stage0 = network.encoder.stages[0][0].convs
        first = stage0[0].conv
        for index, (_, _direction, threshold) in enumerate(rules):
            normalised = (threshold - mean) / std
            for channel, offset in ((2 * index, 1.0), (2 * index + 1, -1.0)):
                first.weight[(channel, 0, *centre(first))] = slope
                first.bias[channel] = -slope * normalised + offset
        for block in list(stage0)[1:]:
            identity(block.conv)

        top = network.decoder.stages[-1].convs
        identity(top[0].conv, in_offset=top[0].conv.in_channels // 2)  # input = cat(upsampled, skip)
        for block in list(top)[1:]:
            identity(block.conv)

        seg = network.decoder.seg_layers[-1]
        seg.bias.fill_(UNUSED_CLASS_LOGIT)
        seg.bias[0] = 0.0
        for index, (label, direction, _) in enumerate(rules):
            # logit = RULE_LOGIT * (a - b - 1) for ">", its negative for "<"
            sign = RULE_LOGIT if direction == ">" else -RULE_LOGIT
            seg.weight[label, 2 * index, 0, 0, 0] = sign
            seg.weight[label, 2 * index + 1, 0, 0, 0] = -sign
            seg.bias[label] = -sign


def write_nnunet_results_folder(
    results_root: Path,
    dataset_id: int,
    dataset_label: str,
    labels: dict[str, int],
    rules: Sequence[Rule],
    spacing_zyx: Sequence[float],
    patch_size_zyx: Sequence[int] = (16, 32, 32),
    channel_names: dict[str, str] | None = None,
    trainer: str = "nnUNetTrainer",
    plans_name: str = "nnUNetPlans",
    configuration: str = "3d_fullres",
    folds: Sequence[int | str] = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    mirroring_axes: tuple[int, ...] | None = (0, 1, 2),
    image_reader_writer: str = "SimpleITKIO",
) -> Path:
    """Write ``results_root/Dataset{id}_{label}/{trainer}__{plans}__{configuration}`` and return it."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_name = f"Dataset{dataset_id:03d}_{dataset_label}"
    folder = Path(results_root) / dataset_name / f"{trainer}__{plans_name}__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    channel_names = channel_names or {"0": "CT"}
    dataset_json = {"channel_names": channel_names, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz",
                    "name": dataset_label, "description": "tiny intensity-threshold test model"}
    plans = make_plans(dataset_name, spacing_zyx, patch_size_zyx, len(rules), plans_name, configuration,
                       image_reader_writer)
    fingerprint = {"foreground_intensity_properties_per_channel": {"0": dict(CT_INTENSITIES)},
                   "median_relative_size_after_cropping": 1.0,
                   "shapes_after_crop": [[int(p) for p in patch_size_zyx]],
                   "spacings": [[float(s) for s in spacing_zyx]]}
    for name, content in (("dataset.json", dataset_json), ("plans.json", plans),
                          ("dataset_fingerprint.json", fingerprint)):
        (folder / name).write_text(json.dumps(content, indent=4))

    config = PlansManager(plans).get_configuration(configuration)
    n_classes = max(labels.values()) + 1
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import, len(channel_names), n_classes,
                                     allow_init=True, deep_supervision=False)
    _set_threshold_weights(network, rules)
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        checkpoint = {  # the keys nnUNetTrainer.save_checkpoint writes
            "network_weights": network.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": mirroring_axes,
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / checkpoint_name)
    return folder


def threshold_truth(hu: np.ndarray, rules: Sequence[Rule]) -> np.ndarray:
    """The label map the tiny model must produce for ``hu`` (later rules win, as none overlap)."""
    truth = np.zeros(hu.shape, dtype=np.uint8)
    for label, direction, threshold in rules:
        truth[(hu > threshold) if direction == ">" else (hu < threshold)] = label
    return truth


# TotalSegmentator 2.18's "total --fast" model: dataset 297, this trainer, 3 mm (TASK_CONFIGS["total"])
TOTALSEG_FAST_DATASET = (297, "TotalSegmentator_total_3mm_1559subj")
TOTALSEG_FAST_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"


def write_totalseg_fast_model(totalseg_home: Path, rules: Sequence[Rule]) -> Path:
    """A tiny stand-in for TotalSegmentator's 3 mm "total" model, in the folder TotalSegmentator loads."""
    from totalsegmentator.map_to_binary import class_map

    labels = {"background": 0} | {name: int(value) for value, name in sorted(class_map["total"].items())}
    dataset_id, label = TOTALSEG_FAST_DATASET
    return write_nnunet_results_folder(
        Path(totalseg_home) / "nnunet" / "results", dataset_id, label, labels, rules,
        spacing_zyx=(3.0, 3.0, 3.0), patch_size_zyx=(32, 64, 80), trainer=TOTALSEG_FAST_TRAINER,
        mirroring_axes=None,
    )
