"""SRResNet generator for 1-channel CT (Ledig et al., CVPR 2017), the SR teacher of DSNet
(Wang, Xu et al., TNNLS 2023, Sec. III-B3 (1)).

    lr (N,1,h,w) -> conv9x9 -> PReLU = f0
                 -> n_blocks x [conv3 -> (BN) -> PReLU -> conv3 -> (BN), + skip]
                 -> conv3 -> (BN), + f0                               (global skip)
                 -> log2(scale) x [conv3 (C -> 4C) -> PixelShuffle(2) -> PReLU]   "decoder"
                 -> conv9x9 (C -> 1) = residual
    sr = bicubic_up(lr) + residual          (residual_bicubic=True, the default)

The last conv is initialised to zero, so an untrained generator returns exactly the bicubic
up-sampling of its input and training only has to learn the missing detail; this makes short
runs beat bicubic reliably and never start worse than it. Output is not squashed by tanh (that
would break the identity start); callers clamp to [-1, 1] where a valid image is needed.

``forward_features`` also returns the feature map of the last decoder (up-sampling) block,
(N, C, h*scale, w*scale): the representation DSNet's DRTM transfers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"generator.norm must be 'batch' or 'none', got {kind!r}")


class ResidualBlock(nn.Module):
    """conv3 -> (BN) -> PReLU -> conv3 -> (BN), plus the identity."""

    def __init__(self, channels: int, *, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"), _norm(norm, channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"), _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleBlock(nn.Module):
    """conv3 (C -> factor^2 C) -> PixelShuffle(factor) -> PReLU (sub-pixel convolution)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * factor * factor, 3, padding=1)
        self.shuffle = nn.PixelShuffle(factor)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """SRResNet x``scale`` for single-channel images in [-1, 1].

    Parameters
    ----------
    in_channels : int
        Image channels (1 for CT).
    n_channels : int
        Feature channels C (64 in SRGAN).
    n_blocks : int
        Residual blocks (16 in SRGAN).
    scale : {2, 3, 4, 8}
        Up-sampling factor; powers of two use log2(scale) sub-pixel x2 blocks, 3 one x3 block.
    norm : {"batch", "none"}
        Batch normalisation inside residual blocks (SRGAN uses it; "none" as in EDSR).
    residual_bicubic : bool
        Add the bicubic up-sampling of the input to the output (identity start, see module doc).

    Input ``lr`` (N, in_channels, h, w) -> output (N, in_channels, h*scale, w*scale).
    """

    def __init__(self, *, in_channels: int = 1, n_channels: int = 64, n_blocks: int = 16, scale: int = 4,
                 norm: str = "batch", residual_bicubic: bool = True):
        super().__init__()
        if scale not in (2, 3, 4, 8):
            raise ConfigError(f"generator.scale must be 2, 3, 4 or 8, got {scale}")
        if n_channels < 1 or n_blocks < 0 or in_channels < 1:
            raise ConfigError(f"generator needs n_channels >= 1, n_blocks >= 0, in_channels >= 1; got "
                              f"{n_channels}, {n_blocks}, {in_channels}")
        self.in_channels = in_channels
        self.n_channels = n_channels
        self.scale = scale
        self.residual_bicubic = residual_bicubic
        self.head = nn.Sequential(nn.Conv2d(in_channels, n_channels, 9, padding=4), nn.PReLU(n_channels))
        self.body = nn.Sequential(*[ResidualBlock(n_channels, norm=norm) for _ in range(n_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(n_channels, n_channels, 3, padding=1, bias=norm == "none"),
                                       _norm(norm, n_channels))
        factors = [3] if scale == 3 else [2] * int(math.log2(scale))
        self.decoder = nn.Sequential(*[UpsampleBlock(n_channels, f) for f in factors])
        self.tail = nn.Conv2d(n_channels, in_channels, 9, padding=4)
        self._init_weights(norm)

    def _init_weights(self, norm: str) -> None:
        if norm == "none":
            # Without BN, scale the residual branches down (as EDSR/BasicSR) so that 16+ blocks
            # start close to the identity and the first steps stay stable.
            for block in self.body:
                for m in block.body:
                    if isinstance(m, nn.Conv2d):
                        m.weight.data.mul_(0.1)
        if self.residual_bicubic:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def _check(self, lr: torch.Tensor) -> None:
        if not isinstance(lr, torch.Tensor) or lr.ndim != 4 or lr.shape[1] != self.in_channels:
            shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
            raise InputError(f"lr must be a (N, {self.in_channels}, h, w) tensor, got {shape}")
        if lr.shape[-1] < 2 or lr.shape[-2] < 2:
            raise InputError(f"lr is too small for the generator: {tuple(lr.shape)} (need h, w >= 2)")

    def forward_features(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sr, features)``: the SR image (N, in_channels, h*s, w*s) and the output of the last
        decoder block (N, n_channels, h*s, w*s)."""
        self._check(lr)
        f0 = self.head(lr)
        f = self.body_tail(self.body(f0)) + f0
        feats = self.decoder(f)
        out = self.tail(feats)
        if self.residual_bicubic:
            out = out + F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out, feats

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.forward_features(lr)[0]
