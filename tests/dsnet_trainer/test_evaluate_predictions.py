"""`dsnet evaluate --predictions`: external probability maps (nnU-Net v2 --save_probabilities .npz,
mapped through the export's cases.csv) scored with the same metrics as a checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dsnet_trainer.cli import main
from softmask_builder.formats.shards import open_shard

from .shardkit import make_sample_arrays, write_sample_shard


def test_nnunet_style_npz_through_cases_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    test = write_sample_shard(data / "synth-test-00000-of-00001.h5", make_sample_arrays(rng, 4), split="test")
    with open_shard(test) as shard:
        ids = shard.sample_ids
        masks = shard.file["binary_mask"][()].astype(np.float32)
    pred = tmp_path / "pred"
    pred.mkdir()
    with open(pred / "cases.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "sample_id", "split", "patient", "source_key"])
        for k, sid in enumerate(ids):
            w.writerow([f"LNSM_{k:05d}", sid, "test", "P", "s"])
    for k, m in enumerate(masks):
        fg = m.copy()
        if k == 0:
            fg[:] = 0.0  # crop 0 entirely missed: Dice 0
        # nnU-Net's layout: (classes, z=1, rows, cols), class 1 = nodule
        np.savez(pred / f"LNSM_{k:05d}.npz", probabilities=np.stack([1 - fg, fg])[:, None])
    res = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--data", str(data), "--val-split", ""])
    assert res.exit_code == 0, res.output
    report = json.loads((pred / "eval-test" / "metrics.json").read_text())
    assert report["metrics"]["n_crops"] == 4 and report["variant"] == "external"
    assert abs(report["metrics"]["at_fixed"]["dice"]["mean"] - 0.75) < 1e-9  # 3 perfect crops, 1 missed
    with open(pred / "eval-test" / "per_crop.csv", newline="") as fh:
        rows = {r["sample_id"]: float(r["dice"]) for r in csv.DictReader(fh)}
    assert rows[ids[0]] == 0.0 and all(rows[s] == 1.0 for s in ids[1:])
    assert "| external" not in res.stdout and "75.00" in res.stdout
    assert "phantom" not in res.stdout  # no truth in this build: the report of before issue 25


def test_external_predictions_are_scored_against_the_truth_when_the_build_has_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(6)
    arrays = make_sample_arrays(rng, 3)
    truth = np.zeros_like(arrays["soft_mask"])
    truth[:, 8:16, 8:16] = 1.0                   # a known 8x8 true nodule in every crop (64 px)
    truth[:, 8:16, 16] = 0.4                     # partial-volume rim below 0.5
    data = tmp_path / "data"
    write_sample_shard(data / "synth-test-00000-of-00001.h5", {**arrays, "true_fraction": truth}, split="test",
                       schema_version=3)
    with open_shard(data / "synth-test-00000-of-00001.h5") as shard:
        ids = shard.sample_ids
    pred = tmp_path / "pred"
    pred.mkdir()
    for k, sid in enumerate(ids):
        p = np.zeros((32, 32))
        p[8:16, 8:16 - k] = 1.0                  # crop k misses k true columns: Dice 2(64-8k)/(128-8k)
        np.save(pred / f"{sid}.npy", p)
    res = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--data", str(data), "--val-split", ""])
    assert res.exit_code == 0, res.output
    t = json.loads((pred / "eval-test" / "metrics.json").read_text())["metrics"]["truth"]
    expect = [2 * (64 - 8 * k) / (128 - 8 * k) for k in range(3)]
    assert t["at_fixed"]["dice"]["mean"] == pytest.approx(np.mean(expect))
    assert t["at_label_val_threshold"] is None and t["at_truth_val_threshold"] is None  # no val split
    with open(pred / "eval-test" / "per_crop.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    np.testing.assert_allclose([float(r["dice_true"]) for r in rows], expect, rtol=1e-5)
    # SAD against the true fraction: 8k missed px + the 8-px rim at 0.4
    np.testing.assert_allclose([float(r["sad_true"]) for r in rows], [8 * k + 8 * 0.4 for k in range(3)], rtol=1e-5)
    # HD95: crop 1 misses one column -> its far boundary is 1 px off; surface Dice counts those
    assert float(rows[0]["hd95_px"]) == 0.0 and float(rows[0]["surface_dice_1px"]) == 1.0
    assert float(rows[1]["hd95_px"]) == 1.0 and float(rows[1]["surface_dice_1px"]) == 1.0
    assert "Scored against the phantom's truth" in (pred / "eval-test" / "summary.md").read_text()
    assert "Scored against the phantom's truth" in res.stdout and "| Dice(true) @0.5 |" in res.stdout
