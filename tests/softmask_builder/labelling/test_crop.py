"""crop_plan / crop_image against hand-computed indices."""

import numpy as np
import pytest

from softmask_builder.labelling.crop import crop_image, crop_plan
from softmask_builder.errors import InputError


def _ramp(rows=100, cols=120):
    r, c = np.mgrid[0:rows, 0:cols]
    return (r * 1000 + c).astype(np.float32)


def test_unscaled_crop_is_exact_window():
    img = _ramp()
    origin, scale = crop_plan((50.2, 60.7), size_px=16, extent_px=5.0)
    assert scale == 1.0
    assert origin == (42.0, 53.0)  # floor(50.2 + .5 - 8), floor(60.7 + .5 - 8)
    crop = crop_image(img, origin, scale, size_px=16)
    np.testing.assert_array_equal(crop, img[42:58, 53:69])


def test_border_crop_replicates_edges():
    img = _ramp()
    origin, scale = crop_plan((1.0, 118.0), size_px=8, extent_px=2.0)
    crop = crop_image(img, origin, scale, size_px=8)
    rows = np.clip(np.arange(origin[0], origin[0] + 8).astype(int), 0, 99)
    cols = np.clip(np.arange(origin[1], origin[1] + 8).astype(int), 0, 119)
    np.testing.assert_array_equal(crop, img[np.ix_(rows, cols)])
    assert origin[0] < 0 and origin[1] + 8 > 120


def test_large_lesion_is_rescaled_and_centre_maps_to_centre():
    img = _ramp()
    origin, scale = crop_plan((50.0, 60.0), size_px=16, extent_px=24.0, max_fill=0.75)
    assert scale == pytest.approx(0.5)
    crop = crop_image(img, origin, scale, size_px=16, interpolation=0)  # INTER_NEAREST
    # crop (r, c) samples origin + (r, c) / scale; the ramp is linear so nearest sampling is exact
    for r, c in [(0, 0), (8, 8), (15, 3)]:
        sr, sc = origin[0] + r / scale, origin[1] + c / scale
        assert crop[r, c] == img[int(round(sr)), int(round(sc))]


def test_bad_arguments_named():
    with pytest.raises(InputError, match="size_px"):
        crop_plan((1, 1), size_px=2, extent_px=1)
    with pytest.raises(InputError, match="finite"):
        crop_plan((np.nan, 1), size_px=16, extent_px=1)
    with pytest.raises(InputError, match="2-D"):
        crop_image(np.zeros((2, 3, 4)), (0, 0), 1.0, size_px=4)
