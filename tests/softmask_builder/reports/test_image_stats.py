"""Image statistics against synthetic images with known answers: white noise blurred by a known
Gaussian (known std and autocorrelation width), an erf edge of known sigma (known 10-90 width),
known HU distributions, and the bootstrap interval against the normal-theory one."""

import math

import numpy as np
import pytest
from scipy import ndimage, special

from softmask_builder.errors import InputError
from softmask_builder.reports.image_stats import (bootstrap_ci, edge_width, homogeneous_patches, hu_histogram,
                                          noise_stats)


def _blurred_noise(shape, sigma_px, std_hu, seed):
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma_px, mode="wrap")
    # The blurred field's std is known in closed form: 1 / (2 sqrt(pi) sigma) for a 2-D Gaussian.
    return field * std_hu * 2.0 * math.sqrt(math.pi) * sigma_px


@pytest.mark.parametrize("sigma_px, spacing", [(1.0, (0.7, 0.7)), (2.0, (0.6, 0.8))])
def test_noise_std_and_correlation_of_blurred_white_noise(sigma_px, spacing):
    image = 40.0 + _blurred_noise((256, 256), sigma_px, 20.0, seed=1)
    stats = noise_stats(image, spacing, patch_px=32, hu_range=(-500, 500))
    assert stats["n_patches"] == 64
    assert stats["std_hu"] == pytest.approx(20.0, rel=0.08)
    lo, hi = stats["std_hu_ci"]
    assert lo <= stats["std_hu"] <= hi
    # Gaussian ACF of std sigma*sqrt(2): HWHM = sigma sqrt(2) sqrt(2 ln 2), per axis in mm.
    expected = sigma_px * math.sqrt(2) * math.sqrt(2 * math.log(2)) * 0.5 * (spacing[0] + spacing[1])
    assert stats["acf_hwhm_mm"] == pytest.approx(expected, rel=0.12)


def test_white_noise_is_uncorrelated_and_std_scales():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 15, (128, 128))
    stats = noise_stats(image, 1.0, patch_px=16, hu_range=(-1000, 1000))
    assert stats["std_hu"] == pytest.approx(15.0, rel=0.08)
    assert stats["acf_hwhm_mm"] < 0.6   # drops to ~0 at lag 1
    doubled = noise_stats(2 * image, 1.0, patch_px=16, hu_range=(-2000, 2000))
    assert doubled["std_hu"] == pytest.approx(2 * stats["std_hu"], rel=1e-9)


def test_patches_respect_range_and_exclusion_and_plane_is_removed():
    rr, cc = np.mgrid[0:64, 0:64]
    image = np.where(cc < 32, -800.0, 40.0) + 0.5 * rr + np.random.default_rng(0).normal(0, 5, (64, 64))
    exclude = np.zeros((64, 64), bool)
    exclude[50:, 50:] = True   # overlaps only the patch at (48, 48)
    corners = homogeneous_patches(image, patch_px=16, hu_range=(-200, 200), exclude=exclude)
    assert corners == [(0, 32), (0, 48), (16, 32), (16, 48), (32, 32), (32, 48), (48, 32)]
    # the 0.5 HU/px ramp would add 16 * 0.5 / sqrt(12) = 2.3 HU of std if not removed
    assert noise_stats(image, 1.0, patch_px=16, exclude=exclude)["std_hu"] == pytest.approx(5.0, rel=0.1)
    assert math.isnan(noise_stats(image, 1.0, hu_range=(500, 600))["std_hu"])


@pytest.mark.parametrize("sigma_mm, spacing, noise", [(0.6, (0.7, 0.7), 0.0), (1.0, (0.5, 0.8), 0.0),
                                                     (0.8, (0.7, 0.7), 15.0)])
def test_edge_width_of_an_erf_edge(sigma_mm, spacing, noise):
    shape = (160, 160)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    r_mm = np.hypot((rr - 80) * spacing[0], (cc - 80) * spacing[1])
    radius_mm = 20.0
    # Inside 40 HU, outside -850: along every normal an erf of std sigma_mm.
    image = -850 + 890 * 0.5 * special.erfc((r_mm - radius_mm) / (sigma_mm * math.sqrt(2)))
    image = image + np.random.default_rng(4).normal(0, noise, shape) if noise else image
    # The mask is drawn 0.4 mm inside the edge: the per-profile alignment must undo it.
    mask = r_mm <= radius_mm - 0.4
    stats = edge_width(image, mask, spacing, half_length_mm=4.0)
    assert stats["n_profiles"] > 80
    assert stats["width_mm"] == pytest.approx(2 * 1.2815516 * sigma_mm, rel=0.1 if noise else 0.04)
    assert stats["contrast_hu"] == pytest.approx(890, rel=0.05)
    lo, hi = stats["width_mm_ci"]
    assert lo <= stats["width_mm"] <= hi


def test_edge_without_contrast_has_no_profiles():
    image = np.zeros((64, 64))
    mask = np.hypot(*np.mgrid[-32:32, -32:32]) <= 10
    stats = edge_width(image, mask, 1.0)
    assert stats["n_profiles"] == 0 and math.isnan(stats["width_mm"])
    with pytest.raises(InputError, match="spacing_mm"):
        edge_width(image, mask, (1.0, -1.0))


def test_hu_histogram_of_a_known_distribution():
    rng = np.random.default_rng(5)
    image = np.full((64, 64), -850.0)
    mask = np.zeros((64, 64), bool)
    mask[10:50, 10:50] = True
    inner = ndimage.binary_erosion(mask)
    image[inner] = rng.normal(30, 50, int(inner.sum()))
    image[mask & ~inner] = -400.0   # a partial-volume rim the erosion must leave out
    h = hu_histogram(image, mask)
    assert h["n_px"] == 38 * 38
    assert h["mean_hu"] == pytest.approx(30, abs=4) and h["std_hu"] == pytest.approx(50, rel=0.08)
    assert h["p50"] == pytest.approx(30, abs=4)
    assert h["p95"] - h["p5"] == pytest.approx(2 * 1.6449 * 50, rel=0.1)
    lo, hi = h["median_hu_ci"]
    assert lo < h["p50"] < hi


def test_bootstrap_interval_matches_normal_theory():
    values = np.random.default_rng(6).normal(0, 1, 400)
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=1)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert lo < values.mean() < hi
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
