"""Soft-label baselines against scipy morphology and an independent block-mean + bilinear resampling."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk

from softmask_builder.errors import InputError
from softmask_builder.labelling.soft_labels import SOFT_LABELS, kats_soft_label, soft_label, softseg_soft_label


def _mask(size=32):
    rr, cc = np.mgrid[0:size, 0:size]
    return np.hypot(rr - size / 2 + 0.3, (cc - size / 2.2) * 1.3) <= size / 5


@pytest.mark.parametrize("ring_px, p", [(1, 0.5), (2, 0.3), (3, 0.8)])
def test_kats_ring_matches_scipy_dilation(ring_px, p):
    mask = _mask()
    got = kats_soft_label(mask, ring_px=ring_px, p=p)
    ring = ndimage.binary_dilation(mask, disk(ring_px).astype(bool)) & ~mask
    expected = np.where(mask, 1.0, np.where(ring, p, 0.0)).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32


def test_kats_zero_ring_is_binary_and_empty_mask_is_zero():
    mask = _mask()
    np.testing.assert_array_equal(kats_soft_label(mask, ring_px=0), mask.astype(np.float32))
    np.testing.assert_array_equal(kats_soft_label(np.zeros((5, 5), bool)), np.zeros((5, 5), np.float32))


def _bilinear_up(coarse, shape):
    """Pixel-centre aligned bilinear up-sampling with clamped edges, separable via np.interp."""
    fr, fc = shape[0] / coarse.shape[0], shape[1] / coarse.shape[1]
    src_r = (np.arange(shape[0]) + 0.5) / fr - 0.5
    src_c = (np.arange(shape[1]) + 0.5) / fc - 0.5
    rows = np.stack([np.interp(src_c, np.arange(coarse.shape[1]), row) for row in coarse])
    return np.stack([np.interp(src_r, np.arange(coarse.shape[0]), col) for col in rows.T], axis=1)


@pytest.mark.parametrize("size, factor", [(32, 4), (64, 4), (48, 2), (96, 8)])
def test_softseg_is_block_mean_then_bilinear(size, factor):
    mask = _mask(size)
    got = softseg_soft_label(mask, factor=factor)
    blocks = mask.reshape(size // factor, factor, size // factor, factor).mean(axis=(1, 3))
    expected = _bilinear_up(blocks, mask.shape)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 1
    # Soft only near the edge: the block (factor) plus the bilinear support (1.5 factor) reach
    # less than 3 factor pixels (chessboard distance) from the edge; beyond, 1 inside, 0 outside.
    square = np.ones((3, 3), bool)
    inside = ndimage.binary_erosion(mask, square, iterations=3 * factor)
    outside = ~ndimage.binary_dilation(mask, square, iterations=3 * factor)
    assert outside.any()
    assert np.all(got[inside] == 1) and np.all(got[outside] == 0)


def test_softseg_factor_one_is_binary():
    mask = _mask()
    np.testing.assert_array_equal(softseg_soft_label(mask, factor=1), mask.astype(np.float32))


def test_dispatch_by_name():
    mask = _mask()
    np.testing.assert_array_equal(soft_label("binary", mask=mask), mask.astype(np.float32))
    np.testing.assert_array_equal(soft_label("kats", mask=mask, ring_px=3, p=0.25),
                                  kats_soft_label(mask, ring_px=3, p=0.25))
    np.testing.assert_array_equal(soft_label("softseg", mask=mask, factor=2), softseg_soft_label(mask, factor=2))


def test_matting_by_name_keeps_trimap_constraints():
    matting = pytest.importorskip("softmask_builder.labelling.matting", reason="softmask_builder.labelling.matting not written yet")
    from softmask_builder.labelling.trimap import trimap_from_mask

    rng = np.random.default_rng(0)
    mask = _mask()
    image = np.clip(np.where(ndimage.gaussian_filter(mask.astype(float), 1.0) > 0.5, 0.8, 0.3)
                    + 0.02 * rng.standard_normal(mask.shape), 0, 1)
    got = soft_label("matting", mask=mask, image01=image, eps=1e-6)
    trimap = trimap_from_mask(mask, band_px=2)
    np.testing.assert_allclose(got, matting.closed_form_alpha(image, trimap, eps=1e-6), atol=1e-6)
    assert got.dtype == np.float32
    assert np.all(got[trimap == 255] > 0.999) and np.all(got[trimap == 0] < 0.001)


def test_errors_named():
    mask = _mask()
    with pytest.raises(InputError, match="unknown soft label 'gauss'") as info:
        soft_label("gauss", mask=mask)
    for name in SOFT_LABELS:
        assert name in str(info.value)
    with pytest.raises(InputError, match="does not take"):
        soft_label("kats", mask=mask, factor=2)
    with pytest.raises(InputError, match="image01"):
        soft_label("matting", mask=mask)
    with pytest.raises(InputError, match="band_px"):
        soft_label("matting", mask=mask, image01=np.zeros(mask.shape), trimap=np.zeros(mask.shape, np.uint8),
                   band_px=3)
    with pytest.raises(InputError, match="p must"):
        kats_soft_label(mask, p=1.5)
    with pytest.raises(InputError, match="ring_px"):
        kats_soft_label(mask, ring_px=-1)
    with pytest.raises(InputError, match="factor"):
        softseg_soft_label(mask, factor=0)
    with pytest.raises(InputError, match="factor"):
        softseg_soft_label(mask, factor=2.5)
