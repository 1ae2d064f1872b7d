"""CBAM and the residual CBAM block against hand computations with the modules' own weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import correlate

from dsnet_trainer.models.cbam import CBAM, CBAMResBlock, ChannelAttention, SpatialAttention


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("channels,reduction", [(8, 4), (6, 16)])
def test_channel_attention_matches_numpy(channels, reduction):
    torch.manual_seed(0)
    mod = ChannelAttention(channels, reduction=reduction)
    x = torch.randn(2, channels, 5, 7)
    w1 = mod.mlp[0].weight.detach().numpy()[:, :, 0, 0]  # (hidden, C)
    w2 = mod.mlp[2].weight.detach().numpy()[:, :, 0, 0]  # (C, hidden)
    assert w1.shape[0] == max(1, channels // reduction)
    xn = x.numpy()

    def mlp(v):  # v: (B, C)
        return np.maximum(v @ w1.T, 0) @ w2.T

    weight = _sigmoid(mlp(xn.mean(axis=(2, 3))) + mlp(xn.max(axis=(2, 3))))
    expected = xn * weight[:, :, None, None]
    np.testing.assert_allclose(mod(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 7])
def test_spatial_attention_matches_scipy_correlation(kernel):
    torch.manual_seed(1)
    mod = SpatialAttention(kernel_size=kernel)
    x = torch.randn(2, 3, 9, 8)
    w = mod.conv.weight.detach().numpy()[0]  # (2, k, k)
    xn = x.numpy()
    for b in range(2):
        pooled = np.stack([xn[b].mean(axis=0), xn[b].max(axis=0)])
        logits = sum(correlate(pooled[c], w[c], mode="same") for c in range(2))
        expected = xn[b] * _sigmoid(logits)[None]
        np.testing.assert_allclose(mod(x)[b].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cbam_is_channel_then_spatial():
    torch.manual_seed(2)
    mod = CBAM(8, reduction=2, spatial_kernel=3)
    x = torch.randn(1, 8, 6, 6)
    np.testing.assert_allclose(mod(x).detach().numpy(), mod.spatial(mod.channel(x)).detach().numpy())
    reversed_order = mod.channel(mod.spatial(x))
    assert not torch.allclose(mod(x), reversed_order)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="kernel_size"):
        SpatialAttention(kernel_size=4)
    with pytest.raises(ValueError, match="reduction"):
        ChannelAttention(8, reduction=0)


@pytest.mark.parametrize("cin,cout", [(8, 8), (1, 8)])
def test_res_block_shortcut(cin, cout):
    torch.manual_seed(3)
    block = CBAMResBlock(cin, cout, reduction=4, spatial_kernel=3).eval()
    x = torch.randn(2, cin, 8, 8)
    # Zero the last batch norm's affine map: the body outputs 0, CBAM(0) = 0, so y = shortcut(x).
    bn = block.body[-1][-1]
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
    y = block(x)
    if cin == cout:
        assert isinstance(block.shortcut, torch.nn.Identity)
        np.testing.assert_allclose(y.detach().numpy(), x.numpy(), atol=1e-6)
    else:
        conv, norm = block.shortcut
        assert conv.kernel_size == (1, 1)
        w = conv.weight.detach().numpy()[:, :, 0, 0]
        proj = np.einsum("oc,bchw->bohw", w, x.numpy())
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().numpy()
        expected = (proj - norm.running_mean.numpy()[None, :, None, None]) * scale[None, :, None, None] \
            + norm.bias.detach().numpy()[None, :, None, None]
        np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_res_block_layer_order_is_conv_relu_bn():
    block = CBAMResBlock(4, 8)
    kinds = [type(m).__name__ for m in block.body[0]]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert block.body[0][0].kernel_size == (3, 3) and block.body[1][0].kernel_size == (3, 3)
