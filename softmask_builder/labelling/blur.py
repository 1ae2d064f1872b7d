"""Scanner blur: estimate it at the lesion's edge, and take it out of the Soft Mask.

Why (docs/ACCURACY.md, "Where the area deficit comes from"): the image is ``S + PSF * (f (L - S))``
(background S, lesion L, true partial-volume fraction f), so closed-form matting, which follows the
image's intensity between the trimap's known regions, recovers roughly the *blurred* fraction
``g = PSF * f`` rather than f. On a curved or faint (partial-volume) lesion g's 0.5 contour lies
inside f's, by ~sigma^2 / (2 R) on a disk of radius R and much more where f never reaches 1: the
binarized label is too small, most of all on small nodules. :func:`deblur_alpha` inverts the blur
by projected Van Cittert iterations; :func:`estimate_psf_sigma_px` measures the blur's sigma from
the image's own edge, so no scanner model is assumed.

Both are pure functions on (rows, cols) arrays in pixel units of the crop.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from softmask_builder.core.validate import as_image2d, as_mask2d
from softmask_builder.errors import InputError

__all__ = ["estimate_psf_sigma_px", "deblur_alpha", "profile_crossing", "psf_sigma_for_deblur", "EDGE_WIDTH_PER_SIGMA",
           "PSF_SIGMA_RANGE_PX", "MIN_EDGE_CONTRAST_HU"]

#: 10-90 % rise distance of a Gaussian-blurred step in units of its sigma: 2 * 1.2816 (probit of 0.9).
EDGE_WIDTH_PER_SIGMA = 2.0 * 1.2815515655446004
#: An estimate is clipped to this range (px): below it the edge is sharper than a pixel's own
#: partial volume, above it the "edge" is a density gradient of the lesion or its surroundings.
PSF_SIGMA_RANGE_PX = (0.3, 3.0)
#: Smallest lesion-background contrast (HU) of an edge profile the pipeline measures the blur on.
MIN_EDGE_CONTRAST_HU = 75.0


def _finite(value, name: str, sample_id, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number, got {value!r}", sample_id=sample_id)
    value = float(value)
    if not math.isfinite(value) or (value <= low if low_open else value < low) or value > high:
        raise InputError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}",
                         sample_id=sample_id)
    return value


def profile_crossing(t: np.ndarray, y: np.ndarray, level: float) -> float:
    """First t where y (falling from ~1 to ~0 along t) drops below ``level``, linearly interpolated
    between samples; nan if never (or already below at the first sample). Shared with
    :func:`softmask_builder.reports.image_stats.edge_width`."""
    below = np.flatnonzero(y < level)
    if len(below) == 0 or below[0] == 0:
        return math.nan
    k = int(below[0])
    return float(t[k - 1] + (y[k - 1] - level) / (y[k - 1] - y[k]) * (t[k] - t[k - 1]))


def estimate_psf_sigma_px(image, mask, *, half_length_px: float = 4.0, min_contrast: float = 0.05,
                          min_profiles: int = 8, sample_id: str | None = None) -> float:
    """Sigma (px) of a Gaussian blur that explains the image's edge across ``mask``'s boundary.

    Profiles of ``image`` (cubic spline) are taken along the outward normals of the mask's
    boundary (one per boundary pixel; normals from the gradient of the mask's smoothed signed
    distance), ``t`` in [-half_length_px, half_length_px] with 0.1 px steps. Each is normalised
    by its inner and outer fifth (profiles whose inner-outer contrast is below ``min_contrast``
    are left out: where a lesion touches a wall of its own density there is no edge to
    measure), aligned on its 50 % crossing and averaged; the 10-90 % rise distance of the mean
    profile divided by :data:`EDGE_WIDTH_PER_SIGMA` is the estimate (exact for a straight edge
    blurred by a Gaussian; a small curved lesion gives a somewhat lower value).

    Parameters
    ----------
    image : array_like (rows, cols)
        Image, e.g. the windowed crop in [0, 1] (``min_contrast`` is in its units).
    mask : array_like (rows, cols)
        Binary lesion mask whose boundary is the edge (e.g. the binarized Soft Mask).
    half_length_px : float, > 0
        Half length of each profile in pixels.
    min_contrast : float, >= 0
        Smallest inner-minus-outer plateau difference of a usable profile, in image units.
    min_profiles : int, >= 1
        Fewer usable profiles than this gives nan.
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    float
        Sigma in pixels (> 0), or nan when the mask is empty or fills the image, or fewer than
        ``min_profiles`` profiles are usable, or the mean profile has no 10 % / 90 % crossing.

    Raises
    ------
    InputError
        ``image`` not 2-D or not finite; ``mask`` not binary or of another shape; bad numbers.
    """
    img = as_image2d(image, "image", sample_id=sample_id)
    m = as_mask2d(mask, "mask", allow_empty=True, sample_id=sample_id)
    if m.shape != img.shape:
        raise InputError(f"mask shape {m.shape} does not match image shape {img.shape}", sample_id=sample_id)
    half = _finite(half_length_px, "half_length_px", sample_id, low=0.0, high=1e3, low_open=True)
    min_contrast = _finite(min_contrast, "min_contrast", sample_id, low=0.0, high=math.inf)
    if isinstance(min_profiles, bool) or not isinstance(min_profiles, (int, np.integer)) or min_profiles < 1:
        raise InputError(f"min_profiles must be an integer >= 1, got {min_profiles!r}", sample_id=sample_id)
    if not m.any() or m.all():
        return math.nan
    # Signed distance (+ outside), smoothed so that its gradient is a normal that does not
    # follow the pixel staircase.
    sdf = ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)
    sdf = ndimage.gaussian_filter(sdf, 1.0)
    g_r, g_c = np.gradient(sdf)
    boundary = m & ~ndimage.binary_erosion(m, border_value=1)
    pr, pc = np.nonzero(boundary)
    norm = np.hypot(g_r[pr, pc], g_c[pr, pc])
    keep = norm > 1e-9
    pr, pc, nr, nc = pr[keep], pc[keep], g_r[pr, pc][keep] / norm[keep], g_c[pr, pc][keep] / norm[keep]
    if len(pr) < min_profiles:
        return math.nan
    t = np.arange(-half, half + 0.05, 0.1)
    rows = pr[:, None] + t[None, :] * nr[:, None]
    cols = pc[:, None] + t[None, :] * nc[:, None]
    coeffs = ndimage.spline_filter(img, order=3, mode="nearest")
    prof = ndimage.map_coordinates(coeffs, np.vstack([rows.ravel(), cols.ravel()]), order=3, mode="nearest",
                                   prefilter=False).reshape(rows.shape)
    fifth = max(len(t) // 5, 1)
    inner, outer = prof[:, :fifth].mean(axis=1), prof[:, -fifth:].mean(axis=1)
    contrast = inner - outer
    aligned = []
    for y, lo, c in zip(prof, outer, contrast):
        if not c >= max(min_contrast, 1e-12):
            continue
        y = (y - lo) / c
        t50 = profile_crossing(t, y, 0.5)
        if math.isnan(t50):
            continue
        aligned.append(np.interp(t, t - t50, y, left=np.nan, right=np.nan))
    if len(aligned) < min_profiles:
        return math.nan
    stack = np.array(aligned)
    count = np.sum(~np.isnan(stack), axis=0)
    mean = np.full(len(t), np.nan)
    np.divide(np.nansum(stack, axis=0), count, out=mean, where=count > 0)
    centre = len(t) // 2
    t_out = profile_crossing(t[centre:], mean[centre:], 0.1)
    t_in = -profile_crossing(-t[centre::-1], 1.0 - mean[centre::-1], 0.1)
    width = t_out - t_in
    if not (math.isfinite(width) and width > 0):
        return math.nan
    return float(width / EDGE_WIDTH_PER_SIGMA)


def deblur_alpha(alpha, *, psf_sigma_px: float, iterations: int, sample_id: str | None = None) -> np.ndarray:
    """Take a Gaussian blur of ``psf_sigma_px`` out of a Soft Mask (projected Van Cittert).

    The matting gives ``a ~ G * f`` (G the Gaussian of sigma ``psf_sigma_px``, f the partial-volume
    fraction). Van Cittert's iteration solves ``G * f = a`` by fixed-point steps; projecting
    each step on [0, 1] (a fraction) keeps it stable and makes the few steps used here a
    regularised, sharpening inverse::

        f_0 = a,   f_{k+1} = clip(f_k + (a - G * f_k), 0, 1)

    A flat region (a = 0 or 1 around it) is a fixed point, so the background stays 0 and the
    lesion's inside 1; only the edge moves, outward where curvature or partial volume pulled
    the blurred 0.5 contour inward. The image border is handled by replicating the edge pixel
    (``mode="nearest"``).

    Parameters
    ----------
    alpha : array_like (rows, cols)
        Soft Mask in [0, 1].
    psf_sigma_px : float, >= 0
        Sigma of the blur in pixels of ``alpha``; 0 returns ``alpha`` unchanged (as float32).
    iterations : int, >= 0
        Van Cittert steps; 0 returns ``alpha`` unchanged (as float32).
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols) in [0, 1].

    Raises
    ------
    InputError
        ``alpha`` not 2-D, not finite or outside [0, 1]; ``psf_sigma_px`` not in [0, 32];
        ``iterations`` not an integer in [0, 100].
    """
    a = as_image2d(alpha, "alpha", sample_id=sample_id)
    if a.size and (float(a.min()) < 0.0 or float(a.max()) > 1.0):
        raise InputError(f"alpha must be in [0, 1], got [{float(a.min()):g}, {float(a.max()):g}]",
                         sample_id=sample_id)
    sigma = _finite(psf_sigma_px, "psf_sigma_px", sample_id, low=0.0, high=32.0)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or not 0 <= iterations <= 100:
        raise InputError(f"iterations must be an integer in [0, 100], got {iterations!r}", sample_id=sample_id)
    a = a.astype(np.float64)
    if sigma == 0.0 or iterations == 0:
        return a.astype(np.float32)
    f = a.copy()
    for _ in range(int(iterations)):
        f = np.clip(f + (a - ndimage.gaussian_filter(f, sigma, mode="nearest")), 0.0, 1.0)
    return f.astype(np.float32)


def psf_sigma_for_deblur(image_hu, soft_mask, *, psf_sigma_px: float, fallback_sigma_px: float,
                         min_contrast_hu: float = MIN_EDGE_CONTRAST_HU, sample_id: str | None = None) -> float:
    """The sigma (px) :func:`deblur_alpha` uses for one crop (``LabelParams.psf_sigma_px`` /
    ``psf_sigma_fallback_px``).

    ``psf_sigma_px`` > 0 is used as given. 0 means "measure it": :func:`estimate_psf_sigma_px` on
    the image in HU (not the windowed image: a window that clips a solid lesion's plateau makes its
    edge look sharper), across the boundary of ``soft_mask >= 0.5``, profiles of at least
    ``min_contrast_hu``, clipped to :data:`PSF_SIGMA_RANGE_PX`; ``fallback_sigma_px`` when nothing
    can be measured (empty mask, no contrast, too few profiles: a tiny nodule or one buried in a
    wall).
    """
    sigma = _finite(psf_sigma_px, "psf_sigma_px", sample_id, low=0.0, high=32.0)
    if sigma > 0.0:
        return sigma
    fallback = _finite(fallback_sigma_px, "fallback_sigma_px", sample_id, low=0.0, high=32.0)
    est = estimate_psf_sigma_px(image_hu, np.asarray(soft_mask) >= 0.5, min_contrast=min_contrast_hu,
                                sample_id=sample_id)
    if not math.isfinite(est):
        return fallback
    return float(min(max(est, PSF_SIGMA_RANGE_PX[0]), PSF_SIGMA_RANGE_PX[1]))
