"""The two training stages of the SR teacher (SRGAN training must run both, Ledig et al. 2017):

1. :func:`run_stage1` -- **SRResNet**: the generator alone with a pixel loss (L1 or MSE);
2. :func:`run_stage2` -- **adversarial fine-tuning** (stage "srgan"), *starting from stage 1's
   generator*, with a VGG-style discriminator: pixel loss + ``adv_weight`` x BCE adversarial loss
   + optional ``feature_weight`` x discriminator feature matching (no VGG content loss).

Each stage writes ``<out>/<stage>/``: ``checkpoints/{last,best,epoch_XXXX}.pt`` (best by
validation PSNR), ``metrics.jsonl``/``.csv``, ``curves.png``, ``samples.png``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_checkpoint
from ..engine import CheckpointManager, MetricLogger, TrainState, fit, plot_curves, progress
from ..errors import ConfigError
from ..models import build_model
from ..runtime import DistContext, Precision, all_reduce_sums, barrier, sync_buffers, wrap_ddp
from ..sampling import EvalShardSampler, SeededSampler, make_loader
from .config import SRConfig
from .data import SRData
from .evaluation import evaluate_sr, save_sr_samples

__all__ = ["SRHooks", "build_generator", "run_stage1", "run_stage2"]


@dataclass
class SRHooks:
    """Callbacks for tests and tools: ``on_step_end(stage, step)`` after every optimiser step
    (``stage`` is ``"srresnet"`` or ``"srgan"``); raising in it aborts the run like a kill."""

    on_step_end: Callable[[str, int], None] | None = None


def _pixel_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.l1_loss if kind == "l1" else F.mse_loss


def _compat(cfg: SRConfig, stage: str) -> dict[str, Any]:
    out = {"generator": cfg.generator_kwargs(),
           "data": {"scale": cfg.data.scale, "window_level_hu": cfg.data.window_level_hu,
                    "window_width_hu": cfg.data.window_width_hu, "downsample": cfg.data.downsample}}
    if stage == "srgan":
        out["discriminator"] = cfg.discriminator_kwargs()
    return out


def _mean_over_ranks(total: float, count: float, ctx: DistContext) -> float:
    r = all_reduce_sums({"t": total, "c": count}, ctx)
    return r["t"] / r["c"] if r["c"] else float("nan")


class _Stage:
    """Shared plumbing of one stage: loaders, logger, checkpoints, step loop bookkeeping."""

    def __init__(self, name: str, cfg: SRConfig, data: SRData, out: Path, ctx: DistContext, prec: Precision,
                 hooks: SRHooks, seed_offset: int):
        self.name = name
        self.cfg = cfg
        self.ctx = ctx
        self.prec = prec
        self.hooks = hooks
        self.dir = out / name
        loop = cfg.loop
        self.seed = loop.seed + seed_offset
        self.sampler = SeededSampler(len(data.train), seed=self.seed, shuffle=True, drop_last=False, ctx=ctx)
        self.loader = make_loader(data.train, self.sampler, batch_size=loop.batch_size,
                                         num_workers=loop.num_workers, mp_context=loop.mp_context,
                                         timeout_s=loop.loader_timeout_s, drop_last=True,
                                         pin_memory=ctx.device.type == "cuda", seed=self.seed)
        if len(self.loader) == 0:
            raise ConfigError(f"loop.batch_size={loop.batch_size} exceeds the {len(self.sampler)} training patches "
                              f"per rank; lower it or raise data.patches_per_slice")
        self.val_loader = make_loader(data.val, EvalShardSampler(len(data.val), ctx=ctx),
                                             batch_size=cfg.eval.val_batch_size, num_workers=0, seed=self.seed)
        self.val_ds = data.val
        self.checkpoints = CheckpointManager(self.dir / "checkpoints", every_n_epochs=loop.checkpoint_every_epochs,
                                             enabled=ctx.is_main)
        self.logger: MetricLogger | None = None

    def open_logger(self, resume_step: int | None) -> MetricLogger:
        self.logger = MetricLogger(self.dir, enabled=self.ctx.is_main, tensorboard=self.cfg.loop.tensorboard,
                                   resume_step=resume_step)
        return self.logger

    def batches(self, epoch: int, desc: str):
        self.sampler.set_epoch(epoch)
        limit = self.cfg.loop.max_steps_per_epoch or len(self.loader)
        total = min(limit, len(self.loader))
        it = progress(self.loader, enabled=self.ctx.is_main and self.cfg.loop.progress,
                             desc=f"{self.name} {desc}", total=total)
        for b, batch in enumerate(it):
            if b >= total:
                break
            yield batch["lr"].to(self.ctx.device, non_blocking=True), batch["hr"].to(self.ctx.device, non_blocking=True)

    def after_step(self, state: TrainState, epoch: int, row: dict[str, float]) -> None:
        state.step += 1
        every = self.cfg.loop.log_every_steps
        if every and state.step % every == 0 and self.logger is not None:
            self.logger.log({"phase": "train", "epoch": epoch + 1, "step": state.step, **row})
        if self.hooks.on_step_end is not None:
            self.hooks.on_step_end(self.name, state.step)

    def evaluate(self, generator: nn.Module) -> dict[str, float]:
        return evaluate_sr(generator, self.val_loader, ctx=self.ctx, precision=self.prec, scale=self.cfg.data.scale,
                           shave_px=self.cfg.shave_px)

    def run(self, state, *, epochs: int, train_epoch, generator: nn.Module, title: str) -> None:
        """The stage's epoch loop (validation PSNR monitored for ``best``), then :meth:`finish`."""
        try:
            fit(state, epochs=epochs, train_epoch=train_epoch, evaluate=lambda e: self.evaluate(generator),
                       checkpoints=self.checkpoints, logger=self.logger, ctx=self.ctx, monitor="psnr", mode="max",
                       val_every_epochs=self.cfg.loop.val_every_epochs, select_k=self.cfg.loop.select_k)
        except BaseException:
            self.logger.close()  # keep what was logged; the resume drops rows after its checkpoint
            raise
        self.finish(generator, title)

    def finish(self, generator: nn.Module, title: str) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.ctx.is_main:
            if self.logger is not None and self.logger.jsonl_path.exists():
                plot_curves(self.logger.jsonl_path, self.dir / "curves.png", title=title)
            save_sr_samples(generator, self.val_ds, self.dir / "samples.png", scale=self.cfg.data.scale,
                            n=self.cfg.eval.n_preview, device=self.ctx.device, title=title)
        barrier(self.ctx)


def build_generator(cfg: SRConfig, device: torch.device) -> nn.Module:
    """A fresh generator of ``cfg`` (registry name + kwargs) on ``device``."""
    return build_model(cfg.generator.name, **cfg.generator_kwargs()).to(device)


def run_stage1(cfg: SRConfig, data: SRData, out: Path, ctx: DistContext, prec: Precision, hooks: SRHooks,
               resume_path: Path | None) -> nn.Module:
    """Stage 1 (SRResNet, pixel loss) into ``out/srresnet``, from scratch or ``resume_path``;
    returns the trained generator."""
    st = _Stage("srresnet", cfg, data, out, ctx, prec, hooks, seed_offset=0)
    s1 = cfg.stage1
    gen = build_generator(cfg, ctx.device)
    model = wrap_ddp(gen, ctx)
    opt = torch.optim.Adam(gen.parameters(), lr=s1.lr, betas=s1.betas)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s1.milestones), gamma=s1.gamma)
    state = TrainState("sr-srresnet", modules={"generator": gen}, optimizers={"generator": opt},
                       schedulers={"generator": sched}, precision=prec, compat=_compat(cfg, "srresnet"))
    if resume_path is not None:
        state.load_state_dict(load_checkpoint(resume_path, map_location=ctx.device, expect_kind="sr-srresnet"),
                              source=resume_path)
    st.open_logger(state.step if resume_path is not None else None)
    pixel = _pixel_loss(s1.pixel_loss)

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        total, count = 0.0, 0
        for lr, hr in st.batches(epoch, f"epoch {epoch + 1}/{s1.epochs}"):
            with prec.autocast():
                sr = model(lr)
            loss = pixel(sr.float(), hr)
            opt.zero_grad(set_to_none=True)
            prec.backward_step(loss, opt, clip_norm=cfg.loop.grad_clip_norm)
            prec.update()
            total += float(loss.detach())
            count += 1
            st.after_step(state, epoch, {"loss": float(loss.detach())})
        sync_buffers(gen, ctx)
        return {"loss": _mean_over_ranks(total, count, ctx)}

    st.run(state, epochs=s1.epochs, train_epoch=train_epoch, generator=gen, title="stage 1: SRResNet (pixel loss)")
    return gen


def run_stage2(cfg: SRConfig, data: SRData, out: Path, ctx: DistContext, prec: Precision, hooks: SRHooks,
               resume_path: Path | None) -> tuple[nn.Module, nn.Module]:
    """Stage 2 (adversarial fine-tuning) into ``out/srgan``, from stage 1's ``init_from``
    generator or ``resume_path``; returns ``(generator, discriminator)``."""
    st = _Stage("srgan", cfg, data, out, ctx, prec, hooks, seed_offset=1_000_003)
    s2 = cfg.stage2
    gen = build_generator(cfg, ctx.device)
    disc = build_model(cfg.discriminator.name, **cfg.discriminator_kwargs()).to(ctx.device)
    if resume_path is None:
        # SRGAN starts from the trained SRResNet (stage 1), never from scratch.
        src = out / "srresnet" / "checkpoints" / ("best.pt" if s2.init_from == "best" else "last.pt")
        if not src.is_file():
            src = out / "srresnet" / "checkpoints" / "last.pt"
        if not src.is_file():
            raise ConfigError(f"stage 2 (SRGAN) starts from stage 1's generator but {src} is missing; "
                              "train stage 1 first (stage1.epochs > 0)")
        ck = load_checkpoint(src, map_location=ctx.device, expect_kind="sr-srresnet")
        TrainState("sr-srresnet", modules={"generator": gen}, compat=_compat(cfg, "srresnet")).load_state_dict(
            {**ck, "optimizers": {}, "schedulers": {}}, source=src, restore_rng=False)
    g_model = wrap_ddp(gen, ctx)
    d_model = wrap_ddp(disc, ctx)
    opt_g = torch.optim.Adam(gen.parameters(), lr=s2.lr_g, betas=s2.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=s2.lr_d, betas=s2.betas)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, milestones=list(s2.milestones), gamma=s2.gamma)
    sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, milestones=list(s2.milestones), gamma=s2.gamma)
    state = TrainState("sr-srgan", modules={"generator": gen, "discriminator": disc},
                       optimizers={"generator": opt_g, "discriminator": opt_d},
                       schedulers={"generator": sched_g, "discriminator": sched_d}, precision=prec,
                       compat=_compat(cfg, "srgan"))
    if resume_path is not None:
        state.load_state_dict(load_checkpoint(resume_path, map_location=ctx.device, expect_kind="sr-srgan"),
                              source=resume_path)
    st.open_logger(state.step if resume_path is not None else None)
    pixel = _pixel_loss(s2.pixel_loss)
    bce = F.binary_cross_entropy_with_logits

    def train_epoch(epoch: int) -> dict[str, float]:
        g_model.train()
        d_model.train()
        sums = {"loss_g": 0.0, "loss_d": 0.0, "loss_pixel": 0.0, "loss_adv": 0.0}
        count = 0
        for lr, hr in st.batches(epoch, f"epoch {epoch + 1}/{s2.epochs}"):
            n = lr.shape[0]
            with prec.autocast():
                sr = g_model(lr)
            # Discriminator step: real and fake in one forward (one DDP reduction per backward).
            with prec.autocast():
                logits, feats = d_model(torch.cat([hr, sr.detach()]), return_features=True)
            logits = logits.float()
            loss_d = bce(logits[:n], torch.ones_like(logits[:n])) + bce(logits[n:], torch.zeros_like(logits[n:]))
            opt_d.zero_grad(set_to_none=True)
            prec.backward_step(loss_d, opt_d, clip_norm=cfg.loop.grad_clip_norm)
            real_feats = [f[:n].detach().float() for f in feats]
            # Generator step: D frozen and called unwrapped, so no DDP reduction is armed for it.
            for p in disc.parameters():
                p.requires_grad_(False)
            try:
                with prec.autocast():
                    fake_logits, fake_feats = disc(sr, return_features=True)
                loss_pix = pixel(sr.float(), hr)
                loss_adv = bce(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))
                loss_g = s2.pixel_weight * loss_pix + s2.adv_weight * loss_adv
                if s2.feature_weight > 0:
                    fm = sum(F.l1_loss(f.float(), r) for f, r in zip(fake_feats, real_feats)) / len(real_feats)
                    loss_g = loss_g + s2.feature_weight * fm
                opt_g.zero_grad(set_to_none=True)
                prec.backward_step(loss_g, opt_g, clip_norm=cfg.loop.grad_clip_norm)
            finally:
                for p in disc.parameters():
                    p.requires_grad_(True)
            prec.update()
            row = {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()),
                   "loss_pixel": float(loss_pix.detach()), "loss_adv": float(loss_adv.detach())}
            for k, v in row.items():
                sums[k] += v
            count += 1
            st.after_step(state, epoch, row)
        sync_buffers(gen, ctx)
        sync_buffers(disc, ctx)
        return {k: _mean_over_ranks(v, count, ctx) for k, v in sums.items()}

    st.run(state, epochs=s2.epochs, train_epoch=train_epoch, generator=gen, title="stage 2: SRGAN (pixel + adversarial)")
    return gen, disc
