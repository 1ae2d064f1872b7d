"""The training loop and what it writes (:mod:`dsnet_trainer.engine`): run state and resume,
checkpoint files of a run, metric logs, curves, the run folder, model selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsnet_trainer import engine
from dsnet_trainer.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint,
                                      state_sha256)
from dsnet_trainer.digest import weights_sha256
from dsnet_trainer.engine import CheckpointManager, MetricLogger
from dsnet_trainer.errors import CheckpointError
from dsnet_trainer.runtime import DistContext
from tests.dsnet_trainer.test_checkpoint import _toy_state


# ---------------------------------------------------------------------------- run state, checkpoints
def test_mismatched_checkpoint_is_refused(tmp_path):
    state, *_ = _toy_state(hidden=4)
    path = save_checkpoint(state.state_dict(), tmp_path / "h4.pt")
    other, *_ = _toy_state(hidden=8)
    with pytest.raises(CheckpointError, match=r"h4.pt.*hidden: 4 in checkpoint, now 8"):
        other.load_state_dict(load_checkpoint(path), source=path)
    other.compat = {"hidden": 4}  # same settings claimed, weights still of another shape
    with pytest.raises(CheckpointError, match=r"h4.pt.*weights of 'model' do not fit"):
        other.load_state_dict(load_checkpoint(path), source=path)
    wrong_kind, *_ = _toy_state(kind="else")
    with pytest.raises(CheckpointError, match="expected 'else'"):
        wrong_kind.load_state_dict(load_checkpoint(path), source=path)


def test_checkpoint_manager_files_and_resume(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", every_n_epochs=2)
    assert mgr.resolve_resume("auto") is None and mgr.resolve_resume(None) is None
    for epoch, improved in [(1, True), (2, False), (3, True), (4, False)]:
        ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": "t",
              "epoch": epoch, "modules": {}, "weights_sha256": weights_sha256({})}
        ck["state_sha256"] = state_sha256(ck)
        mgr.save(ck, epoch=epoch, improved=improved)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["best.pt", "epoch_0002.pt", "epoch_0004.pt", "last.pt"]
    assert load_checkpoint(mgr.best_path)["epoch"] == 3
    assert load_checkpoint(mgr.last_path)["epoch"] == 4
    assert mgr.resolve_resume("auto") == mgr.last_path
    with pytest.raises(CheckpointError, match="--resume.*missing.pt"):
        mgr.resolve_resume(tmp_path / "missing.pt")
    off = CheckpointManager(tmp_path / "off", enabled=False)
    off.save({"x": 1}, epoch=1, improved=True)
    assert not (tmp_path / "off").exists()


# ---------------------------------------------------------------------------- logging
def test_metric_logger_jsonl_csv_and_resume_truncation(tmp_path):
    log = MetricLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4):
        log.log({"phase": "train", "epoch": 1, "step": step, "loss": 1.0 / step})
    log.log({"phase": "epoch", "epoch": 1, "step": 4, "val_psnr": np.float32(30.5)})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4] and rows[-1]["val_psnr"] == 30.5
    import csv
    with open(tmp_path / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 5 and float(table[1]["loss"]) == 0.5 and table[4]["val_psnr"] == "30.5"
    # A resumed run at step 2 drops rows written after that checkpoint.
    resumed = MetricLogger(tmp_path, tensorboard=False, resume_step=2)
    resumed.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # Rank != 0: nothing written.
    MetricLogger(tmp_path / "rank1", enabled=False).log({"step": 1})
    assert not (tmp_path / "rank1").exists()


def test_plot_curves_writes_a_png(tmp_path):
    log = MetricLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log({"phase": "train", "step": step, "loss": 1.0 / step})
    log.log({"phase": "epoch", "step": 5, "val_psnr": 30.0})
    log.close()
    png = engine.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_run_dir_records_config_seed_and_versions(tmp_path):
    from dsnet_trainer.config import LoopConfig, from_dict
    import yaml

    cfg = LoopConfig(seed=5, batch_size=3)
    out = engine.prepare_run_dir(tmp_path / "run", cfg, ctx=DistContext(), seed=5, command="test")
    assert from_dict(LoopConfig, yaml.safe_load((out / "config.yaml").read_text())) == cfg
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 5 and info["versions"]["torch"] == torch.__version__
    assert "git_commit" in info
    engine.prepare_run_dir(out, cfg, ctx=DistContext(), seed=5)  # a second start keeps the first copy
    assert (out / "config.prev.yaml").exists()


def test_fit_tracks_best_and_checkpoints(tmp_path):
    state, model, opt, sched = _toy_state()
    metrics = iter([1.0, 3.0, 2.0])

    def train_epoch(epoch):
        loss = model(torch.ones(2, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state.step += 1
        return {"loss": float(loss.detach())}

    logger = MetricLogger(tmp_path, tensorboard=False)
    engine.fit(state, epochs=3, train_epoch=train_epoch, evaluate=lambda e: {"psnr": next(metrics)},
               checkpoints=CheckpointManager(tmp_path / "ck"), logger=logger, ctx=DistContext(), monitor="psnr",
               mode="max")
    logger.close()
    assert state.epoch == 3 and state.best_metric == 3.0
    assert load_checkpoint(tmp_path / "ck" / "best.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "ck" / "last.pt")["epoch"] == 3
    assert sched.last_epoch == 3  # stepped once per epoch


def test_selection_rule_mean_of_last_k_validations(tmp_path):
    # validations 0.9 (lucky, alone), 0.1, 0.5, 0.6, 0.7: with k = 3 the first full window ends at
    # epoch 3 (mean 0.5), then epoch 4 (0.4), epoch 5 (0.6) -> selected epoch 5, not the lucky epoch 1
    state, model, opt, _ = _toy_state()
    vals = iter([0.9, 0.1, 0.5, 0.6, 0.7])

    def train_epoch(epoch):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        state.step += 1
        return {"loss": 1.0}

    ckpts = CheckpointManager(tmp_path / "ck")
    logger = MetricLogger(tmp_path, tensorboard=False)
    seen = []
    engine.fit(state, epochs=5, train_epoch=train_epoch, evaluate=lambda e: {"dice": next(vals)},
               checkpoints=ckpts, logger=logger, ctx=DistContext(), monitor="dice", select_k=3,
               on_epoch=lambda r: seen.append(r.selected_epoch))
    logger.close()
    assert seen == [None, None, 3, 3, 5]
    assert state.best_metric == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    assert load_checkpoint(ckpts.best_path)["epoch"] == 5
