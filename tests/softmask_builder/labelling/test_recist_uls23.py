"""The ULS23 GrabCut recipe (LabelParams.recist_method "uls23"): its seeds against a hand check
on a known ellipse (brute-force erosion, box by hand), the window choice, the candidate choice by
axes re-measured here, and the wiring into the pipeline and the label parameters' hash."""

import math

import cv2
import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.labelling.metrics import dice
from softmask_builder.labelling.pipeline import LabelParams, label_from_recist
from softmask_builder.formats.recipes import recipe_from_dict
from softmask_builder.labelling.recist import (Recist, _uls23_candidates, mask_from_recist_uls23, measure_axes_px,
                                     recist_ellipse, trimap_from_recist_mask, uls23_seeds, uls23_windows_hu)

from tests.softmask_builder.labelling.test_recist import LOBULATED, RR, CC, lung_phantom, measure_recist, window_inverse

# An axis-aligned mark centred at (32, 30): long axis 30 px along the columns, short 20 px.
MARK = Recist((32, 15), (32, 45), (22, 30), (42, 30))


def test_seeds_of_a_known_ellipse_by_hand():
    seeds = uls23_seeds(MARK, (64, 64))
    # The RECIST ellipse of an axis-aligned, centred mark: (dc / 15)^2 + (dr / 10)^2 <= 1.
    ellipse = ((CC - 30) / 15.0) ** 2 + ((RR - 32) / 10.0) ** 2 <= 1.0 + 1e-12
    np.testing.assert_array_equal(recist_ellipse(MARK, (64, 64)), ellipse)
    lesion = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    np.testing.assert_array_equal(lesion, ellipse)
    # Box of the ellipse's pixel centres: rows 22..42, cols 15..45, enlarged by 20 / 5 = 4 px.
    box = (RR >= 18) & (RR <= 46) & (CC >= 11) & (CC <= 49)
    np.testing.assert_array_equal(seeds != cv2.GC_BGD, box)
    # Sure lesion = erosion by a disk of radius 4, by brute force over the disk's offsets.
    offsets = [(dr, dc) for dr in range(-5, 6) for dc in range(-5, 6) if dr * dr + dc * dc <= 16]
    padded = np.pad(ellipse, 6)
    eroded = np.ones_like(ellipse)
    for dr, dc in offsets:
        eroded &= padded[6 + dr:70 + dr, 6 + dc:70 + dc]
    np.testing.assert_array_equal(seeds == cv2.GC_FGD, eroded)
    assert eroded.sum() > 100 and (ellipse & ~eroded).sum() > 100   # both classes really present


def test_windows_are_lung_mediastinal_and_the_marks_own():
    seeds = uls23_seeds(MARK, (64, 64))
    image = np.full((64, 64), -850.0)
    image[seeds == cv2.GC_FGD] = 37.0
    wins = uls23_windows_hu(image, seeds)
    assert wins == ((-600.0, 1500.0), (40.0, 400.0), (37.0, 200.0))


@pytest.mark.parametrize("truth", [LOBULATED, np.hypot(RR - 32, CC - 31) <= 10])
def test_keeps_the_candidate_whose_axes_best_match_the_mark(truth):
    rec = measure_recist(truth)
    image_hu = window_inverse(lung_phantom(truth, seed=1))
    mask = mask_from_recist_uls23(image_hu, rec)
    cands = _uls23_candidates(image_hu, rec, uls23_seeds(rec, truth.shape), 25)
    assert len(cands) == 3
    # Axes re-measured with the test module's own reader-style measurement.
    def score(m):
        r = measure_recist(m)
        return abs(r.long_px - rec.long_px) + abs(r.short_px - rec.short_px)
    best = min(range(3), key=lambda i: (score(cands[i][1]), i))
    np.testing.assert_array_equal(mask, cands[best][1])
    assert dice(mask, truth) >= 0.85
    np.testing.assert_array_equal(mask, mask_from_recist_uls23(image_hu, rec))   # deterministic


def test_measure_axes_against_a_brute_force_chord():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = np.hypot((RR - 32) / rng.uniform(0.5, 1), (CC - 30) / rng.uniform(0.5, 1)) <= rng.uniform(4, 12)
        pts = np.argwhere(mask).astype(float)
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()
        long_px, short_px = measure_axes_px(mask)
        assert math.isclose(long_px, d, rel_tol=1e-9)
        assert 0 < short_px <= long_px + 1e-9
    assert measure_axes_px(np.zeros((4, 4), bool)) == (0.0, 0.0)


def test_tiny_mark_falls_back_to_the_ellipse():
    truth = np.hypot(RR - 32, CC - 32) <= 1.5
    rec = measure_recist(truth)
    mask = mask_from_recist_uls23(window_inverse(lung_phantom(truth)), rec)
    assert mask.any() and mask.dtype == bool


def test_pipeline_and_hash():
    truth = LOBULATED
    rec = measure_recist(truth)
    image_hu = window_inverse(lung_phantom(truth, seed=2))
    params = LabelParams(recist_method="uls23")
    labels = label_from_recist(image_hu, rec, params)
    mask = mask_from_recist_uls23(image_hu, rec)
    np.testing.assert_array_equal(labels.trimap, trimap_from_recist_mask(mask, rec, band_px=params.recist_band_px))
    region = label_from_recist(image_hu, rec, LabelParams())
    assert not np.array_equal(labels.trimap, region.trimap)
    assert params.sha256() != LabelParams().sha256()
    base = {"dataset": "toy", "source": "deeplesion"}
    r1 = recipe_from_dict(base)
    r2 = recipe_from_dict({**base, "label": {"recist_method": "uls23"}})
    assert r1.label.recist_method == "region" and r2.label.recist_method == "uls23"
    assert r1.sha256() != r2.sha256() and r1.label.sha256() != r2.label.sha256()
    with pytest.raises(InputError, match="recist_method"):
        recipe_from_dict({**base, "label": {"recist_method": "grabcut"}})
    with pytest.raises(InputError, match="recist_method"):
        LabelParams(recist_method="grabcut")
