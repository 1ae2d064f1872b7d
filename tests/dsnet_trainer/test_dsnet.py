"""SegNet output contract, the frozen teacher, and pooling back to the crop's grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsnet_trainer.models.dsnet import FrozenTeacher, build_seg_model, probe_teacher

from .seg_helpers import TinyTeacher

WIDTHS = (4, 8, 16)


def test_probe_reads_scale_and_width():
    assert probe_teacher(TinyTeacher(channels=5, scale=4)) == (4, 5)
    assert probe_teacher(TinyTeacher(channels=3, scale=2)) == (2, 3)


def test_srresnet_teacher_plugs_in_through_forward_features():
    from dsnet_trainer.models.srresnet import SRResNet

    torch.manual_seed(0)
    sr_net = SRResNet(n_channels=6, n_blocks=1, scale=4)
    assert probe_teacher(sr_net) == (4, 6)
    net = build_seg_model("dsnet", widths=WIDTHS, teacher=sr_net).eval()
    assert net.drtm.feature_channels == 6 and net.backbone.in_channels == 6
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    seen = {}
    net.drtm.register_forward_pre_hook(lambda m, args: seen.update(sr=args[1], feats=args[2]))
    net(x)
    sr, feats = sr_net.eval().forward_features(x)
    torch.testing.assert_close(seen["sr"], sr.clamp(-1, 1))
    torch.testing.assert_close(seen["feats"], feats)


def test_probe_rejects_a_teacher_with_the_wrong_outputs():
    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.c(x)

    with pytest.raises(ValueError, match=r"\(sr_image, sr_features\)"):
        probe_teacher(Bad())

    class Misaligned(Bad):
        def forward(self, x):
            y = F.interpolate(x, scale_factor=2)
            return y, y[..., :-1, :]

    with pytest.raises(ValueError, match="features"):
        probe_teacher(Misaligned())


def test_frozen_teacher_has_no_gradients_and_stays_in_eval():
    teacher = TinyTeacher()
    teacher.bn = torch.nn.BatchNorm2d(1)  # a module whose mode matters
    net = build_seg_model("dsnet", widths=WIDTHS, teacher=teacher)
    net.train()
    assert net.training and net.drtm.training
    assert not net.teacher.net.training and not net.teacher.net.bn.training
    assert all(not p.requires_grad for p in net.teacher.parameters())
    before = [p.clone() for p in net.teacher.parameters()]
    prob, soft = net(torch.randn(2, 1, 16, 16))
    (prob.mean() + soft.mean()).backward()
    assert all(p.grad is None for p in net.teacher.parameters())
    assert any(p.grad is not None for p in net.drtm.parameters())
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    for a, b in zip(before, net.teacher.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["unet", "backbone", "drtm", "dsnet"])
def test_outputs_on_the_native_grid_and_in_range(name):
    torch.manual_seed(0)
    net = build_seg_model(name, widths=WIDTHS, teacher=TinyTeacher()).eval()
    prob, soft = net(torch.randn(3, 1, 16, 12))
    assert prob.shape == soft.shape == (3, 1, 16, 12)
    assert prob.min() >= 0 and prob.max() <= 1 and soft.min() >= -1 and soft.max() <= 1


def test_sr_resolution_maps_are_area_pooled():
    torch.manual_seed(0)
    net = build_seg_model("dsnet", widths=WIDTHS, teacher=TinyTeacher(scale=4)).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        sr, feats = net.teacher(x)
        head = net.backbone(net.drtm(x, sr, feats))
        prob, soft = net(x)
    assert head.shape == (1, 2, 32, 32)
    # native pixel (r, c) is the mean over its 4x4 block of SR pixels
    expected_prob = torch.sigmoid(head[:, :1]).reshape(1, 1, 8, 4, 8, 4).mean(dim=(3, 5))
    expected_soft = torch.tanh(head[:, 1:]).reshape(1, 1, 8, 4, 8, 4).mean(dim=(3, 5))
    torch.testing.assert_close(prob, expected_prob)
    torch.testing.assert_close(soft, expected_soft)


def test_without_soft_head_soft_mirrors_prob():
    net = build_seg_model("backbone", widths=WIDTHS).eval()
    prob, soft = net(torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(soft, 2 * prob - 1)


def test_bad_image_shape_raises():
    net = build_seg_model("backbone", widths=WIDTHS)
    with pytest.raises(ValueError, match=r"\(batch, 1, rows, cols\)"):
        net(torch.zeros(1, 3, 8, 8))


def test_frozen_teacher_wrapper_returns_detached_outputs():
    t = FrozenTeacher(TinyTeacher())
    sr, feats = t(torch.randn(1, 1, 4, 4, requires_grad=True))
    assert not sr.requires_grad and not feats.requires_grad
