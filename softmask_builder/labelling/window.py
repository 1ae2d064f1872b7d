"""CT intensity window: Hounsfield units -> [0, 1] for GrabCut and matting."""

from __future__ import annotations

import math

import numpy as np

from softmask_builder.errors import InputError


def window_hu(image_hu, *, level_hu: float, width_hu: float) -> np.ndarray:
    """Map a CT image in Hounsfield units to [0, 1] by a clipped linear window.

    ``out = clip((image_hu - (level_hu - width_hu / 2)) / width_hu, 0, 1)``: values at or below
    ``level_hu - width_hu / 2`` map to 0, values at or above ``level_hu + width_hu / 2`` map to 1.

    Parameters
    ----------
    image_hu : array_like, numeric, any shape (a 2-D (rows, cols) slice or a stack)
        Image in Hounsfield units. Must be finite.
    level_hu : float
        Window centre in HU (the lung window used by the pipeline is -600).
    width_hu : float
        Window width in HU, > 0 (the lung window is 1500).

    Returns
    -------
    numpy.ndarray
        float64 array of the input's shape, values in [0, 1].

    Raises
    ------
    InputError
        Non-numeric, empty or non-finite ``image_hu``; non-finite ``level_hu``; ``width_hu`` not
        finite and > 0.
    """
    if not (isinstance(level_hu, (int, float, np.integer, np.floating)) and math.isfinite(level_hu)):
        raise InputError(f"level_hu must be a finite number, got {level_hu!r}")
    if not (isinstance(width_hu, (int, float, np.integer, np.floating)) and math.isfinite(width_hu)
            and width_hu > 0):
        raise InputError(f"width_hu must be a finite number > 0, got {width_hu!r}")
    arr = np.asarray(image_hu)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"image_hu must be a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"image_hu is empty, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"image_hu has {int(np.count_nonzero(~np.isfinite(arr)))} NaN/inf pixels")
    low = float(level_hu) - float(width_hu) / 2.0
    out = (arr - low) / float(width_hu)
    return np.clip(out, 0.0, 1.0, out=out)
