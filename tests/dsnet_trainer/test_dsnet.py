"""SegNet output contract, the frozen teacher, and pooling back to the crop's grid."""

from __future__ import annotations

import numpy as np
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


# ---- the truth study's arm B0 (issue 25): input shrunk x2, bicubic back, outputs on the crop grid ----
def test_shrink_then_bicubic_is_area_averaging_then_opencv_bicubic():
    import cv2

    from dsnet_trainer.models.dsnet import shrink_then_bicubic

    rng = np.random.default_rng(4)
    image = rng.uniform(-0.9, 0.9, size=(2, 1, 16, 12)).astype(np.float32)
    got = shrink_then_bicubic(torch.from_numpy(image), 2).numpy()
    assert got.shape == image.shape
    for b in range(2):
        small = image[b, 0].reshape(8, 2, 6, 2).mean(axis=(1, 3))           # area averaging by hand
        # OpenCV's bicubic (Keys a = -0.75, half-pixel centres, replicated edges) as the oracle
        up = cv2.resize(small, (12, 16), interpolation=cv2.INTER_CUBIC)
        np.testing.assert_allclose(got[b, 0], np.clip(up, -1, 1), atol=1e-5)
    assert not np.allclose(got, image, atol=0.05)    # detail is lost
    const = torch.full((1, 1, 8, 8), 0.25)
    torch.testing.assert_close(shrink_then_bicubic(const, 2), const)
    with pytest.raises(ValueError, match="multiple"):
        shrink_then_bicubic(torch.zeros(1, 1, 9, 8), 2)


def test_input_shrink_feeds_the_degraded_crop_and_keeps_the_output_grid():
    from dsnet_trainer.models.dsnet import shrink_then_bicubic

    net = build_seg_model("unet_soft", widths=(4, 8), input_shrink=2).eval()
    seen = {}
    net.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    x = torch.randn(3, 1, 64, 64).clamp(-1, 1)
    prob, soft = net(x)
    assert prob.shape == soft.shape == (3, 1, 64, 64)                 # output on the 64^2 grid
    torch.testing.assert_close(seen["x"], shrink_then_bicubic(x, 2))
    # same weights, no shrink: the backbone reads the crop itself, and the outputs differ
    plain = build_seg_model("unet_soft", widths=(4, 8)).eval()
    plain.load_state_dict(net.state_dict())
    assert not torch.allclose(plain(x)[0], prob)


# ---- arms B1/B2 (issue 25): DRTM over a x2 teacher fed the crop shrunk x2 ----
def test_input_shrink_with_a_x2_teacher_feeds_it_the_block_means_and_keeps_the_crop_grid():
    """B1/B2's network: the teacher reads the 2x2 block means of the crop (computed here by hand
    with numpy), DRTM fuses on the crop's grid, nothing is pooled, and the output is the backbone's
    sigmoid at 64 px."""
    torch.manual_seed(0)
    teacher = TinyTeacher(channels=4, scale=2)
    net = build_seg_model("drtm", widths=(4, 8), teacher=teacher, input_shrink=2).eval()
    assert net.scale == 1 and net.drtm.scale == 2 and net.input_shrink == 2
    seen = {}
    net.drtm.register_forward_pre_hook(lambda m, args: seen.update(lr=args[0], sr=args[1], feats=args[2]))
    net.backbone.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        prob, soft = net(x)
    assert prob.shape == soft.shape == (2, 1, 64, 64)
    blocks = x.numpy().reshape(2, 1, 32, 2, 32, 2).mean(axis=(3, 5))           # 2x2 block means by hand
    np.testing.assert_allclose(seen["lr"].numpy(), blocks, atol=1e-6)
    assert teacher.calls == 2                                                   # probe + this forward
    with torch.no_grad():
        sr, feats = teacher(torch.from_numpy(blocks))
    torch.testing.assert_close(seen["sr"], sr.clamp(-1, 1))
    torch.testing.assert_close(seen["feats"], feats)
    assert tuple(seen["x"].shape) == (2, 4, 64, 64)                           # the backbone runs at 64 px
    with torch.no_grad():
        head = net.backbone(net.drtm(seen["lr"], seen["sr"], seen["feats"]))
    torch.testing.assert_close(prob, torch.sigmoid(head[:, :1]))                # no pooling
    # sr_input reads the x2 SR image on the crop's grid
    sr_net = build_seg_model("sr_input", widths=(4, 8), teacher=TinyTeacher(channels=4, scale=2), input_shrink=2)
    assert sr_net.scale == 1 and sr_net.eval()(x)[0].shape == (2, 1, 64, 64)


def test_input_shrink_refuses_a_teacher_of_another_scale_or_native_mode():
    with pytest.raises(ValueError, match=r"input_shrink=2 needs a x2 SR teacher .* the teacher's scale is 4"):
        build_seg_model("drtm", widths=(4, 8), teacher=TinyTeacher(channels=4, scale=4), input_shrink=2)
    with pytest.raises(ValueError, match="teacher_mode 'upscale'"):
        build_seg_model("drtm", widths=(4, 8), teacher=TinyTeacher(channels=4, scale=2), input_shrink=2,
                        teacher_mode="native")
