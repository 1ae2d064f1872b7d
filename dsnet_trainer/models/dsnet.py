"""DSNet, its baselines and its ablations, built from one name (Tables III, IV and V).

A :class:`Variant` holds every switch the paper's tables turn; :data:`VARIANTS` names them, and
:func:`build_seg_model` builds the network one names. The training-only switches (``gan``,
``soft_label``) live in the same record so that one config key (``variant``) selects a whole
table row.

==================  =========  ======  ====  ======  =====  ===========  ==========================
name                backbone   input   DRTM  soft    GAN    soft label   row
==================  =========  ======  ====  ======  =====  ===========  ==========================
unet                U-Net      LR      -     -       -      -            III: UNet
unet_soft           U-Net      LR      -     yes     -      Soft Mask    truth study A: U-Net + soft head
backbone            CBAM       LR      -     -       -      -            III: DSNet backbone
sr_input            CBAM       SR      -     -       -      -            III: + SR image as input
drtm                CBAM       DRTM    full  -       -      -            III: + DRTM
drtm_soft           CBAM       DRTM    full  yes     -      Soft Mask    III: + Soft Mask loss
dsnet               CBAM       DRTM    full  yes     yes    Soft Mask    III: + GAN loss (DSNet)
dsnet_no_detail     CBAM       DRTM    no Fh yes     yes    Soft Mask    V: w/o detail enhancement
dsnet_no_fusion     CBAM       DRTM    no SF yes     yes    Soft Mask    V: w/o selective fusion
dsnet_binary        CBAM       DRTM    full  yes     yes    binary       IV: no soft label
dsnet_kats          CBAM       DRTM    full  yes     yes    Kats         IV: Kats et al. label
dsnet_softseg       CBAM       DRTM    full  yes     yes    SoftSeg      IV: SoftSeg label
==================  =========  ======  ====  ======  =====  ===========  ==========================

Input "LR" is the normalised crop itself; "SR" is the frozen teacher's x``scale`` image;
"DRTM" is :class:`~.drtm.DRTM` over the crop, the SR image and the teacher's last decoder
features. "no soft label" (Table IV) regresses the binary mask itself (mapped to {-1, 1}) in the
Soft Mask's place, through the same head, L1 and discriminator.

Output contract (every variant): ``forward(image)`` with ``image`` (B, 1, H, W) returns
``(prob, soft)``, both (B, 1, H, W) at the crop's native resolution: ``prob`` = sigmoid of the
binary logit, in [0, 1]; ``soft`` = tanh of the Soft Mask channel, in [-1, 1] (the Soft Mask
normalised as the data loader does). A variant without a Soft Mask head returns
``soft = 2 * prob - 1``. When the backbone runs at the SR resolution, both maps are
average-pooled by ``scale`` back to the native grid (area fractions: a probability map pooled
this way is the expected lesion fraction of each native pixel), so every variant is trained and
scored on the same pixels.

Input that lost detail (the truth study's arms B, ``data.input_shrink``): with
``input_shrink = s > 1`` the network first shrinks the crop x``s`` by area averaging
(``avg_pool2d``, s x s blocks of the windowed crop) and brings it back to the crop's grid by
bicubic up-sampling (``F.interpolate(mode="bicubic", align_corners=False)``, clamped to [-1, 1]):
arm B0. Everything after that (backbone, outputs, the grid they are scored on) is unchanged.
It is a fixed, parameter-free stage inside the network, so training, validation, ``dsnet
evaluate`` and ``dsnet predict`` all see the same degraded input.

With a teacher (arms B1/B2: ``drtm`` or ``sr_input`` at ``input_shrink = s``) the same area
averaging (:func:`shrink_by_area`) makes the (H/s)-square LR crop, which is the teacher's input in
``upscale`` mode; a x``s`` teacher gives SR image and features back on the (H, W) grid, DRTM fuses
[bicubic-up(LR crop); SR image] with the features there, and the backbone runs on the crop's grid:
the network's scale is teacher scale / s = 1, nothing is pooled. A teacher whose scale is not
``s``, or one in ``native`` mode, is refused (ValueError naming both).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .drtm import DRTM
from .unet import CBAMUNet, UNet

__all__ = ["Variant", "VARIANTS", "SOFT_LABELS", "get_variant", "FrozenTeacher", "SegNet",
           "build_seg_model", "probe_teacher", "TEACHER_MODES", "shrink_then_bicubic", "shrink_by_area",
           "check_teacher_for_shrink"]

SOFT_LABELS = ("soft_mask", "binary", "kats", "softseg")


@dataclass(frozen=True)
class Variant:
    """One row of the paper's ablation tables.

    backbone : "unet" (:class:`~.unet.UNet`) or "cbam" (:class:`~.unet.CBAMUNet`).
    input : "lr" (the crop), "sr" (the teacher's SR image) or "drtm" (:class:`~.drtm.DRTM`).
    detail_enhancement, selective_fusion : DRTM switches (Table V); ignored unless input="drtm".
    soft_head : predict the Soft Mask (tanh channel, L1 loss, Eq. 16).
    gan : train against the pixel-wise conditional discriminator (Eqs. 17-19).
    soft_label : target of the soft head: "soft_mask", "binary", "kats" or "softseg" (Table IV).
    row : the table row this variant reproduces.
    """

    name: str
    backbone: str
    input: str
    detail_enhancement: bool = True
    selective_fusion: bool = True
    soft_head: bool = False
    gan: bool = False
    soft_label: str = "soft_mask"
    row: str = ""

    def __post_init__(self):
        if self.backbone not in ("unet", "cbam"):
            raise ValueError(f"backbone must be 'unet' or 'cbam', got {self.backbone!r}")
        if self.input not in ("lr", "sr", "drtm"):
            raise ValueError(f"input must be 'lr', 'sr' or 'drtm', got {self.input!r}")
        if self.soft_label not in SOFT_LABELS:
            raise ValueError(f"soft_label must be one of {SOFT_LABELS}, got {self.soft_label!r}")
        if self.gan and not self.soft_head:
            raise ValueError("gan=True needs soft_head=True (the discriminator judges the Soft Mask)")

    @property
    def uses_teacher(self) -> bool:
        return self.input in ("sr", "drtm")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _variants() -> dict[str, Variant]:
    rows = [
        Variant("unet", "unet", "lr", row="III: UNet"),
        # the truth study's arms A0-A4 (docs/TRAINING.md): the U-Net row plus the Soft Mask head, no GAN
        Variant("unet_soft", "unet", "lr", soft_head=True, row="truth A: U-Net + soft head"),
        Variant("backbone", "cbam", "lr", row="III: DSNet backbone"),
        Variant("sr_input", "cbam", "sr", row="III: + SR image as input"),
        Variant("drtm", "cbam", "drtm", row="III: + DRTM"),
        Variant("drtm_soft", "cbam", "drtm", soft_head=True, row="III: + Soft Mask loss"),
        Variant("dsnet", "cbam", "drtm", soft_head=True, gan=True, row="III: + GAN loss (DSNet)"),
        Variant("dsnet_no_detail", "cbam", "drtm", detail_enhancement=False, soft_head=True, gan=True,
                row="V: DRTM w/o detail enhancement"),
        Variant("dsnet_no_fusion", "cbam", "drtm", selective_fusion=False, soft_head=True, gan=True,
                row="V: DRTM w/o selective fusion"),
        Variant("dsnet_binary", "cbam", "drtm", soft_head=True, gan=True, soft_label="binary",
                row="IV: no soft label (binary mask)"),
        Variant("dsnet_kats", "cbam", "drtm", soft_head=True, gan=True, soft_label="kats",
                row="IV: Kats et al. soft label"),
        Variant("dsnet_softseg", "cbam", "drtm", soft_head=True, gan=True, soft_label="softseg",
                row="IV: SoftSeg soft label"),
    ]
    return {v.name: v for v in rows}


VARIANTS: dict[str, Variant] = _variants()


def get_variant(name: str | Variant) -> Variant:
    """Return the :class:`Variant` called ``name`` (a Variant is returned unchanged)."""
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


TEACHER_MODES = ("upscale", "native")


def _call_teacher(teacher: nn.Module, lr: torch.Tensor, mode: str = "upscale"):
    """Call the SR teacher on a batch of crops.

    ``mode="upscale"`` (the paper): the crop is the teacher's LR input; outputs are x``scale``.
    Uses ``teacher.forward_features(lr)`` when present (a bare SRResNet), else ``teacher(lr)``.
    ``mode="native"``: ``teacher.forward_native(crop)`` (:class:`~dsnet_trainer.models.teacher.SRTeacher`)
    first shrinks the crop x``scale`` the way the teacher's training LR was made, so the outputs
    lie on the crop's own grid (a cheaper variant: the backbone runs at the crop's resolution).
    """
    if mode == "native":
        if not hasattr(teacher, "forward_native"):
            raise ValueError("teacher mode 'native' needs a teacher with forward_native (an SRTeacher)")
        return teacher.forward_native(lr)
    if hasattr(teacher, "forward_features"):
        return teacher.forward_features(lr)
    return teacher(lr)


class FrozenTeacher(nn.Module):
    """A frozen SR teacher: no gradients, always in eval mode (batch-norm statistics fixed).

    The wrapped module must give ``(sr_image, sr_features)`` through ``forward_features(lr)``
    (:class:`~.srresnet.SRResNet`) or ``forward(lr)``; see :func:`probe_teacher`. The SR image is
    clamped to [-1, 1], the range of the crops (SRResNet's output is not squashed).
    """

    def __init__(self, teacher: nn.Module, *, mode: str = "upscale"):
        super().__init__()
        if mode not in TEACHER_MODES:
            raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, got {mode!r}")
        self.mode = mode
        self.net = teacher
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):  # noqa: D102 - the teacher never leaves eval mode
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            sr, feats = _call_teacher(self.net, lr, self.mode)
        return sr.clamp(-1.0, 1.0).detach(), feats.detach()


def probe_teacher(teacher: nn.Module, *, rows: int = 16, cols: int = 16,
                  mode: str = "upscale") -> tuple[int, int]:
    """Run ``teacher`` on a zero (1, 1, rows, cols) input; return (scale, feature_channels).

    The teacher is called as in :class:`FrozenTeacher` (``forward_features`` when present).

    Raises ValueError when the outputs are not ``(sr_image (1, 1, s*rows, s*cols),
    sr_features (1, C, s*rows, s*cols))`` for one integer s >= 1.
    """
    param = next(iter(teacher.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            out = _call_teacher(teacher, torch.zeros(1, 1, rows, cols, device=device), mode)
    finally:
        teacher.train(was_training)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError("the teacher must return (sr_image, sr_features)")
    sr, feats = out
    if sr.ndim != 4 or sr.shape[1] != 1 or sr.shape[2] % rows or sr.shape[3] % cols:
        raise ValueError(f"the teacher's SR image must be (1, 1, s*{rows}, s*{cols}), got {tuple(sr.shape)}")
    scale = sr.shape[2] // rows
    if sr.shape[3] // cols != scale or tuple(feats.shape[2:]) != tuple(sr.shape[2:]) or feats.ndim != 4:
        raise ValueError(f"the teacher's features must be (1, C, {sr.shape[2]}, {sr.shape[3]}), "
                         f"got {tuple(feats.shape)} (SR image {tuple(sr.shape)})")
    return int(scale), int(feats.shape[1])


class SegNet(nn.Module):
    """One segmentation network of :data:`VARIANTS` (see the module docstring for the contract).

    Build it with :func:`build_seg_model`. Attributes: ``variant``, ``teacher``
    (:class:`FrozenTeacher` or None), ``drtm`` (:class:`~.drtm.DRTM` or None), ``backbone``,
    ``scale`` (resolution factor of the backbone over the crop: 1 for LR input).
    """

    def __init__(self, variant: Variant, backbone: nn.Module, *, teacher: FrozenTeacher | None,
                 drtm: DRTM | None, scale: int, input_shrink: int = 1):
        super().__init__()
        if int(input_shrink) < 1:
            raise ValueError(f"input_shrink must be >= 1, got {input_shrink!r}")
        if int(input_shrink) > 1 and teacher is not None:
            check_teacher_for_shrink(int(input_shrink), teacher_scale=int(scale) * int(input_shrink),
                                     teacher_mode=teacher.mode)
        self.input_shrink = int(input_shrink)
        self.variant = variant
        self.teacher = teacher
        self.drtm = drtm
        self.backbone = backbone
        self.scale = int(scale)
        self.soft_head = bool(variant.soft_head)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"image must be (batch, 1, rows, cols), got {tuple(image.shape)}")
        if self.input_shrink > 1 and self.teacher is None:
            image = shrink_then_bicubic(image, self.input_shrink)
        if self.teacher is None:
            x = image
        elif self.input_shrink > 1:
            # arms B1/B2: the shrunk crop is the teacher's LR input; its x`input_shrink` outputs
            # and DRTM's bicubic context branch lie on the crop's own grid (self.scale == 1)
            lr = shrink_by_area(image, self.input_shrink)
            sr, feats = self.teacher(lr)
            x = sr if self.drtm is None else self.drtm(lr, sr, feats)
        else:
            sr, feats = self.teacher(image)
            x = sr if self.drtm is None else self.drtm(image, sr, feats)
        head = self.backbone(x).float()
        prob = torch.sigmoid(head[:, :1])
        soft = torch.tanh(head[:, 1:2]) if self.soft_head else 2.0 * prob - 1.0
        if self.scale > 1:
            prob = F.avg_pool2d(prob, self.scale)
            soft = F.avg_pool2d(soft, self.scale)
        return prob, soft


def check_teacher_for_shrink(input_shrink: int, *, teacher_scale: int, teacher_mode: str) -> None:
    """Refuse a teacher that cannot take the crop shrunk x``input_shrink`` (arms B1/B2): it must
    run in ``upscale`` mode with scale == ``input_shrink``, so its outputs land on the crop's
    grid. Raises ValueError naming both numbers."""
    if teacher_mode != "upscale":
        raise ValueError(f"input_shrink={input_shrink} with an SR teacher needs teacher_mode 'upscale' "
                         f"(the shrunk crop is the teacher's LR input), got {teacher_mode!r}")
    if teacher_scale != input_shrink:
        raise ValueError(f"input_shrink={input_shrink} needs a x{input_shrink} SR teacher (its outputs must land on "
                         f"the crop's grid), but the teacher's scale is {teacher_scale}")


def shrink_by_area(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``image`` (B, C, H, W) averaged over ``factor`` x ``factor`` blocks: (B, C, H/factor,
    W/factor). The degradation of the truth study's arms B (B0's input before the bicubic, B1/B2's
    teacher input); of the windowed crop, so it matches an SR teacher trained with
    ``data.downsample: windowed_area``. Raises ValueError when H or W is not a multiple of
    ``factor``."""
    rows, cols = image.shape[-2:]
    if rows % factor or cols % factor:
        raise ValueError(f"input_shrink={factor} needs a crop side that is a multiple of it, got {rows}x{cols}")
    return F.avg_pool2d(image, factor)


def shrink_then_bicubic(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The crop as an input that lost detail (arm B0): ``image`` (B, C, H, W) averaged over
    ``factor`` x ``factor`` blocks (:func:`shrink_by_area`), then bicubic-up-sampled x``factor``
    back to (B, C, H, W) (half-pixel centres, ``align_corners=False``; edges replicated) and
    clamped to [-1, 1]. Raises ValueError when H or W is not a multiple of ``factor``."""
    small = shrink_by_area(image, factor)
    return F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def build_seg_model(variant: str | Variant, *, widths: Sequence[int] = (64, 128, 256, 512),
                    reduction: int = 16, spatial_kernel: int = 7,
                    teacher: nn.Module | None = None, teacher_mode: str = "upscale",
                    drtm_fc: str = "sk", input_shrink: int = 1) -> SegNet:
    """Build the network of ``variant``.

    Parameters
    ----------
    variant : a name of :data:`VARIANTS` or a :class:`Variant`.
    widths : backbone widths per level, top to bottom.
    reduction, spatial_kernel : CBAM settings (ignored by the U-Net).
    teacher : the pretrained SR teacher (an SRResNet, or any module giving ``(sr_image,
        sr_features)``, see :class:`FrozenTeacher`); required by
        the "sr" and "drtm" inputs and ignored (not stored, never called) otherwise. It is
        wrapped in :class:`FrozenTeacher`; its scale and feature width are read by
        :func:`probe_teacher`.
    teacher_mode : "upscale" (the paper: SR image and features x``scale`` of the crop, backbone
        and head at that resolution, maps pooled back) or "native" (see :func:`_call_teacher`).
    drtm_fc : DRTM's Eq. 12 FC: "sk" (the paper's reduction + two heads) or "joint" (ablation).
    input_shrink : 1, or the factor of the input stage: LR variants shrink then bicubic-up the
        crop (arm B0); teacher variants feed the shrunk crop to a x``input_shrink`` teacher in
        ``upscale`` mode (arms B1/B2; module docstring).

    Raises
    ------
    ValueError : unknown variant, bad widths, missing or malformed teacher; with
        ``input_shrink > 1``, a teacher whose scale differs from it or in ``native`` mode.
    """
    v = get_variant(variant)
    out_channels = 2 if v.soft_head else 1
    frozen = drtm = None
    scale = 1
    in_channels = 1
    if v.uses_teacher:
        if teacher is None:
            raise ValueError(f"variant {v.name!r} needs the SR teacher (input={v.input!r}); none given")
        if int(input_shrink) > 1 and teacher_mode != "upscale":   # before probing: a mode error, not a shape one
            check_teacher_for_shrink(int(input_shrink), teacher_scale=0, teacher_mode=teacher_mode)
        teacher_scale, feature_channels = probe_teacher(teacher, mode=teacher_mode)
        scale = teacher_scale
        if int(input_shrink) > 1:
            check_teacher_for_shrink(int(input_shrink), teacher_scale=teacher_scale, teacher_mode=teacher_mode)
            scale = 1                       # the x`input_shrink` outputs land on the crop's grid
        frozen = FrozenTeacher(teacher, mode=teacher_mode)
        if v.input == "drtm":               # DRTM up-samples the teacher's input by the teacher's scale
            drtm = DRTM(feature_channels, scale=teacher_scale, detail_enhancement=v.detail_enhancement,
                        selective_fusion=v.selective_fusion, fc=drtm_fc)
            in_channels = feature_channels
    if v.backbone == "unet":
        backbone: nn.Module = UNet(in_channels, out_channels, widths=widths)
    else:
        backbone = CBAMUNet(in_channels, out_channels, widths=widths, reduction=reduction,
                            spatial_kernel=spatial_kernel)
    return SegNet(v, backbone, teacher=frozen, drtm=drtm, scale=scale, input_shrink=input_shrink)
