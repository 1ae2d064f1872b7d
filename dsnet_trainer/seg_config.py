"""Config of the segmentation runs (``dsnet train``): data, model, optimiser, loop.

One frozen dataclass per section (YAML: ``configs/seg_tiny.yaml``, ``configs/seg_paper.yaml``);
:class:`SegConfig` is the root. A seg checkpoint keeps the resolved config, so inference
(:func:`dsnet_trainer.models.loading.load_seg_model`) rebuilds the model from it without the
training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import LoopConfig, _check

__all__ = ["SegDataConfig", "SegModelConfig", "SegOptimConfig", "SegConfig", "TRAIN_TARGETS"]

#: Values of ``data.train_target`` (the truth study's arms, docs/TRAINING.md).
TRAIN_TARGETS = ("label", "binary", "true_fraction", "true_mask")


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
    train_target : what the *training* split's targets come from (the truth study of
        docs/TRAINING.md; validation always uses the label): "label" (the builder's label, the
        default); "binary" (arm A2: the soft head's L1 target is the label's binary mask mapped
        to {-1, 1}, whatever the variant's soft label; controls for having a head);
        "true_fraction" (arm A3: the soft head's L1 target is the phantom's true fraction mapped
        to [-1, 1], the Dice target stays the label); "true_mask" (arm A4: the
        Dice target is ``true_fraction >= 0.5``; the soft labels made from the binary mask,
        "binary"/"kats"/"softseg", follow it, the "soft_mask" one stays the label's).
        The last two need a build with the phantom's truth (shard schema 3 ``true_fraction``).
    input_shrink : 1 (the crop as it is), or 2: the network sees the crop shrunk x2 by area
        averaging (outputs, labels and truth stay on the crop's grid; ``crop_px`` a multiple of
        it). LR variants bicubic-up-sample it back (the truth study's arm B0,
        :func:`dsnet_trainer.models.dsnet.shrink_then_bicubic`); teacher variants (arms B1/B2)
        feed it to a x2 teacher in ``upscale`` mode, whose outputs land on the crop's grid (a
        teacher of another scale, or ``native`` mode, is refused). Applied inside the network,
        so evaluation and prediction of the checkpoint see the same input.
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
    train_target: Literal["label", "binary", "true_fraction", "true_mask"] = "label"
    input_shrink: int = 1

    def __post_init__(self) -> None:
        _check(self.crop_px >= 4, "data.crop_px", self.crop_px, ">= 4")
        _check(self.width_hu > 0, "data.width_hu", self.width_hu, "> 0")
        _check(self.kats_ring_px >= 0, "data.kats_ring_px", self.kats_ring_px, ">= 0")
        _check(0 <= self.kats_p <= 1, "data.kats_p", self.kats_p, "in [0, 1]")
        _check(self.softseg_factor >= 1, "data.softseg_factor", self.softseg_factor, ">= 1")
        _check(self.train_target in TRAIN_TARGETS, "data.train_target",
               self.train_target, "one of " + ", ".join(TRAIN_TARGETS))
        _check(self.input_shrink in (1, 2), "data.input_shrink", self.input_shrink, "1 or 2")
        _check(self.crop_px % self.input_shrink == 0, "data.crop_px", self.crop_px,
               f"a multiple of data.input_shrink ({self.input_shrink})")


@dataclass(frozen=True)
class SegModelConfig:
    """Network choice and sizes.

    variant : a name of ``VARIANTS`` (``dsnet``, ``unet``, ``unet_soft``, ``backbone``, ``sr_input``, ``drtm``,
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

    def __post_init__(self) -> None:
        # The backbone halves the crop once per level below the first: another size fails inside
        # the forward pass, after the run folder was made.
        factor = 2 ** (len(self.model.widths) - 1)
        _check(self.data.crop_px % factor == 0, "data.crop_px", self.data.crop_px,
               f"a multiple of {factor} (model.widths has {len(self.model.widths)} levels: "
               f"the network halves the crop {len(self.model.widths) - 1} times)")
