"""CBAM attention (Woo et al., ECCV 2018) and the residual CBAM block of the DSNet backbone.

DSNet (Wang, Xu et al., TNNLS 2023, Fig. 4) builds its encoder and decoder from blocks of two
3x3 convolutions, each followed by ReLU and batch norm, then channel attention, then spatial
attention, with a residual shortcut around the whole block.

The paper does not give the CBAM reduction ratio nor the spatial kernel; we keep CBAM's own
defaults (reduction 16, 7x7 spatial kernel) and clamp the hidden width to at least 1 channel so
that the tiny test widths (8, 16) still work.

Tensor layout everywhere: (batch, channels, rows, cols).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM", "CBAMResBlock", "conv3x3_relu_bn"]


class ChannelAttention(nn.Module):
    """Channel attention M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))) (CBAM Eq. 2).

    Parameters
    ----------
    channels : number of input (and output) channels.
    reduction : hidden width of the shared MLP is ``max(1, channels // reduction)``.
    """

    def __init__(self, channels: int, *, reduction: int = 16):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got {channels}, {reduction}")
        hidden = max(1, channels // reduction)
        # The shared MLP as 1x1 convolutions on the pooled (B, C, 1, 1) descriptors.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        weight = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        return x * weight


class SpatialAttention(nn.Module):
    """Spatial attention M_s(F) = sigmoid(conv_k([AvgPool_c(F); MaxPool_c(F)])) (CBAM Eq. 3).

    Parameters
    ----------
    kernel_size : odd side of the convolution over the 2-channel pooled map (7 in CBAM).
    """

    def __init__(self, *, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        mx = torch.amax(x, dim=1, keepdim=True)
        weight = torch.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))
        return x * weight


class CBAM(nn.Module):
    """Channel attention followed by spatial attention (the sequential order CBAM found best)."""

    def __init__(self, channels: int, *, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction=reduction)
        self.spatial = SpatialAttention(kernel_size=spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def conv3x3_relu_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1), ReLU, batch norm: the order Fig. 4 of the paper draws."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels),
    )


class CBAMResBlock(nn.Module):
    """Residual CBAM block: y = CBAM(body(x)) + shortcut(x).

    ``body`` is two :func:`conv3x3_relu_bn`; ``shortcut`` is the identity when the widths agree
    and a 1x1 convolution + batch norm otherwise. Spatial size is preserved.

    Parameters
    ----------
    in_channels, out_channels : widths.
    reduction, spatial_kernel : CBAM settings (see module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, *, reduction: int = 16,
                 spatial_kernel: int = 7):
        super().__init__()
        self.body = nn.Sequential(conv3x3_relu_bn(in_channels, out_channels),
                                  conv3x3_relu_bn(out_channels, out_channels))
        self.attention = CBAM(out_channels, reduction=reduction, spatial_kernel=spatial_kernel)
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.body(x)) + self.shortcut(x)
