"""Agreement between a prediction and a reference: Dice for masks, SAD and MSE for alpha mattes.

Every function takes two arrays of the same shape (any number of dimensions, so a batch
(N, rows, cols) works as well as one image) and returns a Python float.
"""

from __future__ import annotations

import numpy as np

from softmask_builder.errors import InputError

__all__ = ["dice", "sad", "mse"]


def _binary(arr, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{name} must be boolean or numeric, got dtype {a.dtype}")
    if not np.all((a == 0) | (a == 1)):
        raise InputError(f"{name} must be binary (bool or 0/1); threshold a soft map first "
                         f"(e.g. alpha >= 0.5)")
    return a != 0


def _real(arr, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} has {int(np.count_nonzero(~np.isfinite(a)))} NaN/inf values")
    return a


def _same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise InputError(f"{names[0]} shape {a.shape} does not match {names[1]} shape {b.shape}")
    if a.size == 0:
        raise InputError(f"{names[0]} and {names[1]} are empty arrays (shape {a.shape})")


def dice(pred, truth) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two binary masks.

    Parameters
    ----------
    pred, truth : array_like, same shape
        Binary masks (bool or 0/1). Soft maps must be thresholded by the caller.

    Returns
    -------
    float
        In [0, 1]. Both masks empty gives 1.0 (they agree perfectly that there is no lesion); one
        empty and the other not gives 0.0.

    Raises
    ------
    InputError
        Shape mismatch, empty arrays, non-binary values.
    """
    p = _binary(pred, "pred")
    t = _binary(truth, "truth")
    _same_shape(p, t, ("pred", "truth"))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total


def sad(alpha, truth) -> float:
    """Sum of absolute differences ``sum |alpha - truth|``, in pixels (not divided by 1000).

    Parameters
    ----------
    alpha, truth : array_like, same shape
        Mattes (or masks) with values normally in [0, 1]; they are not clipped.

    Returns
    -------
    float
        >= 0; one fully wrong pixel counts 1.

    Raises
    ------
    InputError
        Shape mismatch, empty arrays, non-numeric or non-finite values.
    """
    a = _real(alpha, "alpha")
    t = _real(truth, "truth")
    _same_shape(a, t, ("alpha", "truth"))
    return float(np.abs(a - t).sum())


def mse(alpha, truth) -> float:
    """Mean squared error ``mean((alpha - truth) ** 2)`` over all pixels.

    Raises
    ------
    InputError
        Shape mismatch, empty arrays, non-numeric or non-finite values.
    """
    a = _real(alpha, "alpha")
    t = _real(truth, "truth")
    _same_shape(a, t, ("alpha", "truth"))
    return float(np.mean((a - t) ** 2))
