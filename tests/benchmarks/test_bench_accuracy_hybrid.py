"""The hybrid accuracy benchmark measures what the pipeline labels (composition checked against
``pipeline.label_from_*``), and its issue-27 table's numbers are what a hand count gives."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)   # dataclasses look their module up
    spec.loader.exec_module(module)
    return sys.modules[name]


sys.path.insert(0, str(_BENCH))
ba = _load("bench_accuracy")
bh = _load("bench_accuracy_hybrid")

from softmask_builder.labelling.pipeline import (LabelParams, label_from_mask, label_from_readers,  # noqa: E402
                                                 label_from_recist)


@pytest.fixture(scope="module")
def crops():
    # Analytic-phantom crops (fast), dressed as hybrid crops.
    out = []
    for i, c in enumerate(ba.make_crops(4, 3)):
        out.append(bh.HybridCrop(**vars(c), part="held_out", texture=bh.TEXTURES[i % 3],
                                 placement=bh.PLACEMENTS[i % 3], size="6-12 mm"))
    return out


@pytest.mark.parametrize("params", [LabelParams(), bh.PREVIOUS_DEFAULTS,
                                    LabelParams(deblur_iterations=2, psf_sigma_px=1.1, recist_band_px=2.0)])
def test_evaluate_scores_the_pipelines_labels(crops, params):
    rows = bh.evaluate(crops, params, {}, strategies=("mask", "readers", "recist"))
    for k, case in enumerate(crops):
        ref = {"mask": (label_from_mask(case.image_hu, case.mask, params).soft_mask, case.mask),
               "readers": (label_from_readers(case.image_hu, case.readers, params).soft_mask,
                           label_from_readers(case.image_hu, case.readers, params).binary_mask)}
        rec = label_from_recist(case.image_hu, case.recist, params)
        for s, (soft, binary) in ref.items():
            expected = ba._metrics(soft, binary, case)
            assert {key: rows[s][k][key] for key in expected} == expected, s
        # RECIST: the Soft Mask is the pipeline's (its binary "from" mask is GrabCut's, not compared).
        assert rows["recist"][k]["sad_soft"] == ba._metrics(rec.soft_mask, rec.binary_mask, case)["sad_soft"]
        assert rows["recist"][k]["dice_soft"] == ba._metrics(rec.soft_mask, rec.binary_mask, case)["dice_soft"]


def test_the_cache_does_not_mix_parameters(crops):
    cache = {}
    a = bh.evaluate(crops, LabelParams(), cache, strategies=("recist",))
    b = bh.evaluate(crops, dataclasses.replace(LabelParams(), deblur_iterations=0), cache, strategies=("recist",))
    fresh = bh.evaluate(crops, dataclasses.replace(LabelParams(), deblur_iterations=0), {}, strategies=("recist",))
    assert b == fresh and a != b


def test_subgroup_scores_by_hand():
    rows = [  # diameter, placement, texture, dice, label area px, true area px, SAD
        (4.0, "pleura", "solid", 0.5, 8.0, 10.0, 3.0),
        (5.0, "free", "solid", 0.7, 12.0, 10.0, 5.0),
        (10.0, "pleura", "ground_glass", 0.9, 90.0, 100.0, 7.0),
        (20.0, "vessel", "part_solid", 1.0, 400.0, 400.0, 9.0),
    ]
    sc = bh.subgroup_scores([{"diameter_mm": d, "placement": p, "texture": t, "dice_soft": s,
                              "area_soft": a / n, "soft_area_px": a, "true_area_px": n, "sad_soft": e}
                             for d, p, t, s, a, n, e in rows])
    assert sc["n"] == 4
    assert sc["dice"] == pytest.approx((0.5 + 0.7 + 0.9 + 1.0) / 4)
    assert sc["area"] == pytest.approx((0.8 + 1.2 + 0.9 + 1.0) / 4)
    assert sc["area_pooled"] == pytest.approx((8 + 12 + 90 + 400) / (10 + 10 + 100 + 400))
    # median diameter 7.5 mm: the small half is the 4 and 5 mm crops
    assert sc["small_half"] == pytest.approx(0.6) and sc["large_half"] == pytest.approx(0.95)
    assert sc["pleura"] == pytest.approx(0.7) and sc["free"] == pytest.approx(0.7)
    assert sc["vessel"] == pytest.approx(1.0) and sc["solid"] == pytest.approx(0.6)
    assert sc["sad"] == pytest.approx(6.0)
