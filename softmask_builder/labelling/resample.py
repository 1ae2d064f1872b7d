"""Near-isotropic resampling of a (Z, H, W) volume along z for 3-D matting, and back (issue 26 item 1).

Thick CT slices (LIDC: 1.25-2.5 mm against 0.6-0.8 mm pixels) make a (2r+1)^3 matting window a
flat slab. Before matting, the volume is split along z only into ``k`` sub-slices per voxel
(in-plane stays); after matting, each voxel's ``k`` sub-slice alphas are averaged back.

Grid convention (used by every function here): voxel ``z`` of a volume covers the slab
``[z - 1/2, z + 1/2)`` in voxel units along z. Its ``k`` sub-slices tile that slab: sub-slice
``j`` (fine index ``f = z * k + j``, ``j = 0 .. k-1``) covers ``[z - 1/2 + j/k, z - 1/2 + (j+1)/k)``
and is centred at coarse coordinate ``c(f) = (f + 1/2) / k - 1/2``. This is
``scipy.ndimage.zoom(..., grid_mode=True)``'s convention. Because the sub-slices tile the voxel,
the mean of a voxel's sub-slice fractions is that voxel's fraction: averaging is the exact
down-sampling of an alpha (an area / volume fraction), and going back reproduces any volume that
is constant along each voxel's sub-slices (:func:`downsample_fraction_z` of
:func:`upsample_mask_z` is the identity).

Pure functions on arrays; no I/O.
"""

from __future__ import annotations

import math

import numpy as np

from softmask_builder.core.validate import TRIMAP_BACKGROUND, TRIMAP_LESION, TRIMAP_UNKNOWN, as_image3d, as_mask3d
from softmask_builder.errors import InputError

__all__ = ["MAX_Z_FACTOR", "check_spacing_mm", "z_upsampling_factor", "fine_spacing_mm", "upsample_image_z",
           "upsample_mask_z", "downsample_fraction_z", "downsample_trimap_z"]

#: Largest z up-sampling factor (a 5 mm slice over 0.6 mm pixels asks for 8). Beyond it the fine
#: grid stays coarser than isotropic rather than growing the matting system without bound.
MAX_Z_FACTOR = 8


def check_spacing_mm(spacing_mm, *, sample_id: str | None = None) -> tuple[float, float, float]:
    """``spacing_mm`` as ``(z_mm, row_mm, col_mm)`` floats, each finite and > 0, or InputError naming it."""
    try:
        spacing = np.asarray(spacing_mm, dtype=np.float64)
    except (TypeError, ValueError):
        spacing = None
    if spacing is None or spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"spacing_mm must be (z_mm, row_mm, col_mm), finite and > 0, got {spacing_mm!r}",
                         sample_id=sample_id)
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def z_upsampling_factor(spacing_mm, *, sample_id: str | None = None) -> int:
    """Sub-slices per voxel that make the fine grid near-isotropic: ``k = max(1, round(z_mm / min(row_mm, col_mm)))``.

    Rounding is half-up (``floor(x + 0.5)``, not Python's half-to-even), capped at
    :data:`MAX_Z_FACTOR`. Slices thinner than 1.5 pixels give ``k = 1`` (no resampling).

    Examples: (2.5, 0.7, 0.7) -> 4 (fine slices 0.625 mm); (1.25, 0.66, 0.66) -> 2; (1, 1, 1) -> 1;
    (0.5, 1, 1) -> 1.

    Raises
    ------
    InputError
        ``spacing_mm`` not three finite numbers > 0 (the message names ``spacing_mm``).
    """
    z_mm, row_mm, col_mm = check_spacing_mm(spacing_mm, sample_id=sample_id)
    ratio = z_mm / min(row_mm, col_mm)
    return int(min(max(1, math.floor(ratio + 0.5)), MAX_Z_FACTOR))


def fine_spacing_mm(spacing_mm, *, factor: int, sample_id: str | None = None) -> tuple[float, float, float]:
    """Voxel spacing of the fine grid: ``(z_mm / factor, row_mm, col_mm)``."""
    z_mm, row_mm, col_mm = check_spacing_mm(spacing_mm, sample_id=sample_id)
    k = _check_factor(factor, sample_id)
    return z_mm / k, row_mm, col_mm


def _check_factor(factor, sample_id) -> int:
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise InputError(f"factor must be an integer >= 1, got {factor!r}", sample_id=sample_id)
    return int(factor)


def _as_volume(array, name: str, sample_id) -> np.ndarray:
    return as_image3d(array, name, sample_id=sample_id)


def upsample_image_z(image, *, factor: int, sample_id: str | None = None) -> np.ndarray:
    """Image on the fine grid by linear interpolation along z at the sub-slice centres.

    Fine slice ``f`` is the linear interpolation of the coarse slices at ``c(f) = (f + 1/2) / k - 1/2``
    (module docstring); ``c(f) < 0`` or ``> Z - 1`` (the outer half of the first and last voxel)
    takes the end slice (edge replicated: no extrapolation). Equal to
    ``scipy.ndimage.zoom(image, (k, 1, 1), order=1, mode="nearest", grid_mode=True)`` and to
    ``np.interp`` along z. Linear, not cubic: it never leaves the range of its two neighbours, so
    a windowed image stays in [0, 1] and no ringing is added at the nodule's caps for the matting
    to follow.

    Parameters
    ----------
    image : (Z, H, W) real array, finite (HU or windowed)
    factor : int >= 1, keyword-only
        Sub-slices per voxel (:func:`z_upsampling_factor`).

    Returns
    -------
    numpy.ndarray
        float64 (Z * factor, H, W). ``factor = 1``: the image itself (as float64). ``Z = 1``: the
        slice repeated ``factor`` times.

    Raises
    ------
    InputError
        ``image`` not 3-D, not real, empty or not finite; ``factor`` not an integer >= 1.
    """
    img = _as_volume(image, "image", sample_id)
    k = _check_factor(factor, sample_id)
    if k == 1:
        return img.copy()
    n_z = img.shape[0]
    centres = (np.arange(n_z * k, dtype=np.float64) + 0.5) / k - 0.5
    pos = np.clip(centres, 0.0, n_z - 1.0)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_z - 1)
    hi = np.minimum(lo + 1, n_z - 1)
    w = (pos - lo)[:, None, None]
    return img[lo] * (1.0 - w) + img[hi] * w


def upsample_mask_z(mask, *, factor: int, allow_empty: bool = True, sample_id: str | None = None) -> np.ndarray:
    """Binary mask on the fine grid: each sub-slice takes its voxel's value (``np.repeat`` along z).

    This is exactly "linear interpolation of the mask at the sub-slice centres, then >= 0.5": every
    sub-slice centre of voxel ``z`` lies strictly closer to ``z`` than to ``z +- 1`` (never half-way),
    so the interpolated value is >= 0.5 exactly where voxel ``z`` is set. It is *not* shape-based
    interpolation of signed distances (Raya & Udupa 1990), on purpose: it keeps each reader's
    outline on each slice and the mask's volume exactly (:func:`downsample_fraction_z` of it gives the
    mask back), and the band of the 3-D trimap made on the fine grid is what covers the unknown
    position of the surface between two slice centres. A smoother (shape-based) fine mask is a
    choice for the truth study, not made here.

    Parameters
    ----------
    mask : (Z, H, W) binary array (bool, {0, 1} or {0, 255})
    factor : int >= 1, keyword-only
    allow_empty : bool
        An all-empty mask is allowed by default (a reader who did not mark the nodule).

    Returns
    -------
    numpy.ndarray
        bool (Z * factor, H, W); ``factor = 1``: the mask as bool.
    """
    m = as_mask3d(mask, "mask", allow_empty=allow_empty, sample_id=sample_id)
    k = _check_factor(factor, sample_id)
    return np.repeat(m, k, axis=0)


def downsample_fraction_z(alpha_fine, *, factor: int, sample_id: str | None = None) -> np.ndarray:
    """A fine-grid fraction (alpha) back on the original grid: the mean of each voxel's ``factor`` sub-slices.

    Exact down-sampling of a volume fraction, since the sub-slices tile the voxel (module
    docstring): a voxel whose sub-slices are all 0 (1) gets exactly 0 (1), and a surface at a
    sub-slice boundary ``j / k`` into the voxel gives exactly ``j / k``.

    Parameters
    ----------
    alpha_fine : (Z * factor, H, W) real array, finite
    factor : int >= 1, keyword-only

    Returns
    -------
    numpy.ndarray
        float32 (Z, H, W) (the mean is taken in float64, in a fixed order, then rounded once).

    Raises
    ------
    InputError
        ``alpha_fine`` not 3-D / not finite, or its number of slices not a multiple of ``factor``.
    """
    a = _as_volume(alpha_fine, "alpha_fine", sample_id)
    k = _check_factor(factor, sample_id)
    if a.shape[0] % k:
        raise InputError(f"alpha_fine has {a.shape[0]} slices, not a multiple of factor={k}", sample_id=sample_id)
    if k == 1:
        return a.astype(np.float32)
    total = a[0::k].copy()
    for j in range(1, k):
        total += a[j::k]
    return (total / k).astype(np.float32)


def downsample_trimap_z(trimap_fine, *, factor: int, sample_id: str | None = None) -> np.ndarray:
    """A fine-grid trimap on the original grid: a voxel is lesion (background) when all its
    sub-slices are lesion (background), unknown otherwise.

    So a known voxel of the result has all its sub-slices known, and the alpha from
    :func:`downsample_fraction_z` is exactly 1 (0) there: the encoding's promise holds on the
    original grid. Returns uint8 (Z, H, W) in {0, 128, 255}; InputError if the slices are not a
    multiple of ``factor`` or values are outside {0, 128, 255}.
    """
    tri = np.asarray(trimap_fine)
    k = _check_factor(factor, sample_id)
    if tri.ndim != 3 or not np.issubdtype(tri.dtype, np.integer):
        raise InputError(f"trimap_fine must be a 3-D integer array, got shape {tri.shape} dtype {tri.dtype}",
                         sample_id=sample_id)
    if not np.all(np.isin(tri, (TRIMAP_BACKGROUND, TRIMAP_UNKNOWN, TRIMAP_LESION))):
        raise InputError("trimap_fine has values outside {0, 128, 255}", sample_id=sample_id)
    if tri.shape[0] % k:
        raise InputError(f"trimap_fine has {tri.shape[0]} slices, not a multiple of factor={k}", sample_id=sample_id)
    blocks = tri.reshape(tri.shape[0] // k, k, *tri.shape[1:])
    out = np.full(blocks.shape[:1] + blocks.shape[2:], TRIMAP_UNKNOWN, np.uint8)
    out[np.all(blocks == TRIMAP_LESION, axis=1)] = TRIMAP_LESION
    out[np.all(blocks == TRIMAP_BACKGROUND, axis=1)] = TRIMAP_BACKGROUND
    return out
