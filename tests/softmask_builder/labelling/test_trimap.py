"""Trimaps against scipy morphology / exact distance transforms and hand-computed reader cases."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk

from softmask_builder.core.validate import TRIMAP_BACKGROUND, TRIMAP_LESION, TRIMAP_UNKNOWN
from softmask_builder.errors import InputError
from softmask_builder.labelling.trimap import band_footprint, consensus_mask, trimap_from_mask, trimap_from_readers


def _blob(size, seed):
    """A smooth random lesion (thresholded blurred noise plus a disc), one component, off the border."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:size, 0:size]
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16)
    field /= np.abs(field).max()
    radius = size / 5 + size / 12 * field
    mask = np.hypot(rr - size / 2, cc - size / 2.3) <= radius
    lab, _ = ndimage.label(mask)
    return lab == lab[size // 2, int(size / 2.3)]


def _reference(mask, footprint):
    """scipy morphology: erosion with the crop edge as lesion, dilation with it as background."""
    lesion = ndimage.binary_erosion(mask, footprint, border_value=1)
    known_bg = ~ndimage.binary_dilation(mask, footprint, border_value=0)
    out = np.full(mask.shape, TRIMAP_UNKNOWN, np.uint8)
    out[lesion] = TRIMAP_LESION
    out[known_bg] = TRIMAP_BACKGROUND
    return out


@pytest.mark.parametrize("radius", range(0, 10))
def test_footprint_is_skimage_disk(radius):
    np.testing.assert_array_equal(band_footprint(float(radius)), disk(radius))


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("band", [1, 2, 5, 9])
def test_matches_scipy_reference(size, band):
    for seed in range(3):
        mask = _blob(size, seed)
        got = trimap_from_mask(mask, band_px=band)
        np.testing.assert_array_equal(got, _reference(mask, disk(band).astype(bool)))
        assert got.dtype == np.uint8


def test_fractional_band_equals_distance_thresholds():
    # Erosion by a disk of radius b keeps pixels whose nearest background pixel is farther than b;
    # dilation reaches pixels within b of the mask (exact EDT, independent of any footprint).
    mask = _blob(96, 7)
    for band in (1.5, 2.3, 3.7):
        got = trimap_from_mask(mask, band_px=band)
        inside = ndimage.distance_transform_edt(mask)
        outside = ndimage.distance_transform_edt(~mask)
        np.testing.assert_array_equal(got == TRIMAP_LESION, inside > band)
        np.testing.assert_array_equal(got == TRIMAP_BACKGROUND, outside > band)


def test_anisotropic_band_mm_uses_physical_distance():
    mask = _blob(80, 3)
    spacing = (2.0, 0.7)  # coarse rows: fewer pixels of band along rows
    band_mm = 3.1
    got = trimap_from_mask(mask, band_mm=band_mm, spacing_mm=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    np.testing.assert_array_equal(got == TRIMAP_LESION, inside > band_mm)
    np.testing.assert_array_equal(got == TRIMAP_BACKGROUND, outside > band_mm)
    # Isotropic 1 mm pixels in mm give the same as the same band in px.
    np.testing.assert_array_equal(trimap_from_mask(mask, band_mm=4.0, spacing_mm=(1.0, 1.0)),
                                  trimap_from_mask(mask, band_px=4))


def test_band_zero_is_the_mask():
    mask = _blob(64, 1)
    np.testing.assert_array_equal(trimap_from_mask(mask, band_px=0), np.where(mask, 255, 0).astype(np.uint8))


def test_lesion_at_crop_edge_is_not_eroded_from_the_edge():
    mask = np.zeros((32, 32), bool)
    mask[10:20, 0:8] = True  # cut by the left edge
    got = trimap_from_mask(mask, band_px=2)
    # Rows 12..17 are >2 px from the top/bottom edges; columns 0..5 are >2 px from column 8.
    expected_lesion = np.zeros_like(mask)
    expected_lesion[12:18, 0:6] = True
    np.testing.assert_array_equal(got == TRIMAP_LESION, expected_lesion)


def test_thin_lesion_keeps_innermost_pixel():
    mask = np.zeros((20, 20), bool)
    mask[8:11, 8:11] = True  # 3x3 square: erodes to nothing with band 2
    got = trimap_from_mask(mask, band_px=2)
    lesion = np.argwhere(got == TRIMAP_LESION)
    np.testing.assert_array_equal(lesion, [[9, 9]])  # the one pixel 2 px from the background
    np.testing.assert_array_equal(got == TRIMAP_BACKGROUND, ~ndimage.binary_dilation(mask, disk(2).astype(bool)))


def test_thin_line_keeps_all_tied_pixels():
    mask = np.zeros((20, 20), bool)
    mask[10, 5:9] = True  # every pixel is 1 px from the background
    got = trimap_from_mask(mask, band_px=2)
    np.testing.assert_array_equal(got == TRIMAP_LESION, mask)


def test_errors_named():
    mask = _blob(64, 0)
    with pytest.raises(InputError, match="empty"):
        trimap_from_mask(np.zeros((8, 8), bool), band_px=1)
    with pytest.raises(InputError, match="no background"):
        trimap_from_mask(mask, band_px=40)
    with pytest.raises(InputError, match="no background"):
        trimap_from_mask(np.ones((8, 8), bool), band_px=0)
    with pytest.raises(InputError, match="exactly one"):
        trimap_from_mask(mask)
    with pytest.raises(InputError, match="exactly one"):
        trimap_from_mask(mask, band_px=2, band_mm=1.0, spacing_mm=(1, 1))
    with pytest.raises(InputError, match="spacing_mm"):
        trimap_from_mask(mask, band_mm=2.0)
    with pytest.raises(InputError, match="spacing_mm"):
        trimap_from_mask(mask, band_mm=2.0, spacing_mm=(0.0, 1.0))
    with pytest.raises(InputError, match="band_px"):
        trimap_from_mask(mask, band_px=-1)
    with pytest.raises(InputError, match="band_px"):
        trimap_from_mask(mask, band_px=float("nan"))
    with pytest.raises(InputError, match="mask must be 2-D"):
        trimap_from_mask(np.zeros((2, 8, 8), bool), band_px=1)
    with pytest.raises(InputError, match=r"^\[s-7\]"):
        trimap_from_mask(np.zeros((8, 8), bool), band_px=1, sample_id="s-7")


# ---- strategy 2: readers -------------------------------------------------------------------

def _square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_two_readers_hand_computed():
    a = _square((6, 6), 1, 4, 1, 4)  # rows 1-3, cols 1-3
    b = _square((6, 6), 2, 5, 2, 5)  # rows 2-4, cols 2-4
    got = trimap_from_readers([a, b])
    expected = np.zeros((6, 6), np.uint8)
    expected[1:4, 1:4] = 128
    expected[2:5, 2:5] = 128
    expected[2:4, 2:4] = 255
    np.testing.assert_array_equal(got, expected)


def test_readers_eqs_2_to_4_random():
    rng = np.random.default_rng(0)
    masks = [_blob(48, s) | (rng.random((48, 48)) < 0.02) for s in range(4)]
    masks = [np.pad(m[2:-2, 2:-2], 2) for m in masks]  # keep a background margin
    got = trimap_from_readers(np.stack(masks))
    inter = masks[0] & masks[1] & masks[2] & masks[3]
    union = masks[0] | masks[1] | masks[2] | masks[3]
    np.testing.assert_array_equal(got == TRIMAP_LESION, inter)
    np.testing.assert_array_equal(got == TRIMAP_BACKGROUND, ~union)
    np.testing.assert_array_equal(got == TRIMAP_UNKNOWN, union & ~inter)
    np.testing.assert_array_equal(trimap_from_readers(masks), got)  # list == (R, H, W) array


def test_absent_reader_ignored_or_kept():
    a = _square((8, 8), 1, 5, 1, 5)
    b = _square((8, 8), 2, 6, 2, 6)
    c = _square((8, 8), 3, 7, 2, 5)
    empty = np.zeros((8, 8), bool)
    np.testing.assert_array_equal(trimap_from_readers([a, empty, b, c]), trimap_from_readers([a, b, c]))
    # Kept as a "no" vote: the intersection is empty and the lesion is the 3-reader agreement.
    kept = trimap_from_readers([a, empty, b, c], absent="empty")
    np.testing.assert_array_equal(kept == TRIMAP_LESION, a & b & c)
    np.testing.assert_array_equal(kept == TRIMAP_BACKGROUND, ~(a | b | c))


def test_pairwise_overlap_only_uses_most_agreed_pixels():
    a = _square((10, 10), 1, 5, 1, 5)
    b = _square((10, 10), 3, 7, 3, 7)
    c = _square((10, 10), 1, 5, 5, 9)   # overlaps b only, never a & b & c
    assert not (a & b & c).any()
    got = trimap_from_readers([a, b, c])
    count = a.astype(int) + b + c
    np.testing.assert_array_equal(got == TRIMAP_LESION, count == 2)
    np.testing.assert_array_equal(got == TRIMAP_UNKNOWN, count == 1)


def test_reader_errors_named():
    a = _square((8, 8), 1, 5, 1, 5)
    with pytest.raises(InputError, match="at least 2"):
        trimap_from_readers([a])
    with pytest.raises(InputError, match="at least 2"):
        trimap_from_readers([a, np.zeros((8, 8), bool)])
    with pytest.raises(InputError, match=r"reader_masks\[1\]"):
        trimap_from_readers([a, np.zeros((9, 8), bool)])
    with pytest.raises(InputError, match=r"reader_masks\[2\]"):
        trimap_from_readers([a, a, np.full((8, 8), 3)])
    with pytest.raises(InputError, match="overlap"):
        trimap_from_readers([a, _square((8, 8), 6, 8, 6, 8)])
    with pytest.raises(InputError, match="no background"):
        trimap_from_readers([np.ones((8, 8), bool), a])
    with pytest.raises(InputError, match="absent"):
        trimap_from_readers([a, a], absent="drop")
    with pytest.raises(InputError, match="every reader"):
        trimap_from_readers([np.zeros((8, 8), bool)] * 2, absent="empty")


def test_consensus_levels():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 16, 16)) < 0.5
    count = masks.sum(axis=0)
    np.testing.assert_array_equal(consensus_mask(masks), count >= 2)          # 50 % of 4 readers
    np.testing.assert_array_equal(consensus_mask(masks, level=1.0), masks.all(axis=0))
    np.testing.assert_array_equal(consensus_mask(masks, level=0.25), masks.any(axis=0))
    np.testing.assert_array_equal(consensus_mask(masks, level=0.6), count >= 3)
    three = list(masks[:3])
    np.testing.assert_array_equal(consensus_mask(three, level=0.5), masks[:3].sum(axis=0) >= 2)  # 2/3 >= .5
    with pytest.raises(InputError, match="level"):
        consensus_mask(masks, level=0.0)
    with pytest.raises(InputError, match="at least one"):
        consensus_mask([])
