"""Tests of the analytic nodule solids and their partial-volume fraction.

Independent references: closed-form slab areas of a sphere / cylinder, and the numpy form of the
shape (NoduleShape.contains) against the compiled sampler, voxel by voxel and along rays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmask_builder.phantom.analytic_shapes import NoduleShape, _ellipse_inside, nodule_fraction, nodule_shape
from softmask_builder.phantom.cases import KINDS


@pytest.mark.parametrize("z0_mm, t_mm", [(0.0, 2.0), (1.3, 1.25), (-2.0, 2.5)])
def test_sphere_slab_area_matches_closed_form(z0_mm, t_mm):
    R, sp = 6.0, 0.7
    shape = NoduleShape.sphere((90.0, 80.0, 0.0), R)
    frac = nodule_fraction(shape, rows=256, cols=256, spacing_mm=sp, z_mm=z0_mm, slice_thickness_mm=t_mm)
    assert frac.dtype == np.float32 and frac.min() >= 0.0 and frac.max() <= 1.0
    # mean cross-section of a sphere over the slab [z0 - t/2, z0 + t/2] (inside the sphere)
    area_mm2 = math.pi * (R * R - z0_mm * z0_mm - t_mm * t_mm / 12.0)
    assert frac.sum() == pytest.approx(area_mm2 / sp ** 2, rel=0.01)


def test_long_cylinder_section_is_a_disc_of_area_pi_r2():
    R, sp = 4.3, 0.65
    # an ellipsoid 100x longer along z is a cylinder over one slice
    shape = NoduleShape(center_mm=(60.0, 61.0, 0.0), radius_mm=R, stretch=(1.0, 1.0, 100.0))
    frac = nodule_fraction(shape, rows=200, cols=200, spacing_mm=sp, z_mm=0.4, slice_thickness_mm=2.0)
    assert frac.sum() == pytest.approx(math.pi * R * R / sp ** 2, rel=0.01)


def _brute_fraction(shape, rows, cols, sp, z, t, s, clip=None):
    o = (np.arange(s) + 0.5) / s - 0.5
    ox, oy, oz = np.meshgrid(o * sp, o * sp, o * t, indexing="ij")
    out = np.zeros((rows, cols))
    for r in range(rows):
        pts = np.stack([np.arange(cols)[:, None] * sp + ox.ravel(), np.full((cols, 1), r * sp) + oy.ravel(),
                        z + np.broadcast_to(oz.ravel(), (cols, oz.size))], axis=-1)
        inside = shape.contains(pts)
        if clip is not None:
            inside &= _ellipse_inside(pts[..., 0], pts[..., 1], clip)
        out[r] = inside.mean(axis=1)
    return out


@pytest.mark.parametrize("kind", ["lobulated", "spiculated", "juxta_pleural"])
def test_compiled_sampler_equals_numpy_shape_everywhere(kind):
    rng = np.random.default_rng(3)
    R = 5.0
    shape = nodule_shape(rng, kind, (22.0, 21.0, 0.3), R)
    clip = (40.0, 21.0, 20.0, 30.0, 0.2) if kind == "juxta_pleural" else None
    rows = cols = 64
    sp, t, s = 0.7, 1.5, 4
    fast = nodule_fraction(shape, rows=rows, cols=cols, spacing_mm=sp, z_mm=0.0, slice_thickness_mm=t,
                             supersample=s, clip_ellipse=clip)
    # every voxel sampled with the numpy form: checks the kernel and the radial-bound shortcuts
    slow = _brute_fraction(shape, rows, cols, sp, 0.0, t, s, clip)
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    assert (fast > 0).sum() > 50


@pytest.mark.parametrize("kind", KINDS)
def test_radial_bounds_hold_in_every_direction(kind):
    rng = np.random.default_rng(11)
    shape = nodule_shape(rng, kind, (0.0, 0.0, 0.0), 7.0)
    rmin, rmax = shape.r_bounds_mm
    u = rng.standard_normal((20_000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    # the extremes sit near the bump and spike axes: include those directions and their surroundings
    axes = np.array(list(shape.bump_dirs) + list(shape.spike_dirs)).reshape(-1, 3)
    near = (axes[:, None, :] + 0.05 * rng.standard_normal((len(axes), 50, 3))).reshape(-1, 3)
    u = np.concatenate([u, axes, near / np.linalg.norm(near, axis=1, keepdims=True)])
    # bisection of the boundary along each direction with the numpy form
    lo, hi = np.zeros(len(u)), np.full(len(u), 4 * rmax)
    for _ in range(30):
        mid = (lo + hi) / 2
        inside = shape.contains(u * mid[:, None])
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    assert lo.min() >= rmin - 1e-9 and hi.max() <= rmax + 1e-9
