"""Decoding the pixels of DICOM slices (pure pydicom/numpy): stored values to modality units.

Shared by the series loader (:mod:`aiportal.io.dicom_series`); the file-level checks live here too,
so that a damaged file is named the same way whether its header or its pixels are broken.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom

from aiportal.errors import InputError
from aiportal.progress import CancelToken, ProgressCallback


class SliceSource(Protocol):
    """One 2D image: a file, and the frame of it when the file is multi-frame."""

    @property
    def path(self) -> Path: ...

    @property
    def frame(self) -> int | None: ...


def int_or_none(header: pydicom.Dataset, keyword: str) -> int | None:
    value = header.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def damaged(path: Path, input_path: Path, what: str) -> InputError:
    return InputError(
        f"DICOM file {path} in {input_path} is damaged: {what}",
        "copy or export the series again, or remove that file",
    )


def cut_short(caught: list[warnings.WarningMessage]) -> bool:
    return any("End of file" in str(w.message) for w in caught)



def _decode(folder: Path, path: Path) -> np.ndarray:
    """The stored pixel values of a file: (rows, columns), or (frames, rows, columns)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(path)
        except Exception as error:  # the header was readable during the scan: the file changed
            raise damaged(path, folder, f"{type(error).__name__}: {error}") from error
        if cut_short(caught) or "PixelData" not in dataset:
            raise damaged(path, folder, "its pixel data is missing or cut short")
        try:
            pixels = dataset.pixel_array
        except Exception as error:  # truncated data, unsupported or broken compression
            syntax = dataset.file_meta.get("TransferSyntaxUID")
            raise InputError(
                f"Cannot decode the pixels of DICOM file {path} in {folder} ({type(error).__name__}: {error})",
                f"install the decoder for {syntax.name} (pylibjpeg-openjpeg, pylibjpeg-libjpeg, pyjpegls), "
                "or copy or export the series again"
                if syntax is not None and syntax.is_compressed
                else "copy or export the series again, or remove that file",
            ) from error
    frames = int_or_none(dataset, "NumberOfFrames") or 1
    if dataset.get("SamplesPerPixel", 1) != 1 or pixels.ndim != (2 if frames == 1 else 3):
        raise InputError(
            f"DICOM file {path} in {folder} holds colour pixels {pixels.shape}, not grey-scale slices",
            "load a grey-scale series (CT, MR, PET)",
        )
    return pixels


def stack_pixels(folder: Path, slices: Sequence[SliceSource], progress: ProgressCallback,
                 cancel: CancelToken | None) -> np.ndarray:
    """Stored values of the sorted slices as one (k, j, i) array; each file decoded once."""
    raw: np.ndarray | None = None
    multi_frame: dict[Path, np.ndarray] = {}  # decoded multi-frame files, for their other frames
    for k, piece in enumerate(slices):
        if cancel is not None:
            cancel.check("reading the DICOM series")
        if piece.frame is None:
            pixels = _decode(folder, piece.path)
        else:
            if piece.path not in multi_frame:
                multi_frame[piece.path] = _decode(folder, piece.path)
            pixels = multi_frame[piece.path][piece.frame]
        if raw is None:
            raw = np.empty((len(slices), *pixels.shape), dtype=pixels.dtype)
        elif pixels.dtype != raw.dtype:
            raw = raw.astype(np.result_type(raw.dtype, pixels.dtype))
        raw[k] = pixels
        progress((k + 1) / len(slices), "Reading DICOM slices")
    assert raw is not None  # a series has at least one slice
    return raw


def apply_rescale(raw: np.ndarray, rescales: list[tuple[float, float]]) -> np.ndarray:
    """Stored values → modality units (HU for CT), int16 when that is exact, else float32."""
    integral = all(s == round(s) and b == round(b) for s, b in rescales)
    if integral:
        ends = [s * float(v) + b for k, (s, b) in enumerate(rescales) for v in (raw[k].min(), raw[k].max())]
        low, high = min(ends), max(ends)
        info = np.iinfo(np.int16)
        # Integral values beyond int16 (e.g. 16-bit unsigned MR) stay exact in int32.
        dtype = np.int16 if info.min <= low and high <= info.max else np.int32
    else:
        dtype = np.float32
    out = np.empty(raw.shape, dtype=dtype)
    for k, (slope, intercept) in enumerate(rescales):  # slice by slice: no volume-sized temporaries
        if integral:
            out[k] = raw[k].astype(np.int32) * int(slope) + int(intercept)
        else:
            out[k] = raw[k] * slope + intercept
    return out
