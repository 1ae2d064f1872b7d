"""Tests of the analytic phantom's case generation.

Independent references: the case plan's stated strata, the mixing model on a noise-free sharp
case (exact nodule HU in the core), and a Gaussian filter from scipy for the apparent fraction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.phantom.cases import KINDS, _case_plan, generate_case

SMALL = dict(shape=(256, 256))


def test_cases_cover_every_kind_and_split_by_patient():
    plan = _case_plan(60, 0, KINDS, (3.0, 30.0), (0.7, 0.15, 0.15))
    kinds = [p[1] for p in plan]
    assert set(kinds) == set(KINDS)
    for k in KINDS:  # each kind spans the size range (log-stratified)
        d = [p[2] for p in plan if p[1] == k]
        assert min(d) < 5.0 and max(d) > 18.0 and all(3.0 <= v <= 30.0 for v in d)
    split_of = {}
    for p in plan:
        assert split_of.setdefault(p[3], p[5]) == p[5]  # a patient is in one split only
    assert set(split_of.values()) == {"train", "val", "test"}


def test_case_truth_is_consistent(small_cases):
    assert {c.kind for c in small_cases} == set(KINDS)
    for c in small_cases:
        f = c.true_fraction
        assert f.dtype == np.float32 and f.min() >= 0.0 and f.max() <= 1.0
        np.testing.assert_array_equal(c.true_mask, f >= 0.5)
        assert c.image_hu.dtype == np.int16 and c.image_hu.shape == f.shape
        assert c.neighbor_hu.shape == (2,) + f.shape and c.neighbor_offsets == (-1, 1)
        # the nodule is 3-D: the neighbour fractions are renders of the same solid at z +- t
        assert c.neighbor_fraction.shape == (2,) + f.shape
        assert 0.6 <= c.spacing_mm[0] <= 0.8 and c.spacing_mm[0] == c.spacing_mm[1]


def test_image_model_inside_nodule_is_nodule_hu():
    c = generate_case(5, kind="solid", diameter_mm=14.0, **SMALL)
    core = c.true_fraction == 1.0
    from scipy import ndimage

    core = ndimage.binary_erosion(core, iterations=3)
    assert core.sum() > 30
    mean = c.image_hu[core].astype(float).mean()
    # noise (<= 25 HU) averages out over the core; blur does not reach 3 px inside
    assert abs(mean - c.nodule_hu) < 4 * 25 / math.sqrt(core.sum()) + 1.0
    # big nodules show in the neighbour slices (3-D shape)
    assert (c.neighbor_fraction >= 0.5).sum(axis=(1, 2)).min() > 0


def test_noise_free_sharp_case_shows_the_mixing_model():
    from scipy import ndimage

    c = generate_case(9, kind="ground_glass", diameter_mm=10.0, psf_sigma_px=0.0, noise_hu=0.0, **SMALL)
    full = c.true_fraction == 1.0
    assert full.sum() > 20
    np.testing.assert_array_equal(c.image_hu[full], np.round(c.nodule_hu))
    np.testing.assert_array_equal(c.apparent_fraction, c.true_fraction)
    b = generate_case(9, kind="ground_glass", diameter_mm=10.0, psf_sigma_px=0.8, noise_hu=0.0, **SMALL)
    np.testing.assert_array_equal(b.true_fraction, c.true_fraction)  # same draws, only the PSF differs
    ref = ndimage.gaussian_filter(b.true_fraction.astype(np.float64), 0.8, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(b.apparent_fraction, ref, atol=2e-3)


def test_generate_case_is_deterministic_and_seed_dependent():
    a = generate_case(123, kind="spiculated", diameter_mm=8.0, **SMALL)
    b = generate_case(np.random.default_rng(123), kind="spiculated", diameter_mm=8.0, **SMALL)
    c = generate_case(124, kind="spiculated", diameter_mm=8.0, **SMALL)
    np.testing.assert_array_equal(a.image_hu, b.image_hu)
    np.testing.assert_array_equal(a.true_fraction, b.true_fraction)
    assert not np.array_equal(a.image_hu, c.image_hu)


def test_generate_case_rejects_bad_arguments():
    with pytest.raises(InputError, match="kind"):
        generate_case(0, kind="cystic", diameter_mm=5.0)
    with pytest.raises(InputError, match="diameter_mm"):
        generate_case(0, kind="solid", diameter_mm=80.0)
    with pytest.raises(InputError, match="shape"):
        generate_case(0, kind="solid", diameter_mm=5.0, shape=(64, 64))
