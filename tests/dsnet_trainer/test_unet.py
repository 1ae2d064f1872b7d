"""U-Net baseline and the DSNet CBAM backbone: structure (Fig. 4), shapes, skip connections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsnet_trainer.models.cbam import CBAMResBlock
from dsnet_trainer.models.unet import CBAMUNet, UNet

WIDTHS = (4, 8, 16)


def _modules(net, kind):
    return [m for m in net.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("size", [(16, 16), (8, 24)])
@pytest.mark.parametrize("cls", [UNet, CBAMUNet])
@pytest.mark.parametrize("out_channels", [1, 2])
def test_output_keeps_the_input_grid(cls, size, out_channels):
    torch.manual_seed(0)
    net = cls(1, out_channels, widths=WIDTHS)
    y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, out_channels, *size)


def test_cbam_backbone_samples_with_strided_convolutions_not_pooling():
    net = CBAMUNet(3, 1, widths=WIDTHS)
    assert not _modules(net, (nn.MaxPool2d, nn.AvgPool2d))
    downs = [m for m in _modules(net, nn.Conv2d) if m.stride == (2, 2)]
    ups = _modules(net, nn.ConvTranspose2d)
    assert len(downs) == len(ups) == len(WIDTHS) - 1
    for conv in downs + ups:
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    # each sampling conv is followed by a ReLU
    for seq in list(net.downs) + list(net.ups):
        assert isinstance(seq[1], nn.ReLU)
    blocks = _modules(net, CBAMResBlock)
    assert len(blocks) == 2 * len(WIDTHS) - 1
    assert net.stem.body[0][0].in_channels == 3
    # decoder blocks read the concatenation of the skip and the up-sampled map
    assert [d.body[0][0].in_channels for d in net.decoders] == [2 * w for w in WIDTHS[-2::-1]]


def test_unet_baseline_uses_max_pooling_and_no_attention():
    net = UNet(1, 1, widths=WIDTHS)
    assert len(_modules(net, nn.MaxPool2d)) == 1  # one module, applied at each level
    assert not _modules(net, CBAMResBlock)
    ups = _modules(net, nn.ConvTranspose2d)
    assert [u.kernel_size for u in ups] == [(2, 2)] * (len(WIDTHS) - 1)


@pytest.mark.parametrize("cls", [UNet, CBAMUNet])
def test_top_skip_connection_carries_local_detail(cls):
    # With a skip at full resolution, a one-pixel change reaches the output at that pixel even
    # when every deeper level is silenced; silence the bottom by zeroing the up-sampling weights.
    torch.manual_seed(0)
    net = cls(1, 1, widths=WIDTHS).eval()
    with torch.no_grad():
        for up in net.ups:
            for p in up.parameters():
                p.zero_()
    x = torch.zeros(1, 1, 16, 16)
    x2 = x.clone()
    x2[0, 0, 8, 8] = 5.0
    diff = (net(x2) - net(x)).abs()[0, 0]
    assert diff[8, 8] > 0
    assert diff[:, :3].max() == 0 and diff[:3].max() == 0  # receptive field of the top level only


@pytest.mark.parametrize("cls", [UNet, CBAMUNet])
def test_bad_input_shapes_raise(cls):
    net = cls(1, 1, widths=WIDTHS)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, 18, 16))
    with pytest.raises(ValueError, match=r"\(batch, 1, rows, cols\)"):
        net(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="widths"):
        cls(1, 1, widths=(8,))
