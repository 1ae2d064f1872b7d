"""3-D trimaps: erosion / dilation by a ball in mm against Euclidean distance transforms, readers' volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.labelling.trimap import (consensus_mask_volume, trimap_from_mask_volume,
                                               trimap_from_readers_volume)


def _random_mask(seed, shape=(12, 20, 22)):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), (1.0, 2.0, 2.0))
    return field > np.quantile(field, 0.8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("band_mm, spacing", [(1.9, (2.5, 0.7, 0.8)), (1.7, (1.25, 0.66, 0.66)),
                                              (1.1, (1.0, 1.0, 1.0))])
def test_mask_volume_matches_the_distance_transform(seed, band_mm, spacing):
    """lesion = voxels whose nearest non-mask voxel (inside the volume) is farther than band_mm;
    background = voxels whose nearest mask voxel is farther than band_mm (physical distance)."""
    mask = _random_mask(seed)
    to_outside = ndimage.distance_transform_edt(mask, sampling=spacing)
    to_mask = ndimage.distance_transform_edt(~mask, sampling=spacing)
    # no voxel exactly on the ball's surface (the oracle and the element would round differently)
    assert np.min(np.abs(np.concatenate([to_outside.ravel(), to_mask.ravel()]) - band_mm)) > 1e-6
    lesion = to_outside > band_mm
    assert lesion.any()
    expect = np.full(mask.shape, 128, np.uint8)
    expect[to_mask > band_mm] = 0
    expect[lesion] = 255
    got = trimap_from_mask_volume(mask, band_mm=band_mm, spacing_mm=spacing)
    np.testing.assert_array_equal(got, expect)


def test_thick_slices_give_an_in_plane_band_only():
    """One voxel, band 1 mm, spacing (2, 0.7, 0.7): the ball is the 3x3 in-plane square
    (0.7^2 * 2 = 0.98 <= 1), no neighbour slice (2 mm > 1 mm); the voxel erodes away and is
    kept as the innermost voxel."""
    mask = np.zeros((3, 5, 5), bool)
    mask[1, 2, 2] = True
    got = trimap_from_mask_volume(mask.astype(np.uint8) * 255, band_mm=1.0, spacing_mm=(2.0, 0.7, 0.7))
    expect = np.zeros((3, 5, 5), np.uint8)
    expect[1, 1:4, 1:4] = 128
    expect[1, 2, 2] = 255
    np.testing.assert_array_equal(got, expect)


def test_band_zero_is_the_mask_and_face_is_not_an_edge():
    mask = np.zeros((4, 6, 6), bool)
    mask[:2, :3, :3] = True          # touches three faces of the volume
    np.testing.assert_array_equal(trimap_from_mask_volume(mask, band_mm=0, spacing_mm=(1, 1, 1)),
                                  np.where(mask, 255, 0).astype(np.uint8))
    got = trimap_from_mask_volume(mask, band_mm=1.0, spacing_mm=(1, 1, 1))
    assert got[0, 0, 0] == 255 and got[0, 1, 1] == 255   # the faces do not erode the lesion
    assert got[1, 2, 2] == 128 and got[2, 0, 0] == 128 and got[3, 0, 0] == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(band_mm=1.0, spacing_mm=(1.0, 1.0)), "spacing_mm"),
    (dict(band_mm=-1.0, spacing_mm=(1.0, 1.0, 1.0)), "band_mm"),
    (dict(band_mm=1.0, spacing_mm=(0.0, 1.0, 1.0)), "spacing_mm"),
])
def test_bad_band_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        trimap_from_mask_volume(_random_mask(0), **kwargs)


def test_bad_masks():
    with pytest.raises(InputError, match="3-D"):
        trimap_from_mask_volume(np.ones((4, 4), bool), band_mm=1, spacing_mm=(1, 1, 1))
    with pytest.raises(InputError, match="empty"):
        trimap_from_mask_volume(np.zeros((3, 4, 4), bool), band_mm=1, spacing_mm=(1, 1, 1))
    with pytest.raises(InputError, match="binary"):
        trimap_from_mask_volume(np.full((3, 4, 4), 3, np.uint8), band_mm=1, spacing_mm=(1, 1, 1))
    full = np.zeros((3, 4, 4), bool)
    full[1, 1, 1] = True
    with pytest.raises(InputError, match="no background"):
        trimap_from_mask_volume(full, band_mm=10, spacing_mm=(1, 1, 1))


def _readers():
    a = np.zeros((3, 6, 6), bool)
    b = a.copy()
    c = a.copy()
    a[0:2, 1:4, 1:4] = True
    b[1:3, 2:5, 2:5] = True
    c[1:2, 1:5, 1:5] = True
    return a, b, c


def test_readers_volume_intersection_union_disagreement():
    a, b, c = _readers()
    got = trimap_from_readers_volume([a, b, c])
    # hand count: intersection a & b & c = slice 1, rows 2-3, cols 2-3
    expect = np.zeros((3, 6, 6), np.uint8)
    expect[a | b | c] = 128
    expect[1, 2:4, 2:4] = 255
    np.testing.assert_array_equal(got, expect)
    # an empty reader is ignored by default, and refused as a lesion-emptier with absent="empty"
    empty = np.zeros_like(a)
    np.testing.assert_array_equal(trimap_from_readers_volume(np.stack([a, b, c, empty])), expect)
    got_empty = trimap_from_readers_volume([a, b, c, empty], absent="empty")
    np.testing.assert_array_equal(got_empty == 255, expect == 255)   # most readers = the 3 who marked


def test_readers_volume_errors():
    a, b, _ = _readers()
    far = np.zeros_like(a)
    far[2, 5, 5] = True
    with pytest.raises(InputError, match="overlap"):
        trimap_from_readers_volume([a, far])
    with pytest.raises(InputError, match=r"reader_masks\[1\]"):
        trimap_from_readers_volume([a, b[:, :5]])
    with pytest.raises(InputError, match="at least 2"):
        trimap_from_readers_volume([a])


def test_consensus_volume_is_half_the_readers():
    a, b, c = _readers()
    count = a.astype(int) + b + c
    np.testing.assert_array_equal(consensus_mask_volume([a, b, c]), count >= 2)
    np.testing.assert_array_equal(consensus_mask_volume([a, b, c, np.zeros_like(a)]), count >= 2)
    np.testing.assert_array_equal(consensus_mask_volume([a, b, c], level=1.0), a & b & c)
    with pytest.raises(InputError, match="level"):
        consensus_mask_volume([a, b], level=0)
