"""z resampling for 3-D matting: against np.interp / scipy.ndimage.zoom, hand-computed fractions, identities."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.labelling.resample import (MAX_Z_FACTOR, downsample_fraction_z, downsample_trimap_z,
                                                 fine_spacing_mm, upsample_image_z, upsample_mask_z,
                                                 z_upsampling_factor)


@pytest.mark.parametrize("spacing, k", [((2.5, 0.7, 0.7), 4),      # 3.57 -> 4
                                        ((1.25, 0.66, 0.66), 2),   # 1.89 -> 2
                                        ((1.0, 1.0, 1.0), 1),
                                        ((0.5, 1.0, 1.0), 1),      # thinner slices: never below 1
                                        ((1.5, 1.0, 0.6), 3),      # 2.5 -> 3 (half up, on the finer axis)
                                        ((2.5, 1.0, 1.0), 3),      # 2.5 -> 3, not Python's round(2.5) = 2
                                        ((10.0, 0.5, 0.5), MAX_Z_FACTOR)])
def test_factor_by_hand(spacing, k):
    assert z_upsampling_factor(spacing) == k


@pytest.mark.parametrize("spacing", [(np.nan, 1, 1), (1, np.inf, 1), (0, 1, 1), (1, 1), "abc", (1, -1, 1)])
def test_bad_spacing_names_the_argument(spacing):
    with pytest.raises(InputError, match="spacing_mm"):
        z_upsampling_factor(spacing)
    with pytest.raises(InputError, match="spacing_mm"):
        fine_spacing_mm(spacing, factor=2)


def test_fine_spacing():
    assert fine_spacing_mm((2.5, 0.7, 0.8), factor=4) == (0.625, 0.7, 0.8)


def test_hand_computed_linear_interpolation():
    """Two slices 0 and 8, k = 2: sub-slice centres at -0.25, 0.25, 0.75, 1.25 -> 0 (edge), 2, 6, 8 (edge)."""
    image = np.zeros((2, 1, 1))
    image[1] = 8.0
    np.testing.assert_allclose(upsample_image_z(image, factor=2)[:, 0, 0], [0.0, 2.0, 6.0, 8.0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4, 7])
@pytest.mark.parametrize("n_z", [1, 2, 5])
def test_image_matches_np_interp_and_zoom(k, n_z):
    rng = np.random.default_rng(k * 10 + n_z)
    image = rng.normal(-500, 300, size=(n_z, 4, 5))
    got = upsample_image_z(image, factor=k)
    assert got.shape == (n_z * k, 4, 5) and got.dtype == np.float64
    centres = (np.arange(n_z * k) + 0.5) / k - 0.5
    oracle = np.apply_along_axis(lambda col: np.interp(centres, np.arange(n_z), col), 0, image)
    np.testing.assert_allclose(got, oracle, rtol=0, atol=1e-9)
    zoomed = ndimage.zoom(image, (k, 1, 1), order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(got, zoomed, rtol=0, atol=1e-9)


def test_factor_one_is_the_identity():
    rng = np.random.default_rng(0)
    image = rng.random((3, 4, 5))
    np.testing.assert_array_equal(upsample_image_z(image, factor=1), image)
    mask = rng.random((3, 4, 5)) > 0.5
    np.testing.assert_array_equal(upsample_mask_z(mask, factor=1), mask)
    np.testing.assert_array_equal(downsample_fraction_z(image, factor=1), image.astype(np.float32))
    tri = rng.choice(np.array([0, 128, 255], np.uint8), size=(3, 4, 5))
    np.testing.assert_array_equal(downsample_trimap_z(tri, factor=1), tri)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_constant_volume_round_trip(k):
    image = np.full((4, 3, 3), -432.5)
    fine = upsample_image_z(image, factor=k)
    np.testing.assert_array_equal(fine, -432.5)
    np.testing.assert_array_equal(downsample_fraction_z(fine, factor=k), np.float32(-432.5))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_linear_ramp_round_trip_inside(k):
    """Sub-slice centres are symmetric about the voxel centre, so a ramp along z comes back exactly
    (away from the two end voxels, whose outer halves take the edge value)."""
    image = np.broadcast_to((3.0 * np.arange(6) - 4.0)[:, None, None], (6, 2, 2))
    back = downsample_fraction_z(upsample_image_z(image, factor=k), factor=k)
    np.testing.assert_allclose(back[1:-1], image[1:-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_mask_is_linear_interpolation_then_half(k):
    rng = np.random.default_rng(k)
    mask = rng.random((5, 6, 7)) > 0.6
    got = upsample_mask_z(mask.astype(np.uint8) * 255, factor=k)
    centres = (np.arange(5 * k) + 0.5) / k - 0.5
    interp = np.apply_along_axis(lambda col: np.interp(centres, np.arange(5), col), 0, mask.astype(float))
    assert np.min(np.abs(interp - 0.5)) > 1e-9        # no sub-slice centre is half-way between slices
    np.testing.assert_array_equal(got, interp >= 0.5)
    # ... and the fine mask averaged back is the mask (its volume is kept exactly)
    np.testing.assert_array_equal(downsample_fraction_z(got.astype(np.float32), factor=k), mask.astype(np.float32))


@pytest.mark.parametrize("k", [2, 4, 5])
def test_averaging_is_exact_on_a_tiled_half_space(k):
    """Lesion below a plane that cuts voxel 2 at its j-th sub-slice boundary: voxel 2's fraction is
    exactly j / k, voxels 0-1 are 1, 3-4 are 0."""
    for j in range(k + 1):
        surface = 2 * k + j                     # fine sub-slices below it are lesion
        fine = np.zeros((5 * k, 2, 3))
        fine[:surface] = 1.0
        got = downsample_fraction_z(fine, factor=k)
        expect = np.zeros((5, 2, 3), np.float32)
        expect[:2] = 1.0
        expect[2] = np.float32(j / k)
        np.testing.assert_array_equal(got, expect)


def test_averaging_of_an_analytic_fraction():
    """A sphere's exact slab fractions: the fraction of voxel z (thickness 1) under a surface at
    height h(x) is clip(h - (z - 1/2), 0, 1); at the fine level the same rule on sub-slices of 1/k."""
    k = 4
    h = np.linspace(0.1, 3.9, 11)[None, None, :]            # surface height per column, voxel units
    z = np.arange(4)[:, None, None]
    coarse = np.clip(h - (z - 0.5), 0.0, 1.0)
    f = np.arange(4 * k)[:, None, None]
    fine = np.clip((h - (f / k - 0.5)) * k, 0.0, 1.0)         # fraction of each sub-slice of 1/k
    np.testing.assert_allclose(downsample_fraction_z(np.broadcast_to(fine, (4 * k, 1, 11)), factor=k),
                               np.broadcast_to(coarse, (4, 1, 11)), rtol=0, atol=1e-6)


def test_trimap_down_keeps_known_only_where_all_sub_slices_agree():
    fine = np.array([0, 0, 0, 128, 255, 255, 255, 0], np.uint8)[:, None, None]
    got = downsample_trimap_z(fine, factor=2)[:, 0, 0]
    np.testing.assert_array_equal(got, [0, 128, 255, 128])


@pytest.mark.parametrize("call, match", [
    (lambda: upsample_image_z(np.zeros((4, 4)), factor=2), "3-D"),
    (lambda: upsample_image_z(np.full((2, 2, 2), np.nan), factor=2), "NaN"),
    (lambda: upsample_image_z(np.zeros((2, 2, 2)), factor=0), "factor"),
    (lambda: upsample_image_z(np.zeros((2, 2, 2)), factor=2.0), "factor"),
    (lambda: upsample_mask_z(np.full((2, 2, 2), 3), factor=2), "binary"),
    (lambda: downsample_fraction_z(np.zeros((5, 2, 2)), factor=2), "multiple"),
    (lambda: downsample_trimap_z(np.full((4, 2, 2), 7, np.uint8), factor=2), "outside"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(InputError, match=match):
        call()
