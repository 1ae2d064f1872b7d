"""Inference speed of the U-Net baseline vs DSNet, side by side in one run.

For each network: per-crop latency at batch 1 (median over ``--repeats`` calls after warm-up) and
throughput in crops/s at batch ``--batch`` (best of ``--repeats`` calls after one warm-up call),
then the DSNet / U-Net ratios. Weights are random (speed does not depend on them); the teacher
is a random SRResNet of the preset's size, or ``--teacher FILE`` (a ``teacher.pt``).

Presets follow the shipped configs:

* ``tiny``: ``configs/seg_tiny.yaml`` widths (8-16-32-64), SR teacher of ``configs/sr_tiny.yaml``
  (16 channels, 2 blocks), teacher mode ``native`` (backbone at the crop's resolution);
* ``paper``: ``configs/seg_paper.yaml`` widths (64-128-256-512), SRResNet 64 x 16 blocks, mode
  ``upscale`` (backbone at 4x the crop: 256x256 for 64x64 crops). On a CPU use ``--batch`` well
  below 256: one 256-crop batch needs tens of GB of activations at that resolution.

Usage::

    python benchmarks/bench_inference.py                       # tiny preset, CPU, batch 1 and 256
    python benchmarks/bench_inference.py --preset paper --device cuda --batch 256
    python benchmarks/bench_inference.py --teacher-mode upscale --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from dsnet_trainer.config import load_config
from dsnet_trainer.models.dsnet import build_seg_model
from dsnet_trainer.models.srresnet import SRResNet
from dsnet_trainer.models.teacher import SRTeacher, load_teacher
from dsnet_trainer.seg_config import SegConfig
from dsnet_trainer.sr.config import SRConfig


def _teacher(preset: str, path: str | None):
    if path:
        return load_teacher(path)
    cfg = load_config(SRConfig, "sr_tiny" if preset == "tiny" else "sr_paper")
    gen = SRResNet(**cfg.generator_kwargs())
    return SRTeacher(gen, scale=cfg.data.scale, feature_channels=cfg.generator.n_channels,
                     window_level_hu=cfg.data.window_level_hu, window_width_hu=cfg.data.window_width_hu,
                     downsample=cfg.data.downsample)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(net, x, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    net(x)
    _sync(device)
    return time.perf_counter() - t0


def measure(nets: dict, *, crop_px: int, batch: int, repeats: int, device: torch.device) -> dict[str, dict]:
    """Per network: latency (ms per crop at batch 1, median) and throughput (crops/s at ``batch``,
    best call). Calls alternate between the networks so that load from other processes on a shared
    machine falls on all of them alike."""
    x1 = torch.rand(1, 1, crop_px, crop_px, device=device) * 2 - 1
    xb = torch.rand(batch, 1, crop_px, crop_px, device=device) * 2 - 1
    lat: dict[str, list[float]] = {k: [] for k in nets}
    thr: dict[str, list[float]] = {k: [] for k in nets}
    with torch.inference_mode():
        for net in nets.values():
            net.to(device).eval()
            for _ in range(3):
                net(x1)
        for _ in range(repeats):
            for k, net in nets.items():
                lat[k].append(_time_call(net, x1, device))
        for net in nets.values():
            net(xb)
        for _ in range(max(1, repeats // 5)):
            for k, net in nets.items():
                thr[k].append(_time_call(net, xb, device))
    return {k: {"latency_ms_b1": 1000 * statistics.median(lat[k]), "crops_per_s": batch / min(thr[k])}
            for k in nets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    ap.add_argument("--teacher", default=None, help="teacher.pt to use instead of a random SRResNet")
    ap.add_argument("--teacher-mode", choices=("upscale", "native"), default=None,
                    help="override the preset's teacher mode")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seg = load_config(SegConfig, "seg_tiny" if args.preset == "tiny" else "seg_paper")
    mode = args.teacher_mode or seg.model.teacher_mode
    kw = dict(widths=seg.model.widths, reduction=seg.model.cbam_reduction, spatial_kernel=seg.model.cbam_spatial_kernel)
    nets = {
        "unet": build_seg_model("unet", **kw),
        "dsnet": build_seg_model("dsnet", teacher=_teacher(args.preset, args.teacher), teacher_mode=mode, **kw),
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = measure(nets, crop_px=args.crop, batch=args.batch, repeats=args.repeats, device=device)
    for name, net in nets.items():
        results[name]["params"] = sum(p.numel() for p in net.parameters())
    print(f"load average before the run: {load:.2f} (on {os.cpu_count()} CPUs)")
    print(f"preset {args.preset}, widths {list(seg.model.widths)}, teacher mode {mode}, crop {args.crop}x{args.crop}, "
          f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"| network | parameters (incl. frozen teacher) | latency @ batch 1 (ms/crop) | throughput @ batch {args.batch} (crops/s) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['params']:,} | {r['latency_ms_b1']:.2f} | {r['crops_per_s']:.1f} |")
    u, d = results["unet"], results["dsnet"]
    print(f"DSNet / UNet: latency x{d['latency_ms_b1'] / u['latency_ms_b1']:.2f}, "
          f"throughput x{d['crops_per_s'] / u['crops_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "teacher_mode": mode, "results": results},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
