"""Segmentation training: DSNet, the U-Net baseline and every ablation, from one config.

``variant`` (a name of :data:`~dsnet_trainer.models.dsnet.VARIANTS`) picks the table row; the rest
of :class:`~dsnet_trainer.seg_config.SegConfig` sets widths, data, optimiser and loop; the networks
are built by :mod:`dsnet_trainer.models.loading`. One optimisation step (Sec. III-D):

1. forward: ``prob, soft = model(image)`` (native resolution, see :mod:`.models.dsnet`);
2. discriminator step (GAN variants only): ``L_D = 0.5 (BCE(D(x, s), 1) + BCE(D(x, soft.detach()), 0))``
   (Eq. 17), Adam on D;
3. generator step: ``L = 0.5 Dice(prob, m) + 100 L1(soft, s) + 1 BCE(D(x, soft), 1)`` (Eq. 19;
   terms absent from the variant count 0), Adam on the segmentation network (the frozen SR
   teacher excluded).

``x`` is the crop in [-1, 1], ``m`` the binary mask, ``s`` the soft target in [-1, 1]: the Soft
Mask, or (Table IV) the binary mask, Kats et al.'s label or SoftSeg's label computed from the
binary mask on the fly (:class:`SoftTargetDataset`). Both learning rates follow the poly schedule
``lr_e = lr (1 - e / epochs) ** poly_power``, stepped per epoch.

A non-finite loss stops the run with :class:`NonFiniteLossError` before anything is saved for
the current epoch, so ``last.pt`` stays the last good checkpoint.

Run folder: ``config.yaml`` (resolved), ``run_info.json``, ``metrics.jsonl``/``.csv``,
``curves.png``, ``checkpoints/{last,best}.pt``. A checkpoint is self-contained: it holds the
frozen teacher's weights and architecture, so evaluation and prediction need no teacher file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .config import to_dict
from .errors import ConfigError, TrainerError
# The config, the model building and the teacher-leak check live beside what they describe
# (seg_config, models.loading, provenance); their names stay importable from here.
from .models.loading import CHECKPOINT_KIND, build_from_config, load_seg_model
from .provenance import teacher_leak_check
from .seg_config import SegConfig, SegDataConfig, SegModelConfig, SegOptimConfig

__all__ = ["SegDataConfig", "SegModelConfig", "SegOptimConfig", "SegConfig", "NonFiniteLossError",
           "SoftTargetDataset", "soft_target", "build_from_config", "load_seg_model", "train_seg",
           "teacher_leak_check", "CHECKPOINT_KIND"]


class NonFiniteLossError(TrainerError):
    """A loss became NaN or infinite; the run stopped and ``last.pt`` is the last good checkpoint."""


# ============================================================================================
# Soft targets (Table IV)
# ============================================================================================
def soft_target(name: str, *, soft_mask: np.ndarray, binary_mask: np.ndarray, kats_ring_px: float = 2.0,
                kats_p: float = 0.5, softseg_factor: int = 4) -> np.ndarray:
    """The soft head's target in [-1, 1] (float32, (rows, cols)) for soft label ``name``.

    ``soft_mask`` is the Soft Mask already in [-1, 1]; ``binary_mask`` is {0, 1}. "binary" maps
    the mask to {-1, 1}; "kats" and "softseg" map :func:`softmask_builder.labelling.soft_labels.kats_soft_label`
    and ``softseg_soft_label`` of the binary mask from [0, 1] to [-1, 1].
    """
    if name == "soft_mask":
        return np.asarray(soft_mask, dtype=np.float32)
    from softmask_builder.labelling.soft_labels import kats_soft_label, softseg_soft_label

    m = np.asarray(binary_mask) != 0
    if name == "binary":
        label = m.astype(np.float32)
    elif name == "kats":
        label = kats_soft_label(m, ring_px=kats_ring_px, p=kats_p)
    elif name == "softseg":
        label = softseg_soft_label(m, factor=int(softseg_factor))
    else:
        raise ConfigError(f"unknown soft label {name!r} (soft_mask, binary, kats, softseg)")
    return (2.0 * label - 1.0).astype(np.float32)


class SoftTargetDataset:
    """Record-level wrapper: adds ``soft_target`` (1, H, W) in [-1, 1] to each item of a
    :class:`~dsnet_trainer.data.SampleShardDataset`, computed from the (augmented) item, so
    the Kats / SoftSeg labels follow the same symmetry as the image. ``train_target``
    (``data.train_target``): "binary" makes the target the item's binary label mapped to {-1, 1}
    (arm A2, whatever ``soft_label``); "true_fraction" makes the target the item's true fraction mapped to
    [-1, 1]; "true_mask" replaces ``binary_mask`` with ``true_fraction >= 0.5`` first (these two need
    the base dataset's ``has_truth``, else :class:`ConfigError`)."""

    def __init__(self, base, *, soft_label: str, kats_ring_px: float = 2.0, kats_p: float = 0.5,
                 softseg_factor: int = 4, train_target: str = "label"):
        from .seg_config import TRAIN_TARGETS

        if train_target not in TRAIN_TARGETS:
            raise ConfigError(f"data.train_target must be one of {', '.join(TRAIN_TARGETS)}, got {train_target!r}")
        if train_target in ("true_fraction", "true_mask") and not getattr(base, "has_truth", False):
            raise ConfigError(f"data.train_target={train_target} needs a build that carries the phantom's truth "
                              "(shard schema 3 true_fraction: build a `softmask phantom` source)")
        self.base = base
        self.train_target = train_target
        self.soft_label = soft_label
        self.kw = dict(kats_ring_px=kats_ring_px, kats_p=kats_p, softseg_factor=softseg_factor)
        soft_target(soft_label, soft_mask=np.zeros((4, 4), np.float32), binary_mask=np.zeros((4, 4)), **self.kw)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        import torch

        item = self.base[key]
        if self.train_target == "true_mask":  # arm A4: Dice (and any derived soft label) on the true mask
            item["binary_mask"] = (item["true_fraction"] >= 0.5).to(item["binary_mask"].dtype)
        if self.train_target == "true_fraction":  # arm A3: the oracle soft label, mapped to [-1, 1]
            item["soft_target"] = 2.0 * item["true_fraction"] - 1.0
        elif self.train_target == "binary":  # arm A2: the label's binary mask through the soft head, {-1, 1}
            item["soft_target"] = 2.0 * (item["binary_mask"] != 0).to(item["soft_mask"].dtype) - 1.0
        elif self.soft_label == "soft_mask":
            item["soft_target"] = item["soft_mask"]
        else:
            t = soft_target(self.soft_label, soft_mask=item["soft_mask"][0].numpy(),
                            binary_mask=item["binary_mask"][0].numpy(), **self.kw)
            item["soft_target"] = torch.from_numpy(t)[None]
        return item


# ============================================================================================
# Training
# ============================================================================================
def _compat(cfg: SegConfig, net) -> dict[str, Any]:
    skip = ("teacher", "allow_teacher_overlap")  # may change on resume
    out = {"model": {k: v for k, v in to_dict(cfg.model).items() if k not in skip},
           "crop_px": cfg.data.crop_px, "window_hu": [cfg.data.level_hu, cfg.data.width_hu],
           "scale": net.scale}
    if cfg.data.input_shrink != 1:  # only when set: checkpoints of earlier versions still resume
        out["input_shrink"] = cfg.data.input_shrink
    return out


def _poly(epochs: int, power: float):
    return lambda e: max(0.0, 1.0 - e / epochs) ** power


def _finite_or_raise(values: Mapping[str, float], *, epoch: int, step: int, last_good: Path) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        where = f"{last_good}" if last_good.is_file() else "none yet (the first epoch did not finish)"
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {step + 1}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
            + f"; training stopped, last good checkpoint: {where}. Lower optim.lr, check the data "
              "(NaN in a shard?) or try loop.amp=off.")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_epoch_line(r) -> str:
    """One progress line per epoch (an :class:`~dsnet_trainer.engine.EpochReport`)."""
    parts = [f"epoch {r.epoch}/{r.epochs}", f"loss {r.train.get('loss', float('nan')):.4f}"]
    if "dice" in r.val:
        parts.append(f"val Dice {100 * r.val['dice']:.2f}")
    if r.selected_epoch is not None:
        parts.append(f"selected epoch {r.selected_epoch} (window mean {100 * r.selected_score:.2f})")
    parts.append(f"elapsed {_duration(r.elapsed_s)}, ~{_duration(r.remaining_s)} left")
    return " | ".join(parts)


def train_seg(cfg: SegConfig, *, teacher=None, teacher_arch: Mapping[str, Any] | None = None,
              command: str = "", log: Callable[[str], None] | None = None) -> Path:
    """Train ``cfg.model.variant`` on ``cfg.data``; return the run folder.

    ``teacher``/``teacher_arch``: see :func:`build_from_config` (tests pass a module; the CLI
    passes nothing and ``model.teacher`` names the SR checkpoint). ``log``: receives human
    progress lines (resume notice, one line per epoch: validation Dice, the selected epoch so
    far, elapsed and remaining time); the CLI prints them on stderr. Rank 0 only.

    Raises
    ------
    ConfigError, ShardError, CheckpointError, DeviceError : bad config, data, teacher or device.
    NonFiniteLossError : a loss became NaN/inf (``last.pt`` is the last good checkpoint).
    """
    import torch

    from . import engine, runtime, sampling
    from .checkpoint import load_checkpoint
    from .data import SampleShardDataset
    from .losses import dice_loss, gan_discriminator_loss, gan_generator_loss, soft_l1_loss, total_loss
    from .metrics import dice_sen_ppv
    from .models.dsnet import get_variant

    variant = get_variant(cfg.model.variant)
    loop = cfg.loop
    ctx = runtime.init_distributed(loop.device)
    try:
        if loop.num_threads:
            torch.set_num_threads(loop.num_threads)
        runtime.seed_everything(loop.seed)
        data_kw = dict(level_hu=cfg.data.level_hu, width_hu=cfg.data.width_hu, image_size_px=cfg.data.crop_px,
                       option="data.root")
        train_ds = SoftTargetDataset(
            SampleShardDataset(cfg.data.root, split=cfg.data.train_split, augment=cfg.data.augment, **data_kw),
            soft_label=variant.soft_label, kats_ring_px=cfg.data.kats_ring_px, kats_p=cfg.data.kats_p,
            softseg_factor=cfg.data.softseg_factor, train_target=cfg.data.train_target)
        val_ds = None
        if cfg.data.val_split:
            val_ds = SoftTargetDataset(SampleShardDataset(cfg.data.root, split=cfg.data.val_split, **data_kw),
                                       soft_label=variant.soft_label, kats_ring_px=cfg.data.kats_ring_px,
                                       kats_p=cfg.data.kats_p, softseg_factor=cfg.data.softseg_factor)

        net, disc, arch = build_from_config(cfg.model, data_cfg=cfg.data, teacher=teacher, teacher_arch=teacher_arch)
        teacher_check = teacher_leak_check(cfg, arch)
        out = engine.prepare_run_dir(cfg.out, cfg, ctx=ctx, seed=loop.seed, command=command,
                                     extra={"variant": variant.to_dict(), "teacher_check": teacher_check})
        net.to(ctx.device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas)
        optimizers = {"model": opt}
        schedulers = {"model": torch.optim.lr_scheduler.LambdaLR(opt, _poly(cfg.optim.epochs, cfg.optim.poly_power))}
        modules = {"model": net}
        if disc is not None:
            disc.to(ctx.device)
            opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.disc_lr, betas=cfg.optim.betas)
            optimizers["disc"] = opt_d
            schedulers["disc"] = torch.optim.lr_scheduler.LambdaLR(opt_d, _poly(cfg.optim.epochs, cfg.optim.poly_power))
            modules["disc"] = disc
        prec = runtime.Precision(loop.amp, ctx.device)
        state = engine.TrainState(CHECKPOINT_KIND, modules=modules, optimizers=optimizers, schedulers=schedulers,
                                  precision=prec, compat=_compat(cfg, net),
                                  extra={"config": to_dict(cfg), "teacher_arch": arch or {},
                                         "teacher_check": teacher_check,
                                         "variant": variant.to_dict()})
        checkpoints = engine.CheckpointManager(Path(out) / "checkpoints", every_n_epochs=loop.checkpoint_every_epochs,
                                               enabled=ctx.is_main)
        resume = checkpoints.resolve_resume(cfg.resume, option="resume")
        if resume is not None:
            state.load_state_dict(load_checkpoint(resume, expect_kind=CHECKPOINT_KIND), source=resume)
            if log is not None and ctx.is_main:
                log(f"resuming from epoch {state.epoch} of {cfg.optim.epochs} (checkpoint {resume})")
            # The schedule follows the *current* optim.epochs / lr (a resumed run may extend it):
            # the optimisers' saved learning rates come from the old schedule.
            poly = _poly(cfg.optim.epochs, cfg.optim.poly_power)
            for name, base in (("model", cfg.optim.lr), ("disc", cfg.optim.disc_lr)):
                if name in optimizers:
                    schedulers[name].base_lrs = [base] * len(optimizers[name].param_groups)
                    for group in optimizers[name].param_groups:
                        group["initial_lr"] = base
                        group["lr"] = base * poly(state.epoch)
        ddp_net = runtime.wrap_ddp(net, ctx)
        ddp_disc = runtime.wrap_ddp(disc, ctx) if disc is not None else None

        sampler = sampling.SeededSampler(len(train_ds), seed=loop.seed, ctx=ctx)
        loader = sampling.make_loader(train_ds, sampler, batch_size=loop.batch_size, num_workers=loop.num_workers,
                                    mp_context=loop.mp_context, timeout_s=loop.loader_timeout_s, seed=loop.seed,
                                    pin_memory=ctx.device.type == "cuda")
        logger = engine.MetricLogger(out, enabled=ctx.is_main, tensorboard=loop.tensorboard,
                                     resume_step=state.step if resume is not None else None)
        w = cfg.optim

        def train_epoch(epoch: int) -> dict[str, float]:
            net.train()
            if disc is not None:
                disc.train()
            sampler.set_epoch(epoch)
            sums: dict[str, float] = {}
            n_steps = 0
            for i, batch in enumerate(engine.progress(loader, enabled=ctx.is_main and loop.progress,
                                                      desc=f"epoch {epoch + 1}/{w.epochs}")):
                if loop.max_steps_per_epoch and i >= loop.max_steps_per_epoch:
                    break
                image = batch["image"].to(ctx.device, non_blocking=True)
                mask = batch["binary_mask"].to(ctx.device, non_blocking=True)
                target = batch["soft_target"].to(ctx.device, non_blocking=True)
                with prec.autocast():
                    prob, soft = ddp_net(image)
                terms: dict[str, Any] = {}
                if ddp_disc is not None:
                    # D's gradients from the previous generator step are discarded here.
                    with prec.autocast():
                        loss_d = gan_discriminator_loss(ddp_disc(image, target), ddp_disc(image, soft.detach()))
                    _finite_or_raise({"loss_disc": float(loss_d.detach())}, epoch=epoch, step=state.step,
                                     last_good=checkpoints.last_path)
                    opt_d.zero_grad(set_to_none=True)
                    prec.backward_step(loss_d, opt_d, clip_norm=loop.grad_clip_norm)
                    terms["loss_disc"] = loss_d.detach()
                dice = dice_loss(prob, mask, smooth=w.dice_smooth)
                l1 = None
                if variant.soft_head:
                    region = batch["trimap"].to(ctx.device) if w.l1_reduction == "crop_band" else None
                    l1 = soft_l1_loss(soft, target, reduction=w.l1_reduction, region=region)
                gan = None
                if ddp_disc is not None:
                    with prec.autocast():
                        gan = gan_generator_loss(ddp_disc(image, soft))
                loss = total_loss(dice=dice, l1=l1, gan=gan, dice_weight=w.dice_weight, l1_weight=w.l1_weight,
                                  gan_weight=w.gan_weight)
                terms.update(loss=loss.detach(), dice_loss=dice.detach())
                if l1 is not None:
                    terms["l1"] = l1.detach()
                if gan is not None:
                    terms["gan"] = gan.detach()
                values = {k: float(v) for k, v in terms.items()}
                _finite_or_raise(values, epoch=epoch, step=state.step, last_good=checkpoints.last_path)
                opt.zero_grad(set_to_none=True)
                prec.backward_step(loss, opt, clip_norm=loop.grad_clip_norm)
                prec.update()
                state.step += 1
                n_steps += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if loop.log_every_steps and state.step % loop.log_every_steps == 0:
                    logger.log({"phase": "train", "epoch": epoch + 1, "step": state.step, **values,
                                "lr": opt.param_groups[0]["lr"]})
            totals = runtime.all_reduce_sums({**sums, "_n": float(n_steps)}, ctx)
            n = max(totals.pop("_n"), 1.0)
            return {k: v / n for k, v in totals.items()}

        def evaluate(epoch: int) -> dict[str, float]:
            net.eval()
            idx_sampler = sampling.EvalShardSampler(len(val_ds), ctx=ctx)
            vloader = sampling.make_loader(val_ds, idx_sampler, batch_size=loop.batch_size, num_workers=0)
            sums = {"dice": 0.0, "l1": 0.0, "n": 0.0}
            with torch.no_grad():
                for batch in vloader:
                    image = batch["image"].to(ctx.device)
                    with prec.autocast():
                        prob, soft = net(image)
                    m = batch["binary_mask"][:, 0].numpy() != 0
                    p = prob.float().cpu()[:, 0].numpy() >= 0.5
                    sums["dice"] += float(dice_sen_ppv(p, m)["dice"].sum())
                    sums["l1"] += float((soft.float().cpu() - batch["soft_target"]).abs().mean(dim=(1, 2, 3)).sum())
                    sums["n"] += image.shape[0]
            totals = runtime.all_reduce_sums(sums, ctx)
            n = max(totals["n"], 1.0)
            return {"dice": totals["dice"] / n, "l1": totals["l1"] / n}

        try:
            engine.fit(state, epochs=w.epochs, train_epoch=train_epoch,
                       evaluate=evaluate if val_ds is not None else None, checkpoints=checkpoints, logger=logger,
                       ctx=ctx, monitor="dice" if val_ds is not None else None, mode="max",
                       val_every_epochs=loop.val_every_epochs, select_k=loop.select_k,
                       on_epoch=(lambda r: log(format_epoch_line(r))) if log is not None else None)
        finally:
            logger.close()
        if ctx.is_main:
            engine.plot_curves(logger.jsonl_path, Path(out) / "curves.png", title=f"{variant.name}: {variant.row}",
                               selected_epoch=state.extra.get("selected_epoch"),
                               selection_rule=f"mean val Dice of the last {loop.select_k} validations")
        return Path(out)
    finally:
        runtime.shutdown_distributed(ctx)
