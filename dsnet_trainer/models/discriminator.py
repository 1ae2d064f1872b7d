"""Pixel-wise conditional discriminator (DSNet Fig. 7; pix2pix's PixelDiscriminator).

The discriminator sees the crop and a Soft Mask (real: the label; fake: DSNet's prediction),
both normalised to [-1, 1], stacked as two channels, and scores every pixel independently with
1x1 convolutions::

    conv1x1(2 -> ndf), LeakyReLU(0.2)
    conv1x1(ndf -> 2 ndf), BN, LeakyReLU(0.2)
    conv1x1(2 ndf -> 1)                       -> a real/fake logit per pixel

The paper draws the shape but not the widths; ``ndf = 64`` is pix2pix's default. A 1x1
receptive field judges each pixel's (intensity, alpha) pair, which is what a Soft Mask's
boundary values depend on; it cannot judge shapes, which the Dice loss covers.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PixelDiscriminator"]


class PixelDiscriminator(nn.Module):
    """Per-pixel real/fake logits, shape (B, 1, H, W), for (image, soft_mask) pairs.

    Parameters
    ----------
    in_channels : channels of the condition image (1 for CT).
    mask_channels : channels of the judged map (1: the Soft Mask).
    ndf : width of the first layer.
    """

    def __init__(self, in_channels: int = 1, mask_channels: int = 1, *, ndf: int = 64):
        super().__init__()
        if ndf < 1:
            raise ValueError(f"ndf must be >= 1, got {ndf}")
        self.in_channels = int(in_channels)
        self.mask_channels = int(mask_channels)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + mask_channels, ndf, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, 2 * ndf, 1, bias=False),
            nn.BatchNorm2d(2 * ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * ndf, 1, 1),
        )

    def forward(self, image: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != self.in_channels or soft_mask.shape[1] != self.mask_channels \
                or image.shape[0] != soft_mask.shape[0] or image.shape[2:] != soft_mask.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and soft_mask {tuple(soft_mask.shape)} must be "
                             f"(B, {self.in_channels}, H, W) and (B, {self.mask_channels}, H, W)")
        return self.net(torch.cat([image, soft_mask], dim=1))
