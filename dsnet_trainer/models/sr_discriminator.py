"""SRGAN's VGG-style discriminator (Ledig et al., CVPR 2017, Fig. 4) for 1-channel images.

    conv3(C) -> LReLU -> conv3/2(C) -> BN -> LReLU                       stage 0
    for k in 1..n_stages-1:  conv3(2^k C) -> BN -> LReLU -> conv3/2(2^k C) -> BN -> LReLU
    global average pool -> Linear(fc_channels) -> LReLU -> Linear(1)   (a real/fake logit)

The original flattens a fixed 6x6 map into its dense layer; pooling instead lets one
discriminator take any patch size of at least ``2 ** n_stages`` pixels (the SR config's
``hr_patch_px``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, InputError


class VGGDiscriminator(nn.Module):
    """Real/fake logits for (N, in_channels, H, W) images; ``return_features`` also gives the
    activations after each stage (for an optional feature-matching loss)."""

    def __init__(self, *, in_channels: int = 1, base_channels: int = 64, n_stages: int = 4,
                 norm: str = "batch", fc_channels: int = 1024):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ConfigError(f"discriminator.norm must be 'batch' or 'none', got {norm!r}")
        if n_stages < 1 or base_channels < 1:
            raise ConfigError(f"discriminator needs n_stages >= 1 and base_channels >= 1, got {n_stages}, "
                              f"{base_channels}")

        def bn(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if norm == "batch" else nn.Identity()

        self.in_channels = in_channels
        self.n_stages = n_stages
        stages = []
        c_in = in_channels
        for k in range(n_stages):
            c = base_channels * 2 ** k
            first = [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)] if k == 0 else \
                [nn.Conv2d(c_in, c, 3, padding=1), bn(c), nn.LeakyReLU(0.2, inplace=True)]
            stages.append(nn.Sequential(*first, nn.Conv2d(c, c, 3, stride=2, padding=1), bn(c),
                                        nn.LeakyReLU(0.2, inplace=True)))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, fc_channels),
                                  nn.LeakyReLU(0.2, inplace=True), nn.Linear(fc_channels, 1))

    @property
    def min_size_px(self) -> int:
        return 2 ** self.n_stages

    def forward(self, x: torch.Tensor, *, return_features: bool = False):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"discriminator input must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size_px:
            raise InputError(f"discriminator input {tuple(x.shape[-2:])} is smaller than {self.min_size_px}px "
                             f"(2**n_stages); raise data.hr_patch_px or lower discriminator.n_stages")
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.head(x).squeeze(1)
        return (logits, feats) if return_features else logits
