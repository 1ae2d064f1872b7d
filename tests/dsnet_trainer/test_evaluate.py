"""Evaluation reports: hand-computed summaries, validation-only thresholds, files, determinism,
comparison tables and the CLI."""

from __future__ import annotations

import csv
import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from dsnet_trainer.cli_seg import register
from dsnet_trainer.errors import InputError
from dsnet_trainer.evaluate import compare_runs, evaluate_checkpoint, summarise_predictions

from .seg_helpers import trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("evalrun"))


def _disc(n, r0, c0, radius):
    rr, cc = np.mgrid[:n, :n]
    return (rr - r0) ** 2 + (cc - c0) ** 2 <= radius ** 2


def test_summary_hand_case_and_threshold_from_validation_only():
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2, :2] = True                        # 4 px
    prob = np.zeros((2, 4, 4))
    prob[0, :2, :2] = 0.7
    prob[0, 2, 0] = 0.6                          # one false positive at 0.5, gone at 0.65
    soft01 = gt.astype(float)
    soft_gt = gt.astype(float)
    soft_gt[0, 0, 0] = 0.5                       # SAD 0.5 on crop 0
    # validation: its probabilities are only right above 0.65 -> the chosen threshold is 0.7
    gt_val = np.zeros((1, 4, 4), bool)
    gt_val[0, 0, :2] = True
    prob_val = np.zeros((1, 4, 4))
    prob_val[0, 0, :2] = 0.9
    prob_val[0, 3, :] = 0.66
    summary, rows = summarise_predictions(prob, gt, soft01, soft_gt, sample_ids=["a", "b"],
                                          prob_val=prob_val, gt_val=gt_val, thresholds=[0.5, 0.6, 0.7])
    # at 0.5: crop a: TP 4, FP 1 -> Dice 8/9, SEN 1, PPV 4/5; crop b: both empty -> 1, 1, 1
    assert summary["at_fixed"]["dice"]["mean"] == pytest.approx((8 / 9 + 1) / 2)
    assert summary["at_fixed"]["dice"]["std"] == pytest.approx((1 - 8 / 9) / 2)
    assert summary["at_fixed"]["ppv"]["mean"] == pytest.approx((4 / 5 + 1) / 2)
    assert summary["threshold_val"] == 0.7 and summary["threshold_val_mean_dice"] == 1.0
    assert summary["at_val_threshold"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["authors_protocol"]["dice_smooth"]["mean"] == pytest.approx((9 / 10 + 1) / 2)
    assert summary["soft_mask"]["sad"]["mean"] == pytest.approx(0.25)
    assert summary["n_empty_gt"] == 1
    assert rows[0]["sample_id"] == "a" and rows[0]["pred_px"] == 5 and rows[0]["dice_tval"] == 1.0
    no_val, _ = summarise_predictions(prob, gt, soft01, soft_gt, sample_ids=["a", "b"])
    assert no_val["threshold_val"] is None and no_val["at_val_threshold"] is None


def test_truth_scores_hand_case_and_no_truth_keeps_the_label_report():
    # crop a: label = 2x2 block, truth = 2x3 block (the label misses one column); crop b: empty
    gt = np.zeros((2, 6, 6), bool)
    gt[0, 1:3, 1:3] = True
    truth = np.zeros((2, 6, 6))
    truth[0, 1:3, 1:4] = 1.0
    truth[0, 1:3, 4] = 0.25                      # partial volume below 0.5: not in the true mask
    prob = np.zeros((2, 6, 6))
    prob[0, 1:3, 1:3] = 0.9
    prob[0, 1:3, 3] = 0.6                        # the missed column, found above 0.5 but below 0.7
    soft01 = prob.copy()
    gt_val = np.zeros((1, 6, 6), bool)
    gt_val[0, 0, :2] = True                      # val label: 2 px -> label-chosen threshold 0.7
    truth_val = np.zeros((1, 6, 6))
    truth_val[0, 0, :3] = 1.0                    # val truth: 3 px -> truth-chosen threshold 0.5
    prob_val = np.zeros((1, 6, 6))
    prob_val[0, 0, :2] = 0.9
    prob_val[0, 0, 2] = 0.6
    kw = dict(sample_ids=["a", "b"], prob_val=prob_val, gt_val=gt_val, thresholds=[0.5, 0.7])
    plain, plain_rows = summarise_predictions(prob, gt, soft01, gt.astype(float), **kw)
    summary, rows = summarise_predictions(prob, gt, soft01, gt.astype(float), true_fraction=truth,
                                          true_fraction_val=truth_val, **kw)
    assert "truth" not in plain and all(not k.endswith("_true") for k in plain_rows[0])
    assert {k: v for k, v in summary.items() if k != "truth"} == plain  # label-scored part unchanged
    assert [{k: r[k] for k in p} for r, p in zip(rows, plain_rows)] == plain_rows
    t = summary["truth"]
    assert summary["threshold_val"] == 0.7 and t["threshold_label_val"] == 0.7 and t["threshold_truth_val"] == 0.5
    # at 0.5 the prediction is the 6-px true mask: Dice 1 on a, both empty on b
    assert t["at_fixed"]["dice"]["mean"] == pytest.approx(1.0)
    # at 0.7 (label's choice): 4 of 6 true px -> Dice 8/10 on a
    assert t["at_label_val_threshold"]["dice"]["mean"] == pytest.approx((0.8 + 1) / 2)
    assert t["at_truth_val_threshold"]["dice"]["mean"] == pytest.approx(1.0)
    # the label against the truth: 4 of 6 px -> Dice 0.8 on a
    assert t["label_vs_truth"]["dice"]["mean"] == pytest.approx(0.9)
    # SAD on a: |0.9-1| * 4 + |0.6-1| * 2 + 0.25 * 2 = 0.4 + 0.8 + 0.5 = 1.7
    assert rows[0]["sad_true"] == pytest.approx(1.7) and rows[1]["sad_true"] == 0.0
    assert rows[0]["mse_true"] == pytest.approx((4 * 0.01 + 2 * 0.16 + 2 * 0.0625) / 36)
    assert rows[0]["hd95_px"] == 0.0 and rows[0]["surface_dice_1px"] == 1.0 and rows[1]["hd95_px"] == 0.0
    assert rows[0]["dice_true_tval"] == pytest.approx(0.8) and rows[0]["true_px"] == 6


def test_evaluate_writes_consistent_deterministic_reports(run, tmp_path):
    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    reports = [evaluate_checkpoint(ckpt, out=tmp_path / f"e{i}", n_preview=3) for i in range(2)]
    for name in ("metrics.json", "per_crop.csv", "summary.md", "predictions.png"):
        assert (tmp_path / "e0" / name).read_bytes() == (tmp_path / "e1" / name).read_bytes(), name
    rep = reports[0]
    assert rep["split"] == "test" and rep["val_split"] == "val" and rep["metrics"]["n_crops"] == 4
    assert rep["metrics"]["n_empty_gt"] == 1
    with open(tmp_path / "e0" / "per_crop.csv") as fh:
        rows = list(csv.DictReader(fh))
    dice = np.array([float(r["dice"]) for r in rows])
    assert rep["metrics"]["at_fixed"]["dice"]["mean"] == pytest.approx(dice.mean(), abs=1e-6)
    assert rep["metrics"]["at_fixed"]["dice"]["std"] == pytest.approx(dice.std(), abs=1e-6)
    assert json.loads((tmp_path / "e0" / "metrics.json").read_text())["format"] == "dsnet-eval"
    assert "authors" in (tmp_path / "e0" / "summary.md").read_text()


def test_checkpoint_on_a_build_with_truth_adds_truth_scores_and_keeps_the_rest(run, tmp_path):
    import shutil

    import h5py

    from dsnet_trainer.metrics import boundary_metrics, dice_sen_ppv

    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    with_truth = tmp_path / "data-truth"
    shutil.copytree(data, with_truth)
    truths = {}
    for path in sorted(with_truth.glob("*.h5")):  # a truth that differs from the label: eroded alpha
        with h5py.File(path, "r+") as f:
            alpha = f["soft_mask"][()]
            truth = np.clip(alpha - 0.2, 0, 1).astype(np.float32)
            f.create_dataset("true_fraction", data=truth, chunks=(1, *truth.shape[1:]), compression="gzip", shuffle=True)
            f.attrs["schema_version"] = 3
            ids = [s.decode() if isinstance(s, bytes) else s for s in f["sample_id"][()]]
            truths.update(zip(ids, truth))
    plain = evaluate_checkpoint(ckpt, out=tmp_path / "plain", data=data, n_preview=2)
    rep = evaluate_checkpoint(ckpt, out=tmp_path / "truth", data=with_truth, n_preview=2)
    assert "truth" not in plain["metrics"]
    assert {k: v for k, v in rep["metrics"].items() if k != "truth"} == plain["metrics"]
    with open(tmp_path / "truth" / "per_crop.csv") as fh:
        rows = list(csv.DictReader(fh))
    true_mask = np.stack([truths[r["sample_id"]] >= 0.5 for r in rows])
    assert [int(r["true_px"]) for r in rows] == [int(m.sum()) for m in true_mask]
    dice = np.array([float(r["dice_true"]) for r in rows])
    assert rep["metrics"]["truth"]["at_fixed"]["dice"]["mean"] == pytest.approx(dice.mean(), abs=1e-6)
    # the label vs the truth, computed here from the shards
    label = np.stack(_labels(with_truth, [r["sample_id"] for r in rows]))
    expect = dice_sen_ppv(label, true_mask)["dice"]
    np.testing.assert_allclose([float(r["label_dice_true"]) for r in rows], expect, atol=1e-6)  # CSV: 6 digits
    assert "Scored against the phantom's truth" in (tmp_path / "truth" / "summary.md").read_text()
    assert "phantom" not in (tmp_path / "plain" / "summary.md").read_text()
    assert boundary_metrics(true_mask, true_mask)["surface_dice"].tolist() == [1.0] * len(rows)


def _labels(data, sample_ids):
    import h5py

    found = {}
    for path in sorted(data.glob("*.h5")):
        with h5py.File(path, "r") as f:
            ids = [s.decode() if isinstance(s, bytes) else s for s in f["sample_id"][()]]
            found.update(zip(ids, f["binary_mask"][()] != 0))
    return [found[s] for s in sample_ids]


def test_threshold_never_chosen_on_the_evaluated_split(run, tmp_path):
    _, _, run_dir = run
    with pytest.raises(InputError, match="must differ from --split"):
        evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", out=tmp_path, split="val", val_split="val")
    rep = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", out=tmp_path / "noval", val_split="")
    assert rep["metrics"]["threshold_val"] is None and rep["val_split"] is None


def test_compare_table_and_mismatched_reports(run, tmp_path):
    _, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    evaluate_checkpoint(ckpt, out=tmp_path / "a", name="first")
    evaluate_checkpoint(ckpt, out=tmp_path / "b", name="second")
    md = compare_runs([tmp_path / "a", tmp_path / "b" / "metrics.json"], out=tmp_path / "cmp")
    lines = [ln for ln in md.splitlines() if ln.startswith("| first") or ln.startswith("| second")]
    assert len(lines) == 2 and lines[0].split("|")[2:] == lines[1].split("|")[2:]
    assert (tmp_path / "cmp" / "compare.csv").read_text().count("\n") == 3
    evaluate_checkpoint(ckpt, out=tmp_path / "v", split="val", val_split="")
    with pytest.raises(InputError, match="do not compare"):
        compare_runs([tmp_path / "a", tmp_path / "v"])
    with pytest.raises(InputError, match="no evaluation report"):
        compare_runs([tmp_path / "missing"])


def test_cli_evaluate_and_compare(run, tmp_path):
    _, _, run_dir = run
    group = click.Group("dsnet")
    register(group)
    runner = CliRunner()
    res = runner.invoke(group, ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"),
                                "--out", str(tmp_path / "ev"), "--n-preview", "2"])
    assert res.exit_code == 0, res.output
    assert "Dice @0.5" in res.output and (tmp_path / "ev" / "predictions.png").is_file()
    res = runner.invoke(group, ["compare", str(tmp_path / "ev"), "--name", "only"])
    assert res.exit_code == 0 and "| only |" in res.output
    res = runner.invoke(group, ["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "checkpoint not found" in res.output and "Traceback" not in res.output
