"""Two-process DDP (gloo on CPU) through the public API and through `torchrun` + the CLI:
identical weights on both ranks, disjoint data, rank-0-only files, unskewed evaluation."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dsnet_trainer.config import load_config
from dsnet_trainer.data import SliceShardDataset
from dsnet_trainer.models.teacher import load_teacher
from dsnet_trainer.runtime import DistContext
from dsnet_trainer.sampling import EvalShardSampler, make_loader
from dsnet_trainer.sr import SRConfig, evaluate_sr

from .ddp_worker import run_rank
from .shardkit import synthetic_ct_slice, write_slice_shard

pytestmark = pytest.mark.dist

# 24 patches per epoch = 12 per rank = 3 batches of 4 on each rank; 3 val slices (odd: 2 + 1).
OVERRIDES = ["loop.progress=false", "loop.num_workers=0", "stage1.epochs=2", "stage2.epochs=1",
             "data.patches_per_slice=4", "loop.batch_size=4", "generator.norm=batch", "loop.log_every_steps=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp_slices")
    rng = np.random.default_rng(3)
    write_slice_shard(folder / "s-slices-train-00000-of-00001.h5", np.stack([synthetic_ct_slice(rng, 64) for _ in range(6)]))
    write_slice_shard(folder / "s-slices-val-00000-of-00001.h5", np.stack([synthetic_ct_slice(rng, 64) for _ in range(3)]),
                      split="val")
    return folder


def test_two_ranks_identical_weights_disjoint_data(tmp_path, ddp_data):
    out, rec = tmp_path / "run", tmp_path / "rec"
    rec.mkdir()
    mp.start_processes(run_rank, args=(2, _free_port(), str(ddp_data), str(out), str(rec), OVERRIDES), nprocs=2,
                       start_method="spawn", join=True)
    w0, w1 = (torch.load(rec / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for net in ("generator", "discriminator"):
        assert w0[net].keys() == w1[net].keys()
        for k in w0[net]:  # parameters and BatchNorm buffers alike
            assert torch.equal(w0[net][k], w1[net][k]), f"{net}.{k} differs between ranks"
    k0, k1 = (json.loads((rec / f"rank{r}.json").read_text()) for r in (0, 1))
    # Per stage and epoch, the two ranks read disjoint halves covering all 24 patches.
    def by_epoch(keys):
        groups = {}
        for i, seed, epoch in keys:
            groups.setdefault((seed, epoch), []).append(i)
        return groups
    g0, g1 = by_epoch(k0["keys"]), by_epoch(k1["keys"])
    assert g0.keys() == g1.keys() and len(g0) == 3  # 2 stage-1 epochs + 1 stage-2 epoch
    for key in g0:
        assert not set(g0[key]) & set(g1[key])
        assert sorted(g0[key] + g1[key]) == list(range(24))
    # Files come from rank 0 only: one epoch row per epoch, one teacher, one report.
    rows = [json.loads(x) for x in (out / "srresnet" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["phase"] == "epoch"] == [1, 2]
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    # Evaluation counted each of the 3 val slices once and equals a single-process evaluation.
    report = k0["report"]
    assert report == k1["report"] and report["n_val_slices"] == 3
    cfg = load_config(SRConfig, "sr_tiny", OVERRIDES)
    val = SliceShardDataset(ddp_data, split="val", mode="val")
    single = evaluate_sr(load_teacher(out / "teacher.pt").generator, make_loader(val, EvalShardSampler(3), batch_size=1),
                         ctx=DistContext(), scale=4, shave_px=cfg.shave_px)
    assert single["n"] == 3
    assert single["psnr"] == pytest.approx(report["srgan"]["psnr"], abs=1e-4)
    assert single["psnr_bicubic"] == pytest.approx(report["bicubic"]["psnr"], abs=1e-4)


@pytest.mark.slow
def test_torchrun_cli_two_processes(tmp_path, ddp_data):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dsnet_trainer.cli", "pretrain-sr", "--data", str(ddp_data), "--out", str(out),
           "--config", "sr_tiny", "--no-progress", "--threads", "1", "--device", "cpu",
           "-s", "stage1.epochs=1", "-s", "stage2.epochs=1", "-s", "data.patches_per_slice=4", "-s", "loop.batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| bicubic |") == 1  # the summary is printed by rank 0 only
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    assert (out / "teacher.pt").is_file()
