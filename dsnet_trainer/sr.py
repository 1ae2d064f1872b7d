"""The self-supervised x4 super-resolution teacher (DSNet, Sec. III-B3 (1)):
SRResNet + adversarial fine-tuning, no VGG content loss.

CT slices are down-sampled x4 (512 -> 128) and an SR network learns to restore them (the paper
uses an SRGAN; without its VGG content loss ours is not SRGAN, though stage names and paths keep
"srgan"); its generator, frozen, later gives DSNet's DRTM its detail features. Training runs in
two stages, as SRGAN training must (Ledig et al. 2017):

1. **SRResNet** -- the generator alone with a pixel loss (L1 or MSE).
2. **adversarial fine-tuning** (stage "srgan") -- *starting from stage 1's generator* with a VGG-style
   discriminator: pixel loss + ``adv_weight`` x BCE adversarial loss + optional
   ``feature_weight`` x discriminator feature matching. No pretrained network (VGG) can be
   downloaded here, so the paper's VGG content loss is replaced by these offline terms.

Validation reports PSNR and SSIM of the SR output and of bicubic up-sampling of the same LR
against the HR slice (border of ``eval.shave_px`` ignored), in ``report.json``/``report.md``.

Run folder (``out``)::

    config.yaml, run_info.json        resolved config, seed, git commit, versions
    srresnet/ srgan/                  per stage: checkpoints/{last,best,epoch_XXXX}.pt,
                                      metrics.jsonl/.csv, curves.png, samples.png
    teacher.pt                        frozen teacher for DRTM (see export_teacher / load_teacher)
    report.json, report.md            bicubic vs SRResNet vs SRGAN on the validation slices

Public API
----------
``SRConfig`` (+ sections), ``pretrain_sr(cfg, data=..., out=..., resume=...) -> SRRunResult``,
``evaluate_sr(generator, loader, ...)``, ``export_teacher(generator, cfg, path)``,
``load_teacher(path) -> SRTeacher`` (``teacher(lr) -> TeacherOutput(sr, features)``).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import engine
from .config import LoopConfig, config_sha256, to_dict
from .data import (DEFAULT_WINDOW_LEVEL_HU, DEFAULT_WINDOW_WIDTH_HU, SliceShardDataset, find_shards,
                   split_by_patient)
from .engine import (CheckpointManager, DistContext, MetricLogger, Precision, TrainState, all_reduce_sums,
                     barrier, load_checkpoint, save_figure, unwrap)
from .errors import CheckpointError, ConfigError, InputError, ShardError
from .models import build_model
from .sr_metrics import psnr, shave, ssim

DATA_RANGE = 2.0  # images live in [-1, 1]
TEACHER_FORMAT = "dsnet-sr-teacher"
# Version 2 adds ``weights_sha256`` (checked on load) and ``train_patients`` ({namespace: ids}).
TEACHER_VERSION = 2


# ============================================================================================
# Config
# ============================================================================================
@dataclass(frozen=True)
class SRDataConfig:
    """Slices -> (LR, HR) pairs.

    ``scale``: down-sampling factor (4: 512 -> 128). ``hr_patch_px``: side of the random HR
    training patches (multiple of ``scale``). ``patches_per_slice``: patches drawn per slice per
    epoch. ``downsample``: ``bicubic`` (anti-aliased) or ``area``. ``window_level_hu`` /
    ``window_width_hu``: HU window mapped to [-1, 1] (must match DSNet's). ``train_split`` /
    ``val_split``: shard splits; without ``val`` shards, the last ``val_fraction`` of patients
    (sorted by id) are held out. ``train_patients_from``: a sample-shard folder (LNSM); when set,
    only slices of patients of its ``train`` split are trained on, so the teacher never sees a
    segmentation validation or test patient (empty: every slice of ``train_split``). ``val_patch_px``: 0 = validate on whole slices, else a centred
    crop of at most that side. ``val_max_slices``: 0 = all.
    """

    scale: int = 4
    hr_patch_px: int = 96
    patches_per_slice: int = 16
    downsample: Literal["bicubic", "area"] = "bicubic"
    augment: bool = True
    min_body_fraction: float = 0.25
    window_level_hu: float = DEFAULT_WINDOW_LEVEL_HU
    window_width_hu: float = DEFAULT_WINDOW_WIDTH_HU
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.2
    val_patch_px: int = 0
    val_max_slices: int = 0
    train_patients_from: str = ""

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4, 8):
            raise ConfigError(f"config key 'data.scale' must be 2, 3, 4 or 8, got {self.scale}")
        if self.hr_patch_px < self.scale or self.hr_patch_px % self.scale:
            raise ConfigError(f"config key 'data.hr_patch_px'={self.hr_patch_px} must be a positive multiple "
                              f"of data.scale={self.scale}")
        if self.val_patch_px < 0 or self.val_patch_px % self.scale:
            raise ConfigError(f"config key 'data.val_patch_px'={self.val_patch_px} must be 0 or a multiple of "
                              f"data.scale={self.scale}")
        if self.patches_per_slice < 1:
            raise ConfigError(f"config key 'data.patches_per_slice' must be >= 1, got {self.patches_per_slice}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"config key 'data.val_fraction' must be in (0, 1), got {self.val_fraction}")
        if not (math.isfinite(self.window_width_hu) and self.window_width_hu > 0):
            raise ConfigError(f"config key 'data.window_width_hu' must be > 0, got {self.window_width_hu}")


@dataclass(frozen=True)
class GeneratorConfig:
    """SRResNet: ``n_channels`` features, ``n_blocks`` residual blocks, ``norm`` batch/none,
    ``residual_bicubic`` (output = bicubic + learned residual)."""

    name: str = "srresnet"
    n_channels: int = 64
    n_blocks: int = 16
    norm: Literal["batch", "none"] = "batch"
    residual_bicubic: bool = True


@dataclass(frozen=True)
class DiscriminatorConfig:
    """VGG-style discriminator: ``n_stages`` stride-2 stages from ``base_channels``."""

    name: str = "sr_vgg"
    base_channels: int = 64
    n_stages: int = 4
    norm: Literal["batch", "none"] = "batch"
    fc_channels: int = 1024


@dataclass(frozen=True)
class Stage1Config:
    """SRResNet pretraining (pixel loss). ``milestones``: epochs where the lr is multiplied by
    ``gamma``."""

    epochs: int = 100
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    pixel_loss: Literal["l1", "mse"] = "mse"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0:
            raise ConfigError(f"stage1 needs epochs >= 0 and lr > 0, got {self.epochs}, {self.lr}")


@dataclass(frozen=True)
class Stage2Config:
    """SRGAN fine-tuning from stage 1's ``init_from`` (best or last) generator. Generator loss =
    ``pixel_weight`` x pixel + ``adv_weight`` x BCE(D(sr), real) + ``feature_weight`` x
    L1(D-features(sr), D-features(hr)). ``epochs: 0`` skips the stage."""

    epochs: int = 50
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    pixel_loss: Literal["l1", "mse"] = "mse"
    pixel_weight: float = 1.0
    adv_weight: float = 1e-3
    feature_weight: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    init_from: Literal["best", "last"] = "last"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr_g <= 0 or self.lr_d <= 0:
            raise ConfigError(f"stage2 needs epochs >= 0, lr_g > 0, lr_d > 0; got {self.epochs}, {self.lr_g}, "
                              f"{self.lr_d}")
        if min(self.pixel_weight, self.adv_weight, self.feature_weight) < 0:
            raise ConfigError("stage2 loss weights must be >= 0")


@dataclass(frozen=True)
class SREvalConfig:
    """``shave_px``: border ignored by PSNR/SSIM (-1 = ``data.scale``); ``n_preview``: slices
    shown in ``samples.png``; ``val_batch_size``: slices per validation batch."""

    shave_px: int = -1
    n_preview: int = 3
    val_batch_size: int = 1


@dataclass(frozen=True)
class SRConfig:
    """Full config of ``dsnet pretrain-sr`` (see ``dsnet_trainer/configs/sr_*.yaml``)."""

    data: SRDataConfig = field(default_factory=SRDataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: SREvalConfig = field(default_factory=SREvalConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    export_from: Literal["srgan", "srresnet"] = "srgan"

    def __post_init__(self) -> None:
        if self.stage2.epochs > 0 and self.data.hr_patch_px < 2 ** self.discriminator.n_stages:
            raise ConfigError(f"config key 'data.hr_patch_px'={self.data.hr_patch_px} is smaller than the "
                              f"discriminator's input minimum 2**discriminator.n_stages="
                              f"{2 ** self.discriminator.n_stages}")
        if self.export_from == "srgan" and self.stage2.epochs == 0 and self.stage1.epochs == 0:
            raise ConfigError("nothing to train: stage1.epochs and stage2.epochs are both 0")

    @property
    def shave_px(self) -> int:
        return self.data.scale if self.eval.shave_px < 0 else self.eval.shave_px

    def generator_kwargs(self) -> dict[str, Any]:
        g = self.generator
        return {"in_channels": 1, "n_channels": g.n_channels, "n_blocks": g.n_blocks, "scale": self.data.scale,
                "norm": g.norm, "residual_bicubic": g.residual_bicubic}

    def discriminator_kwargs(self) -> dict[str, Any]:
        d = self.discriminator
        return {"in_channels": 1, "base_channels": d.base_channels, "n_stages": d.n_stages, "norm": d.norm,
                "fc_channels": d.fc_channels}


# ============================================================================================
# Data
# ============================================================================================
@dataclass
class SRData:
    train: SliceShardDataset
    val: SliceShardDataset
    val_source: str


def build_sr_datasets(cfg: SRConfig, data: str | Path | Sequence[str | Path],
                      val_data: str | Path | Sequence[str | Path] | None = None) -> SRData:
    """Training patches and validation slices from slice shards.

    Training: shards of split ``data.train_split`` in ``data``. Validation: ``val_data`` if given
    (any split), else shards of ``data.val_split`` in ``data``, else the last
    ``data.val_fraction`` of the training patients (held out by patient, never by slice).
    """
    d = cfg.data
    everything = find_shards(data, kind="slices", option="--data")
    train = [s for s in everything if s.split == d.train_split]
    if not train:
        splits = sorted({s.split for s in everything})
        raise ShardError(f"--data: no slice shards of split {d.train_split!r} (found splits {splits}); "
                         f"set data.train_split")
    common = {"scale": d.scale, "downsample_method": d.downsample, "level_hu": d.window_level_hu,
              "width_hu": d.window_width_hu}
    train_idx: list[int] | None = None
    if val_data is not None:
        val_shards = find_shards(val_data, kind="slices", option="--val-data")
        val_idx = None
        source = f"--val-data ({sum(s.n_samples for s in val_shards)} slices)"
    else:
        val_shards = [s for s in everything if s.split == d.val_split]
        val_idx = None
        source = f"split {d.val_split!r}"
        if not val_shards:
            train_idx, val_idx = split_by_patient(train, val_fraction=d.val_fraction)
            val_shards = train
            source = f"held-out patients of split {d.train_split!r} (val_fraction={d.val_fraction})"
    if d.val_max_slices and val_idx is None:
        val_idx = list(range(min(d.val_max_slices, sum(s.n_samples for s in val_shards))))
    elif d.val_max_slices:
        val_idx = val_idx[:d.val_max_slices]
    if d.train_patients_from:
        train_idx = _restrict_to_seg_train(train, train_idx, d.train_patients_from)
    train_ds = SliceShardDataset(train, mode="train", hr_patch_px=d.hr_patch_px, patches_per_slice=d.patches_per_slice,
                                 augment=d.augment, min_body_fraction=d.min_body_fraction, indices=train_idx, **common)
    val_ds = SliceShardDataset(val_shards, mode="val", val_patch_px=d.val_patch_px, indices=val_idx, **common)
    n_val = len(val_ds)
    return SRData(train=train_ds, val=val_ds, val_source=f"{source}, {n_val} slices")


def _restrict_to_seg_train(train_shards, train_idx: list[int] | None, seg_root: str) -> list[int]:
    """Slice positions of ``train_shards`` (within ``train_idx``) whose patient is in the ``train``
    split of the sample shards at ``seg_root`` (patients compared within their namespace)."""
    from .provenance import patients_per_sample

    seg = find_shards(seg_root, kind="samples", split="train", option="data.train_patients_from")
    allowed = set(patients_per_sample([s.path for s in seg]))
    per = patients_per_sample([s.path for s in train_shards])
    base = range(len(per)) if train_idx is None else train_idx
    keep = [i for i in base if per[i] in allowed]
    if not keep:
        raise ShardError(f"data.train_patients_from {seg_root}: none of the {len(base)} training slices belongs "
                         "to a patient of its train split (another source, or other patient ids?)")
    return keep


# ============================================================================================
# Evaluation
# ============================================================================================
def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline: bicubic up-sampling (align_corners=False), clamped to [-1, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


@torch.no_grad()
def evaluate_sr(generator: nn.Module | None, loader: torch.utils.data.DataLoader, *, ctx: DistContext,
                precision: Precision | None = None, scale: int, shave_px: int) -> dict[str, float]:
    """Mean PSNR/SSIM over the loader's slices of the generator (``psnr``, ``ssim``; clamped to
    [-1, 1]) and of bicubic up-sampling (``psnr_bicubic``, ``ssim_bicubic``), plus ``n``.

    Each rank evaluates its :class:`~dsnet_trainer.engine.EvalShardSampler` share; sums and
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


# ============================================================================================
# Teacher export
# ============================================================================================
class TeacherOutput(NamedTuple):
    """``sr``: (N, 1, h*s, w*s) SR image in [-1, 1] (clamped); ``features``: (N, C, h*s, w*s)
    output of the generator's last decoder (up-sampling) block."""

    sr: torch.Tensor
    features: torch.Tensor


class SRTeacher(nn.Module):
    """The frozen SR teacher for DRTM (weights never require grad, always in eval mode).

    Attributes: ``scale``, ``feature_channels`` (C of ``features``), ``window_level_hu``,
    ``window_width_hu`` (the window its inputs must use), ``downsample`` (how its LR was made),
    ``metrics`` (validation figures at export), ``generator`` (the SRResNet).

    ``teacher(lr)`` -> :class:`TeacherOutput` for an LR input (N, 1, h, w) in [-1, 1].
    ``teacher.forward_native(image)`` -> :class:`TeacherOutput` at the image's own resolution:
    the image (N, 1, H, W; H, W multiples of ``scale``) is first down-sampled x``scale`` the way
    the teacher's training LR was, so ``sr`` and ``features`` are (.., H, W) and align
    pixel-for-pixel with ``image`` (the form DRTM transfers into DSNet's decoder).
    """

    def __init__(self, generator: nn.Module, *, scale: int, feature_channels: int, window_level_hu: float,
                 window_width_hu: float, downsample: str, metrics: dict[str, Any] | None = None,
                 train_patients: dict[str, list[str]] | None = None):
        super().__init__()
        # {namespace: patient ids} of the slices it was trained on (None: unknown, an old file)
        self.train_patients = None if train_patients is None else {k: list(v) for k, v in train_patients.items()}
        self.generator = generator
        self.scale = int(scale)
        self.feature_channels = int(feature_channels)
        self.window_level_hu = float(window_level_hu)
        self.window_width_hu = float(window_width_hu)
        self.downsample = downsample
        self.metrics = dict(metrics or {})
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.generator.eval()

    def train(self, mode: bool = True) -> SRTeacher:  # frozen: stays in eval mode
        super().train(False)
        return self

    def forward(self, lr: torch.Tensor) -> TeacherOutput:
        sr, feats = self.generator.forward_features(lr)
        return TeacherOutput(sr.clamp(-1.0, 1.0), feats)

    def forward_native(self, image: torch.Tensor) -> TeacherOutput:
        if image.ndim != 4 or image.shape[-1] % self.scale or image.shape[-2] % self.scale:
            raise InputError(f"image must be (N, 1, H, W) with H, W multiples of {self.scale}, got "
                             f"{tuple(image.shape)}")
        if self.downsample == "area":
            lr = F.avg_pool2d(image, self.scale)
        else:
            lr = F.interpolate(image, scale_factor=1.0 / self.scale, mode="bicubic", align_corners=False,
                               antialias=True)
        return self.forward(lr)


def export_teacher(generator: nn.Module, cfg: SRConfig, path: str | Path, *,
                   metrics: dict[str, Any] | None = None, stage: str = "srgan",
                   train_patients: dict[str, list[str]] | None = None) -> Path:
    """Save the generator's weights and everything needed to rebuild it (atomic write).

    The file is a plain mapping readable with ``torch.load(weights_only=True)``:
    ``format="dsnet-sr-teacher"``, ``version`` (2), ``model`` (registry name + kwargs),
    ``data`` (scale, HU window, down-sampling), ``generator`` (state dict, CPU),
    ``weights_sha256`` (:func:`~dsnet_trainer.digest.weights_sha256` of ``{"generator": ...}``),
    ``train_patients`` (``{namespace: sorted patient ids}`` of its training slices, see
    :mod:`~dsnet_trainer.provenance`), ``metrics``, ``stage``, ``config`` (the whole SRConfig),
    ``config_sha256``.
    """
    from .digest import weights_sha256

    weights = {k: v.detach().cpu() for k, v in unwrap(generator).state_dict().items()}
    payload = {
        "format": TEACHER_FORMAT,
        "version": TEACHER_VERSION,
        "weights_sha256": weights_sha256({"generator": weights}),
        "train_patients": {k: sorted(v) for k, v in (train_patients or {}).items()},
        "stage": stage,
        "model": {"name": cfg.generator.name, "kwargs": cfg.generator_kwargs()},
        "data": {"scale": cfg.data.scale, "window_level_hu": cfg.data.window_level_hu,
                 "window_width_hu": cfg.data.window_width_hu, "downsample": cfg.data.downsample},
        "generator": weights,
        "metrics": json.loads(json.dumps(metrics or {})),
        "config": to_dict(cfg),
        "config_sha256": config_sha256(cfg),
    }
    return engine.save_checkpoint(payload, path)


def read_teacher_file(path: str | Path) -> dict[str, Any]:
    """The checked content of a teacher file (see :func:`export_teacher`).

    Raises
    ------
    CheckpointError
        Missing, empty, non-zip or unreadable file; not a teacher file; an older version (1: no
        weights digest, no patient list); weights that differ from their digest or are not finite.
    """
    from .digest import nonfinite_entries, weights_sha256

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher file not found: {path}")
    problem = engine._first_bytes_problem(path)
    if problem:
        raise CheckpointError(f"cannot read teacher {path}: {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read teacher {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from exc
    if not isinstance(obj, dict) or obj.get("format") != TEACHER_FORMAT:
        raise CheckpointError(f"{path} is not an SR teacher file (format {TEACHER_FORMAT!r} expected)")
    if obj.get("version") != TEACHER_VERSION:
        hint = (" (version 1 has no weights digest and no training-patient list: retrain it with "
                "`make pretrain-sr` or `dsnet pretrain-sr --train-patients-from LNSM_DIR ...`)"
                if obj.get("version") == 1 else "")
        raise CheckpointError(f"{path}: teacher version {obj.get('version')!r}, expected {TEACHER_VERSION}{hint}")
    weights = obj.get("generator")
    if not isinstance(weights, dict) or weights_sha256({"generator": weights}) != obj.get("weights_sha256"):
        raise CheckpointError(f"{path}: teacher weights do not match their recorded sha256 digest (the file was "
                              "corrupted or edited); retrain or copy it again")
    bad = nonfinite_entries({"generator": weights})
    if bad:
        raise CheckpointError(f"{path}: teacher holds NaN or infinite weights ({', '.join(bad)}); retrain it")
    return obj


def load_teacher(path: str | Path, *, device: str | torch.device = "cpu") -> SRTeacher:
    """Rebuild the frozen teacher saved by :func:`export_teacher`.

    Raises
    ------
    CheckpointError
        See :func:`read_teacher_file`; also weights that do not fit the recorded architecture
        (the message names the file).
    """
    path = Path(path)
    obj = read_teacher_file(path)
    try:
        generator = build_model(obj["model"]["name"], **obj["model"]["kwargs"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the generator ({exc})") from exc
    try:
        generator.load_state_dict(obj["generator"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded generator: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    d = obj["data"]
    teacher = SRTeacher(generator, scale=d["scale"], feature_channels=obj["model"]["kwargs"]["n_channels"],
                        window_level_hu=d["window_level_hu"], window_width_hu=d["window_width_hu"],
                        downsample=d["downsample"], metrics=obj.get("metrics"),
                        train_patients=obj.get("train_patients"))
    return teacher.to(device)


# ============================================================================================
# Training
# ============================================================================================
@dataclass
class SRHooks:
    """Callbacks for tests and tools: ``on_step_end(stage, step)`` after every optimiser step
    (``stage`` is ``"srresnet"`` or ``"srgan"``); raising in it aborts the run like a kill."""

    on_step_end: Callable[[str, int], None] | None = None


@dataclass
class SRRunResult:
    """What :func:`pretrain_sr` produced: the run folder, the teacher file and the report."""

    out: Path
    teacher_path: Path | None
    report: dict[str, Any]
    generator: nn.Module | None = None
    discriminator: nn.Module | None = None


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
        self.sampler = engine.SeededSampler(len(data.train), seed=self.seed, shuffle=True, drop_last=False, ctx=ctx)
        self.loader = engine.make_loader(data.train, self.sampler, batch_size=loop.batch_size,
                                         num_workers=loop.num_workers, mp_context=loop.mp_context,
                                         timeout_s=loop.loader_timeout_s, drop_last=True,
                                         pin_memory=ctx.device.type == "cuda", seed=self.seed)
        if len(self.loader) == 0:
            raise ConfigError(f"loop.batch_size={loop.batch_size} exceeds the {len(self.sampler)} training patches "
                              f"per rank; lower it or raise data.patches_per_slice")
        self.val_loader = engine.make_loader(data.val, engine.EvalShardSampler(len(data.val), ctx=ctx),
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
        it = engine.progress(self.loader, enabled=self.ctx.is_main and self.cfg.loop.progress,
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
            engine.fit(state, epochs=epochs, train_epoch=train_epoch, evaluate=lambda e: self.evaluate(generator),
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
                engine.plot_curves(self.logger.jsonl_path, self.dir / "curves.png", title=title)
            save_sr_samples(generator, self.val_ds, self.dir / "samples.png", scale=self.cfg.data.scale,
                            n=self.cfg.eval.n_preview, device=self.ctx.device, title=title)
        barrier(self.ctx)


def _build_generator(cfg: SRConfig, device: torch.device) -> nn.Module:
    return build_model(cfg.generator.name, **cfg.generator_kwargs()).to(device)


def _run_stage1(cfg: SRConfig, data: SRData, out: Path, ctx: DistContext, prec: Precision, hooks: SRHooks,
                resume_path: Path | None) -> nn.Module:
    st = _Stage("srresnet", cfg, data, out, ctx, prec, hooks, seed_offset=0)
    s1 = cfg.stage1
    gen = _build_generator(cfg, ctx.device)
    model = engine.wrap_ddp(gen, ctx)
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
        engine.sync_buffers(gen, ctx)
        return {"loss": _mean_over_ranks(total, count, ctx)}

    st.run(state, epochs=s1.epochs, train_epoch=train_epoch, generator=gen, title="stage 1: SRResNet (pixel loss)")
    return gen


def _run_stage2(cfg: SRConfig, data: SRData, out: Path, ctx: DistContext, prec: Precision, hooks: SRHooks,
                resume_path: Path | None) -> tuple[nn.Module, nn.Module]:
    st = _Stage("srgan", cfg, data, out, ctx, prec, hooks, seed_offset=1_000_003)
    s2 = cfg.stage2
    gen = _build_generator(cfg, ctx.device)
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
    g_model = engine.wrap_ddp(gen, ctx)
    d_model = engine.wrap_ddp(disc, ctx)
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
        engine.sync_buffers(gen, ctx)
        engine.sync_buffers(disc, ctx)
        return {k: _mean_over_ranks(v, count, ctx) for k, v in sums.items()}

    st.run(state, epochs=s2.epochs, train_epoch=train_epoch, generator=gen, title="stage 2: SRGAN (pixel + adversarial)")
    return gen, disc


def _resolve_resume(out: Path, resume: str | Path | None) -> tuple[int, Path | None]:
    """(stage to start at, checkpoint to resume it from)."""
    if resume is None or str(resume).strip().lower() in ("", "none", "no", "false"):
        return 1, None
    if str(resume).strip().lower() == "auto":
        s2 = out / "srgan" / "checkpoints" / "last.pt"
        s1 = out / "srresnet" / "checkpoints" / "last.pt"
        if s2.is_file():
            return 2, s2
        return (1, s1) if s1.is_file() else (1, None)
    path = Path(resume)
    ck = load_checkpoint(path, expect_kind=("sr-srresnet", "sr-srgan"))
    return (2 if ck["kind"] == "sr-srgan" else 1), path


def pretrain_sr(cfg: SRConfig, *, data: str | Path | Sequence[str | Path], out: str | Path,
                resume: str | Path | None = None, val_data: str | Path | Sequence[str | Path] | None = None,
                ctx: DistContext | None = None, hooks: SRHooks | None = None, command: str = "") -> SRRunResult:
    """Train the SR teacher (stage 1 SRResNet, stage 2 SRGAN), report PSNR/SSIM vs bicubic and
    export the frozen teacher to ``out/teacher.pt``.

    Parameters
    ----------
    cfg : SRConfig
    data : folder, file or list
        Slice shards (``kind="slices"``) -- see :func:`build_sr_datasets` for the splits used.
    out : folder
        Run folder (created). Rank 0 writes everything; other ranks only train.
    resume : ``None``, ``"auto"`` or a checkpoint path
        ``auto``: continue from ``out/srgan/checkpoints/last.pt`` if present, else from
        ``out/srresnet/checkpoints/last.pt`` if present, else start afresh. A path: a stage-1 or
        stage-2 checkpoint (its kind says which stage resumes).
    val_data : optional
        Validation slice shards (any split) instead of ``data``'s ``val`` split.
    ctx : DistContext, optional
        Made from the environment (``torchrun``) with ``cfg.loop.device`` when absent.
    hooks : SRHooks, optional

    Returns
    -------
    SRRunResult
        ``report``: ``{"bicubic": {psnr, ssim}, "srresnet": {...}, "srgan": {...}, "teacher": stage,
        "n_val_slices", "val_source", "scale", "shave_px"}`` (dB; SSIM in [0, 1]).

    Raises
    ------
    ShardError, ConfigError, CheckpointError, DeviceError
        Bad data, config, checkpoint or device (the message names the file or option).
    """
    own_ctx = ctx is None
    if ctx is None:
        ctx = engine.init_distributed(cfg.loop.device)
    hooks = hooks or SRHooks()
    out = Path(out)
    try:
        if cfg.loop.num_threads:
            torch.set_num_threads(cfg.loop.num_threads)
        engine.seed_everything(cfg.loop.seed)
        prec = Precision(cfg.loop.amp, ctx.device)
        data_sets = build_sr_datasets(cfg, data, val_data)
        start_stage, resume_path = _resolve_resume(out, resume)
        engine.prepare_run_dir(out, cfg, ctx=ctx, seed=cfg.loop.seed, command=command,
                               extra={"precision": prec.name, "resume": str(resume_path) if resume_path else None,
                                      "val_source": data_sets.val_source,
                                      "n_train_slices": len(data_sets.train.slice_indices),
                                      "n_val_slices": len(data_sets.val)})
        gen1 = None
        if start_stage == 1:
            gen1 = _run_stage1(cfg, data_sets, out, ctx, prec, hooks, resume_path)
        gen2 = disc = None
        if cfg.stage2.epochs > 0:
            gen2, disc = _run_stage2(cfg, data_sets, out, ctx, prec, hooks, resume_path if start_stage == 2 else None)
        if gen1 is None:  # resumed into stage 2: reload stage 1's generator for the report
            gen1 = _build_generator(cfg, ctx.device)
            src = out / "srresnet" / "checkpoints" / ("best.pt" if cfg.stage2.init_from == "best" else "last.pt")
            if src.is_file():
                ck = load_checkpoint(src, map_location=ctx.device, expect_kind="sr-srresnet")
                gen1.load_state_dict(ck["modules"]["generator"])
            else:
                gen1 = None
        report = _final_report(cfg, data_sets, ctx, prec, gen1, gen2)
        teacher_gen = gen2 if (cfg.export_from == "srgan" and gen2 is not None) else gen1
        teacher_stage = "srgan" if teacher_gen is gen2 and gen2 is not None else "srresnet"
        report["teacher"] = teacher_stage
        teacher_path = None
        if ctx.is_main:
            from .provenance import shard_patients

            train_patients = shard_patients([sh.path for sh in data_sets.train.shards],
                                            indices=data_sets.train.slice_indices)
            teacher_path = export_teacher(teacher_gen, cfg, out / "teacher.pt", stage=teacher_stage,
                                          metrics=report.get(teacher_stage, {}), train_patients=train_patients)
            engine._atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
            engine._atomic_write_text(out / "report.md", format_report(report))
        barrier(ctx)
        return SRRunResult(out=out, teacher_path=teacher_path if ctx.is_main else out / "teacher.pt",
                           report=report, generator=teacher_gen, discriminator=disc)
    finally:
        if own_ctx:
            engine.shutdown_distributed(ctx)


def _final_report(cfg: SRConfig, data_sets: SRData, ctx: DistContext, prec: Precision,
                  gen1: nn.Module | None, gen2: nn.Module | None) -> dict[str, Any]:
    loader = engine.make_loader(data_sets.val, engine.EvalShardSampler(len(data_sets.val), ctx=ctx),
                                batch_size=cfg.eval.val_batch_size, num_workers=0)
    report: dict[str, Any] = {"scale": cfg.data.scale, "shave_px": cfg.shave_px, "downsample": cfg.data.downsample,
                              "val_source": data_sets.val_source}
    base = evaluate_sr(None, loader, ctx=ctx, precision=prec, scale=cfg.data.scale, shave_px=cfg.shave_px)
    report["n_val_slices"] = int(base["n"])
    report["bicubic"] = {"psnr": base["psnr_bicubic"], "ssim": base["ssim_bicubic"]}
    for name, gen in (("srresnet", gen1), ("srgan", gen2)):
        if gen is not None:
            m = evaluate_sr(gen, loader, ctx=ctx, precision=prec, scale=cfg.data.scale, shave_px=cfg.shave_px)
            report[name] = {"psnr": m["psnr"], "ssim": m["ssim"]}
    return report


def format_report(report: dict[str, Any]) -> str:
    """Markdown table of the report (PSNR in dB, SSIM), rows bicubic / SRResNet / SRGAN."""
    lines = [f"# SR teacher x{report['scale']}: validation on {report['val_source']}", "",
             f"Border ignored: {report['shave_px']} px. LR made by {report['downsample']} down-sampling. "
             f"Teacher exported from: {report.get('teacher', '?')}.", "",
             "| method | PSNR (dB) | SSIM | PSNR gain vs bicubic (dB) |", "|---|---|---|---|"]
    base = report["bicubic"]["psnr"]
    for name, label in (("bicubic", "bicubic"), ("srresnet", "SRResNet (stage 1)"), ("srgan", "+ adversarial fine-tuning (stage 2)")):
        if name in report:
            m = report[name]
            lines.append(f"| {label} | {m['psnr']:.3f} | {m['ssim']:.4f} | {m['psnr'] - base:+.3f} |")
    return "\n".join(lines) + "\n"


def teacher_summary(path: str | Path) -> dict[str, Any]:
    """Scale, HU window, feature channels, parameter count and metrics of a teacher file."""
    t = load_teacher(path)
    return {"scale": t.scale, "feature_channels": t.feature_channels, "window_level_hu": t.window_level_hu,
            "n_train_patients": {k: len(v) for k, v in (t.train_patients or {}).items()},
            "window_width_hu": t.window_width_hu, "downsample": t.downsample, "metrics": t.metrics,
            "n_parameters": int(sum(p.numel() for p in t.parameters()))}


__all__ = ["SRConfig", "SRDataConfig", "GeneratorConfig", "DiscriminatorConfig", "Stage1Config", "Stage2Config",
           "SREvalConfig", "SRHooks", "SRRunResult", "SRTeacher", "TeacherOutput", "build_sr_datasets",
           "bicubic_upsample", "evaluate_sr", "export_teacher", "load_teacher", "read_teacher_file", "pretrain_sr", "format_report",
           "save_sr_samples", "teacher_summary"]
