"""U-Net baseline (Ronneberger et al., MICCAI 2015) and the DSNet CBAM backbone (Fig. 4).

Both are encoder/decoder networks with U-Net skip connections (concatenation) and a 3x3
convolution head. They differ in the blocks and in how they change resolution:

=========================  ===============================  ======================================
                           :class:`UNet` (baseline)         :class:`CBAMUNet` (DSNet backbone)
=========================  ===============================  ======================================
block                      two 3x3 conv + BN + ReLU         :class:`~.cbam.CBAMResBlock`
down-sampling              2x2 max-pool                     4x4 conv, stride 2, padding 1, ReLU
up-sampling                2x2 transposed conv              4x4 transposed conv (s2, p1) + ReLU
=========================  ===============================  ======================================

Deviations from the original U-Net, written down so the baseline is reproducible: padded 3x3
convolutions (output size = input size, so metrics compare on the same pixels), batch norm after
each convolution (the original has none; the DSNet backbone has it too, so the comparison is about
the blocks), and the same widths as the DSNet backbone (the original went 64..1024 over 5 levels).

Both return the raw head map, shape (batch, ``out_channels``, rows, cols): channel 0 is the binary
logit; channel 1, when present, is the pre-tanh Soft Mask. :mod:`.dsnet` turns that into
probabilities. ``rows`` and ``cols`` must be divisible by ``2 ** (len(widths) - 1)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .cbam import CBAMResBlock

__all__ = ["UNet", "CBAMUNet", "check_widths"]


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Validate a width list (>= 2 levels, positive ints) and return it as a tuple."""
    out = tuple(int(w) for w in widths)
    if len(out) < 2 or any(w < 1 for w in out) or any(w != v for w, v in zip(out, widths)):
        raise ValueError(f"widths must be >= 2 positive integers, got {list(widths)}")
    return out


def _check_size(x: torch.Tensor, in_channels: int, levels: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"input must be (batch, {in_channels}, rows, cols), got {tuple(x.shape)}")
    factor = 2 ** (levels - 1)
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"input rows/cols must be divisible by {factor}, got {tuple(x.shape[2:])}")


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Original-style U-Net with padded convolutions (see the module docstring).

    Parameters
    ----------
    in_channels : input channels (1 for a CT crop).
    out_channels : head channels (1: binary logit; 2: binary logit + Soft Mask).
    widths : widths per level, top to bottom, e.g. (64, 128, 256, 512).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *,
                 widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.widths = check_widths(widths)
        self.in_channels = int(in_channels)
        w = self.widths
        self.encoders = nn.ModuleList(
            [_DoubleConv(in_channels, w[0])] + [_DoubleConv(w[i - 1], w[i]) for i in range(1, len(w))])
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2)
                                  for i in range(len(w) - 1, 0, -1)])
        self.decoders = nn.ModuleList([_DoubleConv(2 * w[i - 1], w[i - 1])
                                       for i in range(len(w) - 1, 0, -1)])
        self.head = nn.Conv2d(w[0], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.in_channels, len(self.widths))
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class CBAMUNet(nn.Module):
    """DSNet backbone: U-Net of residual CBAM blocks with strided-conv down-sampling (Fig. 4).

    Encoder level 0 is a :class:`CBAMResBlock` (``in_channels`` -> ``widths[0]``); level i > 0 is
    a 4x4/stride-2 convolution + ReLU (``widths[i-1]`` -> ``widths[i]``) then a block. Decoder
    level i is a 4x4/stride-2 transposed convolution + ReLU (``widths[i]`` -> ``widths[i-1]``),
    concatenation with the encoder's level i-1 output, then a block (2 ``widths[i-1]`` ->
    ``widths[i-1]``). The head is one 3x3 convolution.

    Parameters
    ----------
    in_channels : input channels (1 for the LR or SR image, the DRTM width for DSNet).
    out_channels : head channels (see the module docstring).
    widths : widths per level, top to bottom.
    reduction, spatial_kernel : CBAM settings.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *,
                 widths: Sequence[int] = (64, 128, 256, 512), reduction: int = 16,
                 spatial_kernel: int = 7):
        super().__init__()
        self.widths = check_widths(widths)
        self.in_channels = int(in_channels)
        w = self.widths
        block = dict(reduction=reduction, spatial_kernel=spatial_kernel)
        self.stem = CBAMResBlock(in_channels, w[0], **block)
        self.downs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(w[i - 1], w[i], 4, stride=2, padding=1), nn.ReLU(inplace=True))
            for i in range(1, len(w))])
        self.encoders = nn.ModuleList([CBAMResBlock(w[i], w[i], **block) for i in range(1, len(w))])
        self.ups = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(w[i], w[i - 1], 4, stride=2, padding=1),
                          nn.ReLU(inplace=True))
            for i in range(len(w) - 1, 0, -1)])
        self.decoders = nn.ModuleList([CBAMResBlock(2 * w[i - 1], w[i - 1], **block)
                                       for i in range(len(w) - 1, 0, -1)])
        self.head = nn.Conv2d(w[0], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.in_channels, len(self.widths))
        x = self.stem(x)
        skips = [x]
        for down, encoder in zip(self.downs, self.encoders):
            x = encoder(down(x))
            skips.append(x)
        skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
