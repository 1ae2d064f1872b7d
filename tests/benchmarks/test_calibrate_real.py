"""The real side of the calibration runs on the shared LIDC fixtures (skips when absent): the
slices it takes are those with >= 3 contours, its reader-vs-others Dice is recomputed here by
explicit pixel counts, and the ULS23 and region pipelines produce usable masks on real CT."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "calibrate_real", Path(__file__).resolve().parents[2] / "benchmarks" / "calibrate_real.py")
calibrate_real = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("calibrate_real", calibrate_real)   # dataclasses look their module up
_SPEC.loader.exec_module(calibrate_real)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_calibration_on_the_real_fixtures(shared_data):
    cases = calibrate_real.real_cases(shared_data)
    # The fixture's one nodule with >= 3 readers: LIDC-IDRI-0001's 4-reader nodule.
    assert cases and all(c.sample_id.startswith("LIDC-IDRI-0001") for c in cases)
    case = cases[len(cases) // 2]
    assert len(case.readers) >= 3 and all(r.any() for r in case.readers)
    row = calibrate_real.score_case(case)
    by_hand = []
    for i in range(len(case.readers)):
        others = [r for j, r in enumerate(case.readers) if j != i]
        votes = np.sum(others, axis=0)
        by_hand.append(_dice(case.readers[i], 2 * votes >= len(others)))
    np.testing.assert_allclose(row["reader_vs_others"], by_hand, rtol=1e-12)
    assert row["mask"] > 0.9 and row["readers"] > 0.85
    assert row["recist_region"] > 0.75 and row["grabcut_uls23"] > 0.7
    # a CT slice: noise of a few tens of HU, correlated over about a pixel or more
    assert 5 < row["noise_std_hu"] < 80 and row["noise_patches"] > 20
    assert 0.3 < row["noise_acf_hwhm_mm"] < 3.0
    assert math.isfinite(row["edge_width_mm"]) and row["edge_profiles"] > 10


def test_hybrid_cases_from_the_same_outlines(shared_data):
    real = calibrate_real.real_cases(shared_data)
    mid = len(real) // 2
    picked = real[mid - 1:mid + 1]
    # "free": a pleural placement moves part of the solid into the chest wall, which is wall.
    hyb, truths, renders = calibrate_real.hybrid_cases(shared_data, picked, placement="free")
    assert len(hyb) == 2
    for r, h, t, render in zip(picked, hyb, truths, renders):
        assert h.sample_id == "hybrid:" + r.sample_id
        # Same slice geometry: the scan's pixel spacing, and the slice's z through the same solid, so
        # the true section's area matches the real readers' consensus area on that slice (mm^2).
        assert render.spacing_mm[0] == 0.703125
        real_area = (r.all_readers.mean(axis=0) >= 0.5).sum() * r.spacing_mm[0] * r.spacing_mm[1]
        true_area = render.true_mask.sum() * render.spacing_mm[0] ** 2
        assert 0.75 < true_area / real_area < 1.33
        row = calibrate_real.score_case(h, truth_fraction=t)
        assert row["consensus_vs_truth"] > 0.85 and row["mask_vs_truth"] > 0.85
