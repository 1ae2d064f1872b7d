"""3-D agreement (issue 26 item 6, real part): hand-computed volumes and Dice on tiny volumes, and
on LIDC-IDRI-0001 the consensus volume and a reader's leave-one-out Dice recomputed by an
independent route (the contours JSON filled with skimage, slice by slice, times the slice spacing
from the slices' z) against the build path (plan_lidc_volumes -> load_lidc_volume)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.reports.agreement3d import (agreement_table_markdown, dice3d, held_out_agreement,
                                                  held_out_table_markdown, reader_agreement, soft_mask_agreement,
                                                  voxel_volume_mm3)

from ..sources.lidc_oracle import load_contours_json, reader_mask


def test_hand_computed_case():
    # 3 readers on a (1, 2, 3) grid of 2 x 1 x 0.5 mm voxels (1 mm^3 each)
    m = np.zeros((3, 1, 2, 3), bool)
    m[0, 0, 0, :2] = True          # voxels a, b
    m[1, 0, 0, 1:] = True          # b, c
    m[2, 0, 0, 1] = True           # b
    alpha = np.zeros((1, 2, 3))
    alpha[0, 0] = [0.5, 1.0, 0.25]  # sum 1.75, alpha >= 0.5 on a, b
    row = soft_mask_agreement(alpha, m, (2.0, 1.0, 0.5))
    # consensus >= 50 % of 3: b only (a and c have 1 vote of 3) -> 1 mm^3; Dice({a, b}, {b}) = 2/3
    assert row["consensus_mm3"] == 1.0 and row["volume_mm3"] == 1.75
    assert row["dice"] == pytest.approx(2 / 3) and row["volume_error_pct"] == pytest.approx(75.0)
    r1, r2, r3 = reader_agreement(m, (2.0, 1.0, 0.5))
    # reader 1 vs the others' consensus (readers 2, 3: >= 1 of 2 -> b, c): Dice({a,b},{b,c}) = 1/2
    assert r1["dice"] == 0.5 and r1["volume_mm3"] == 2.0 and r1["others_mm3"] == 2.0
    assert r3["dice"] == 0.5  # {b} vs readers 1, 2 (>= 1 of 2: a, b, c): 2 x 1 / (1 + 3)
    # reader 1 held out: alpha >= 0.5 on {a, b} vs reader 1 {a, b} -> 1; others' consensus {b, c} -> 1/2
    h = held_out_agreement(alpha, m, 0, (2.0, 1.0, 0.5))
    assert (h["soft_dice"], h["consensus_dice"], h["soft_mm3"], h["reader_mm3"]) == (1.0, 0.5, 1.75, 2.0)
    assert "| mean | | 0.500 | 1.000 |" in held_out_table_markdown({"x": [h]})
    assert math.isnan(dice3d(np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool)))
    assert "| reader 3 (its own mask) |" in agreement_table_markdown({"x": row}, [r1, r2, r3])
    with pytest.raises(InputError, match="spacing_mm"):
        voxel_volume_mm3((1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="R >= 2"):
        reader_agreement(m[:1], (1, 1, 1))


@pytest.fixture(scope="module")
def record_0001(lidc_root):
    from softmask_builder.sources.lidc import load_lidc_volume, plan_lidc_volumes

    refs, _ = plan_lidc_volumes(lidc_root, min_readers=4)
    (ref,) = [r for r in refs if r.patient == "LIDC-IDRI-0001"]
    return load_lidc_volume(ref)


def test_lidc_0001_consensus_volume_by_an_independent_route(lidc_root, record_0001):
    scan = load_contours_json(lidc_root)["scans"]["LIDC-IDRI-0001"]
    (nodule,) = scan["nodules"]
    anns = sorted(nodule["annotations"], key=lambda a: a["annotation_id"])
    assert [a["annotation_id"] for a in anns] == list(record_0001.ref.payload["annotation_ids"])
    zs = sorted({c["z"] for a in anns for c in a["contours"]})
    dz = float(np.diff(zs).mean())
    assert np.allclose(np.diff(zs), dz)  # contiguous, evenly spaced contour slices
    pixel_mm2 = float(scan["pixel_spacing"]) ** 2
    # consensus area per slice (skimage fill of the JSON contours) x slice spacing
    stacks = [np.stack([reader_mask(a, z) for a in anns]) for z in zs]
    area_px = sum(int((s.mean(axis=0) >= 0.5).sum()) for s in stacks)
    expected_mm3 = area_px * pixel_mm2 * dz
    row = soft_mask_agreement(np.zeros(record_0001.prior.shape[1:]), record_0001.prior, record_0001.spacing_mm)
    assert row["consensus_mm3"] == pytest.approx(expected_mm3, rel=1e-9)
    assert 6000 < expected_mm3 < 7500  # a ~33 mm nodule, flattened by the readers' outlines
    # reader 1 against the consensus of readers 2-4 (>= 2 of 3), same route
    inter = sum(int((s[0] & (s[1:].sum(axis=0) >= 2)).sum()) for s in stacks)
    total = sum(int(s[0].sum()) + int((s[1:].sum(axis=0) >= 2).sum()) for s in stacks)
    assert reader_agreement(record_0001.prior, record_0001.spacing_mm)[0]["dice"] == pytest.approx(2 * inter / total)
