"""Config of ``dsnet pretrain-sr``: one frozen dataclass per section (data, generator,
discriminator, the two stages, evaluation, loop); :class:`SRConfig` is the root
(``dsnet_trainer/configs/sr_*.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import LoopConfig
from ..data import DEFAULT_WINDOW_LEVEL_HU, DEFAULT_WINDOW_WIDTH_HU
from ..errors import ConfigError

__all__ = ["SRDataConfig", "GeneratorConfig", "DiscriminatorConfig", "Stage1Config", "Stage2Config", "SREvalConfig",
           "SRConfig"]


@dataclass(frozen=True)
class SRDataConfig:
    """Slices -> (LR, HR) pairs.

    ``scale``: down-sampling factor (4: 512 -> 128). ``hr_patch_px``: side of the random HR
    training patches (multiple of ``scale``). ``patches_per_slice``: patches drawn per slice per
    epoch. ``downsample``: how the LR is made from the HR patch: ``bicubic`` (anti-aliased, of the
    HU image, then windowed), ``area`` (scale x scale block means of the HU image, then windowed)
    or ``windowed_area`` (the HR patch windowed to [-1, 1] first, then block means: exactly the
    truth study's arm-B input, :func:`dsnet_trainer.models.dsnet.shrink_by_area` of the windowed
    crop; ``area`` differs from it only where the window clips). ``window_level_hu`` /
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
    downsample: Literal["bicubic", "area", "windowed_area"] = "bicubic"
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
