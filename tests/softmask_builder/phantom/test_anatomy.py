"""Tests of the synthetic chest: its geometry helpers, renderers and filters.

Independent references: closed-form distances (a point to a segment, a point into a circle),
closed-form areas (ellipses, a tube's cross-section), scipy's Gaussian filter, and the stated
moments of the texture field.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.phantom.anatomy import (HU_AIR, HU_OUTSIDE_FOV, blur, draw_anatomy, lung_depth,
                                              segment_distance, smooth_field, static_background, vessel_fraction)


def test_segment_distance_matches_hand_computed_cases():
    a, b = np.array([0.0, 0.0, 0.0]), np.array([2.0, 0.0, 0.0])
    assert segment_distance(np.array([1.0, 1.0, 0.0]), a, b) == pytest.approx(1.0)  # beside the middle
    assert segment_distance(np.array([3.0, 0.0, 0.0]), a, b) == pytest.approx(1.0)  # beyond an end
    assert segment_distance(np.array([1.0, 1.0, 1.0]), a, b) == pytest.approx(math.sqrt(2.0))
    assert segment_distance(np.array([-3.0, 4.0, 0.0]), a, b) == pytest.approx(5.0)  # nearest point a


def test_lung_depth_is_the_exact_distance_inside_a_circle():
    lung = (10.0, 20.0, 8.0, 8.0, 0.3)  # a circle: the first-order distance is exact
    assert lung_depth((10.0, 20.0), lung) == 8.0  # the centre: the smaller semi-axis
    assert lung_depth((13.0, 24.0), lung) == pytest.approx(3.0)  # 5 mm from the centre
    assert lung_depth((10.0, 30.0), lung) == pytest.approx(-2.0)  # outside: negative
    assert lung_depth((18.0, 20.0), lung) == pytest.approx(0.0, abs=1e-12)  # on the wall


@pytest.mark.parametrize("sigma_px", [1.5, 2.25])
def test_blur_is_scipys_gaussian_with_replicated_edges(sigma_px):
    img = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    # same support as scipy's truncate=4 radius for these sigmas (ceil(4 sigma) = int(4 sigma + 0.5))
    ref = ndimage.gaussian_filter(img.astype(np.float64), sigma_px, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(blur(img, sigma_px), ref, atol=1e-5)


def test_blur_of_zero_sigma_is_a_copy():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = blur(img, 0.0)
    assert out is not img
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("rows, cols, cell_px", [(64, 64, 16), (96, 80, 2)])
def test_smooth_field_has_zero_mean_and_unit_std(rows, cols, cell_px):
    f = smooth_field(np.random.default_rng(1), rows, cols, cell_px)
    assert f.shape == (rows, cols) and f.dtype == np.float32
    assert abs(float(f.mean())) < 1e-5 and float(f.std()) == pytest.approx(1.0, abs=1e-5)


def test_smooth_field_is_low_frequency():
    f = smooth_field(np.random.default_rng(2), 128, 128, 16).astype(np.float64)
    # neighbouring pixels of a field built on 16 px cells are nearly equal
    corr = np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1]
    assert corr > 0.95


@pytest.mark.parametrize("radius_mm, px", [(3.0, 0.5), (1.2, 0.7)])
def test_tube_across_the_slices_covers_a_disc(radius_mm, px):
    # a tube along z, longer than the slab: every slice shows the same disc. Its coverage ramps
    # linearly from 1 to 0 over d in [r - px/2, r + px/2], so its integral is
    # int 2 pi d cov(d) dd = pi (r^2 + px^2 / 12)
    seg = [(np.array([20.0, 18.0, -30.0]), np.array([20.0, 18.0, 30.0]), radius_mm)]
    f = vessel_fraction(seg, 64, 64, px, z_centres=[0.0, 2.0], t=2.0)
    assert f.shape == (2, 64, 64) and f.dtype == np.float32 and f.min() >= 0.0 and f.max() <= 1.0
    np.testing.assert_array_equal(f[0], f[1])
    assert f[0].sum() * px * px == pytest.approx(math.pi * (radius_mm ** 2 + px ** 2 / 12), rel=0.005)


def test_vessel_union_is_the_max_not_the_sum():
    seg = (np.array([10.0, 10.0, -20.0]), np.array([10.0, 10.0, 20.0]), 2.0)
    one = vessel_fraction([seg], 48, 48, 0.6, z_centres=[0.0], t=1.5)
    two = vessel_fraction([seg, seg], 48, 48, 0.6, z_centres=[0.0], t=1.5)
    np.testing.assert_array_equal(one, two)


def test_vessel_fraction_of_no_tube_is_zero():
    f = vessel_fraction([], 16, 20, 0.7, z_centres=[0.0, 1.0, 2.0], t=1.0)
    assert f.shape == (3, 16, 20) and not f.any()


def test_drawn_chest_renders_lungs_of_the_drawn_area():
    rows = cols = 256
    px = 0.7
    anat = draw_anatomy(np.random.default_rng(4), rows, cols, px, z_span_mm=20.0)
    again = draw_anatomy(np.random.default_rng(4), rows, cols, px, z_span_mm=20.0)
    assert anat.lungs == again.lungs and len(anat.segments) == len(again.segments)  # deterministic
    x = (np.arange(cols) * px)[None, :]
    y = (np.arange(rows) * px)[:, None]
    img, lung = static_background(anat, rows, cols, px, x, y)
    assert img.shape == lung.shape == (rows, cols) and lung.min() >= 0.0 and lung.max() <= 1.0
    # the two lungs do not overlap: the anti-aliased coverage adds up to the ellipses' areas
    area_mm2 = sum(math.pi * a * b for _, _, a, b, _ in anat.lungs)
    assert lung.sum() * px * px == pytest.approx(area_mm2, rel=0.01)
    for cx, cy, *_ in anat.lungs:
        assert lung[int(round(cy / px)), int(round(cx / px))] == 1.0
    assert img[0, 0] == HU_AIR and HU_AIR != HU_OUTSIDE_FOV  # the corner is outside the body
