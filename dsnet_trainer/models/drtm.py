"""Detailed Representation Transfer Module (DRTM), DSNet Sec. III-C, Eqs. 9-14.

Inputs (all tensors (batch, channels, rows, cols)):

* ``lr_image`` (B, 1, h, w): the normalised low-resolution crop;
* ``sr_image`` (B, 1, s*h, s*w): the frozen teacher's super-resolved crop;
* ``sr_features`` (B, C, s*h, s*w): F_SR, the feature map of the teacher's last decoder block.

Branches (equation numbers as in the paper)::

    F_c = BN(ReLU(conv3x3([up_s(I_LR); I_SR])))                    context branch
    F_h = sigmoid(C_h(F_SR) - C_l(F_SR))                            detail mask      (Eq. 9)
          C_h: 1x1 conv;  C_l: 3x3 conv, dilation 2 (a wider, smoother view, so C_h - C_l is a
          learned high-pass of F_SR)
    F_d = F_SR * F_h                                                detail branch    (Eq. 10)
    v_z = GAP([F_d; F_c])                                           (B, 2C)          (Eq. 11)
    z = ReLU(W_z v_z);  v_c = W_c z;  v_d = W_d z                   FC               (Eq. 12)
    (a, b) = softmax over the two branches of (v_c, v_d), per channel               (Eq. 13)
    F_out = a * F_c + b * F_d                                       selective fusion (Eq. 14)

Eq. 12 ("an FC reduces v_z to C, then predicts v_c and v_d") is implemented in the
selective-kernel form the text follows: ``W_z`` is Linear(2C -> C), then two heads
Linear(C -> C). The paper names no activation after the reduction; ReLU is our choice (SKNet's).
``fc="joint"`` keeps the earlier single Linear(2C -> 2C) whose output is split into (v_d, v_c),
for an ablation only.

``up_s`` is bicubic interpolation (align_corners False; the identity when s = 1, the teacher's
"native" mode of :mod:`.dsnet`). ``F_out`` has C channels at the SR
resolution and is the backbone's input.

Ablations (Table V): ``detail_enhancement=False`` uses F_d = F_SR (no C_h, C_l);
``selective_fusion=False`` uses fixed equal weights, F_out = (F_c + F_d) / 2 (no GAP, no FC).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DRTM", "FC_FORMS"]

FC_FORMS = ("sk", "joint")


class DRTM(nn.Module):
    """Detailed Representation Transfer Module (see the module docstring).

    Parameters
    ----------
    feature_channels : C, channels of the teacher's F_SR (and of the output).
    scale : SR factor s (4 in the paper).
    detail_enhancement : keep the detail mask F_h (Eq. 11-12); False for the Table V ablation.
    selective_fusion : keep the channel-wise softmax fusion (Eqs. 11-14); False for Table V.
    fc : "sk" (Eq. 12: Linear(2C->C) + ReLU, then Linear(C->C) heads for v_c and v_d) or
        "joint" (one Linear(2C->2C), the pre-paper-exact form, for ablations).
    """

    def __init__(self, feature_channels: int, *, scale: int = 4, detail_enhancement: bool = True,
                 selective_fusion: bool = True, fc: str = "sk"):
        super().__init__()
        if feature_channels < 1 or scale < 1:
            raise ValueError(f"feature_channels and scale must be >= 1, got {feature_channels}, {scale}")
        c = int(feature_channels)
        self.feature_channels = c
        self.scale = int(scale)
        self.detail_enhancement = bool(detail_enhancement)
        self.selective_fusion = bool(selective_fusion)
        if fc not in FC_FORMS:
            raise ValueError(f"fc must be one of {FC_FORMS}, got {fc!r}")
        self.fc_form = fc
        self.context = nn.Sequential(nn.Conv2d(2, c, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                     nn.BatchNorm2d(c))
        if self.detail_enhancement:
            self.c_high = nn.Conv2d(c, c, 1)
            self.c_low = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        if self.selective_fusion:
            if fc == "sk":
                self.fc_reduce = nn.Linear(2 * c, c)
                self.fc_c = nn.Linear(c, c)
                self.fc_d = nn.Linear(c, c)
            else:
                self.fc = nn.Linear(2 * c, 2 * c)

    def forward(self, lr_image: torch.Tensor, sr_image: torch.Tensor,
                sr_features: torch.Tensor) -> torch.Tensor:
        """Return F_out, shape (B, C, s*h, s*w)."""
        b, _, h, w = lr_image.shape
        hr = (h * self.scale, w * self.scale)
        if tuple(sr_image.shape[-2:]) != hr or tuple(sr_features.shape[-2:]) != hr:
            raise ValueError(f"teacher outputs must be {hr} (x{self.scale} of the input {(h, w)}), got "
                             f"sr_image {tuple(sr_image.shape)}, sr_features {tuple(sr_features.shape)}")
        if sr_features.shape[1] != self.feature_channels:
            raise ValueError(f"sr_features must have {self.feature_channels} channels, got "
                             f"{sr_features.shape[1]}")
        up = lr_image if self.scale == 1 else F.interpolate(lr_image, size=hr, mode="bicubic",
                                                             align_corners=False)
        f_c = self.context(torch.cat([up, sr_image], dim=1))
        if self.detail_enhancement:
            f_h = torch.sigmoid(self.c_high(sr_features) - self.c_low(sr_features))
            f_d = sr_features * f_h
        else:
            f_d = sr_features
        if not self.selective_fusion:
            return 0.5 * (f_c + f_d)
        v_z = torch.mean(torch.cat([f_d, f_c], dim=1), dim=(2, 3))                # Eq. 11, (B, 2C)
        if self.fc_form == "sk":                                                    # Eq. 12
            z = torch.relu(self.fc_reduce(v_z))
            v = torch.stack([self.fc_d(z), self.fc_c(z)], dim=1)                   # (B, 2, C): v_d, v_c
        else:
            v = self.fc(v_z).view(b, 2, self.feature_channels)
        weights = torch.softmax(v, dim=1)                                          # Eq. 13
        b_d = weights[:, 0].view(b, self.feature_channels, 1, 1)
        a_c = weights[:, 1].view(b, self.feature_channels, 1, 1)
        return a_c * f_c + b_d * f_d                                               # Eq. 14
