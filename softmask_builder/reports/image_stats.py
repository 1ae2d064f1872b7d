"""Image statistics for calibrating a phantom against real CT: noise, its correlation, edge width,
HU histogram, each with a bootstrap interval.

Pure functions on arrays (HU images, bool masks, ``spacing_mm`` = (row, col) pixel size). They
serve the calibration (``benchmarks/calibrate_real.py``): the same statistic computed the same way
on real LIDC slices and on hybrid cases built from the same nodules is what is compared, so the
definitions below favour robustness and reproducibility over any one textbook estimator.

* Noise (:func:`noise_stats`): non-overlapping ``patch_px`` squares that lie entirely inside a HU
  range (soft tissue, or lung) and off an exclusion mask; each patch minus its least-squares
  plane is a residual; noise std = the median of the residuals' std (the median makes the few
  patches that straddle an edge harmless). Correlation: the patches' normalised autocorrelation
  ``R(d) = sum_p x(p) x(p + d) / N(d) / R(0)`` (N(d) the overlap count), averaged over patches;
  its half width at half maximum along rows and along columns, in mm, averaged. For white noise
  blurred by a Gaussian of std sigma the autocorrelation is a Gaussian of std sigma*sqrt(2), so the
  HWHM is ``sigma * sqrt(2) * sqrt(2 ln 2) = 1.665 sigma``.
* Edge width (:func:`edge_width`): profiles of the image along the outward normals of the mask's
  boundary (one per ~``step_along_mm`` of contour), each normalised between its inner and outer
  plateaus (means of the first and last fifth), shifted so that its own 50 % crossing is at 0 (so
  that a contour drawn a little off the edge does not widen the edge), then averaged; the width
  is the distance between the mean profile's 90 % and 10 % crossings. For an edge
  ``I(t) = 0.5 erfc(t / (sigma sqrt 2))`` it is ``2 * 1.2816 * sigma = 2.563 sigma``.
* HU inside the lesion (:func:`hu_histogram`): percentiles of the mask eroded by ``erode_px``.

Bootstrap intervals (:func:`bootstrap_ci`): percentile intervals over the natural units (patches,
profiles, pixels), ``n_boot`` resamples from ``numpy.random.default_rng(seed)``, so they are
reproducible; units from one slice are not independent, so read them as a lower bound on the
uncertainty.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

from softmask_builder.core.validate import as_image2d, as_mask2d
from softmask_builder.errors import InputError
from softmask_builder.labelling.blur import profile_crossing

__all__ = ["bootstrap_ci", "homogeneous_patches", "noise_stats", "edge_width", "hu_histogram"]

SOFT_TISSUE_HU = (-200.0, 200.0)   # fat, muscle, blood: homogeneous regions of a chest slice
LUNG_HU = (-1000.0, -600.0)        # parenchyma (texture included)


def _spacing(spacing_mm) -> tuple[float, float]:
    arr = np.asarray(spacing_mm, dtype=np.float64).ravel()
    if arr.shape == (1,):
        arr = np.repeat(arr, 2)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"spacing_mm must be (row, col) mm > 0, got {spacing_mm!r}")
    return float(arr[0]), float(arr[1])


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the first axis of ``values``.

    Returns (nan, nan) for fewer than 2 values. Deterministic per ``seed``.
    """
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(n_boot, len(arr)))
    stats = np.array([stat(arr[i]) for i in idx], dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def homogeneous_patches(image_hu, *, patch_px: int = 16, hu_range=SOFT_TISSUE_HU, exclude=None) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the non-overlapping ``patch_px`` squares whose every pixel
    lies in ``hu_range`` = (low, high) HU and none in ``exclude`` (bool mask, optional)."""
    image = as_image2d(image_hu, "image_hu")
    inside = (image >= hu_range[0]) & (image <= hu_range[1])
    if exclude is not None:
        inside &= ~as_mask2d(exclude, "exclude", allow_empty=True)
    out = []
    for r in range(0, image.shape[0] - patch_px + 1, patch_px):
        for c in range(0, image.shape[1] - patch_px + 1, patch_px):
            if inside[r:r + patch_px, c:c + patch_px].all():
                out.append((r, c))
    return out


def _detrended(patch: np.ndarray) -> np.ndarray:
    # Residual of the least-squares plane a + b r + c c: removes slow shading across the patch.
    n = patch.shape[0]
    rr, cc = np.mgrid[0:n, 0:n].astype(np.float64)
    design = np.column_stack([np.ones(n * n), rr.ravel(), cc.ravel()])
    coef, *_ = np.linalg.lstsq(design, patch.ravel(), rcond=None)
    return (patch.ravel() - design @ coef).reshape(patch.shape)


def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation R(d) / R(0) for lags d in [-(n-1), n-1]^2 (centred)."""
    n0, n1 = x.shape
    shape = (2 * n0 - 1, 2 * n1 - 1)
    fx = np.fft.rfft2(x, shape)
    corr = np.fft.irfft2(fx * np.conj(fx), shape)
    count = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones_like(x), shape)) ** 2, shape)
    acf = np.fft.fftshift(corr / np.maximum(np.rint(count), 1.0))
    return acf / acf[n0 - 1, n1 - 1]


def _hwhm(profile: np.ndarray) -> float:
    """Lag (in samples, linear interpolation) where a profile starting at 1 first drops below 0.5."""
    below = np.flatnonzero(profile < 0.5)
    if len(below) == 0:
        return math.nan
    k = int(below[0])
    y0, y1 = profile[k - 1], profile[k]
    return (k - 1) + (y0 - 0.5) / (y0 - y1)


def _acf_hwhm_mm(acf: np.ndarray, spacing: tuple[float, float]) -> float:
    c0, c1 = (s // 2 for s in acf.shape)
    along_rows = 0.5 * (acf[c0:, c1] + acf[c0::-1, c1])
    along_cols = 0.5 * (acf[c0, c1:] + acf[c0, c1::-1])
    return 0.5 * (_hwhm(along_rows) * spacing[0] + _hwhm(along_cols) * spacing[1])


def noise_stats(image_hu, spacing_mm, *, patch_px: int = 16, hu_range=SOFT_TISSUE_HU, exclude=None,
                n_boot: int = 1000, seed: int = 0) -> dict:
    """Noise std (HU) and correlation HWHM (mm) in homogeneous patches (module docstring).

    Returns
    -------
    dict
        ``n_patches``; ``std_hu`` (median of the patches' residual std) and ``std_hu_ci``;
        ``acf_hwhm_mm`` (HWHM of the patch-averaged autocorrelation) and ``acf_hwhm_mm_ci``
        (bootstrap over patches). NaN values when no patch qualifies.
    """
    image = as_image2d(image_hu, "image_hu")
    spacing = _spacing(spacing_mm)
    if not isinstance(patch_px, (int, np.integer)) or patch_px < 6:
        raise InputError(f"patch_px must be an integer >= 6, got {patch_px!r}")
    corners = homogeneous_patches(image, patch_px=patch_px, hu_range=hu_range, exclude=exclude)
    nan = {"n_patches": len(corners), "std_hu": math.nan, "std_hu_ci": (math.nan, math.nan),
           "acf_hwhm_mm": math.nan, "acf_hwhm_mm_ci": (math.nan, math.nan)}
    if not corners:
        return nan
    residuals = [_detrended(image[r:r + patch_px, c:c + patch_px]) for r, c in corners]
    stds = np.array([x.std() for x in residuals])
    acfs = np.stack([_autocorrelation(x) for x in residuals if x.std() > 0])
    if len(acfs) == 0:
        return {**nan, "std_hu": 0.0}

    def hwhm_of(sel):
        return _acf_hwhm_mm(acfs[sel.astype(int)].mean(axis=0), spacing)

    return {
        "n_patches": len(corners),
        "std_hu": float(np.median(stds)),
        "std_hu_ci": bootstrap_ci(stds, np.median, n_boot=n_boot, seed=seed),
        "acf_hwhm_mm": float(_acf_hwhm_mm(acfs.mean(axis=0), spacing)),
        "acf_hwhm_mm_ci": bootstrap_ci(np.arange(len(acfs)), hwhm_of, n_boot=min(n_boot, 300), seed=seed),
    }


def _boundary_normals(mask: np.ndarray, spacing: tuple[float, float], step_along_mm: float):
    """Points (row, col) on the mask's boundary ~``step_along_mm`` apart, and unit outward
    normals in mm space (d_row_mm, d_col_mm)."""
    from skimage import measure

    # Signed distance in mm (positive outside), smoothed a little so that its gradient gives
    # normals that do not follow the pixel staircase.
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    sdf = ndimage.gaussian_filter(outside - inside, 1.0)
    g_r, g_c = np.gradient(sdf, *spacing)
    points, normals = [], []
    for contour in measure.find_contours(np.pad(sdf, 1, mode="edge"), 0.0):
        contour = contour - 1.0
        seg = np.hypot(np.diff(contour[:, 0]) * spacing[0], np.diff(contour[:, 1]) * spacing[1])
        arc = np.r_[0.0, np.cumsum(seg)]
        for s in np.arange(0.0, arc[-1], step_along_mm):
            k = int(np.searchsorted(arc, s, side="right") - 1)
            k = min(k, len(contour) - 2)
            w = (s - arc[k]) / max(arc[k + 1] - arc[k], 1e-12)
            p = contour[k] * (1 - w) + contour[k + 1] * w
            n = np.array([ndimage.map_coordinates(g_r, p[:, None], order=1, mode="nearest")[0],
                          ndimage.map_coordinates(g_c, p[:, None], order=1, mode="nearest")[0]])
            norm = float(np.hypot(*n))
            if norm > 1e-9:
                points.append(p)
                normals.append(n / norm)
    return np.array(points).reshape(-1, 2), np.array(normals).reshape(-1, 2)


def edge_width(image_hu, mask, spacing_mm, *, half_length_mm: float = 3.0, step_mm: float = 0.1,
               step_along_mm: float = 1.0, min_contrast_hu: float = 100.0, n_boot: int = 1000,
               seed: int = 0) -> dict:
    """10-90 % rise distance (mm) of the image across the mask's boundary (module docstring).

    Profiles with an inner-outer contrast below ``min_contrast_hu`` (e.g. where the lesion
    touches the chest wall) or without a 50 % crossing are left out.

    Returns
    -------
    dict
        ``n_profiles`` (used), ``width_mm`` and ``width_mm_ci`` (bootstrap over profiles),
        ``contrast_hu`` (median inner minus outer plateau).
    """
    image = as_image2d(image_hu, "image_hu")
    m = as_mask2d(mask, "mask")
    spacing = _spacing(spacing_mm)
    if m.shape != image.shape:
        raise InputError(f"mask shape {m.shape} does not match image shape {image.shape}")
    # Work on the mask's box plus the profiles' reach (cubic-spline sampling of the whole slice
    # would cost more; bilinear sampling widens a sharp edge by ~10 % at 0.7 mm pixels).
    rows_any, cols_any = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    pad_r, pad_c = (int(math.ceil(half_length_mm / s)) + 4 for s in spacing)
    r0, r1 = max(rows_any[0] - pad_r, 0), min(rows_any[-1] + pad_r + 1, m.shape[0])
    c0, c1 = max(cols_any[0] - pad_c, 0), min(cols_any[-1] + pad_c + 1, m.shape[1])
    image, m = image[r0:r1, c0:c1], m[r0:r1, c0:c1]
    coeffs = ndimage.spline_filter(image, order=3, mode="nearest")
    points, normals = _boundary_normals(m, spacing, step_along_mm)
    t = np.arange(-half_length_mm, half_length_mm + step_mm / 2, step_mm)
    fifth = max(len(t) // 5, 1)
    aligned, contrasts = [], []
    for p, n in zip(points, normals):
        rows = p[0] + t * n[0] / spacing[0]
        cols = p[1] + t * n[1] / spacing[1]
        prof = ndimage.map_coordinates(coeffs, np.vstack([rows, cols]), order=3, mode="nearest", prefilter=False)
        inner, outer = prof[:fifth].mean(), prof[-fifth:].mean()
        if inner - outer < min_contrast_hu:
            continue
        y = (prof - outer) / (inner - outer)
        t50 = profile_crossing(t, y, 0.5)
        if math.isnan(t50):
            continue
        aligned.append(np.interp(t, t - t50, y, left=np.nan, right=np.nan))
        contrasts.append(inner - outer)
    out = {"n_profiles": len(aligned), "width_mm": math.nan, "width_mm_ci": (math.nan, math.nan),
           "contrast_hu": float(np.median(contrasts)) if contrasts else math.nan}
    if not aligned:
        return out
    stack = np.array(aligned)

    def width(sel):
        part = stack[np.asarray(sel, dtype=int)]
        count = np.sum(~np.isnan(part), axis=0)
        mean = np.full(len(t), np.nan)
        np.divide(np.nansum(part, axis=0), count, out=mean, where=count > 0)
        centre = len(t) // 2
        # Walk outwards from the aligned 50 % point in both directions.
        t_out = profile_crossing(t[centre:], mean[centre:], 0.1)
        t_in = -profile_crossing(-t[centre::-1], 1.0 - mean[centre::-1], 0.1)
        return t_out - t_in

    out["width_mm"] = float(width(np.arange(len(stack))))
    out["width_mm_ci"] = bootstrap_ci(np.arange(len(stack)), width, n_boot=min(n_boot, 300), seed=seed)
    return out


def hu_histogram(image_hu, mask, *, erode_px: int = 1, percentiles=(5, 25, 50, 75, 95),
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """HU inside a lesion: the mask eroded by ``erode_px`` (3x3 steps; the mask itself when that
    empties it). Returns ``n_px``, ``mean_hu``, ``std_hu``, ``p<k>`` per percentile and
    ``median_hu_ci`` (bootstrap over pixels)."""
    image = as_image2d(image_hu, "image_hu")
    m = as_mask2d(mask, "mask")
    if m.shape != image.shape:
        raise InputError(f"mask shape {m.shape} does not match image shape {image.shape}")
    inner = ndimage.binary_erosion(m, iterations=erode_px) if erode_px > 0 else m
    if not inner.any():
        inner = m
    vals = image[inner]
    out = {"n_px": int(vals.size), "mean_hu": float(vals.mean()), "std_hu": float(vals.std())}
    for p, v in zip(percentiles, np.percentile(vals, percentiles)):
        out[f"p{p}"] = float(v)
    out["median_hu_ci"] = bootstrap_ci(vals, np.median, n_boot=n_boot, seed=seed)
    return out
