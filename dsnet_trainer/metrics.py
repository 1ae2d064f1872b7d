"""Segmentation and Soft Mask metrics, per crop (one nodule per crop), on numpy arrays.

Definitions (P = predicted lesion pixels, G = ground-truth lesion pixels, TP = |P and G|,
FP = |P minus G|, FN = |G minus P|):

* Dice = 2 TP / (|P| + |G|); SEN (sensitivity, recall) = TP / |G|; PPV (precision) = TP / |P|.
* **Empty masks.** A ratio whose denominator is 0 scores **1 when both masks are empty** (nothing
  to find and nothing found: perfect agreement) and **0 otherwise**. So with an empty ground truth,
  an empty prediction scores Dice = SEN = PPV = 1 and a non-empty one scores Dice = 0, SEN = 0
  (the lesion-free crop was not recognised as such), PPV = 0 (TP = 0); with an empty
  prediction and a non-empty ground truth, Dice = SEN = PPV = 0.
* **Authors' protocol** (labelled ``*_smooth`` everywhere): per-image ratios with +1 in the
  numerator and denominator, e.g. Dice = (2 TP + 1) / (|P| + |G| + 1). It never divides by 0 and
  rates small lesions higher than the plain ratio; it is reported for comparison with the paper's
  numbers only.
* Soft Mask errors against the ground-truth Soft Mask, both as alpha in [0, 1]: SAD = sum over
  the crop of |alpha_pred - alpha_gt| (in pixels, not divided by 1000), MSE = mean squared error.

* **Boundary metrics** (scored against a phantom's true mask, issue 25), distances in pixels:
  a mask's *boundary* is its pixels with at least one 4-neighbour outside the mask (pixels on
  the crop's edge count as boundary: outside the crop is background). For boundaries A
  (prediction) and B (truth), d(a, B) is the Euclidean distance from pixel centre a to the
  nearest pixel centre of B. **HD95** = max(95th percentile of d(a, B) over a in A, 95th
  percentile of d(b, A) over b in B) (the directed-percentile form of MONAI and DeepMind's
  ``surface-distance``; percentiles by linear interpolation, numpy's default). **Surface Dice at
  tolerance t** (Nikolov et al. 2021, on boundary pixels rather than surfels) = (#{a: d(a, B) <= t}
  + #{b: d(b, A) <= t}) / (|A| + |B|). Empty masks: both empty -> HD95 = 0 and surface Dice = 1;
  exactly one empty -> HD95 = NaN (undefined: no distance exists; aggregates skip it and count
  it) and surface Dice = 0.

Aggregates are the mean and the population standard deviation (ddof = 0) over crops.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["confusion_counts", "dice_sen_ppv", "smoothed_dice_sen_ppv", "segmentation_metrics",
           "soft_mask_errors", "choose_threshold", "mean_std", "DEFAULT_THRESHOLDS", "boundary",
           "boundary_metrics"]

#: Thresholds searched on the validation split (0.05, 0.10, ..., 0.95).
DEFAULT_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _as_bool_stack(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (rows, cols) or (n, rows, cols), got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def confusion_counts(pred, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-crop (TP, FP, FN) as int64 arrays of length n for binary (n, H, W) or (H, W) inputs."""
    p = _as_bool_stack(pred, "pred")
    g = _as_bool_stack(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    tp = np.count_nonzero(p & g, axis=(1, 2)).astype(np.int64)
    fp = np.count_nonzero(p & ~g, axis=(1, 2)).astype(np.int64)
    fn = np.count_nonzero(~p & g, axis=(1, 2)).astype(np.int64)
    return tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    out[~ok & both_empty] = 1.0
    return out


def dice_sen_ppv(pred, gt) -> dict[str, np.ndarray]:
    """Per-crop Dice, SEN, PPV (float64 arrays of length n) with the empty-mask rule above."""
    tp, fp, fn = confusion_counts(pred, gt)
    both_empty = (tp + fp + fn) == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "sen": _ratio(tp, tp + fn, both_empty),
        "ppv": _ratio(tp, tp + fp, both_empty),
    }


def smoothed_dice_sen_ppv(pred, gt, *, smooth: float = 1.0) -> dict[str, np.ndarray]:
    """The authors' protocol: per-crop ratios with ``smooth`` added above and below."""
    tp, fp, fn = confusion_counts(pred, gt)
    return {
        "dice_smooth": (2 * tp + smooth) / (2 * tp + fp + fn + smooth),
        "sen_smooth": (tp + smooth) / (tp + fn + smooth),
        "ppv_smooth": (tp + smooth) / (tp + fp + smooth),
    }


def segmentation_metrics(prob, gt, *, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """All per-crop segmentation metrics of probabilities ``prob`` binarised at ``prob >= threshold``.

    Returns the keys of :func:`dice_sen_ppv` and :func:`smoothed_dice_sen_ppv`.
    """
    p = np.asarray(prob, dtype=np.float64)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    pred = p >= threshold
    out = dice_sen_ppv(pred, gt)
    out.update(smoothed_dice_sen_ppv(pred, gt))
    return out


def soft_mask_errors(alpha_pred, alpha_gt) -> dict[str, np.ndarray]:
    """Per-crop SAD (sum |d|) and MSE (mean d^2) of Soft Masks given as alpha in [0, 1]."""
    a = np.asarray(alpha_pred, dtype=np.float64)
    b = np.asarray(alpha_gt, dtype=np.float64)
    if a.ndim == 2 and b.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"alpha_pred {a.shape} and alpha_gt {b.shape} must both be (n, rows, cols)")
    d = a - b
    return {"sad": np.abs(d).sum(axis=(1, 2)), "mse": (d * d).mean(axis=(1, 2))}


def choose_threshold(prob, gt, *, thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> tuple[float, float]:
    """The threshold of ``thresholds`` with the highest mean Dice on (prob, gt).

    Call it on the validation split only. Ties go to the threshold closest to 0.5, then to the
    lower one, so the choice is deterministic. Returns (threshold, mean Dice there).
    """
    ts = [float(t) for t in thresholds]
    if not ts:
        raise ValueError("thresholds is empty")
    best = None
    for t in ts:
        score = float(np.mean(dice_sen_ppv(np.asarray(prob) >= t, gt)["dice"]))
        key = (score, -abs(t - 0.5), -t)
        if best is None or key > best[0]:
            best = (key, t, score)
    return best[1], best[2]


def boundary(mask) -> np.ndarray:
    """Boundary pixels of a 2-D binary mask: mask pixels with a 4-neighbour outside the mask
    (outside the array counts as outside the mask). bool array of the mask's shape."""
    from scipy import ndimage

    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def boundary_metrics(pred, gt, *, tolerance_px: float = 1.0, percentile: float = 95.0) -> dict[str, np.ndarray]:
    """Per-crop ``hd95`` (px, NaN when exactly one mask is empty) and ``surface_dice`` at
    ``tolerance_px`` of binary (n, H, W) or (H, W) masks (definitions in the module docstring).

    Distances come from :func:`scipy.ndimage.distance_transform_edt` of each boundary's
    complement, read at the other boundary's pixels.
    """
    from scipy import ndimage

    p = _as_bool_stack(pred, "pred")
    g = _as_bool_stack(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    if not (np.isfinite(tolerance_px) and tolerance_px >= 0):
        raise ValueError(f"tolerance_px must be finite and >= 0, got {tolerance_px}")
    hd = np.zeros(len(p), dtype=np.float64)
    sd = np.ones(len(p), dtype=np.float64)
    for i in range(len(p)):
        a, b = boundary(p[i]), boundary(g[i])
        if not a.any() and not b.any():
            continue
        if not a.any() or not b.any():
            hd[i], sd[i] = np.nan, 0.0
            continue
        d_ab = ndimage.distance_transform_edt(~b)[a]  # each boundary pixel of A to the nearest of B
        d_ba = ndimage.distance_transform_edt(~a)[b]
        hd[i] = max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))
        sd[i] = (np.count_nonzero(d_ab <= tolerance_px) + np.count_nonzero(d_ba <= tolerance_px)) / (d_ab.size + d_ba.size)
    return {"hd95": hd, "surface_dice": sd}


def mean_std(values) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of a 1-D array; (nan, nan) if empty."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())
