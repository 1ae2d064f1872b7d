"""How good the SR teacher is: PSNR/SSIM of its output and of bicubic up-sampling against the HR
slice (over ranks), a preview figure, and the markdown table of ``report.md``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import SliceShardDataset
from ..figures import save_figure
from ..runtime import DistContext, Precision, all_reduce_sums, unwrap
from ..sr_metrics import psnr, shave, ssim

__all__ = ["DATA_RANGE", "bicubic_upsample", "evaluate_sr", "save_sr_samples", "format_report"]

DATA_RANGE = 2.0  # images live in [-1, 1]


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline: bicubic up-sampling (align_corners=False), clamped to [-1, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


@torch.no_grad()
def evaluate_sr(generator: nn.Module | None, loader: torch.utils.data.DataLoader, *, ctx: DistContext,
                precision: Precision | None = None, scale: int, shave_px: int) -> dict[str, float]:
    """Mean PSNR/SSIM over the loader's slices of the generator (``psnr``, ``ssim``; clamped to
    [-1, 1]) and of bicubic up-sampling (``psnr_bicubic``, ``ssim_bicubic``), plus ``n``.

    Each rank evaluates its :class:`~dsnet_trainer.sampling.EvalShardSampler` share; sums and
    counts are reduced over ranks, so every slice counts exactly once. ``generator=None``
    reports bicubic only.
    """
    sums = {"psnr": 0.0, "ssim": 0.0, "psnr_bicubic": 0.0, "ssim_bicubic": 0.0, "n": 0.0}
    model = unwrap(generator) if generator is not None else None
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        for batch in loader:
            lr = batch["lr"].to(ctx.device)
            hr = shave(batch["hr"].to(ctx.device).float(), shave_px)
            bic = shave(bicubic_upsample(lr, scale), shave_px)
            sums["psnr_bicubic"] += float(psnr(bic, hr, data_range=DATA_RANGE).sum())
            sums["ssim_bicubic"] += float(ssim(bic, hr, data_range=DATA_RANGE).sum())
            if model is not None:
                with precision.autocast() if precision is not None else contextlib.nullcontext():
                    sr = model(lr)
                sr = shave(sr.float().clamp(-1.0, 1.0), shave_px)
                sums["psnr"] += float(psnr(sr, hr, data_range=DATA_RANGE).sum())
                sums["ssim"] += float(ssim(sr, hr, data_range=DATA_RANGE).sum())
            sums["n"] += lr.shape[0]
    finally:
        if model is not None:
            model.train(was_training)
    total = all_reduce_sums(sums, ctx)
    n = max(total["n"], 1.0)
    out = {k: total[k] / n for k in ("psnr_bicubic", "ssim_bicubic")}
    if model is not None:
        out.update({"psnr": total["psnr"] / n, "ssim": total["ssim"] / n})
        out["psnr_gain"] = out["psnr"] - out["psnr_bicubic"]
    out["n"] = total["n"]
    return out


@torch.no_grad()
def save_sr_samples(generator: nn.Module, dataset: SliceShardDataset, path: str | Path, *, scale: int,
                    n: int, device: torch.device, title: str = "") -> Path | None:
    """PNG grid: one row per validation slice, columns LR (nearest), bicubic, SR, HR, with PSNR."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = min(n, len(dataset))
    if n <= 0:
        return None
    model = unwrap(generator)
    was_training = model.training
    model.eval()
    fig, axes = plt.subplots(n, 4, figsize=(12, 3.1 * n), squeeze=False)
    try:
        for r in range(n):
            item = dataset[r]
            lr = item["lr"][None].to(device)
            hr = item["hr"][None].to(device)
            bic = bicubic_upsample(lr, scale)
            sr = model(lr).float().clamp(-1, 1)
            near = F.interpolate(lr, scale_factor=scale, mode="nearest")
            panels = [("LR (nearest)", near, None), ("bicubic", bic, psnr(bic, hr, data_range=DATA_RANGE)),
                      ("SR", sr, psnr(sr, hr, data_range=DATA_RANGE)), ("HR", hr, None)]
            for c, (name, img, p) in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(img[0, 0].cpu().numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                ax.set_title(name + (f"  {float(p[0]):.2f} dB" if p is not None else ""), fontsize=9)
                ax.axis("off")
    finally:
        model.train(was_training)
    return save_figure(fig, path, title=title, dpi=80)


def format_report(report: dict[str, Any]) -> str:
    """Markdown table of the report (PSNR in dB, SSIM), rows bicubic / SRResNet / SRGAN."""
    lines = [f"# SR teacher x{report['scale']}: validation on {report['val_source']}", "",
             f"Border ignored: {report['shave_px']} px. LR made by {report['downsample']} down-sampling. "
             f"Teacher exported from: {report.get('teacher', '?')}.", "",
             "| method | PSNR (dB) | SSIM | PSNR gain vs bicubic (dB) |", "|---|---|---|---|"]
    base = report["bicubic"]["psnr"]
    stage1 = "SRResNet, untrained (seeded init)" if report.get("teacher") == "untrained" else "SRResNet (stage 1)"
    for name, label in (("bicubic", "bicubic"), ("srresnet", stage1), ("srgan", "+ adversarial fine-tuning (stage 2)")):
        if name in report:
            m = report[name]
            lines.append(f"| {label} | {m['psnr']:.3f} | {m['ssim']:.4f} | {m['psnr'] - base:+.3f} |")
    return "\n".join(lines) + "\n"
