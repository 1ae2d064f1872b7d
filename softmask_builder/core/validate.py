"""Boundary checks shared by the stages. Each raises :class:`InputError` naming the argument."""

from __future__ import annotations

import math

import numpy as np

from softmask_builder.errors import InputError

TRIMAP_BACKGROUND = 0
TRIMAP_UNKNOWN = 128
TRIMAP_LESION = 255


def as_image2d(image, name: str = "image", *, sample_id: str | None = None) -> np.ndarray:
    """Return ``image`` as a finite 2-D float64 array, or raise naming ``name``."""
    return _as_image(image, name, 2, "(rows, cols)", "pixels", sample_id)


def as_image3d(image, name: str = "image", *, sample_id: str | None = None) -> np.ndarray:
    """Return ``image`` as a finite 3-D (slices, rows, cols) float64 array, or raise naming ``name``."""
    return _as_image(image, name, 3, "(slices, rows, cols)", "voxels", sample_id)


def _as_image(image, name: str, ndim: int, axes: str, unit: str, sample_id) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D {axes}, got shape {arr.shape}", sample_id=sample_id)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} must be a real numeric array, got dtype {arr.dtype}", sample_id=sample_id)
    if arr.size == 0:
        raise InputError(f"{name} is empty, got shape {arr.shape}", sample_id=sample_id)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{name} has {bad} NaN/inf {unit}", sample_id=sample_id)
    return arr


def as_mask2d(mask, name: str = "mask", *, allow_empty: bool = False, allow_full: bool = True,
              sample_id: str | None = None) -> np.ndarray:
    """Return ``mask`` as a 2-D bool array (bool, or integers in {0, 1} / {0, 255})."""
    return _as_mask(mask, name, axes="(rows, cols)", unit="pixel", allow_empty=allow_empty, allow_full=allow_full,
                    sample_id=sample_id)


def as_mask3d(mask, name: str = "mask", *, allow_empty: bool = False, allow_full: bool = True,
              sample_id: str | None = None) -> np.ndarray:
    """Return ``mask`` as a 3-D (slices, rows, cols) bool array (bool, or integers in {0, 1} / {0, 255})."""
    return _as_mask(mask, name, axes="(slices, rows, cols)", unit="voxel", allow_empty=allow_empty,
                    allow_full=allow_full, sample_id=sample_id)


def _as_mask(mask, name: str, *, axes: str, unit: str, allow_empty: bool, allow_full: bool,
             sample_id: str | None) -> np.ndarray:
    arr = np.asarray(mask)
    ndim = axes.count(",") + 1
    if arr.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D {axes}, got shape {arr.shape}", sample_id=sample_id)
    if arr.size == 0:
        raise InputError(f"{name} is empty, got shape {arr.shape}", sample_id=sample_id)
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"{name} must be boolean or integer, got dtype {arr.dtype}", sample_id=sample_id)
        nonzero = arr != 0
        # One pass: every nonzero value must be the same 1 or 255 (no np.unique sort).
        if nonzero.any():
            top = arr[nonzero]
            first = top.flat[0]
            if first not in (1, 255) or not np.all(top == first):
                values = np.unique(arr)
                raise InputError(f"{name} must be binary ({{0,1}} or {{0,255}}), got values {values[:6].tolist()}",
                                 sample_id=sample_id)
        arr = nonzero
    if not allow_empty and not arr.any():
        raise InputError(f"{name} is empty (no lesion {unit})", sample_id=sample_id)
    if not allow_full and arr.all():
        raise InputError(f"{name} is full (no background {unit})", sample_id=sample_id)
    return arr


def check_matting_params(eps, radius) -> tuple[float, int]:
    """``(eps, radius)`` of closed-form matting checked: eps a finite number > 0, radius an integer >= 1."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise InputError(f"radius must be an integer >= 1, got {radius!r}")
    try:
        eps_f = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}") from None
    if not (math.isfinite(eps_f) and eps_f > 0.0):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}")
    return eps_f, int(radius)


def check_trimap(trimap, name: str = "trimap", *, shape: tuple[int, ...] | None = None,
                 sample_id: str | None = None) -> np.ndarray:
    """Validate a uint8 trimap (0 / 128 / 255) that has lesion and background pixels."""
    arr = np.asarray(trimap)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (rows, cols), got shape {arr.shape}", sample_id=sample_id)
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(f"{name} shape {arr.shape} does not match image shape {tuple(shape)}", sample_id=sample_id)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer array in {{0, 128, 255}}, got dtype {arr.dtype}",
                         sample_id=sample_id)
    bad = ~np.isin(arr, (TRIMAP_BACKGROUND, TRIMAP_UNKNOWN, TRIMAP_LESION))
    if bad.any():
        raise InputError(f"{name} has values outside {{0, 128, 255}}: {np.unique(arr[bad])[:6].tolist()}",
                         sample_id=sample_id)
    if not (arr == TRIMAP_LESION).any():
        raise InputError(f"{name} has no lesion (255) pixel", sample_id=sample_id)
    if not (arr == TRIMAP_BACKGROUND).any():
        raise InputError(f"{name} has no background (0) pixel", sample_id=sample_id)
    return arr.astype(np.uint8, copy=False)
