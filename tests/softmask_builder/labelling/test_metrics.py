"""Dice / SAD / MSE against scipy's Dice dissimilarity and hand-computed cases."""

import numpy as np
import pytest
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from softmask_builder.errors import InputError
from softmask_builder.labelling.metrics import dice, mse, sad


def test_dice_hand_computed():
    p = np.array([[1, 1, 0], [0, 0, 0]], bool)
    t = np.array([[1, 0, 0], [1, 1, 0]], bool)
    assert dice(p, t) == pytest.approx(2 * 1 / (2 + 3))


def test_dice_matches_scipy_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(10):
        p = rng.random((2, 20, 20)) < 0.3   # a batch: any shape works
        t = rng.random((2, 20, 20)) < 0.4
        assert dice(p, t) == pytest.approx(1.0 - scipy_dice_dissimilarity(p.ravel(), t.ravel()))
        assert dice(p.astype(np.uint8), t.astype(float)) == pytest.approx(dice(p, t))


def test_dice_empty_cases():
    z = np.zeros((4, 4), bool)
    o = z.copy()
    o[1, 1] = True
    assert dice(z, z) == 1.0
    assert dice(z, o) == 0.0
    assert dice(o, z) == 0.0


def test_sad_mse_hand_computed():
    alpha = np.array([[0.2, 1.0], [0.5, 0.0]], np.float32)
    truth = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert sad(alpha, truth) == pytest.approx(0.2 + 0.5, abs=1e-6)
    assert mse(alpha, truth) == pytest.approx((0.04 + 0.25) / 4, abs=1e-7)
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 7)), rng.random((5, 7))
    assert sad(a, b) == pytest.approx(sum(abs(x - y) for x, y in zip(a.ravel(), b.ravel())))
    assert mse(a, b) == pytest.approx(sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size)


def test_errors_named():
    with pytest.raises(InputError, match="shape"):
        dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(InputError, match="pred must be binary"):
        dice(np.full((3, 3), 0.5), np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="shape"):
        sad(np.zeros((3, 3)), np.zeros((3,)))
    with pytest.raises(InputError, match="alpha has 1 NaN"):
        mse(np.array([np.nan, 0.0]), np.zeros(2))
    with pytest.raises(InputError, match="empty"):
        sad(np.zeros((0, 3)), np.zeros((0, 3)))
