"""Loader throughput beside training-step consumption, in one run.

Measures samples/s of the trainer's shard datasets through ``make_loader`` with 0, 1 and 2
workers (steady state: the first batch, which pays for worker start-up, is timed separately),
and samples/s that one training step of the SR teacher consumes (tiny and paper-size
generators, forward + backward + Adam) on this machine. A loader is fast enough when its
samples/s exceed the step's.

    .venv/bin/python benchmarks/bench_loader.py                      # synthetic shards in a temp dir
    .venv/bin/python benchmarks/bench_loader.py --samples DIR --slices DIR --batches 40

Without ``--samples``/``--slices`` it writes synthetic shards in the documented format
(``tests/dsnet_trainer/shardkit.py``): 1024 sample crops of 64x64 and 48 slices of 512x512.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsnet_trainer.data import SampleShardDataset, SliceShardDataset  # noqa: E402
from dsnet_trainer.models import build_model  # noqa: E402
from dsnet_trainer.sampling import SeededSampler, make_loader  # noqa: E402


def _synthetic(folder: Path) -> tuple[Path, Path]:
    from tests.dsnet_trainer.shardkit import (make_sample_arrays, synthetic_ct_slice, write_sample_shard,
                                              write_slice_shard)
    rng = np.random.default_rng(0)
    samples = folder / "samples"
    for i in range(4):
        write_sample_shard(samples / f"bench-train-{i:05d}-of-00004.h5", make_sample_arrays(rng, 256, 64))
    slices = folder / "slices"
    write_slice_shard(slices / "bench-slices-train-00000-of-00001.h5",
                      np.stack([synthetic_ct_slice(rng, 512) for _ in range(48)]))
    return samples, slices


def loader_rate(dataset, *, workers: int, batch_size: int, batches: int, context: str) -> tuple[float, float]:
    """(seconds to the first batch, steady samples/s over the next ``batches`` batches)."""
    sampler = SeededSampler(len(dataset), seed=0)
    loader = make_loader(dataset, sampler, batch_size=batch_size, num_workers=workers, mp_context=context,
                         timeout_s=300, drop_last=True)
    t0 = time.perf_counter()
    n, first, start, epoch = 0, None, None, 0
    while n < batches:
        sampler.set_epoch(epoch)
        for _ in loader:
            if first is None:
                first = time.perf_counter() - t0
                start = time.perf_counter()
                continue
            n += 1
            if n >= batches:
                break
        epoch += 1
    rate = n * batch_size / (time.perf_counter() - start)
    del loader
    return first, rate


def step_rate(*, n_channels: int, n_blocks: int, norm: str, hr_px: int, batch_size: int, steps: int) -> float:
    """Samples/s consumed by SRResNet training steps (forward, MSE, backward, Adam) on the CPU."""
    torch.manual_seed(0)
    g = build_model("srresnet", n_channels=n_channels, n_blocks=n_blocks, norm=norm)
    opt = torch.optim.Adam(g.parameters(), lr=1e-4)
    lr = torch.rand(batch_size, 1, hr_px // 4, hr_px // 4) * 2 - 1
    hr = torch.rand(batch_size, 1, hr_px, hr_px) * 2 - 1
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        loss = torch.nn.functional.mse_loss(g(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, help="sample-shard folder (default: synthetic)")
    ap.add_argument("--slices", type=Path, help="slice-shard folder (default: synthetic)")
    ap.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--context", default="default", choices=["default", "fork", "spawn", "forkserver"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        samples, slices = args.samples, args.slices
        if samples is None or slices is None:
            syn_samples, syn_slices = _synthetic(Path(tmp))
            samples = samples or syn_samples
            slices = slices or syn_slices
        sets = {
            "samples (DSNet crops, augmented)": SampleShardDataset(samples, augment=True),
            "slices -> 96px HR + 24px LR": SliceShardDataset(slices, split=None, hr_patch_px=96, patches_per_slice=8),
            "slices -> 32px HR + 8px LR": SliceShardDataset(slices, split=None, hr_patch_px=32, patches_per_slice=8),
        }
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) in the main process, "
              f"batch {args.batch_size}, {args.batches} timed batches, start method {args.context}")
        print(f"{'dataset':36s} {'workers':>7s} {'first batch s':>13s} {'samples/s':>10s}")
        rates = {}
        for name, ds in sets.items():
            for w in args.workers:
                first, rate = loader_rate(ds, workers=w, batch_size=args.batch_size, batches=args.batches,
                                          context=args.context)
                rates[(name, w)] = rate
                print(f"{name:36s} {w:7d} {first:13.3f} {rate:10.1f}")
        print()
        print(f"{'training step (CPU, 1 process)':46s} {'samples/s':>10s}")
        tiny = step_rate(n_channels=16, n_blocks=2, norm="none", hr_px=32, batch_size=args.batch_size, steps=10)
        paper = step_rate(n_channels=64, n_blocks=16, norm="batch", hr_px=96, batch_size=args.batch_size, steps=3)
        print(f"{'SRResNet tiny (16ch x 2 blocks, 32px HR)':46s} {tiny:10.1f}")
        print(f"{'SRResNet paper (64ch x 16 blocks, 96px HR)':46s} {paper:10.1f}")
        print()
        name32, name96 = "slices -> 32px HR + 8px LR", "slices -> 96px HR + 24px LR"
        for w in args.workers:
            print(f"loader/step ratio, {w} worker(s): tiny {rates[(name32, w)] / tiny:.2f}x, "
                  f"paper {rates[(name96, w)] / paper:.2f}x  (> 1: the loader keeps up)")


if __name__ == "__main__":
    main()
