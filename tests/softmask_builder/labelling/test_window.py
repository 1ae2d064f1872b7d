"""CT window against hand-computed values and an independent piecewise-linear interpolation."""

import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.labelling.window import window_hu


def test_lung_window_hand_values():
    # level -600, width 1500 -> [-1350, 150] HU maps onto [0, 1].
    hu = np.array([[-2048, -1350, -600], [-975, 150, 3000]], dtype=np.int16)
    got = window_hu(hu, level_hu=-600, width_hu=1500)
    np.testing.assert_allclose(got, [[0.0, 0.0, 0.5], [0.25, 1.0, 1.0]], atol=1e-12)
    assert got.dtype == np.float64


@pytest.mark.parametrize("level, width", [(-600, 1500), (40, 400), (50.5, 1.0)])
def test_matches_np_interp(level, width):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1500, 1500, size=(3, 17, 19))  # a stack works too
    got = window_hu(hu, level_hu=level, width_hu=width)
    expected = np.interp(hu, [level - width / 2, level + width / 2], [0.0, 1.0])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got.shape == hu.shape


def test_bad_input_named():
    with pytest.raises(InputError, match="width_hu"):
        window_hu(np.zeros((4, 4)), level_hu=0, width_hu=0)
    with pytest.raises(InputError, match="width_hu"):
        window_hu(np.zeros((4, 4)), level_hu=0, width_hu=float("inf"))
    with pytest.raises(InputError, match="level_hu"):
        window_hu(np.zeros((4, 4)), level_hu=float("nan"), width_hu=10)
    with pytest.raises(InputError, match="NaN"):
        window_hu(np.array([[0.0, np.nan]]), level_hu=0, width_hu=10)
    with pytest.raises(InputError, match="dtype"):
        window_hu(np.array([["a"]]), level_hu=0, width_hu=10)
    with pytest.raises(InputError, match="empty"):
        window_hu(np.zeros((0, 4)), level_hu=0, width_hu=10)
