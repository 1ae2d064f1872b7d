"""Segmentation training: DSNet, the U-Net baseline and every ablation, from one config.

``variant`` (a name of :data:`~dsnet_trainer.models.dsnet.VARIANTS`) picks the table row; the rest
of :class:`SegConfig` sets widths, data, optimiser and loop. One optimisation step (Sec. III-D):

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np

from .config import LoopConfig, _check, to_dict
from .errors import CheckpointError, ConfigError, TrainerError

__all__ = ["SegDataConfig", "SegModelConfig", "SegOptimConfig", "SegConfig", "NonFiniteLossError",
           "SoftTargetDataset", "soft_target", "build_from_config", "load_seg_model", "train_seg",
           "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "seg"


class NonFiniteLossError(TrainerError):
    """A loss became NaN or infinite; the run stopped and ``last.pt`` is the last good checkpoint."""


# ============================================================================================
# Config
# ============================================================================================
@dataclass(frozen=True)
class SegDataConfig:
    """Where the crops come from and how they are turned into tensors.

    root : folder (or shard file) of sample shards (``make lnsm`` writes ``build/lnsm``).
    train_split, val_split : split names inside the shards; ``val_split`` may be "" (no validation).
    crop_px : crop side the model is built for; shards of another size are refused.
    level_hu, width_hu : HU window mapped to [-1, 1] (the teacher must have been trained with it).
    augment : random symmetries of the square on the training split.
    kats_ring_px, kats_p : Kats et al. label (Table IV): ring radius in pixels and its value.
    softseg_factor : SoftSeg label (Table IV): down/up-sampling factor.
    """

    root: str = "build/lnsm"
    train_split: str = "train"
    val_split: str = "val"
    crop_px: int = 64
    level_hu: float = -600.0
    width_hu: float = 1500.0
    augment: bool = True
    kats_ring_px: float = 2.0
    kats_p: float = 0.5
    softseg_factor: int = 4

    def __post_init__(self) -> None:
        _check(self.crop_px >= 4, "data.crop_px", self.crop_px, ">= 4")
        _check(self.width_hu > 0, "data.width_hu", self.width_hu, "> 0")
        _check(self.kats_ring_px >= 0, "data.kats_ring_px", self.kats_ring_px, ">= 0")
        _check(0 <= self.kats_p <= 1, "data.kats_p", self.kats_p, "in [0, 1]")
        _check(self.softseg_factor >= 1, "data.softseg_factor", self.softseg_factor, ">= 1")


@dataclass(frozen=True)
class SegModelConfig:
    """Network choice and sizes.

    variant : a name of ``VARIANTS`` (``dsnet``, ``unet``, ``backbone``, ``sr_input``, ``drtm``,
        ``drtm_soft``, ``dsnet_no_detail``, ``dsnet_no_fusion``, ``dsnet_binary``, ``dsnet_kats``,
        ``dsnet_softseg``).
    widths : backbone widths per level, top to bottom (paper-scale: 64, 128, 256, 512).
    cbam_reduction, cbam_spatial_kernel : CBAM settings (CBAM's defaults 16 and 7).
    disc_ndf : first width of the pixel discriminator (pix2pix's 64).
    teacher : SR teacher file (``teacher.pt`` of ``dsnet pretrain-sr``); required by variants
        that read the SR image or DRTM features, ignored by the others.
    teacher_mode : "upscale" (the paper: the crop is the teacher's LR input, the backbone and
        head run x``scale``, their maps are area-pooled back to the crop) or "native" (the crop
        is shrunk x``scale`` first, so the teacher's outputs lie on the crop's own grid: 16x
        cheaper, not the paper's setting).
    drtm_fc : DRTM's Eq. 12 FC: "sk" (Linear(2C->C) + ReLU, then Linear(C->C) heads for v_c and
        v_d: the paper) or "joint" (one Linear(2C->2C), the earlier form, for an ablation).
    allow_teacher_overlap : accept a teacher whose training patients include patients of the
        validation/test splits (or which has no patient list), as the paper does (its SR
        teacher saw all of DeepLesion). Off by default; recorded in ``run_info.json``.
    """

    variant: str = "dsnet"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    cbam_reduction: int = 16
    cbam_spatial_kernel: int = 7
    disc_ndf: int = 64
    teacher: str = ""
    teacher_mode: Literal["upscale", "native"] = "upscale"
    drtm_fc: Literal["sk", "joint"] = "sk"
    allow_teacher_overlap: bool = False

    def __post_init__(self) -> None:
        from .models.dsnet import VARIANTS

        _check(self.variant in VARIANTS, "model.variant", self.variant, f"one of {', '.join(VARIANTS)}")
        _check(len(self.widths) >= 2 and all(w >= 1 for w in self.widths), "model.widths", self.widths,
               ">= 2 positive integers")
        _check(self.cbam_reduction >= 1, "model.cbam_reduction", self.cbam_reduction, ">= 1")
        _check(self.cbam_spatial_kernel >= 1 and self.cbam_spatial_kernel % 2 == 1,
               "model.cbam_spatial_kernel", self.cbam_spatial_kernel, "a positive odd integer")
        _check(self.disc_ndf >= 1, "model.disc_ndf", self.disc_ndf, ">= 1")


@dataclass(frozen=True)
class SegOptimConfig:
    """Optimiser and loss weights (Eq. 19 and Sec. IV-A).

    epochs : training epochs (the paper: about 100).
    lr, disc_lr : Adam learning rates of the network and the discriminator (2e-4).
    betas : Adam betas (pix2pix's (0.5, 0.999): the paper gives only the learning rate).
    poly_power : poly decay exponent (0.9).
    dice_weight, l1_weight, gan_weight : Eq. 19 weights (0.5, lambda2 = 100, 1).
    dice_smooth : added to Eq. 15's numerator and denominator (0: the paper; 1: V-Net's habit).
    l1_reduction : how Eq. 16's L1 sum is reduced: "pixel_mean" (mean over all pixels of the
        batch) or "crop_band" (per crop, the mean of the lesion-plus-band pixels' mean -- the
        trimap's non-zero pixels -- and the other pixels' mean; then the batch mean). See :func:`~dsnet_trainer.losses.soft_l1_loss`.
    """

    epochs: int = 100
    lr: float = 2e-4
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    poly_power: float = 0.9
    dice_weight: float = 0.5
    l1_weight: float = 100.0
    gan_weight: float = 1.0
    dice_smooth: float = 0.0
    l1_reduction: Literal["pixel_mean", "crop_band"] = "pixel_mean"

    def __post_init__(self) -> None:
        _check(self.dice_smooth >= 0, "optim.dice_smooth", self.dice_smooth, ">= 0")
        _check(self.epochs >= 1, "optim.epochs", self.epochs, ">= 1")
        _check(self.lr > 0 and self.disc_lr > 0, "optim.lr", (self.lr, self.disc_lr), "> 0")
        _check(all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas, "in [0, 1)")
        _check(self.poly_power >= 0, "optim.poly_power", self.poly_power, ">= 0")
        for k in ("dice_weight", "l1_weight", "gan_weight"):
            _check(getattr(self, k) >= 0, f"optim.{k}", getattr(self, k), ">= 0")


@dataclass(frozen=True)
class SegConfig:
    """Root config of ``dsnet train`` (YAML: ``configs/seg_tiny.yaml``, ``configs/seg_paper.yaml``).

    out : run folder (config copy, logs, checkpoints).
    resume : ``auto`` (continue from ``out/checkpoints/last.pt`` if present), ``none`` or a path.
    """

    out: str = "runs/seg"
    resume: str = "auto"
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=4, select_k=5))


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
    the Kats / SoftSeg labels follow the same symmetry as the image."""

    def __init__(self, base, *, soft_label: str, kats_ring_px: float = 2.0, kats_p: float = 0.5,
                 softseg_factor: int = 4):
        self.base = base
        self.soft_label = soft_label
        self.kw = dict(kats_ring_px=kats_ring_px, kats_p=kats_p, softseg_factor=softseg_factor)
        soft_target(soft_label, soft_mask=np.zeros((4, 4), np.float32), binary_mask=np.zeros((4, 4)), **self.kw)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        import torch

        item = self.base[key]
        if self.soft_label == "soft_mask":
            item["soft_target"] = item["soft_mask"]
        else:
            t = soft_target(self.soft_label, soft_mask=item["soft_mask"][0].numpy(),
                            binary_mask=item["binary_mask"][0].numpy(), **self.kw)
            item["soft_target"] = torch.from_numpy(t)[None]
        return item


# ============================================================================================
# Model building and loading
# ============================================================================================
def _teacher_arch(path: Path) -> dict[str, Any]:
    from .sr import read_teacher_file

    obj = read_teacher_file(path)
    return {"model": obj["model"], "data": obj["data"], "train_patients": obj.get("train_patients")}


def _teacher_from_file(path: str | Path, data_cfg: SegDataConfig | None):
    """Load the frozen SR teacher (:func:`dsnet_trainer.sr.load_teacher`) and its architecture
    record; refuse a teacher trained with another HU window than ``data_cfg``'s."""
    from .sr import load_teacher

    path = Path(path)
    teacher = load_teacher(path)  # CheckpointError names the file
    if data_cfg is not None and (teacher.window_level_hu, teacher.window_width_hu) != (data_cfg.level_hu,
                                                                                         data_cfg.width_hu):
        raise CheckpointError(
            f"model.teacher {path} was trained on images windowed at level {teacher.window_level_hu} / width "
            f"{teacher.window_width_hu} HU but data uses {data_cfg.level_hu} / {data_cfg.width_hu} HU; "
            "retrain the teacher or set data.level_hu / data.width_hu to match")
    return teacher, _teacher_arch(path)


def _teacher_from_arch(arch: Mapping[str, Any]):
    from .models import build_model
    from .sr import SRTeacher

    d = arch["data"]
    generator = build_model(arch["model"]["name"], **arch["model"]["kwargs"])
    return SRTeacher(generator, scale=d["scale"], feature_channels=arch["model"]["kwargs"]["n_channels"],
                     window_level_hu=d["window_level_hu"], window_width_hu=d["window_width_hu"],
                     downsample=d["downsample"], train_patients=arch.get("train_patients"))


def build_from_config(model_cfg: SegModelConfig, *, data_cfg: SegDataConfig | None = None, teacher=None,
                      teacher_arch: Mapping[str, Any] | None = None):
    """Build ``(net, discriminator_or_None, teacher_arch)`` for ``model_cfg``.

    The teacher comes from, in order: ``teacher`` (a module, e.g. a test stand-in), ``teacher_arch``
    (an :class:`~dsnet_trainer.sr.SRTeacher` rebuilt from the record a seg checkpoint keeps; its
    weights come with the checkpoint), ``model_cfg.teacher`` (a teacher file). Variants without a
    teacher ignore all three.

    Raises
    ------
    ConfigError : the variant needs a teacher and none is given.
    CheckpointError : the teacher file is unreadable, was trained on another HU window, or its
        outputs do not fit DSNet (wrong shapes).
    """
    from .models.discriminator import PixelDiscriminator
    from .models.dsnet import build_seg_model, get_variant

    variant = get_variant(model_cfg.variant)
    arch: dict[str, Any] | None = None
    source = "<given module>"
    if variant.uses_teacher:
        if teacher is not None:
            arch = dict(teacher_arch) if teacher_arch else None
        elif teacher_arch:
            arch = dict(teacher_arch)
            teacher = _teacher_from_arch(arch)
            source = "the checkpoint's teacher record"
        elif model_cfg.teacher:
            teacher, arch = _teacher_from_file(model_cfg.teacher, data_cfg)
            source = model_cfg.teacher
        else:
            raise ConfigError(f"variant {variant.name!r} needs the SR teacher: set model.teacher to a teacher "
                              "file (dsnet pretrain-sr writes teacher.pt) or pick an LR variant (unet, backbone)")
    try:
        net = build_seg_model(variant, widths=model_cfg.widths, reduction=model_cfg.cbam_reduction,
                              spatial_kernel=model_cfg.cbam_spatial_kernel, teacher=teacher,
                              teacher_mode=model_cfg.teacher_mode, drtm_fc=model_cfg.drtm_fc)
    except TrainerError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"model.teacher {source} does not fit DSNet: {exc}") from exc
    disc = PixelDiscriminator(ndf=model_cfg.disc_ndf) if variant.gan else None
    return net, disc, arch


def _compat(cfg: SegConfig, net) -> dict[str, Any]:
    skip = ("teacher", "allow_teacher_overlap")  # may change on resume
    return {"model": {k: v for k, v in to_dict(cfg.model).items() if k not in skip},
            "crop_px": cfg.data.crop_px, "window_hu": [cfg.data.level_hu, cfg.data.width_hu],
            "scale": net.scale}


def load_seg_model(checkpoint: str | Path, *, map_location: str = "cpu"):
    """Rebuild a trained segmentation network from a seg checkpoint alone (eval mode).

    Returns ``(net, info)``; ``info`` holds ``config`` (the run's :class:`SegConfig` as a dict),
    ``seg_config`` (the same, typed), ``variant``, ``crop_px``, ``level_hu``, ``width_hu``,
    ``epoch``, ``teacher_arch`` (the teacher record, with its training patients; None without a teacher).

    Raises
    ------
    CheckpointError : missing/unreadable file, not a seg checkpoint, weights that do not fit.
    """
    from .config import from_dict
    from .engine import load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location=map_location, expect_kind=CHECKPOINT_KIND)
    extra = ckpt.get("extra", {})
    try:
        cfg = from_dict(SegConfig, extra["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{checkpoint}: no usable run config inside ({exc})") from exc
    arch = extra.get("teacher_arch") or None
    net, _, _ = build_from_config(cfg.model, teacher_arch=arch)
    try:
        net.load_state_dict(ckpt["modules"]["model"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit variant {cfg.model.variant!r}: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    net.eval()
    info = {"config": to_dict(cfg), "variant": cfg.model.variant, "crop_px": cfg.data.crop_px,
            "level_hu": cfg.data.level_hu, "width_hu": cfg.data.width_hu, "epoch": int(ckpt.get("epoch", 0)),
            "teacher_arch": arch, "seg_config": cfg}
    return net, info


# ============================================================================================
# Training
# ============================================================================================
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


def teacher_leak_check(cfg: SegConfig, teacher_arch: Mapping[str, Any] | None, *, root: str | Path | None = None,
                       splits: tuple[str, ...] | None = None, teacher_name: str | None = None) -> dict[str, Any]:
    """Compare the SR teacher's training patients with the patients of ``splits`` (default: the
    run's validation split and ``test``) of ``root`` (default ``cfg.data.root``).

    Returns the record kept in the run (``{"checked", "splits", "n_teacher_patients",
    "overlap", "allow_teacher_overlap"}``); variants without a teacher, or a teacher given as a
    module without a record, give ``{"checked": False}``.

    Raises
    ------
    TeacherLeakError : overlap, or a teacher without a patient list, unless
        ``cfg.model.allow_teacher_overlap``.
    """
    from .data import find_shards
    from .errors import ShardError
    from .models.dsnet import get_variant
    from .provenance import check_teacher_patients, shard_patients

    if not get_variant(cfg.model.variant).uses_teacher or not teacher_arch:
        return {"checked": False}
    root = cfg.data.root if root is None else root
    splits = tuple(splits) if splits is not None else tuple(s for s in (cfg.data.val_split, "test") if s)
    paths = []
    for split in splits:
        try:
            paths.extend(s.path for s in find_shards(root, kind="samples", split=split, option="data.root"))
        except ShardError:
            continue  # a split absent from the data has no patients to protect
    eval_patients = shard_patients(paths) if paths else {}
    tp = teacher_arch.get("train_patients")
    name = teacher_name or cfg.model.teacher or "the checkpoint's teacher"
    overlap = check_teacher_patients(tp, eval_patients, teacher=name, splits="/".join(splits),
                                     allow=cfg.model.allow_teacher_overlap)
    return {"checked": True, "splits": list(splits), "allow_teacher_overlap": cfg.model.allow_teacher_overlap,
            "n_teacher_patients": None if tp is None else sum(len(v) for v in tp.values()),
            "n_overlap": len(overlap), "overlap": overlap[:20]}


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

    from . import engine
    from .data import SampleShardDataset
    from .losses import dice_loss, gan_discriminator_loss, gan_generator_loss, soft_l1_loss, total_loss
    from .metrics import dice_sen_ppv
    from .models.dsnet import get_variant

    variant = get_variant(cfg.model.variant)
    loop = cfg.loop
    ctx = engine.init_distributed(loop.device)
    try:
        if loop.num_threads:
            torch.set_num_threads(loop.num_threads)
        engine.seed_everything(loop.seed)
        data_kw = dict(level_hu=cfg.data.level_hu, width_hu=cfg.data.width_hu, image_size_px=cfg.data.crop_px,
                       option="data.root")
        train_ds = SoftTargetDataset(
            SampleShardDataset(cfg.data.root, split=cfg.data.train_split, augment=cfg.data.augment, **data_kw),
            soft_label=variant.soft_label, kats_ring_px=cfg.data.kats_ring_px, kats_p=cfg.data.kats_p,
            softseg_factor=cfg.data.softseg_factor)
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
        prec = engine.Precision(loop.amp, ctx.device)
        state = engine.TrainState(CHECKPOINT_KIND, modules=modules, optimizers=optimizers, schedulers=schedulers,
                                  precision=prec, compat=_compat(cfg, net),
                                  extra={"config": to_dict(cfg), "teacher_arch": arch or {},
                                         "teacher_check": teacher_check,
                                         "variant": variant.to_dict()})
        checkpoints = engine.CheckpointManager(Path(out) / "checkpoints", every_n_epochs=loop.checkpoint_every_epochs,
                                               enabled=ctx.is_main)
        resume = checkpoints.resolve_resume(cfg.resume, option="resume")
        if resume is not None:
            state.load_state_dict(engine.load_checkpoint(resume, expect_kind=CHECKPOINT_KIND), source=resume)
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
        ddp_net = engine.wrap_ddp(net, ctx)
        ddp_disc = engine.wrap_ddp(disc, ctx) if disc is not None else None

        sampler = engine.SeededSampler(len(train_ds), seed=loop.seed, ctx=ctx)
        loader = engine.make_loader(train_ds, sampler, batch_size=loop.batch_size, num_workers=loop.num_workers,
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
            totals = engine.all_reduce_sums({**sums, "_n": float(n_steps)}, ctx)
            n = max(totals.pop("_n"), 1.0)
            return {k: v / n for k, v in totals.items()}

        def evaluate(epoch: int) -> dict[str, float]:
            net.eval()
            idx_sampler = engine.EvalShardSampler(len(val_ds), ctx=ctx)
            vloader = engine.make_loader(val_ds, idx_sampler, batch_size=loop.batch_size, num_workers=0)
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
            totals = engine.all_reduce_sums(sums, ctx)
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
        engine.shutdown_distributed(ctx)
