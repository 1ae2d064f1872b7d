"""GPU check of the SR teacher (needs CUDA; not run in CI).

1. Training-step throughput of the paper-size SRResNet (64 ch x 16 blocks, BN, 96 px HR,
   batch 16) in float32, bf16 and fp16 autocast, side by side, with the speed-up ratios.
2. A short ``pretrain_sr`` run with ``sr_paper`` (50 steps per stage, 4 loader workers,
   ``amp=auto``) on synthetic 512x512 slices: losses finite, report printed.

    .venv/bin/python benchmarks/gpu_check_sr.py [--steps 20] [--out /tmp/gpu_check_sr]

For several GPUs, run the CLI under torchrun instead, e.g.
``torchrun --nproc_per_node=2 -m dsnet_trainer.cli pretrain-sr --config sr_paper --data DIR --out runs/sr``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsnet_trainer.config import load_config  # noqa: E402
from dsnet_trainer.models import build_model  # noqa: E402
from dsnet_trainer.runtime import Precision  # noqa: E402
from dsnet_trainer.sr import SRConfig, format_report, pretrain_sr  # noqa: E402


def step_rate(mode: str, *, steps: int, batch: int = 16) -> float:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    g = build_model("srresnet", n_channels=64, n_blocks=16, norm="batch").to(dev)
    opt = torch.optim.Adam(g.parameters(), lr=1e-4)
    prec = Precision(mode, dev)
    lr = torch.rand(batch, 1, 24, 24, device=dev) * 2 - 1
    hr = torch.rand(batch, 1, 96, 96, device=dev) * 2 - 1
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            t = time.perf_counter()
        with prec.autocast():
            sr = g(lr)
        loss = torch.nn.functional.mse_loss(sr.float(), hr)
        opt.zero_grad(set_to_none=True)
        prec.backward_step(loss, opt)
        prec.update()
    torch.cuda.synchronize()
    if not math.isfinite(float(loss)):
        raise SystemExit(f"{mode}: non-finite loss {float(loss)}")
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check_sr: no CUDA device visible to torch "
                         f"{torch.__version__}; run it on a GPU machine")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    rates = {}
    for mode in ("off", "bf16", "fp16"):
        if mode == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        rates[mode] = step_rate(mode, steps=args.steps)
        print(f"SRResNet paper step, amp={mode:4s}: {rates[mode]:8.1f} samples/s "
              f"({rates[mode] / rates['off']:.2f}x float32)")

    from tests.dsnet_trainer.shardkit import write_synthetic_slices

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_slices(Path(tmp) / "slices", n_train=32, n_val=4, size_px=512)
        out = args.out or Path(tmp) / "run"
        cfg = load_config(SRConfig, "sr_paper", ["stage1.epochs=1", "stage2.epochs=1", "loop.max_steps_per_epoch=50",
                                                 "loop.num_workers=4", "loop.progress=false", "data.val_max_slices=4"])
        t = time.perf_counter()
        result = pretrain_sr(cfg, data=data, out=out)
        print(f"pretrain_sr (sr_paper, 2 x 50 steps): {time.perf_counter() - t:.1f} s")
        print(format_report(result.report))
        for name in ("srresnet", "srgan"):
            if not np.isfinite(result.report[name]["psnr"]):
                raise SystemExit(f"{name}: non-finite PSNR")


if __name__ == "__main__":
    main()
