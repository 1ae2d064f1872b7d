"""Scanner-blur estimate and Soft Mask deblurring against rendered disks of known fraction and blur.

The oracle is the rendering itself: a disk's exact partial-volume fraction (16 x 16 sub-samples
per pixel), blurred by a Gaussian of known sigma (scipy), so the true fraction, the true edge and
the true sigma are known independently of the code under test.
"""

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.labelling.blur import (EDGE_WIDTH_PER_SIGMA, PSF_SIGMA_RANGE_PX, deblur_alpha,
                                             estimate_psf_sigma_px, psf_sigma_for_deblur)
from softmask_builder.labelling.matting import closed_form_alpha
from softmask_builder.labelling.pipeline import LabelParams, label_from_mask, label_from_readers, label_from_recist
from softmask_builder.labelling.trimap import trimap_from_mask
from softmask_builder.labelling.window import window_hu


def _disk_fraction(size, radius_px, centre=None, sub=16):
    """Exact-ish area fraction of each pixel covered by a disk (sub x sub samples per pixel)."""
    c = (size - 1) / 2 + 0.3 if centre is None else centre
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    rr = np.arange(size)[:, None, None, None] + offs[None, None, :, None]
    cc = np.arange(size)[None, :, None, None] + offs[None, None, None, :]
    inside = (rr - c) ** 2 + (cc - c) ** 2 <= radius_px ** 2
    return inside.mean(axis=(2, 3))


def test_edge_width_per_sigma_is_the_gaussian_10_90_distance():
    # Phi(x / sigma) goes from 0.1 to 0.9 over 2 * probit(0.9) sigma; probit(0.9) by bisection on erf.
    lo, hi = 0.0, 3.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < 0.9 else (lo, mid)
    assert EDGE_WIDTH_PER_SIGMA == pytest.approx(2 * lo, rel=1e-9)


@pytest.mark.parametrize("sigma", [0.8, 1.2, 1.8])
@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_estimate_recovers_the_rendering_sigma_on_a_large_disk(sigma, noise):
    f = _disk_fraction(64, 18.0)
    image = 0.1 + 0.6 * ndimage.gaussian_filter(f, sigma, mode="nearest")
    image += noise * np.random.default_rng(0).standard_normal(image.shape)
    est = estimate_psf_sigma_px(image, f >= 0.5)
    # The pixel's own partial-volume ramp adds ~1/12 px^2 of variance; allow 15 %.
    assert est == pytest.approx(math.sqrt(sigma ** 2 + 1 / 12), rel=0.15)


def test_estimate_is_nan_without_an_edge():
    f = _disk_fraction(32, 8.0)
    flat = np.full((32, 32), 0.3)
    assert math.isnan(estimate_psf_sigma_px(flat, f >= 0.5))                   # no contrast
    assert math.isnan(estimate_psf_sigma_px(flat, np.zeros((32, 32), bool)))   # empty mask
    assert math.isnan(estimate_psf_sigma_px(flat, np.ones((32, 32), bool)))    # no outside
    with pytest.raises(InputError, match="mask shape"):
        estimate_psf_sigma_px(flat, np.zeros((31, 32), bool))
    with pytest.raises(InputError, match="half_length_px"):
        estimate_psf_sigma_px(flat, f >= 0.5, half_length_px=0)


def test_sigma_for_deblur_uses_the_given_value_the_estimate_or_the_fallback():
    f = _disk_fraction(64, 18.0)
    image_hu = -850.0 + 850.0 * ndimage.gaussian_filter(f, 1.2, mode="nearest")
    assert psf_sigma_for_deblur(image_hu, f, psf_sigma_px=0.7, fallback_sigma_px=9.0) == 0.7
    est = estimate_psf_sigma_px(image_hu, f >= 0.5, min_contrast=75.0)
    assert psf_sigma_for_deblur(image_hu, f, psf_sigma_px=0.0, fallback_sigma_px=9.0) == pytest.approx(est)
    flat = np.full((64, 64), -800.0)
    assert psf_sigma_for_deblur(flat, f, psf_sigma_px=0.0, fallback_sigma_px=1.35) == 1.35
    # A faint edge (50 HU, below the 75 HU minimum contrast) is not measured either.
    faint = -850.0 + 50.0 * ndimage.gaussian_filter(f, 1.2, mode="nearest")
    assert psf_sigma_for_deblur(faint, f, psf_sigma_px=0.0, fallback_sigma_px=1.35) == 1.35
    # A blur wider than the range is clipped to it.
    wide = -850.0 + 850.0 * ndimage.gaussian_filter(f, 5.0, mode="nearest")
    assert psf_sigma_for_deblur(wide, f, psf_sigma_px=0.0, fallback_sigma_px=1.0) <= PSF_SIGMA_RANGE_PX[1]


def test_sigma_is_measured_on_hu_not_on_a_clipping_window():
    # A solid lesion (0 HU) in lung (-850 HU): the -700/1000 window clips the lesion's plateau at
    # -200 HU, which would make the edge look sharper; the pipeline measures on HU.
    f = _disk_fraction(64, 14.0)
    image_hu = -850.0 + 850.0 * ndimage.gaussian_filter(f, 1.4, mode="nearest")
    clipped = window_hu(image_hu, level_hu=-700.0, width_hu=1000.0)
    on_hu = psf_sigma_for_deblur(image_hu, f, psf_sigma_px=0.0, fallback_sigma_px=9.0)
    assert on_hu == pytest.approx(math.sqrt(1.4 ** 2 + 1 / 12), rel=0.15)
    assert estimate_psf_sigma_px(clipped, f >= 0.5) < 0.9 * on_hu


@pytest.mark.parametrize("radius", [2.5, 4.0, 8.0])
@pytest.mark.parametrize("sigma", [0.9, 1.4])
def test_deblur_brings_the_half_contour_and_the_fraction_back(radius, sigma):
    f = _disk_fraction(48, radius)
    g = ndimage.gaussian_filter(f, sigma, mode="nearest")
    out = deblur_alpha(g.astype(np.float32), psf_sigma_px=sigma, iterations=3)
    true_area = np.count_nonzero(f >= 0.5)
    # The blurred 0.5 contour lies inside the disk (curvature); the deblurred one is closer.
    assert np.count_nonzero(g >= 0.5) < true_area
    assert abs(np.count_nonzero(out >= 0.5) - true_area) <= max(abs(np.count_nonzero(g >= 0.5) - true_area) - 1,
                                                                0.02 * true_area)
    assert np.abs(out - f).sum() < np.abs(g - f).sum()
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_deblur_keeps_flat_regions_and_is_identity_when_off():
    a = np.zeros((16, 16), np.float32)
    a[4:12, 4:12] = 1.0
    flat0, flat1 = np.zeros_like(a), np.ones_like(a)
    np.testing.assert_array_equal(deblur_alpha(flat0, psf_sigma_px=1.0, iterations=5), flat0)
    np.testing.assert_array_equal(deblur_alpha(flat1, psf_sigma_px=1.0, iterations=5), flat1)
    np.testing.assert_array_equal(deblur_alpha(a, psf_sigma_px=1.0, iterations=0), a)
    np.testing.assert_array_equal(deblur_alpha(a, psf_sigma_px=0.0, iterations=4), a)


@pytest.mark.parametrize("kwargs, match", [
    ({"psf_sigma_px": -1.0, "iterations": 2}, "psf_sigma_px"),
    ({"psf_sigma_px": float("nan"), "iterations": 2}, "psf_sigma_px"),
    ({"psf_sigma_px": 1.0, "iterations": 2.5}, "iterations"),
    ({"psf_sigma_px": 1.0, "iterations": -1}, "iterations"),
])
def test_deblur_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        deblur_alpha(np.zeros((8, 8)), **kwargs)
    with pytest.raises(InputError, match="alpha must be in"):
        deblur_alpha(np.full((8, 8), 1.5), psf_sigma_px=1.0, iterations=1)


def _blurred_lesion_hu(radius, sigma, size=64, lesion_hu=0.0, lung_hu=-850.0):
    f = _disk_fraction(size, radius)
    image = lung_hu + (lesion_hu - lung_hu) * ndimage.gaussian_filter(f, sigma, mode="nearest")
    return f, image.astype(np.float32)


def test_pipeline_composes_matting_and_deblur():
    f, image = _blurred_lesion_hu(5.0, 1.2)
    mask = f >= 0.5
    off = LabelParams(deblur_iterations=0)
    on = LabelParams(deblur_iterations=2, psf_sigma_px=0.0)
    image01 = window_hu(image, level_hu=off.window_level_hu, width_hu=off.window_width_hu)
    alpha = closed_form_alpha(image01, trimap_from_mask(mask, band_px=off.band_px), eps=off.eps, radius=off.radius)
    np.testing.assert_array_equal(label_from_mask(image, mask, off).soft_mask, alpha)
    sigma = psf_sigma_for_deblur(image, alpha, psf_sigma_px=0.0, fallback_sigma_px=on.psf_sigma_fallback_px)
    np.testing.assert_array_equal(label_from_mask(image, mask, on).soft_mask,
                                  deblur_alpha(alpha, psf_sigma_px=sigma, iterations=2))


@pytest.mark.parametrize("radius", [3.0, 6.0])
def test_deblurred_labels_match_the_true_area_better(radius):
    """Strategies 1-3 on a blurred disk of known fraction: with deblurring the binarized Soft Mask's
    area is nearer the true mask's, and the Soft Mask nearer the true fraction (SAD)."""
    from softmask_builder.phantom.cases import recist_from_mask

    f, image = _blurred_lesion_hu(radius, 1.3)
    mask = f >= 0.5
    rng = np.random.default_rng(1)
    # Unbiased readers: two outline one pixel outside the true edge, two one pixel inside it.
    readers = [ndimage.binary_dilation(mask) if k % 2 else ndimage.binary_erosion(mask) for k in range(4)]
    rec = recist_from_mask(mask)
    image = image + rng.normal(0.0, 5.0, image.shape).astype(np.float32)
    for make in (lambda p: label_from_mask(image, mask, p), lambda p: label_from_readers(image, readers, p),
                 lambda p: label_from_recist(image, rec, p)):
        # The same parameters but the deblurring (lung window: the lesion's edge is not clipped by it).
        base = LabelParams(window_level_hu=-600.0, window_width_hu=1500.0, recist_band_px=2.0)
        before = make(dataclasses.replace(base, deblur_iterations=0))
        after = make(dataclasses.replace(base, deblur_iterations=2))
        err = [abs(np.count_nonzero(x.soft_mask >= 0.5) / np.count_nonzero(mask) - 1.0) for x in (before, after)]
        assert err[1] <= err[0] + 2.0 / np.count_nonzero(mask)   # at most 2 pixels worse (pixel quantisation)
        assert np.abs(after.soft_mask - f).sum() < np.abs(before.soft_mask - f).sum()


@pytest.mark.parametrize("field, value", [("deblur_iterations", -1), ("deblur_iterations", 1.5),
                                          ("psf_sigma_px", -0.1), ("psf_sigma_fallback_px", 40.0)])
def test_label_params_reject_bad_deblur_settings(field, value):
    with pytest.raises(InputError, match=f"label.{field}"):
        LabelParams(**{field: value})
