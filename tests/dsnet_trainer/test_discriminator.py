"""Pixel-wise conditional discriminator (Fig. 7): per-pixel decisions, conditioning, layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dsnet_trainer.models.discriminator import PixelDiscriminator


def _net(seed=0):
    torch.manual_seed(seed)
    net = PixelDiscriminator(ndf=8).eval()
    with torch.no_grad():
        bn = net.net[3]
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return net


def test_every_convolution_is_1x1():
    convs = [m for m in PixelDiscriminator(ndf=8).modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 3
    assert convs[0].in_channels == 2 and convs[-1].out_channels == 1


def test_matches_per_pixel_mlp():
    net = _net()
    image, soft = torch.randn(2, 1, 5, 6), torch.rand(2, 1, 5, 6) * 2 - 1
    p = {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    x = np.concatenate([image.numpy(), soft.numpy()], axis=1).transpose(0, 2, 3, 1)  # (B,H,W,2)
    h = x @ p["net.0.weight"][:, :, 0, 0].T + p["net.0.bias"]
    h = np.where(h > 0, h, 0.2 * h)
    h = h @ p["net.2.weight"][:, :, 0, 0].T
    h = (h - p["net.3.running_mean"]) / np.sqrt(p["net.3.running_var"] + 1e-5) * p["net.3.weight"] + p["net.3.bias"]
    h = np.where(h > 0, h, 0.2 * h)
    expected = (h @ p["net.5.weight"][:, :, 0, 0].T + p["net.5.bias"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(net(image, soft).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_decisions_are_per_pixel_and_conditioned_on_the_image():
    net = _net(1)
    image, soft = torch.randn(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    base = net(image, soft)
    soft2 = soft.clone()
    soft2[0, 0, 3, 4] += 0.5
    changed = (net(image, soft2) - base).abs()[0, 0] > 0
    assert changed[3, 4] and changed.sum() == 1
    image2 = image.clone()
    image2[0, 0, 6, 1] -= 1.0
    changed = (net(image2, soft) - base).abs()[0, 0] > 0
    assert changed[6, 1] and changed.sum() == 1
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    flat = lambda t: t.reshape(1, 1, 64)[..., perm].reshape(1, 1, 8, 8)  # noqa: E731
    torch.testing.assert_close(net(flat(image), flat(soft)), flat(base))


def test_mismatched_inputs_raise():
    net = PixelDiscriminator(ndf=4)
    with pytest.raises(ValueError, match="soft_mask"):
        net(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 4))
    with pytest.raises(ValueError, match="ndf"):
        PixelDiscriminator(ndf=0)
