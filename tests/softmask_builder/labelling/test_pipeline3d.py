"""The 3-D labelling stage against independent solves, the 2-D stage (Z = 1) and hand-made readers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.labelling.blur import deblur_alpha
from softmask_builder.labelling.pipeline import LabelParams, label_from_mask, label_from_readers
from softmask_builder.labelling.pipeline3d import (ISOTROPIC_DEFAULT, band_mm_from_params, label_volume_from_mask,
                                                   label_volume_from_readers)
from tests.softmask_builder.labelling.test_matting3d import _oracle

NO_DEBLUR = LabelParams(deblur_iterations=0, eps=1e-6)


def _nodule(shape, spacing, centre, radius_mm, seed=0):
    """A blurred ball in HU with noise, and its binary mask."""
    grids = np.indices(shape, dtype=np.float64)
    d = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing)))
    rng = np.random.default_rng(seed)
    image_hu = -850.0 + 900.0 / (1.0 + np.exp((d - radius_mm) / 0.5)) + 25.0 * rng.standard_normal(shape)
    return image_hu, d < radius_mm


def _window(image_hu, params):
    low = params.window_level_hu - params.window_width_hu / 2
    return np.clip((image_hu - low) / params.window_width_hu, 0.0, 1.0)


def _trimap_oracle(mask, band_mm, spacing):
    """lesion: nearest non-mask voxel farther than band_mm; background: nearest mask voxel farther."""
    to_out = ndimage.distance_transform_edt(mask, sampling=spacing)
    to_in = ndimage.distance_transform_edt(~mask, sampling=spacing)
    tri = np.full(mask.shape, 128, np.uint8)
    tri[to_in > band_mm] = 0
    tri[to_out > band_mm] = 255
    return tri


def test_isotropic_none_means_the_module_default():
    """None resolves to ISOTROPIC_DEFAULT (whatever the truth study sets it to); the two arms differ."""
    image_hu, readers, spacing = _readers_volume()
    by_default = label_volume_from_readers(image_hu, readers, spacing, isotropic=None).soft_mask
    named = label_volume_from_readers(image_hu, readers, spacing, isotropic=ISOTROPIC_DEFAULT).soft_mask
    other = label_volume_from_readers(image_hu, readers, spacing, isotropic=not ISOTROPIC_DEFAULT).soft_mask
    assert by_default.tobytes() == named.tobytes()
    assert np.abs(by_default - other).max() > 1e-3


def test_band_mm_from_params():
    assert band_mm_from_params(LabelParams(band_px=2.0), (2.5, 0.7, 0.8)) == pytest.approx(1.4)


def test_mask_volume_equals_an_independent_solve():
    """Window by hand, trimap by distance transforms, full-Laplacian solve (test_matting3d's oracle)."""
    spacing = (1.0, 0.8, 0.8)
    image_hu, mask = _nodule((7, 12, 12), spacing, (3.2, 5.6, 6.1), 2.9)
    params = LabelParams(deblur_iterations=0, eps=1e-6, band_px=1.6)
    got = label_volume_from_mask(image_hu, mask, spacing, params, isotropic=False)
    band_mm = 1.6 * 0.8
    tri = _trimap_oracle(mask, band_mm, spacing)
    assert (tri == 128).sum() > 100
    np.testing.assert_array_equal(got.trimap, tri)
    np.testing.assert_allclose(got.soft_mask, _oracle(_window(image_hu, params), tri, 1e-6, 1), rtol=0, atol=1e-6)
    assert got.soft_mask.dtype == np.float32
    np.testing.assert_array_equal(got.binary_mask, mask)


def test_isotropic_equals_an_independent_fine_solve():
    """k = 2: HU interpolated with np.interp, mask repeated, trimap and solve on the fine grid,
    each voxel's two sub-slices averaged."""
    spacing = (1.6, 0.8, 0.8)
    image_hu, mask = _nodule((4, 11, 11), spacing, (1.7, 5.2, 5.0), 2.6, seed=1)
    params = LabelParams(deblur_iterations=0, eps=1e-6, band_px=1.2)
    got = label_volume_from_mask(image_hu, mask, spacing, params, isotropic=True)
    k = 2
    centres = (np.arange(4 * k) + 0.5) / k - 0.5
    fine_hu = np.apply_along_axis(lambda col: np.interp(centres, np.arange(4), col), 0, image_hu)
    fine_mask = np.repeat(mask, k, axis=0)
    tri = _trimap_oracle(fine_mask, 1.2 * 0.8, (0.8, 0.8, 0.8))
    alpha = _oracle(_window(fine_hu, params), tri, 1e-6, 1)
    np.testing.assert_allclose(got.soft_mask, alpha.reshape(4, k, 11, 11).mean(axis=1), rtol=0, atol=1e-6)
    # the trimap on the original grid: known only where both sub-slices are, and alpha exact there
    blocks = tri.reshape(4, k, 11, 11)
    assert np.array_equal(got.trimap == 255, np.all(blocks == 255, axis=1))
    assert np.array_equal(got.trimap == 0, np.all(blocks == 0, axis=1))
    assert np.all(got.soft_mask[got.trimap == 255] == 1.0) and np.all(got.soft_mask[got.trimap == 0] == 0.0)


@pytest.mark.parametrize("band_px", [1.0, 2.5, 4.0])
@pytest.mark.parametrize("isotropic", [False, True])
@pytest.mark.parametrize("deblur", [0, 1])
def test_one_slice_is_the_2d_stage(band_px, isotropic, deblur):
    """Z = 1 with square pixels: byte-identical to label_from_mask on the slice (trimap, Soft Mask,
    binary mask), with the default measured-sigma deblur too; the nodule touches the crop's edge."""
    image_hu, mask = _nodule((1, 30, 34), (2.5, 0.7, 0.7), (0, 14.0, 2.0), 5.0, seed=3)
    assert mask[0, :, 0].any()
    params = LabelParams(band_px=band_px, deblur_iterations=deblur)
    got = label_volume_from_mask(image_hu, mask, (2.5, 0.7, 0.7), params, isotropic=isotropic)
    ref = label_from_mask(image_hu[0], mask[0], params)
    assert (ref.trimap == 128).any()
    np.testing.assert_array_equal(got.trimap[0], ref.trimap)
    np.testing.assert_array_equal(got.soft_mask[0], ref.soft_mask)
    np.testing.assert_array_equal(got.binary_mask[0], ref.binary_mask)
    assert got.soft_mask.shape == (1, 30, 34)


def test_one_slice_readers_is_the_2d_stage():
    image_hu, _ = _nodule((1, 28, 28), (2.0, 0.7, 0.7), (0, 13.5, 13.5), 5.0, seed=4)
    readers = []
    for r_mm, shift in [(4.0, 0.0), (5.0, 0.5), (4.5, -0.5), (5.5, 0.0)]:
        _, m = _nodule((1, 28, 28), (2.0, 0.7, 0.7), (0, 13.5 + shift, 13.5), r_mm)
        readers.append(m)
    got = label_volume_from_readers(image_hu, readers, (2.0, 0.7, 0.7), LabelParams())
    ref = label_from_readers(image_hu[0], [m[0] for m in readers], LabelParams())
    np.testing.assert_array_equal(got.trimap[0], ref.trimap)
    np.testing.assert_array_equal(got.soft_mask[0], ref.soft_mask)
    np.testing.assert_array_equal(got.binary_mask[0], ref.binary_mask)


def _readers_volume():
    spacing = (1.25, 0.7, 0.7)
    image_hu, _ = _nodule((6, 16, 16), spacing, (2.5, 7.5, 7.5), 3.0, seed=5)
    readers = [_nodule((6, 16, 16), spacing, (2.5, 7.5 + dy, 7.5), r)[1]
               for r, dy in [(2.4, 0.0), (3.2, 0.4), (2.8, -0.4)]]
    readers.append(np.zeros_like(readers[0]))      # a reader who did not mark the nodule
    return image_hu, readers, spacing


def test_readers_consensus_and_trimap_by_hand():
    image_hu, readers, spacing = _readers_volume()
    got = label_volume_from_readers(image_hu, np.stack(readers), spacing, NO_DEBLUR, isotropic=False)
    count = np.sum(readers, axis=0)
    # trimap: the empty reader is left out (3 marking readers); consensus: it votes "no" (2 of 4)
    np.testing.assert_array_equal(got.trimap, np.where(count == 3, 255, np.where(count == 0, 0, 128)))
    np.testing.assert_array_equal(got.binary_mask, count >= 2)
    tri = got.trimap
    np.testing.assert_allclose(got.soft_mask, _oracle(_window(image_hu, NO_DEBLUR), tri, 1e-6, 1),
                               rtol=0, atol=1e-6)


def test_readers_isotropic_is_the_repeated_trimap_solved_fine():
    image_hu, readers, spacing = _readers_volume()
    got = label_volume_from_readers(image_hu, readers, spacing, NO_DEBLUR, isotropic=True)
    k = 2                                           # 1.25 / 0.7 = 1.79
    centres = (np.arange(6 * k) + 0.5) / k - 0.5
    fine_hu = np.apply_along_axis(lambda col: np.interp(centres, np.arange(6), col), 0, image_hu)
    alpha = _oracle(_window(fine_hu, NO_DEBLUR), np.repeat(got.trimap, k, axis=0), 1e-6, 1)
    np.testing.assert_allclose(got.soft_mask, alpha.reshape(6, k, 16, 16).mean(axis=1), rtol=0, atol=1e-6)


def test_deblur_is_in_plane_per_slice():
    """With a fixed sigma: every slice is the 2-D deblur of the un-deblurred slice, i.e. Van
    Cittert with a Gaussian of sigma (0, s, s) (scipy, written out here)."""
    image_hu, readers, spacing = _readers_volume()
    plain = label_volume_from_readers(image_hu, readers, spacing, LabelParams(deblur_iterations=0)).soft_mask
    params = LabelParams(deblur_iterations=2, psf_sigma_px=1.1)
    got = label_volume_from_readers(image_hu, readers, spacing, params).soft_mask
    a = plain.astype(np.float64)
    f = a.copy()
    for _ in range(2):
        f = np.clip(f + (a - ndimage.gaussian_filter(f, (0, 1.1, 1.1), mode="nearest")), 0.0, 1.0)
    np.testing.assert_allclose(got, f, rtol=0, atol=1e-6)
    for z in range(a.shape[0]):
        np.testing.assert_array_equal(got[z], deblur_alpha(plain[z], psf_sigma_px=1.1, iterations=2))


def test_no_unknown_voxel_and_border_touch():
    """band_px = 0: the trimap is the mask and the Soft Mask is the mask; a mask cut by the crop's
    faces stays lesion up to the faces with a band too."""
    spacing = (1.0, 1.0, 1.0)
    image_hu, mask = _nodule((6, 10, 10), spacing, (0.0, 0.0, 5.0), 3.5)
    got = label_volume_from_mask(image_hu, mask, spacing, LabelParams(band_px=0.0, deblur_iterations=0))
    np.testing.assert_array_equal(got.trimap, np.where(mask, 255, 0))
    np.testing.assert_array_equal(got.soft_mask, mask.astype(np.float32))
    banded = label_volume_from_mask(image_hu, mask, spacing, LabelParams(band_px=1.0, deblur_iterations=0))
    assert banded.trimap[0, 0, 5] == 255 and (banded.trimap == 128).any()
    assert 0.0 <= banded.soft_mask.min() and banded.soft_mask.max() <= 1.0


def test_same_bytes_twice():
    image_hu, readers, spacing = _readers_volume()
    a = label_volume_from_readers(image_hu, readers, spacing, isotropic=True)
    b = label_volume_from_readers(image_hu.copy(), [r.copy() for r in readers], spacing, isotropic=True)
    assert a.soft_mask.tobytes() == b.soft_mask.tobytes()


@pytest.mark.parametrize("change, match", [
    (dict(spacing_mm=(np.nan, 0.7, 0.7)), "spacing_mm"),
    (dict(spacing_mm=(1.0, 0.7)), "spacing_mm"),
    (dict(image_hu=np.zeros((10, 10))), "image_hu must be 3-D"),
    (dict(image_hu=np.full((4, 10, 10), np.nan)), "image_hu has"),
    (dict(mask=np.ones((4, 10, 9), bool)), "mask shape"),
    (dict(mask=np.zeros((4, 10, 10), bool)), "mask is empty"),
    (dict(isotropic="yes"), "isotropic"),
])
def test_bad_input_names_the_argument_and_sample(change, match):
    image_hu, mask = _nodule((4, 10, 10), (1.0, 1.0, 1.0), (1.5, 4.5, 4.5), 2.5)
    args = dict(image_hu=image_hu, mask=mask, spacing_mm=(1.0, 1.0, 1.0), isotropic=None)
    args.update(change)
    with pytest.raises(InputError, match=match) as info:
        label_volume_from_mask(args["image_hu"], args["mask"], args["spacing_mm"], isotropic=args["isotropic"],
                               sample_id="nod-7")
    assert "[nod-7]" in str(info.value)


def test_too_few_slices_for_a_window_without_resampling():
    image_hu, mask = _nodule((2, 10, 10), (2.5, 0.7, 0.7), (0.5, 4.5, 4.5), 2.0)
    with pytest.raises(InputError, match="matting window") as info:
        label_volume_from_mask(image_hu, mask, (2.5, 0.7, 0.7), isotropic=False, sample_id="nod-2")
    assert "[nod-2]" in str(info.value)
    # resampled to 8 slices, it works
    assert label_volume_from_mask(image_hu, mask, (2.5, 0.7, 0.7), isotropic=True).soft_mask.shape == (2, 10, 10)


def test_readers_errors_name_the_reader():
    image_hu, readers, spacing = _readers_volume()
    with pytest.raises(InputError, match=r"reader_masks\[1\]"):
        label_volume_from_readers(image_hu, [readers[0], readers[1][:, :5]], spacing)
    with pytest.raises(InputError, match="does not match image_hu"):
        label_volume_from_readers(image_hu[:, :8], readers, spacing)
