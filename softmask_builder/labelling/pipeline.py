"""Prior -> trimap -> closed-form matting -> Soft Mask, for the three kinds of prior.

This module only composes the stages (:mod:`softmask_builder.labelling.trimap`, :mod:`softmask_builder.labelling.recist`, :mod:`softmask_builder.labelling.window`,
:mod:`softmask_builder.labelling.matting`); every tunable lives in :class:`LabelParams`, whose JSON is stored with every
built dataset.

What ``binary_mask`` means per prior (the dataset's binary ground truth):

* RECIST (DeepLesion): the binarized Soft Mask (alpha >= 0.5), the paper's "accurate binary mask";
  the GrabCut mask it started from is only the trimap's source.
* several readers (LIDC-IDRI): the consensus mask at ``params.consensus`` (50 % as in the paper).
* binary mask (ISBI / PROMISE style): the given mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from softmask_builder.core.validate import as_image2d, as_mask2d
from softmask_builder.errors import InputError


#: Upper bounds of :class:`LabelParams` (a recipe also keeps them inside its crop).
MAX_BAND_PX = 32.0
MAX_RADIUS_PX = 10
RECIST_METHODS = ("region", "uls23")


@dataclass(frozen=True)
class LabelParams:
    """Tunables of the labelling stages.

    Defaults chosen by the written rule (``benchmarks/bench_accuracy.choose_params``) on the choosing
    part of ``benchmarks/bench_accuracy_hybrid.py`` (issue 27: band_px 1, recist_band_px 5, eps 1e-5,
    deblur_iterations 1, window (-700, 1000) HU; docs/ACCURACY.md).

    band_px : half-width of the unknown band for strategy 1, in pixels (erode and dilate the mask
        by this many pixels; the band is ~2*band_px wide).
    recist_band_px : the same for strategy 3's GrabCut mask. Separate from ``band_px`` since issue
        27: GrabCut's edge follows the *blurred* image and lies inside the lesion's, so the band
        around it has to reach further out than around a given mask to hold the true edge.
    eps : regularisation epsilon of the matting Laplacian (Levin et al. Eq. 8, 1-channel form).
    radius : matting window radius in pixels (1 -> 3x3 windows).
    window_level_hu, window_width_hu : CT window mapped to [0, 1] before matting and GrabCut.
    grabcut_iterations : OpenCV GrabCut iterations for RECIST priors (``recist_method`` "region";
        the "uls23" recipe always runs its own 25).
    consensus : reader fraction for the LIDC binary ground truth (0.5 = 50 % consensus).
    recist_method : how strategy 3 turns a RECIST mark into the mask its trimap is made from:
        "region" (:func:`softmask_builder.labelling.recist.mask_from_recist`, this project's region-bounded GrabCut) or
        "uls23" (:func:`softmask_builder.labelling.recist.mask_from_recist_uls23`, the ULS23 challenge's GrabCut recipe).
        The trimap (:func:`softmask_builder.labelling.recist.trimap_from_recist_mask`) and the matting are the same.
    deblur_iterations : projected Van Cittert steps that take the scanner blur out of the matting's
        alpha (:func:`softmask_builder.labelling.blur.deblur_alpha`), for every strategy; 0 = off
        (the Soft Mask is the matting's alpha, as before issue 27). The matting recovers the
        *blurred* fraction, whose 0.5 contour lies inside the lesion's (docs/ACCURACY.md).
    psf_sigma_px : sigma of that blur in crop pixels; 0 = measured on each crop from the image's edge
        across the alpha's 0.5 contour (:func:`softmask_builder.labelling.blur.psf_sigma_for_deblur`).
    psf_sigma_fallback_px : the sigma used when it cannot be measured (tiny or edge-less lesions).

    Ranges (checked on construction, :class:`InputError` naming ``label.<field>``): band_px and
    recist_band_px in [0, 32]; eps in (0, 1]; radius an integer in [1, 10]; window_level_hu in [-2048, 4096];
    window_width_hu in (0, 8192]; grabcut_iterations an integer in [1, 100]; consensus in (0, 1];
    deblur_iterations an integer in [0, 100]; psf_sigma_px and psf_sigma_fallback_px in [0, 32].
    """

    band_px: float = 1.0
    recist_band_px: float = 5.0
    eps: float = 1e-5
    radius: int = 1
    window_level_hu: float = -700.0
    window_width_hu: float = 1000.0
    grabcut_iterations: int = 5
    consensus: float = 0.5
    recist_method: Literal["region", "uls23"] = "region"
    deblur_iterations: int = 1
    psf_sigma_px: float = 0.0
    psf_sigma_fallback_px: float = 1.35

    def __post_init__(self):
        if self.recist_method not in RECIST_METHODS:
            raise InputError(f"label.recist_method must be one of {', '.join(RECIST_METHODS)}, got {self.recist_method!r}")
        # Checked here, when a recipe is loaded (and so by ``--dry-run``), rather than by the
        # stages, which would reject every sample one by one at label time.
        def number(name, low, high, *, low_open=False, integer=False):
            value = getattr(self, name)
            kind = "an integer" if integer else "a finite number"
            ok_type = (isinstance(value, (int, np.integer)) if integer
                       else isinstance(value, (int, float, np.integer, np.floating))) and not isinstance(value, bool)
            if not ok_type or not math.isfinite(value):
                raise InputError(f"label.{name} must be {kind}, got {value!r}")
            if (value <= low if low_open else value < low) or value > high:
                raise InputError(f"label.{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")

        number("band_px", 0.0, MAX_BAND_PX)
        number("recist_band_px", 0.0, MAX_BAND_PX)
        number("eps", 0.0, 1.0, low_open=True)
        number("radius", 1, MAX_RADIUS_PX, integer=True)
        number("window_level_hu", -2048.0, 4096.0)
        number("window_width_hu", 0.0, 8192.0, low_open=True)
        number("grabcut_iterations", 1, 100, integer=True)
        number("consensus", 0.0, 1.0, low_open=True)
        number("deblur_iterations", 0, 100, integer=True)
        number("psf_sigma_px", 0.0, 32.0)
        number("psf_sigma_fallback_px", 0.0, 32.0)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class Labels:
    """The labels of one sample: uint8 trimap (0/128/255), float32 Soft Mask in [0, 1],
    bool binary mask, all (rows, cols) (all (Z, H, W) from :mod:`softmask_builder.labelling.pipeline3d`)."""

    trimap: np.ndarray
    soft_mask: np.ndarray
    binary_mask: np.ndarray


def _windowed(image_hu, params: LabelParams, sample_id):
    from softmask_builder.labelling.window import window_hu

    image = as_image2d(image_hu, "image_hu", sample_id=sample_id)
    return window_hu(image, level_hu=params.window_level_hu, width_hu=params.window_width_hu)


def _alpha(image_hu, image01, trimap, params: LabelParams, sample_id=None) -> np.ndarray:
    """Matting, then (``params.deblur_iterations`` > 0) the scanner blur taken out of it."""
    from softmask_builder.labelling.matting import closed_form_alpha

    alpha = closed_form_alpha(image01, trimap, eps=params.eps, radius=params.radius)
    return deblur_soft_mask(image_hu, alpha, params, sample_id=sample_id)


def deblur_soft_mask(image_hu, alpha, params: LabelParams, *, sample_id=None) -> np.ndarray:
    """The Soft Mask from the matting's alpha: ``alpha`` itself when ``params.deblur_iterations``
    is 0, else :func:`softmask_builder.labelling.blur.deblur_alpha` with the sigma of
    :func:`softmask_builder.labelling.blur.psf_sigma_for_deblur` measured on ``image_hu`` (the crop
    in HU) (float32 (rows, cols) in [0, 1])."""
    from softmask_builder.labelling.blur import deblur_alpha, psf_sigma_for_deblur

    if params.deblur_iterations == 0:
        return alpha
    sigma = psf_sigma_for_deblur(image_hu, alpha, psf_sigma_px=params.psf_sigma_px,
                                 fallback_sigma_px=params.psf_sigma_fallback_px, sample_id=sample_id)
    return deblur_alpha(alpha, psf_sigma_px=sigma, iterations=params.deblur_iterations, sample_id=sample_id)


def label_from_mask(image_hu, mask, params: LabelParams = LabelParams(), *, sample_id=None) -> Labels:
    """Strategy 1: trimap by erode/dilate of a binary mask, then matting. binary_mask = mask."""
    from softmask_builder.labelling.trimap import trimap_from_mask

    image01 = _windowed(image_hu, params, sample_id)
    mask = as_mask2d(mask, "mask", sample_id=sample_id)
    if mask.shape != image01.shape:
        raise InputError(f"mask shape {mask.shape} does not match image shape {image01.shape}", sample_id=sample_id)
    trimap = trimap_from_mask(mask, band_px=params.band_px, sample_id=sample_id)
    return Labels(trimap, _alpha(image_hu, image01, trimap, params, sample_id), mask)


def label_from_readers(image_hu, reader_masks: Sequence[np.ndarray], params: LabelParams = LabelParams(), *,
                       sample_id=None) -> Labels:
    """Strategy 2 (Eqs. 2-4): lesion = intersection, background = outside the union; binary
    mask = consensus at ``params.consensus`` of the readers."""
    from softmask_builder.labelling.trimap import consensus_mask, trimap_from_readers

    image01 = _windowed(image_hu, params, sample_id)
    trimap = trimap_from_readers(reader_masks, sample_id=sample_id)
    if trimap.shape != image01.shape:
        raise InputError(f"reader masks shape {trimap.shape} does not match image shape {image01.shape}",
                         sample_id=sample_id)
    binary = consensus_mask(reader_masks, level=params.consensus, sample_id=sample_id)
    return Labels(trimap, _alpha(image_hu, image01, trimap, params, sample_id), binary)


def label_from_recist(image_hu, recist, params: LabelParams = LabelParams(), *, sample_id=None) -> Labels:
    """Strategy 3: GrabCut seeded by the RECIST axes and kept inside the region the mark allows ->
    mask -> strategy-1 trimap with the axes' inner part as lesion and background outside the
    region (:func:`softmask_builder.labelling.recist.trimap_from_recist`) -> matting (``params.recist_method`` "uls23": the
    mask from the ULS23 recipe instead, same trimap and matting); binary mask = binarized Soft Mask
    (alpha >= 0.5), hence also inside the region."""
    from softmask_builder.labelling.recist import (mask_from_recist_uls23, recist_region, trimap_from_recist,
                                                   trimap_from_recist_mask)

    image01 = _windowed(image_hu, params, sample_id)
    if params.recist_method == "uls23":
        mask = mask_from_recist_uls23(image_hu, recist, sample_id=sample_id)
        trimap = trimap_from_recist_mask(mask, recist, band_px=params.recist_band_px, sample_id=sample_id)
    else:
        trimap, _ = trimap_from_recist(image01, recist, band_px=params.recist_band_px,
                                       iterations=params.grabcut_iterations, sample_id=sample_id)
    alpha = _alpha(image_hu, image01, trimap, params, sample_id)
    if params.deblur_iterations:
        # The deblurred edge moves outward; the mark still rules out lesion outside its region.
        alpha = np.where(recist_region(recist, alpha.shape, sample_id=sample_id), alpha, np.float32(0.0))
    return Labels(trimap, alpha, alpha >= 0.5)
