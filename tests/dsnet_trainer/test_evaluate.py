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
