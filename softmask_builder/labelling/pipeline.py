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
    """Tunables of the labelling stages (chosen by ``benchmarks/bench_accuracy.py``).

    band_px : half-width of the unknown band for strategies 1 and 3, in pixels (erode and
        dilate the mask by this many pixels; the band is ~2*band_px wide).
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

    Ranges (checked on construction, :class:`InputError` naming ``label.<field>``): band_px in
    [0, 32]; eps in (0, 1]; radius an integer in [1, 10]; window_level_hu in [-2048, 4096];
    window_width_hu in (0, 8192]; grabcut_iterations an integer in [1, 100]; consensus in (0, 1].
    """

    band_px: float = 1.0
    eps: float = 1e-3
    radius: int = 1
    window_level_hu: float = -600.0
    window_width_hu: float = 1500.0
    grabcut_iterations: int = 5
    consensus: float = 0.5
    recist_method: Literal["region", "uls23"] = "region"

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
        number("eps", 0.0, 1.0, low_open=True)
        number("radius", 1, MAX_RADIUS_PX, integer=True)
        number("window_level_hu", -2048.0, 4096.0)
        number("window_width_hu", 0.0, 8192.0, low_open=True)
        number("grabcut_iterations", 1, 100, integer=True)
        number("consensus", 0.0, 1.0, low_open=True)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class Labels:
    """The labels of one sample: uint8 trimap (0/128/255), float32 Soft Mask in [0, 1],
    bool binary mask, all (rows, cols)."""

    trimap: np.ndarray
    soft_mask: np.ndarray
    binary_mask: np.ndarray


def _windowed(image_hu, params: LabelParams, sample_id):
    from softmask_builder.labelling.window import window_hu

    image = as_image2d(image_hu, "image_hu", sample_id=sample_id)
    return window_hu(image, level_hu=params.window_level_hu, width_hu=params.window_width_hu)


def _alpha(image01, trimap, params: LabelParams) -> np.ndarray:
    from softmask_builder.labelling.matting import closed_form_alpha

    return closed_form_alpha(image01, trimap, eps=params.eps, radius=params.radius)


def label_from_mask(image_hu, mask, params: LabelParams = LabelParams(), *, sample_id=None) -> Labels:
    """Strategy 1: trimap by erode/dilate of a binary mask, then matting. binary_mask = mask."""
    from softmask_builder.labelling.trimap import trimap_from_mask

    image01 = _windowed(image_hu, params, sample_id)
    mask = as_mask2d(mask, "mask", sample_id=sample_id)
    if mask.shape != image01.shape:
        raise InputError(f"mask shape {mask.shape} does not match image shape {image01.shape}", sample_id=sample_id)
    trimap = trimap_from_mask(mask, band_px=params.band_px, sample_id=sample_id)
    return Labels(trimap, _alpha(image01, trimap, params), mask)


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
    return Labels(trimap, _alpha(image01, trimap, params), binary)


def label_from_recist(image_hu, recist, params: LabelParams = LabelParams(), *, sample_id=None) -> Labels:
    """Strategy 3: GrabCut seeded by the RECIST axes and kept inside the region the mark allows ->
    mask -> strategy-1 trimap with the axes' inner part as lesion and background outside the
    region (:func:`softmask_builder.labelling.recist.trimap_from_recist`) -> matting (``params.recist_method`` "uls23": the
    mask from the ULS23 recipe instead, same trimap and matting); binary mask = binarized Soft Mask
    (alpha >= 0.5), hence also inside the region."""
    from softmask_builder.labelling.recist import mask_from_recist_uls23, trimap_from_recist, trimap_from_recist_mask

    image01 = _windowed(image_hu, params, sample_id)
    if params.recist_method == "uls23":
        mask = mask_from_recist_uls23(image_hu, recist, sample_id=sample_id)
        trimap = trimap_from_recist_mask(mask, recist, band_px=params.band_px, sample_id=sample_id)
    else:
        trimap, _ = trimap_from_recist(image01, recist, band_px=params.band_px,
                                       iterations=params.grabcut_iterations, sample_id=sample_id)
    alpha = _alpha(image01, trimap, params)
    return Labels(trimap, alpha, alpha >= 0.5)
