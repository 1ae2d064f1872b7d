"""Per-crop metrics against hand-computed cases, including the empty-mask rules."""

from __future__ import annotations

import numpy as np
import pytest

from dsnet_trainer.metrics import (choose_threshold, confusion_counts, dice_sen_ppv, mean_std,
                                   segmentation_metrics, smoothed_dice_sen_ppv, soft_mask_errors)


def _masks():
    gt = np.zeros((4, 4), bool)
    gt[1:3, 1:3] = True                     # 4 lesion pixels
    pred = np.zeros((4, 4), bool)
    pred[1:3, 2:4] = True                   # 4 predicted, 2 overlap
    return pred, gt


def test_hand_case():
    pred, gt = _masks()
    tp, fp, fn = confusion_counts(pred, gt)
    assert (tp[0], fp[0], fn[0]) == (2, 2, 2)
    m = dice_sen_ppv(pred, gt)
    assert m["dice"][0] == pytest.approx(4 / 8)
    assert m["sen"][0] == pytest.approx(2 / 4)
    assert m["ppv"][0] == pytest.approx(2 / 4)
    s = smoothed_dice_sen_ppv(pred, gt)
    assert s["dice_smooth"][0] == pytest.approx(5 / 9)
    assert s["sen_smooth"][0] == pytest.approx(3 / 5)
    assert s["ppv_smooth"][0] == pytest.approx(3 / 5)


def test_asymmetric_case():
    gt = np.zeros((3, 5), bool)
    gt[0, :] = True                          # 5 pixels
    pred = np.zeros((3, 5), bool)
    pred[0, :2] = True                       # 2, both true positives
    m = dice_sen_ppv(pred, gt)
    assert (m["dice"][0], m["sen"][0], m["ppv"][0]) == pytest.approx((4 / 7, 2 / 5, 1.0))


@pytest.mark.parametrize("pred_any,gt_any,expected", [
    (False, False, (1.0, 1.0, 1.0)),   # both empty: perfect agreement
    (True, False, (0.0, 0.0, 0.0)),    # lesion-free crop, something predicted
    (False, True, (0.0, 0.0, 0.0)),    # lesion missed entirely
])
def test_empty_mask_rules(pred_any, gt_any, expected):
    pred = np.zeros((5, 5), bool)
    gt = np.zeros((5, 5), bool)
    pred[2, 2] = pred_any
    gt[0, 0] = gt_any
    m = dice_sen_ppv(pred, gt)
    assert (m["dice"][0], m["sen"][0], m["ppv"][0]) == expected
    s = smoothed_dice_sen_ppv(pred, gt)
    # smoothed ratios: both empty -> 1/1; one pixel on one side -> 1/2 (Dice) or 1/1, 1/2
    tp, fp, fn = 0, int(pred_any), int(gt_any)
    assert s["dice_smooth"][0] == pytest.approx(1 / (fp + fn + 1))
    assert s["sen_smooth"][0] == pytest.approx(1 / (fn + 1))
    assert s["ppv_smooth"][0] == pytest.approx(1 / (fp + 1))


def test_stacks_give_one_value_per_crop_and_threshold_is_inclusive():
    pred, gt = _masks()
    prob = np.stack([pred * 0.5, gt * 0.9, np.zeros_like(gt, float)])
    gts = np.stack([gt, gt, np.zeros_like(gt)])
    m = segmentation_metrics(prob, gts, threshold=0.5)
    np.testing.assert_allclose(m["dice"], [0.5, 1.0, 1.0])
    m = segmentation_metrics(prob, gts, threshold=0.6)
    np.testing.assert_allclose(m["dice"], [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="threshold"):
        segmentation_metrics(prob, gts, threshold=1.5)
    with pytest.raises(ValueError, match="same shape"):
        dice_sen_ppv(pred, gt[:3])


def test_soft_mask_errors_hand_case():
    a = np.array([[0.0, 0.5], [1.0, 0.25]])
    b = np.array([[0.0, 1.0], [0.5, 0.25]])
    e = soft_mask_errors(a, b)
    assert e["sad"][0] == pytest.approx(1.0)
    assert e["mse"][0] == pytest.approx((0.25 + 0.25) / 4)


def test_choose_threshold_hand_case():
    gt = np.zeros((2, 1, 4), bool)
    gt[0, 0, :2] = True
    gt[1, 0, :1] = True
    prob = np.array([[[0.9, 0.35, 0.3, 0.1]], [[0.8, 0.2, 0.32, 0.0]]])
    # t in (0.32, 0.35]: sample 0 predicts {0,1} (Dice 1), sample 1 predicts {0} (Dice 1)
    t, score = choose_threshold(prob, gt, thresholds=[0.1, 0.3, 0.35, 0.5])
    assert (t, score) == (0.35, 1.0)
    # a tie between 0.35 and 0.34 goes to the one closer to 0.5
    t, _ = choose_threshold(prob, gt, thresholds=[0.34, 0.35])
    assert t == 0.35


def test_mean_std_population():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert all(np.isnan(mean_std([])))


# ---- boundary metrics against the truth (issue 25) ------------------------------------------
def _oracle_boundary_metrics(pred, gt, tol):
    """Independent oracle: boundary = mask pixels whose 4-neighbourhood (padded with background)
    leaves the mask, found by shifting; distances by brute force (scipy's cdist)."""
    from scipy.spatial.distance import cdist

    def edge(m):
        pad = np.pad(m, 1)
        inner = pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        return np.argwhere(m & ~inner)

    a, b = edge(pred), edge(gt)
    if len(a) == 0 and len(b) == 0:
        return 0.0, 1.0
    if len(a) == 0 or len(b) == 0:
        return np.nan, 0.0
    d = cdist(a, b)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    hd = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return hd, ((d_ab <= tol).sum() + (d_ba <= tol).sum()) / (len(a) + len(b))


@pytest.mark.parametrize("size", [9, 24, 40])
def test_boundary_metrics_match_a_brute_force_oracle(size):
    from scipy import ndimage

    from dsnet_trainer.metrics import boundary_metrics

    rng = np.random.default_rng(size)
    blobs = ndimage.gaussian_filter(rng.random((6, size, size)), (0, 2, 2))
    gt = blobs > np.median(blobs)
    pred = ndimage.gaussian_filter(blobs + 0.05 * rng.standard_normal(blobs.shape), (0, 1, 1)) > np.median(blobs)
    got = boundary_metrics(pred, gt, tolerance_px=1.0)
    for i in range(6):
        hd, sd = _oracle_boundary_metrics(pred[i], gt[i], 1.0)
        assert got["hd95"][i] == pytest.approx(hd) and got["surface_dice"][i] == pytest.approx(sd)


def _disc(n, radius):
    rr, cc = np.mgrid[:n, :n] - (n - 1) / 2
    return rr ** 2 + cc ** 2 <= radius ** 2


def test_boundary_metrics_hand_cases():
    from dsnet_trainer.metrics import boundary_metrics

    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    grown = square.copy()  # the square grown by one pixel in the 4 directions (corners cut)
    grown[4, 5:15] = grown[15, 5:15] = grown[5:15, 4] = grown[5:15, 15] = True
    out = boundary_metrics(np.stack([square, grown]), np.stack([square, square]))
    # identical: distance 0 everywhere; grown: every boundary pixel 1 px from the other boundary
    np.testing.assert_allclose(out["hd95"], [0.0, 1.0])
    np.testing.assert_allclose(out["surface_dice"], [1.0, 1.0])
    # concentric discs of radius 6 and 10: every boundary pixel is 3-5 px from the other's
    out = boundary_metrics(_disc(31, 6.0), _disc(31, 10.0))
    assert 3.0 <= out["hd95"][0] <= 5.0 and out["surface_dice"][0] == 0.0
    # shifted square by 3 columns: the top/bottom rows overlap partly; oracle counted by hand
    shifted = np.zeros((20, 20), bool)
    shifted[5:15, 8:18] = True
    # boundaries: 36 px each. Square's pixels within 1 px of shifted's boundary: rows 5 and 14 at
    # cols 7..14 (8 + 8; col 7 touches (5, 8)), and (6, 14), (13, 14) next to shifted's rows -> 18.
    # By symmetry shifted has 18 too (rows at cols 8..15, (6, 8), (13, 8)) -> 36 / 72.
    out = boundary_metrics(shifted, square)
    assert out["surface_dice"][0] == pytest.approx(36 / 72)
    empty = np.zeros((20, 20), bool)
    out = boundary_metrics(np.stack([empty, square, empty]), np.stack([empty, empty, square]))
    assert out["hd95"][0] == 0.0 and np.isnan(out["hd95"][1]) and np.isnan(out["hd95"][2])
    np.testing.assert_array_equal(out["surface_dice"], [1.0, 0.0, 0.0])
