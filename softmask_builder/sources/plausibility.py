"""Plausibility rules: physically impossible CT images and headers become rejects with a reason.

A source adapter calls these on every image it loads (and on the header values it reads) before
the image goes anywhere else; each rule raises :class:`ImplausibleError` (an
:class:`~softmask_builder.errors.InputError`) carrying the sample id and stage, which the build
turns into a row of ``rejects.csv``. The rules and their thresholds are written down in
docs/DATASETS.md ("Plausibility rules"); they were checked against the real fixtures (every
DeepLesion and LIDC-IDRI slice in ``shared/data`` passes with a wide margin) and the phantom.

Padding: scanners fill the pixels outside the reconstructed field of view with a value far
below air (LIDC-IDRI about -2048 HU, DeepLesion -3024 HU), so pixels below
:data:`PADDING_BELOW_HU` are padding, not implausible; the intensity rules are computed over the
other pixels.
"""

from __future__ import annotations

import math

import numpy as np

from softmask_builder.errors import InputError

#: Pixels below this many HU are field-of-view padding (air is -1000 HU).
PADDING_BELOW_HU = -1024.0
#: Largest fraction of all pixels that may share one value (a flat or blank image exceeds it).
MAX_ONE_VALUE_FRACTION = 0.95
#: Smallest fraction of pixels that must lie at or above :data:`PADDING_BELOW_HU`.
MIN_TISSUE_FRACTION = 0.05
#: Smallest 1st-99th percentile range of the non-padding pixels, in HU.
MIN_P1_P99_RANGE_HU = 50.0
#: Inclusive range of the median of the non-padding pixels, in HU.
MEDIAN_RANGE_HU = (-1100.0, 500.0)
#: Inclusive range of an in-plane pixel spacing, in mm.
SPACING_RANGE_MM = (0.2, 5.0)
#: Largest relative difference between a slice's spacing and its series'.
SERIES_SPACING_RTOL = 0.01


class ImplausibleError(InputError):
    """An image or header value that no CT scan produces (the message says which rule)."""


def check_image_hu(image_hu: np.ndarray, *, sample_id: str | None = None, stage: str = "load") -> None:
    """Reject an image that cannot be a CT slice in HU.

    Rules, in order (the first that fails raises):

    1. more than :data:`MAX_ONE_VALUE_FRACTION` (95 %) of all pixels share one value (a blank,
       saturated or all-padding image; e.g. an all-zero DeepLesion PNG, -32768 HU everywhere);
    2. fewer than :data:`MIN_TISSUE_FRACTION` (5 %) of the pixels are >= -1024 HU (padding only);
    3. over the non-padding pixels (>= -1024 HU): the 1st-99th percentile range is below
       :data:`MIN_P1_P99_RANGE_HU` (50 HU: no contrast, e.g. a slope-0 rescale);
    4. over the same pixels: the median lies outside :data:`MEDIAN_RANGE_HU` ([-1100, 500] HU:
       e.g. raw PNG values read without their 32768 offset).

    Parameters
    ----------
    image_hu : (rows, cols) array of finite HU values (NaN/inf are rejected as such).
    sample_id, stage : put on the error.

    Raises
    ------
    ImplausibleError
        The reason names the rule and the measured value.
    """
    image = np.asarray(image_hu)
    if image.ndim != 2 or image.size == 0:
        raise ImplausibleError(f"implausible image: expected a non-empty 2-D slice, got shape {image.shape}",
                               sample_id=sample_id, stage=stage)
    values = image.astype(np.float32, copy=False).ravel()
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ImplausibleError("implausible image: NaN/inf pixels", sample_id=sample_id, stage=stage)
    counts = _integer_counts(values, low, high)
    top_count, top_value = _most_common(values, low, counts)
    top_fraction = top_count / values.size
    if top_fraction > MAX_ONE_VALUE_FRACTION:
        raise ImplausibleError(f"implausible image: {100 * top_fraction:.1f} % of the pixels equal {top_value:g} HU "
                               f"(more than {100 * MAX_ONE_VALUE_FRACTION:g} %: blank or saturated)",
                               sample_id=sample_id, stage=stage)
    n_tissue, (p1, p50, p99) = _tissue_percentiles(values, low, counts, (1, 50, 99))
    if n_tissue < MIN_TISSUE_FRACTION * values.size:
        raise ImplausibleError(f"implausible image: only {100 * n_tissue / values.size:.1f} % of the pixels "
                               f"are >= {PADDING_BELOW_HU:g} HU (the rest is below air: padding)",
                               sample_id=sample_id, stage=stage)
    if p99 - p1 < MIN_P1_P99_RANGE_HU:
        raise ImplausibleError(f"implausible image: 1st-99th percentile range {p99 - p1:.1f} HU is below "
                               f"{MIN_P1_P99_RANGE_HU:g} HU (no contrast)", sample_id=sample_id, stage=stage)
    lo, hi = MEDIAN_RANGE_HU
    if not lo <= p50 <= hi:
        raise ImplausibleError(f"implausible image: median {p50:.1f} HU outside [{lo:g}, {hi:g}] HU (wrong offset "
                               "or not CT in HU?)", sample_id=sample_id, stage=stage)


def _integer_counts(values: np.ndarray, low: float, high: float) -> np.ndarray | None:
    """``counts[k]`` = how many pixels equal ``low + k``, for integer-valued images (CT is stored
    as integers) spanning < 2**20 values; None otherwise."""
    if high - low < 1 << 20 and np.array_equal(values, np.rint(values)):
        return np.bincount((values - np.float32(low)).astype(np.int64))
    return None


def _tissue_percentiles(values: np.ndarray, low: float, counts: np.ndarray | None, q_percent):
    """(count, percentiles) of the non-padding pixels (>= PADDING_BELOW_HU); percentiles are NaN
    when there is none. From ``counts`` (integer CT: no sort) when given, else np.percentile."""
    if counts is not None:
        first = max(0, math.ceil(PADDING_BELOW_HU - low))
        tissue_counts = counts[first:]
        n = int(tissue_counts.sum())
        return n, (percentiles_from_counts(tissue_counts, low + first, q_percent) if n else [math.nan] * len(q_percent))
    tissue = values[values >= PADDING_BELOW_HU]
    return tissue.size, (np.percentile(tissue, q_percent) if tissue.size else [math.nan] * len(q_percent))


def _most_common(values: np.ndarray, low: float, counts: np.ndarray | None) -> tuple[int, float]:
    """(count, value) of the most common pixel value: from ``counts`` (:func:`_integer_counts`) when
    given (O(n)), else the longest run of the sorted values."""
    if counts is not None:
        k = int(counts.argmax())
        return int(counts[k]), low + k
    ordered = np.sort(values)
    edges = np.flatnonzero(np.diff(ordered)) + 1
    runs = np.diff(np.concatenate(([0], edges, [ordered.size])))
    top = int(runs.argmax())
    return int(runs[top]), float(ordered[0 if top == 0 else edges[top - 1]])


def percentiles_from_counts(counts: np.ndarray, first_value: float, q_percent) -> list[float]:
    """``np.percentile(x, q_percent)`` (its default "linear" method) of the integer-valued ``x``
    whose histogram is ``counts`` (``counts[k]`` values equal ``first_value + k``), without
    sorting ``x``: the order statistics at ranks floor/ceil of ``(n - 1) * q`` are read off the
    cumulative counts. ``counts`` must hold at least one value."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in q_percent:
        h = (n - 1) * (float(q) / 100.0)
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        v_lo, v_hi = (first_value + float(np.searchsorted(cum, k, side="right")) for k in (lo, hi))
        out.append(v_lo + (h - lo) * (v_hi - v_lo))
    return out


def check_spacing_mm(spacing_mm, *, what: str = "pixel spacing", sample_id: str | None = None,
                     stage: str = "load") -> tuple[float, float]:
    """(row_mm, col_mm) as floats, each finite and within :data:`SPACING_RANGE_MM` ([0.2, 5] mm).

    Raises :class:`ImplausibleError` naming ``what`` (e.g. ``"DICOM PixelSpacing"``)."""
    try:
        row_mm, col_mm = (float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        raise ImplausibleError(f"{what} must be (row_mm, col_mm), got {spacing_mm!r}",
                               sample_id=sample_id, stage=stage) from None
    lo, hi = SPACING_RANGE_MM
    for v in (row_mm, col_mm):
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ImplausibleError(f"implausible {what} {row_mm:g} x {col_mm:g} mm (each must lie in "
                                   f"[{lo:g}, {hi:g}] mm)", sample_id=sample_id, stage=stage)
    return row_mm, col_mm


def spacing_differs(spacing_mm, reference_mm, *, rtol: float = SERIES_SPACING_RTOL) -> bool:
    """True when either axis of ``spacing_mm`` differs from ``reference_mm`` by more than ``rtol``."""
    return any(abs(float(a) - float(b)) > rtol * abs(float(b)) for a, b in zip(spacing_mm, reference_mm))


def check_series_spacing(spacing_mm, series_spacings_mm, *, sample_id: str | None = None,
                         stage: str = "load") -> None:
    """Reject a slice whose spacing differs by more than 1 % (:data:`SERIES_SPACING_RTOL`) from
    every other slice of its series given in ``series_spacings_mm`` (e.g. its z-neighbours): one
    odd neighbour does not condemn a slice, but a slice unlike all of them is not of this series'
    geometry. An empty ``series_spacings_mm`` passes."""
    others = [tuple(s) for s in series_spacings_mm]
    if others and all(spacing_differs(spacing_mm, s) for s in others):
        shown = ", ".join(f"{s[0]:g} x {s[1]:g}" for s in others)
        raise ImplausibleError(f"pixel spacing {float(spacing_mm[0]):g} x {float(spacing_mm[1]):g} mm differs by more "
                               f"than {100 * SERIES_SPACING_RTOL:g} % from its series ({shown} mm)",
                               sample_id=sample_id, stage=stage)


def check_ct_header(modality, rescale_slope, *, sample_id: str | None = None, stage: str = "load") -> None:
    """Every recipe builds CT in HU: ``Modality`` must be "CT" (a missing tag passes) and
    ``RescaleSlope`` a finite non-zero number (slope 0 maps every pixel to the intercept)."""
    if modality is not None and str(modality).strip() and str(modality).strip().upper() != "CT":
        raise ImplausibleError(f"DICOM Modality is {str(modality).strip()!r}, every recipe builds CT",
                               sample_id=sample_id, stage=stage)
    try:
        slope = float(rescale_slope)
    except (TypeError, ValueError):
        raise ImplausibleError(f"DICOM RescaleSlope {rescale_slope!r} is not a number", sample_id=sample_id,
                               stage=stage) from None
    if not math.isfinite(slope) or slope == 0:
        raise ImplausibleError(f"DICOM RescaleSlope is {rescale_slope!r}: it must be finite and non-zero",
                               sample_id=sample_id, stage=stage)


#: A slice is axial when its row direction is within ~8 degrees of +x and its column direction
#: within ~8 degrees of +y (cosines >= 0.99: a gantry tilt passes, a coronal, sagittal or
#: flipped slice does not).
AXIAL_MIN_COSINE = 0.99


def check_ct_geometry(ds, *, sample_id: str | None = None, stage: str = "load") -> None:
    """Header rules of a CT slice read for HU (a pydicom dataset; no pixels are read):

    * **rescale tags**: ``RescaleIntercept`` and ``RescaleSlope`` must both be present. Without
      them the stored values are HU only if the header says so: ``RescaleType`` (0028,1054) "HU"
      (the one rule that proves it; then slope 1, intercept 0). Otherwise the slice is rejected:
      the common case is raw scanner values, every HU off by +1024, which the image-median rule
      can miss.
    * **orientation**: ``ImageOrientationPatient``, when present, must be axial and unflipped
      (row cosine . +x and column cosine . +y >= :data:`AXIAL_MIN_COSINE`). A coronal, sagittal or
      flipped slice is rejected (not resampled: the toolkit's crops and RECIST marks are axial).

    Raises :class:`ImplausibleError` naming the rule.
    """
    has_intercept = ds.get("RescaleIntercept") not in (None, "")
    has_slope = ds.get("RescaleSlope") not in (None, "")
    if not (has_intercept and has_slope):
        rescale_type = str(ds.get("RescaleType", "") or "").strip().upper()
        if rescale_type != "HU":
            missing = [t for t, ok in (("RescaleIntercept", has_intercept), ("RescaleSlope", has_slope)) if not ok]
            raise ImplausibleError(f"DICOM CT slice without {' and '.join(missing)} and without RescaleType 'HU': "
                                   "its values cannot be shown to be HU", sample_id=sample_id, stage=stage)
    iop = ds.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        try:
            cos = [float(v) for v in iop]
        except (TypeError, ValueError):
            raise ImplausibleError(f"DICOM ImageOrientationPatient {list(iop)!r} is not 6 numbers",
                                   sample_id=sample_id, stage=stage) from None
        row, col = np.array(cos[:3]), np.array(cos[3:])
        if not (np.isfinite(cos).all() and row[0] >= AXIAL_MIN_COSINE * np.linalg.norm(row) > 0
                and col[1] >= AXIAL_MIN_COSINE * np.linalg.norm(col) > 0):
            raise ImplausibleError(f"DICOM ImageOrientationPatient {[round(c, 3) for c in cos]} is not axial "
                                   "(rows along +x, columns along +y): coronal, sagittal or flipped slices are "
                                   "rejected", sample_id=sample_id, stage=stage)


__all__ = ["AXIAL_MIN_COSINE", "check_ct_geometry", "PADDING_BELOW_HU", "MAX_ONE_VALUE_FRACTION", "MIN_TISSUE_FRACTION", "MIN_P1_P99_RANGE_HU",
           "MEDIAN_RANGE_HU", "SPACING_RANGE_MM", "SERIES_SPACING_RTOL", "ImplausibleError", "check_image_hu",
           "check_spacing_mm", "spacing_differs", "check_series_spacing", "check_ct_header"]
