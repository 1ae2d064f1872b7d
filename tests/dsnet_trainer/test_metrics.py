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
