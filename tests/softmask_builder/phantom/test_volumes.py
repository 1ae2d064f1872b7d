"""3-D hybrid nodules (phantom/volumes.py): the truth against analytic volumes and section areas, the 2-D
hybrid's truth, determinism, and the readers' per-nodule habit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from softmask_builder.errors import InputError
from softmask_builder.phantom.hybrid import simulate_readers
from softmask_builder.phantom.shapes import fraction_map, load_shapes, sphere_shape
from softmask_builder.phantom.volumes import (MIN_MARGIN_SLICES, iter_hybrid_volumes, neighbors_needed,
                                              render_volume, simulate_readers_volume, volume_background)

SMALL = (256, 256)


@pytest.fixture(scope="module")
def ball():
    return sphere_shape(4.0, grid_mm=0.2, plane_mm=0.2)


@pytest.fixture(scope="module")
def bg_thick(ball):
    return volume_background(3, slice_thickness_mm=2.5, spacing_mm=0.7, shape=SMALL,
                             n_neighbors=neighbors_needed(ball, slice_thickness_mm=2.5))


@pytest.fixture(scope="module")
def db_shape():
    # a real, irregular LIDC shape of 6-12 mm (small enough for a 256 x 256 chest)
    shapes = load_shapes(patients=["LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0011"]).shapes
    return next(s for s in shapes if 6.0 <= s.max_axial_diameter_mm <= 12.0)


def _ssp_density(u, t, sigma):
    """The slice profile (box of t convolved with a Gaussian of sigma), per mm, written from its definition."""
    s2 = sigma * math.sqrt(2.0)
    return 0.5 * (special.erf((u + t / 2) / s2) - special.erf((u - t / 2) / s2)) / t


def test_ball_volume_and_every_section_match_the_analytic_ball(ball, bg_thick):
    R, t = 4.0, 2.5
    vol = render_volume(ball, bg_thick, 11, placement="free")
    # the whole truth: sum(f) x voxel = 4/3 pi R^3 (contiguous slice profiles sum to one)
    assert vol.true_volume_mm3 == pytest.approx(4.0 / 3.0 * math.pi * R ** 3, rel=0.01)
    # each slice: area of the section pi (R^2 - z^2), averaged over the slice profile, by quadrature
    sp = vol.spacing_mm[1]
    for k in range(vol.true_fraction.shape[0]):
        zc = vol.z_offset_mm + (k - vol.key) * t
        expected, _ = integrate.quad(lambda z: math.pi * max(R * R - z * z, 0.0) * _ssp_density(zc - z, t, 0.2 * t),
                                     -R, R, points=[zc - t / 2, zc + t / 2])
        got = float(vol.true_fraction[k].sum(dtype=np.float64)) * sp * sp
        assert got == pytest.approx(expected, rel=0.02, abs=0.3), k


def test_truth_is_a_fraction_with_background_margins(db_shape, bg_thick):
    bg = volume_background(5, slice_thickness_mm=1.25, shape=SMALL,
                           n_neighbors=neighbors_needed(db_shape, slice_thickness_mm=1.25))
    for placement in ("free", "pleura", "vessel"):
        vol = render_volume(db_shape, bg, 2, placement=placement)
        f = vol.true_fraction
        assert f.dtype == np.float32 and vol.image_hu.dtype == np.float32 and f.shape == vol.image_hu.shape
        assert f.min() >= 0.0 and f.max() <= 1.0 and f.max() > 0.9
        assert vol.reader_masks.shape == (4,) + f.shape and vol.reader_masks.dtype == bool
        # background slices above and below (a 3-D matting window fits), none of it lesion
        assert not f[:MIN_MARGIN_SLICES].any() and not f[-MIN_MARGIN_SLICES:].any()
        assert vol.spacing_mm == (1.25, bg.spacing_mm, bg.spacing_mm)
        # the lesion is in the image: brighter than the lung where the truth is whole
        assert float(vol.image_hu[f > 0.9].mean()) > float(vol.image_hu[f == 0].mean()) + 200


def test_slab_mean_of_thin_slices_is_the_thick_slice_of_the_2d_hybrid(db_shape):
    # 5 contiguous 0.5 mm slices average to one 2.5 mm slice whose profile is the box of 2.5 mm with the
    # thin slices' Gaussian (sigma 0.2 x 0.5 mm): the 2-D truth (fraction_map) with ssp_sigma_fraction 0.04.
    m, t_thin = 5, 0.5
    bg = volume_background(8, slice_thickness_mm=t_thin, spacing_mm=0.7, shape=SMALL,
                           n_neighbors=neighbors_needed(db_shape, slice_thickness_mm=t_thin))
    vol = render_volume(db_shape, bg, 4, placement="free", z_offset_mm=0.0, rotation_deg=33.0)
    f = vol.true_fraction
    rows, cols = f.shape[1:]
    compared = 0
    for start in range(vol.key - 2 * m - 2, vol.key + 2 * m - 2, m):
        slab = f[start:start + m].mean(axis=0, dtype=np.float64)
        z_mid = vol.z_offset_mm + (start + (m - 1) / 2 - vol.key) * t_thin
        thick = fraction_map(db_shape, rows=rows, cols=cols, spacing_mm=vol.spacing_mm[1],
                             center_rc_mm=vol.center_rc_mm, z_mm=z_mid, slice_thickness_mm=m * t_thin,
                             rotation_deg=33.0, ssp_sigma_fraction=0.2 / m)
        if thick.max() < 0.5:
            continue
        compared += 1
        # z sampled 0.1 mm (thin) vs 0.192 mm (thick) apart: the pixels differ by a sampling step at most
        assert np.abs(slab - thick).max() < 0.1
        assert slab.sum() == pytest.approx(float(thick.sum(dtype=np.float64)), rel=0.01)
    assert compared >= 3


def test_each_slice_is_the_2d_truth_at_its_z(db_shape, bg_thick):
    vol = render_volume(db_shape, volume_background(1, slice_thickness_mm=2.5, shape=SMALL,
                                                    n_neighbors=neighbors_needed(db_shape, slice_thickness_mm=2.5)),
                        6, placement="vessel")
    rows, cols = vol.true_fraction.shape[1:]
    for k in range(vol.true_fraction.shape[0]):
        ref = fraction_map(db_shape, rows=rows, cols=cols, spacing_mm=vol.spacing_mm[1], center_rc_mm=vol.center_rc_mm,
                           z_mm=vol.z_offset_mm + (k - vol.key) * 2.5, slice_thickness_mm=2.5,
                           rotation_deg=vol.rotation_deg)
        np.testing.assert_allclose(vol.true_fraction[k], ref, atol=1e-6)


def test_same_seed_same_bytes_other_seed_other_nodule(db_shape):
    shapes = [db_shape, sphere_shape(3.0), sphere_shape(5.0)]
    runs = [list(iter_hybrid_volumes(3, shapes=shapes, seed=s, cases_per_background=3, background_shape=SMALL))
            for s in (0, 0, 1)]
    a, b, c = runs
    for x, y in zip(a, b):
        for name in ("image_hu", "true_fraction", "reader_masks"):
            assert getattr(x, name).tobytes() == getattr(y, name).tobytes()
        assert (x.shape_id, x.spacing_mm, x.crop_origin) == (y.shape_id, y.spacing_mm, y.crop_origin)
    assert any(x.image_hu.shape != z.image_hu.shape or x.image_hu.tobytes() != z.image_hu.tobytes()
               for x, z in zip(a, c))


def test_thicknesses_and_placements_alternate(db_shape):
    shapes = [db_shape, sphere_shape(3.0), sphere_shape(4.0), sphere_shape(5.0)]
    vols = list(iter_hybrid_volumes(4, shapes=shapes, seed=2, cases_per_background=2, background_shape=SMALL))
    assert [v.spacing_mm[0] for v in vols] == [1.25, 1.25, 2.5, 2.5]
    assert [v.placement for v in vols] == ["free", "pleura", "vessel", "free"]
    assert sorted(v.shape_id for v in vols) == sorted(s.shape_id for s in shapes)


def test_readers_keep_one_habit_over_the_slices():
    # a cylinder of radius 5 mm over 8 slices: with no wobble, reader i's outline is the truth moved
    # out by the same b_i on every slice, so its per-slice area is one number per reader
    yy, xx = np.mgrid[:48, :48]
    disk = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2) * 0.7 ** 2 <= 25.0
    truth = np.repeat(disk[None], 8, axis=0).astype(np.float32)
    masks = simulate_readers_volume(truth, spacing_mm=0.7, rng=0, n_readers=4, wobble_mm=0.0, bias_sd_mm=1.0)
    areas = masks.sum(axis=(2, 3))
    assert np.all(areas == areas[:, :1])          # one habit per reader, over all slices
    assert len(set(areas[:, 0].tolist())) > 1     # and readers differ
    # the 2-D model with the same biases draws the same outline (the 3-D readers are the 2-D ones)
    rng = np.random.default_rng(0)
    bias = rng.normal(0.0, 1.0 + 0.075 * math.sqrt(disk.sum() / math.pi) * 0.7, size=4)
    ref = simulate_readers(truth[0], spacing_mm=0.7, rng=rng, n_readers=4, bias_mm=bias, wobble_mm=0.0)
    np.testing.assert_array_equal(masks[:, 0], ref)


def test_readers_leave_slices_without_lesion_empty():
    truth = np.zeros((5, 32, 32), np.float32)
    truth[2, 10:20, 10:20] = 1.0
    truth[3, 14:16, 14:16] = 0.4      # partial volume below one half: no reader outlines it
    masks = simulate_readers_volume(truth, spacing_mm=0.7, rng=1)
    assert masks[:, [0, 1, 3, 4]].sum() == 0 and masks[:, 2].any()


def test_errors_name_the_argument(ball, bg_thick):
    with pytest.raises(InputError, match="n_neighbors"):
        volume_background(0, slice_thickness_mm=2.5, n_neighbors=0, shape=SMALL)
    with pytest.raises(InputError, match="slice_thickness_mm"):
        volume_background(0, slice_thickness_mm=0.0, n_neighbors=3, shape=SMALL)
    with pytest.raises(InputError, match="placement"):
        render_volume(ball, bg_thick, 0, placement="airway")
    with pytest.raises(InputError, match="true_fraction must be 3-D"):
        simulate_readers_volume(np.zeros((4, 4)), spacing_mm=0.7, rng=0)
    short = volume_background(0, slice_thickness_mm=1.25, spacing_mm=0.7, n_neighbors=2, shape=SMALL)
    with pytest.raises(InputError, match=r"n_neighbors >= \d+"):
        render_volume(ball, short, 0)
    with pytest.raises(InputError, match="bias_mm"):
        simulate_readers(np.ones((8, 8), np.float32), spacing_mm=0.7, rng=0, n_readers=4, bias_mm=[0.1])
