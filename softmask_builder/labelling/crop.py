"""Crop a fixed-size window around a lesion (2-D crops rescale a lesion larger than the crop,
3-D crops refuse it).

Policy (stored per sample as ``origin_px`` and ``scale``):

* The crop is centred on ``center_rc`` (the lesion's centre in source pixels, (row, col)).
* If the lesion's extent ``extent_px`` (e.g. the RECIST long axis, or the bounding-box diagonal of a
  mask) is larger than ``max_fill * size_px``, the source is first down-scaled by
  ``scale = max_fill * size_px / extent_px`` (area interpolation) so the lesion and a margin for the
  unknown band fit; otherwise ``scale = 1``. Lesions are never up-scaled.
* Pixels outside the source image: an *image* is filled by edge replication (no artificial edge
  that GrabCut or matting could lock onto; ``outside="edge"``, the default); a *label mask* is
  filled with 0 (``outside="zero"``): a mask touching the border must not grow into pixels that
  no reader drew. ``origin_px`` is then negative or beyond the image.

Mapping: crop pixel (r, c) samples source position ``origin_px + (r, c) / scale``.

3-D (volume shards, issue 26): :func:`volume_crop_plan` and :func:`crop_volume` cut a fixed
(Z, H, W) window (default :data:`VOLUME_CROP_ZRC`) at the source's native voxel spacing, with the
same padding rule; they never rescale, and a lesion that does not fit is refused
(:class:`VolumeFitError`, a rejects row in a build). Why: docs/FORMAT.md, "Volume shards".
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from softmask_builder.errors import InputError


def crop_plan(center_rc, *, size_px: int, extent_px: float, max_fill: float = 0.75) -> tuple[tuple[float, float], float]:
    """Return ``(origin_px, scale)`` for a crop of ``size_px`` around ``center_rc``.

    ``origin_px`` is the source (row, col) that crop pixel (0, 0) samples; it is a whole number of
    source pixels when ``scale == 1``.
    """
    if size_px < 4:
        raise InputError(f"size_px must be >= 4, got {size_px}")
    if not (np.all(np.isfinite(center_rc)) and math.isfinite(extent_px)) or extent_px < 0:
        raise InputError(f"center_rc/extent_px must be finite and extent >= 0, got {center_rc}, {extent_px}")
    limit = max_fill * size_px
    scale = 1.0 if extent_px <= limit else float(limit / extent_px)
    half = size_px / 2.0
    if scale == 1.0:
        origin = (float(math.floor(center_rc[0] + 0.5 - half)), float(math.floor(center_rc[1] + 0.5 - half)))
    else:
        origin = (float(center_rc[0] - half / scale), float(center_rc[1] - half / scale))
    return origin, scale


def _window(img: np.ndarray, r0: int, c0: int, n_rows: int, n_cols: int, outside: str) -> np.ndarray:
    """``img[r0:r0+n_rows, c0:c0+n_cols]`` with rows/cols outside the image edge-replicated
    (``outside="edge"``) or set to 0 (``"zero"``)."""
    rows, cols = np.arange(r0, r0 + n_rows), np.arange(c0, c0 + n_cols)
    out = img[np.ix_(np.clip(rows, 0, img.shape[0] - 1), np.clip(cols, 0, img.shape[1] - 1))]
    if outside == "zero":
        out = out.copy()
        out[(rows < 0) | (rows >= img.shape[0]), :] = 0
        out[:, (cols < 0) | (cols >= img.shape[1])] = 0
    return out


def crop_image(image: np.ndarray, origin_px, scale: float, *, size_px: int,
               interpolation: int = cv2.INTER_AREA, outside: str = "edge") -> np.ndarray:
    """Crop (and if ``scale < 1`` down-scale) ``image`` per :func:`crop_plan`; float32 output
    (uint8 stays uint8).

    ``interpolation`` is used only when ``scale != 1``: INTER_AREA for images, INTER_NEAREST for
    label masks (pass masks as uint8). ``outside`` fills crop pixels beyond the image: "edge"
    (replicate the border: images) or "zero" (label masks: a crop never invents label pixels).
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"image must be 2-D, got shape {img.shape}")
    if outside not in ("edge", "zero"):
        raise InputError(f'outside must be "edge" or "zero", got {outside!r}')
    if scale == 1.0:
        r0, c0 = int(origin_px[0]), int(origin_px[1])
        out = _window(img, r0, c0, size_px, size_px, outside)
        return out.astype(np.float32 if img.dtype != np.uint8 else np.uint8)
    # Down-scale the source region that maps onto the crop, then cut the exact window.
    src_size = size_px / scale
    r0 = int(math.floor(origin_px[0])) - 1
    c0 = int(math.floor(origin_px[1])) - 1
    n = int(math.ceil(src_size)) + 3
    region = _window(img, r0, c0, n, n, outside)
    region = region.astype(np.float32) if region.dtype != np.uint8 else region
    # Affine map crop (r, c) -> region coordinates: (origin - r0) + (r, c) / scale.
    m = np.array([[1.0 / scale, 0.0, origin_px[1] - c0], [0.0, 1.0 / scale, origin_px[0] - r0]])
    if interpolation == cv2.INTER_AREA:
        # warpAffine has no area mode; pre-blur by the down-scale factor (area-like) then sample.
        sigma = max(0.0, 0.5 * (1.0 / scale - 1.0))
        if sigma > 0:
            region = cv2.GaussianBlur(region, (0, 0), sigma)
        interpolation = cv2.INTER_LINEAR
    border = cv2.BORDER_REPLICATE if outside == "edge" else cv2.BORDER_CONSTANT
    out = cv2.warpAffine(region, m, (size_px, size_px), flags=interpolation | cv2.WARP_INVERSE_MAP,
                         borderMode=border, borderValue=0)
    return out


# ============================================================================================
# 3-D: fixed-size volume crops at the source's native voxel spacing (issue 26; docs/FORMAT.md)
# ============================================================================================
#: The default volume crop, (slices, rows, cols) = (z, row, col) voxels, at native spacing. Chosen
#: on the LIDC-IDRI annotation database (docs/FORMAT.md, "Volume shards"): every one of its 897
#: four-reader nodules fits with 2 voxels to spare on each side; a multiple of 16 on every axis.
VOLUME_CROP_ZRC = (48, 96, 96)
#: Voxels kept free between the lesion's bounding box and each face of the crop: one matting
#: window (radius 1) fits around every lesion voxel, plus one voxel of background beyond it.
VOLUME_MARGIN_PX = 2


class VolumeFitError(InputError):
    """The lesion (with its margin) is larger than the volume crop on some axis: the sample is
    rejected (volume crops are never rescaled). The message names the axis, the sizes and the fix."""


def _int_triple(value, name: str, *, minimum: int | None = None) -> tuple[int, int, int]:
    """``value`` as three ints (whole floats accepted), else :class:`InputError` naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be three numbers (z, row, col), got {value!r}") from None
    if arr.shape != (3,) or not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        raise InputError(f"{name} must be three whole numbers (z, row, col), got {value!r}")
    out = tuple(int(v) for v in arr)
    if minimum is not None and min(out) < minimum:
        raise InputError(f"{name} must be >= {minimum} on every axis, got {out}")
    return out  # type: ignore[return-value]


def volume_crop_plan(center_zrc, extent_zrc_px, *, size_zrc=VOLUME_CROP_ZRC, margin_px: int = VOLUME_MARGIN_PX,
                     sample_id: str | None = None) -> tuple[int, int, int]:
    """The origin (z, row, col) of a fixed-size volume crop around a lesion, at native spacing.

    Parameters
    ----------
    center_zrc : three floats
        Centre of the lesion's bounding box in source voxel indices (slice, row, col): ``(lo + hi)
        / 2`` per axis for a box of voxels ``lo..hi`` inclusive. Any finite value (the lesion may
        lie partly outside the series: the crop is then padded, see :func:`crop_volume`).
    extent_zrc_px : three numbers
        The bounding box's size in voxels per axis, ``hi - lo + 1`` (>= 0; fractional allowed).
    size_zrc : three ints, keyword-only
        The crop's (Z, H, W) in voxels, each >= ``2 * margin_px + 1`` (default
        :data:`VOLUME_CROP_ZRC`).
    margin_px : int, keyword-only
        Voxels required between the bounding box and each face of the crop (default 2).
    sample_id : str, optional
        Carried by the errors (a build turns them into rejects rows).

    Returns
    -------
    origin_zrc : tuple of three ints
        Source voxel (slice, row, col) of crop voxel (0, 0, 0), per axis ``floor(center + 0.5 -
        size / 2)`` (the 2-D :func:`crop_plan` rule at ``scale == 1``). May be negative or beyond
        the source (padding). For a box ``lo..hi`` centred as above, the free voxels before and
        after it are ``ceil(d / 2)`` and ``floor(d / 2)``, ``d = size - extent``.

    Raises
    ------
    VolumeFitError
        ``extent + 2 * margin_px > size`` on some axis (the message names the axis, the sizes and
        the smallest crop that would fit). Volume crops are never rescaled: the shard keeps the
        native spacing for nnU-Net / MONAI, which resample themselves (docs/FORMAT.md).
    InputError
        Non-finite centre, negative extent, a size that is not three whole numbers >= ``2 *
        margin_px + 1``, or ``margin_px`` < 0.
    """
    if isinstance(margin_px, bool) or not isinstance(margin_px, (int, np.integer)) or margin_px < 0:
        raise InputError(f"margin_px must be an integer >= 0, got {margin_px!r}", sample_id=sample_id)
    size = _int_triple(size_zrc, "size_zrc", minimum=2 * int(margin_px) + 1)
    center = np.asarray(center_zrc, dtype=np.float64)
    extent = np.asarray(extent_zrc_px, dtype=np.float64)
    if center.shape != (3,) or not np.isfinite(center).all():
        raise InputError(f"center_zrc must be three finite numbers (z, row, col), got {center_zrc!r}",
                         sample_id=sample_id)
    if extent.shape != (3,) or not np.isfinite(extent).all() or (extent < 0).any():
        raise InputError(f"extent_zrc_px must be three finite numbers >= 0 (z, row, col), got {extent_zrc_px!r}",
                         sample_id=sample_id)
    for axis, e, n in zip(("z", "row", "col"), extent, size):
        if e + 2 * margin_px > n:
            need = tuple(max(int(math.ceil(ee)) + 2 * int(margin_px), nn) for ee, nn in zip(extent, size))
            raise VolumeFitError(
                f"lesion extent {tuple(float(x) for x in extent)} voxels (z, row, col) does not fit the "
                f"{size} volume crop on axis {axis}: {e:g} + 2 x {margin_px} margin > {n}; volume crops keep "
                f"the native spacing and are never rescaled, so the sample is left out (a crop of at least "
                f"{need} voxels would hold it)", sample_id=sample_id)
    return tuple(int(math.floor(c + 0.5 - n / 2.0)) for c, n in zip(center, size))  # type: ignore[return-value]


def crop_volume(volume, origin_zrc, *, size_zrc=VOLUME_CROP_ZRC, outside: str = "edge") -> np.ndarray:
    """Cut the (Z, H, W) window at ``origin_zrc`` out of a (slices, rows, cols) volume, no resampling.

    Crop voxel (k, r, c) is source voxel ``origin_zrc + (k, r, c)``. Voxels beyond the source
    follow the 2-D :func:`crop_image` rule per axis: ``outside="edge"`` replicates the nearest
    source voxel (images: no artificial edge for the trimap or matting; beyond the first or last
    slice this repeats that slice), ``outside="zero"`` sets them to 0 (label masks: a crop never
    invents a label voxel).

    Parameters
    ----------
    volume : (Z_src, H_src, W_src) array
        Any dtype; each axis >= 1.
    origin_zrc : three whole numbers
        From :func:`volume_crop_plan`; may be negative or beyond the source.
    size_zrc : three ints >= 1, keyword-only
        Output shape (default :data:`VOLUME_CROP_ZRC`).
    outside : {"edge", "zero"}, keyword-only

    Returns
    -------
    numpy.ndarray
        (Z, H, W); bool and uint8 input keep their dtype (masks), any other becomes float32.

    Raises
    ------
    InputError
        ``volume`` not 3-D or empty; ``origin_zrc`` / ``size_zrc`` not whole numbers; unknown
        ``outside``.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise InputError(f"volume must be 3-D (slices, rows, cols) with every axis >= 1, got shape {vol.shape}")
    if outside not in ("edge", "zero"):
        raise InputError(f'outside must be "edge" or "zero", got {outside!r}')
    origin = _int_triple(origin_zrc, "origin_zrc")
    size = _int_triple(size_zrc, "size_zrc", minimum=1)
    idx = [np.arange(o, o + n) for o, n in zip(origin, size)]
    out = vol[np.ix_(*(np.clip(i, 0, s - 1) for i, s in zip(idx, vol.shape)))]
    if outside == "zero":
        for axis, (i, s) in enumerate(zip(idx, vol.shape)):
            beyond = (i < 0) | (i >= s)
            if beyond.any():
                index = [slice(None)] * 3
                index[axis] = beyond
                out[tuple(index)] = 0
    return out if out.dtype in (np.bool_, np.uint8) else out.astype(np.float32)
