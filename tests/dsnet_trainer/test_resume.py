"""A run killed (in stage 1, then again in stage 2) and resumed reaches exactly the weights,
optimiser states and metric log of an uninterrupted run (CPU, bit-identical)."""

from __future__ import annotations

import json

import pytest
import torch

from dsnet_trainer.checkpoint import load_checkpoint
from dsnet_trainer.config import load_config
from dsnet_trainer.errors import CheckpointError
from dsnet_trainer.sr import SRConfig, SRHooks, pretrain_sr

# 6 train slices x 4 patches / batch 4 = 6 steps per epoch; 3 + 2 epochs.
CFG = ["loop.progress=false", "loop.num_workers=0", "stage1.epochs=3", "stage1.milestones=[2]", "stage2.epochs=2",
       "data.patches_per_slice=4", "loop.batch_size=4", "data.val_max_slices=1", "loop.log_every_steps=2"]


class Killed(Exception):
    """Stands for the process being killed at that point."""


def _kill_at(stage: str, step: int) -> SRHooks:
    def hook(s: str, k: int) -> None:
        if s == stage and k == step:
            raise Killed(f"{s}@{k}")
    return SRHooks(on_step_end=hook)


def _final(out):
    ck = load_checkpoint(out / "srgan" / "checkpoints" / "last.pt")
    teacher = torch.load(out / "teacher.pt", weights_only=True)
    logs = {s: [json.loads(x) for x in (out / s / "metrics.jsonl").read_text().splitlines()]
            for s in ("srresnet", "srgan")}
    return ck, teacher, logs


def _assert_same_tree(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, slice_shards):
    cfg = load_config(SRConfig, "sr_tiny", CFG)
    ref = pretrain_sr(cfg, data=slice_shards, out=tmp_path / "ref")

    out = tmp_path / "killed"
    with pytest.raises(Killed):  # mid-epoch 2 of stage 1 (epoch 1 checkpointed at step 6)
        pretrain_sr(cfg, data=slice_shards, out=out, hooks=_kill_at("srresnet", 8))
    assert load_checkpoint(out / "srresnet" / "checkpoints" / "last.pt")["epoch"] == 1
    with pytest.raises(Killed):  # resume from an explicit file, then die in SRGAN epoch 2
        pretrain_sr(cfg, data=slice_shards, out=out, resume=out / "srresnet" / "checkpoints" / "last.pt",
                    hooks=_kill_at("srgan", 9))
    assert load_checkpoint(out / "srgan" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = pretrain_sr(cfg, data=slice_shards, out=out, resume="auto")

    ck_ref, teacher_ref, logs_ref = _final(ref.out)
    ck_res, teacher_res, logs_res = _final(out)
    for group in ("modules", "optimizers", "schedulers"):
        _assert_same_tree(ck_ref[group], ck_res[group], group)
    assert (ck_ref["epoch"], ck_ref["step"], ck_ref["best_metric"]) == (ck_res["epoch"], ck_res["step"],
                                                                        ck_res["best_metric"])
    _assert_same_tree(teacher_ref["generator"], teacher_res["generator"], "teacher")
    assert logs_ref == logs_res  # rows logged after each kill's checkpoint were dropped on resume
    assert resumed.report == ref.report


def test_resume_refuses_another_architecture(tmp_path, slice_shards):
    cfg = load_config(SRConfig, "sr_tiny", CFG + ["stage1.epochs=1", "stage2.epochs=0", "export_from=srresnet"])
    pretrain_sr(cfg, data=slice_shards, out=tmp_path / "run")
    wider = load_config(SRConfig, "sr_tiny", CFG + ["stage1.epochs=2", "stage2.epochs=0", "export_from=srresnet",
                                                     "generator.n_channels=24"])
    with pytest.raises(CheckpointError, match=r"last.pt was made with other settings: generator.n_channels: 16"):
        pretrain_sr(wider, data=slice_shards, out=tmp_path / "run", resume="auto")
