"""Soft-label baselines compared with the Soft Mask (the paper's Table IV), chosen by name.

* ``"binary"``: the mask itself as float32 (0 / 1).
* ``"kats"``: Kats et al. 2019 (soft labels from dilation: a ring of fixed probability).
* ``"softseg"``: Gros et al. 2021 (SoftSeg: soft edges from resampling without binarization).
* ``"matting"``: the Soft Mask, closed-form matting (Levin et al. 2008) on the windowed image.

Every label is float32 (rows, cols) in [0, 1], the shape of the mask.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from softmask_builder.core.validate import as_image2d, as_mask2d, check_trimap
from softmask_builder.errors import InputError
from softmask_builder.labelling.trimap import band_footprint, trimap_from_mask

__all__ = ["kats_soft_label", "softseg_soft_label", "soft_label", "SOFT_LABELS"]

SOFT_LABELS = ("binary", "kats", "softseg", "matting")


def kats_soft_label(mask, *, ring_px: float = 2, p: float = 0.5, sample_id: str | None = None) -> np.ndarray:
    """Kats et al. 2019: lesion 1, a ring of width ``ring_px`` around it at probability ``p``, rest 0.

    The ring is ``dilate(mask, disk(ring_px)) & ~mask`` with the Euclidean disk of
    :func:`softmask_builder.labelling.trimap.band_footprint` (pixels outside the crop count as background).

    Parameters
    ----------
    mask : array_like, (rows, cols)
        Binary lesion mask; may be empty (the label is then all zeros).
    ring_px : float, >= 0
        Radius of the dilation in pixels; 0 gives the binary mask.
    p : float in [0, 1]
        Value of the ring pixels.

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols), values in {0, p, 1}.
    """
    m = as_mask2d(mask, "mask", allow_empty=True, sample_id=sample_id)
    if not (isinstance(ring_px, (int, float, np.integer, np.floating)) and math.isfinite(ring_px) and ring_px >= 0):
        raise InputError(f"ring_px must be a finite number >= 0, got {ring_px!r}", sample_id=sample_id)
    if not (isinstance(p, (int, float, np.integer, np.floating)) and 0.0 <= p <= 1.0):
        raise InputError(f"p must be a number in [0, 1], got {p!r}", sample_id=sample_id)
    dilated = cv2.dilate(m.astype(np.uint8), band_footprint(float(ring_px))).astype(bool)
    out = np.zeros(m.shape, dtype=np.float32)
    out[dilated] = np.float32(p)
    out[m] = 1.0
    return out


def softseg_soft_label(mask, *, factor: int = 4, sample_id: str | None = None) -> np.ndarray:
    """SoftSeg (Gros et al. 2021): soft edges from resampling the mask without binarization.

    SoftSeg's soft ground truth is what a binary mask becomes when the preprocessing resamples it
    with linear interpolation and does not threshold it again: pixels straddling the edge get
    their partial-volume fraction. We reproduce that on one crop by a down/up round trip:

    1. down-sample by ``factor`` to ``(max(1, round(rows / factor)), max(1, round(cols /
       factor)))`` with ``cv2.INTER_AREA``: each coarse pixel is the mean of the fine pixels it
       covers, i.e. the fraction of lesion in it (for sizes divisible by ``factor``, exactly the
       ``factor x factor`` block mean). This is linear interpolation's anti-aliased form: plain
       point-sampled linear interpolation would only read 2 of every ``factor`` rows and drop thin
       lesions;
    2. up-sample back to (rows, cols) with ``cv2.INTER_LINEAR`` (bilinear, pixel centres aligned,
       edges replicated), the linear resampling of SoftSeg's pipeline;
    3. no binarization; the result is clipped to [0, 1] only against float rounding.

    Parameters
    ----------
    mask : array_like, (rows, cols)
        Binary lesion mask; may be empty.
    factor : int, >= 1
        Down-sampling factor; 1 returns the mask as float32. Larger factors give wider soft edges
        (about ``factor`` pixels on each side of the edge).

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols) in [0, 1].
    """
    m = as_mask2d(mask, "mask", allow_empty=True, sample_id=sample_id)
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise InputError(f"factor must be an integer >= 1, got {factor!r}", sample_id=sample_id)
    src = m.astype(np.float32)
    if factor == 1:
        return src
    rows, cols = m.shape
    small = (max(1, round(cols / factor)), max(1, round(rows / factor)))  # cv2 sizes are (width, height)
    coarse = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
    fine = cv2.resize(coarse, (cols, rows), interpolation=cv2.INTER_LINEAR)
    return np.clip(fine, 0.0, 1.0).astype(np.float32, copy=False)


def _check_kwargs(name: str, kw: dict, allowed: tuple[str, ...], sample_id) -> None:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise InputError(f"soft label {name!r} does not take {unknown}; it takes {list(allowed) or 'no options'}",
                         sample_id=sample_id)


def soft_label(name: str, *, mask, image01=None, trimap=None, eps: float = 1e-7,
               sample_id: str | None = None, **kw) -> np.ndarray:
    """Training label of one sample by method name (the baselines of the paper's Table IV).

    Parameters
    ----------
    name : {"binary", "kats", "softseg", "matting"}
    mask : array_like, (rows, cols)
        Binary lesion mask (all methods; "matting" uses it only when ``trimap`` is not given).
    image01 : array_like, (rows, cols), optional
        Windowed image in [0, 1]; required by "matting".
    trimap : array_like uint8, optional
        0 / 128 / 255 trimap for "matting"; default ``trimap_from_mask(mask, band_px=band_px)``
        with ``band_px`` from ``kw`` (default 2, as :class:`~softmask_builder.labelling.pipeline.LabelParams`).
    eps : float
        Matting regularisation (Levin et al. Eq. 8); only "matting" uses it.
    **kw
        Method options: "kats": ``ring_px``, ``p``; "softseg": ``factor``; "matting": ``band_px``,
        ``radius``. Any other option raises.

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols) in [0, 1].

    Raises
    ------
    InputError
        Unknown name (the message lists the names), an option the method does not take, missing
        ``image01`` for "matting", bad inputs.
    """
    if name == "binary":
        _check_kwargs(name, kw, (), sample_id)
        return as_mask2d(mask, "mask", allow_empty=True, sample_id=sample_id).astype(np.float32)
    if name == "kats":
        _check_kwargs(name, kw, ("ring_px", "p"), sample_id)
        return kats_soft_label(mask, sample_id=sample_id, **kw)
    if name == "softseg":
        _check_kwargs(name, kw, ("factor",), sample_id)
        return softseg_soft_label(mask, sample_id=sample_id, **kw)
    if name == "matting":
        _check_kwargs(name, kw, ("band_px", "radius"), sample_id)
        if image01 is None:
            raise InputError("soft label 'matting' needs image01 (the windowed image in [0, 1])", sample_id=sample_id)
        image = as_image2d(image01, "image01", sample_id=sample_id)
        band_px = kw.pop("band_px", None)
        if trimap is not None and band_px is not None:
            raise InputError("band_px is only used to build the trimap; it was given together with trimap",
                             sample_id=sample_id)
        if trimap is None:
            band_px = 2.0 if band_px is None else band_px
            trimap = trimap_from_mask(mask, band_px=band_px, sample_id=sample_id)
        trimap = check_trimap(trimap, shape=image.shape, sample_id=sample_id)
        from softmask_builder.labelling.matting import closed_form_alpha  # written separately; imported when first needed

        alpha = closed_form_alpha(image, trimap, eps=eps, **kw)
        return np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    raise InputError(f"unknown soft label {name!r}; choose one of {list(SOFT_LABELS)}", sample_id=sample_id)
