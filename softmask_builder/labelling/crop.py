"""Crop a fixed-size window around a lesion, rescaling lesions larger than the crop.

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
