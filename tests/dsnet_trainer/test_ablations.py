"""Every ablation switch builds the network its table row describes (Tables III, IV, V):
which modules exist, what the backbone reads, whether the teacher is called."""

from __future__ import annotations

import pytest
import torch

from dsnet_trainer.models.discriminator import PixelDiscriminator
from dsnet_trainer.models.drtm import DRTM
from dsnet_trainer.models.dsnet import VARIANTS, Variant, build_seg_model, get_variant
from dsnet_trainer.models.unet import CBAMUNet, UNet

from .seg_helpers import TinyTeacher

WIDTHS = (4, 8, 16)
FEATURES = 5

# name: (backbone class, backbone input channels, teacher called, DRTM (detail, fusion) or None,
#        head channels, GAN, soft label)
EXPECTED = {
    "unet": (UNet, 1, False, None, 1, False, None),
    "unet_soft": (UNet, 1, False, None, 2, False, "soft_mask"),   # the truth study's arms A (issue 25)
    "backbone": (CBAMUNet, 1, False, None, 1, False, None),
    "sr_input": (CBAMUNet, 1, True, None, 1, False, None),
    "drtm": (CBAMUNet, FEATURES, True, (True, True), 1, False, None),
    "drtm_soft": (CBAMUNet, FEATURES, True, (True, True), 2, False, "soft_mask"),
    "dsnet": (CBAMUNet, FEATURES, True, (True, True), 2, True, "soft_mask"),
    "dsnet_no_detail": (CBAMUNet, FEATURES, True, (False, True), 2, True, "soft_mask"),
    "dsnet_no_fusion": (CBAMUNet, FEATURES, True, (True, False), 2, True, "soft_mask"),
    "dsnet_binary": (CBAMUNet, FEATURES, True, (True, True), 2, True, "binary"),
    "dsnet_kats": (CBAMUNet, FEATURES, True, (True, True), 2, True, "kats"),
    "dsnet_softseg": (CBAMUNet, FEATURES, True, (True, True), 2, True, "softseg"),
}


def test_the_registry_holds_exactly_the_table_rows():
    assert set(VARIANTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variant_builds_its_row(name):
    cls, in_ch, teacher_called, drtm, head_ch, gan, label = EXPECTED[name]
    teacher = TinyTeacher(channels=FEATURES, scale=2)
    net = build_seg_model(name, widths=WIDTHS, teacher=teacher)
    assert type(net.backbone) is cls
    assert net.backbone.in_channels == in_ch
    first_conv = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == in_ch
    assert net.backbone.head.out_channels == head_ch
    assert (net.teacher is not None) == teacher_called
    assert net.scale == (2 if teacher_called else 1)
    if drtm is None:
        assert net.drtm is None and not any(isinstance(m, DRTM) for m in net.modules())
    else:
        assert isinstance(net.drtm, DRTM)
        assert (net.drtm.detail_enhancement, net.drtm.selective_fusion) == drtm
        assert hasattr(net.drtm, "c_high") == drtm[0] and hasattr(net.drtm, "fc_reduce") == drtm[1]
    assert not any(isinstance(m, PixelDiscriminator) for m in net.modules())
    v = get_variant(name)
    assert v.gan == gan and v.soft_head == (head_ch == 2)
    if label is not None:
        assert v.soft_label == label

    teacher.calls = 0
    net.eval()(torch.randn(1, 1, 8, 8))
    assert teacher.calls == (1 if teacher_called else 0)


def test_sr_input_feeds_the_sr_image_to_the_backbone():
    teacher = TinyTeacher(channels=FEATURES, scale=2)
    net = build_seg_model("sr_input", widths=WIDTHS, teacher=teacher).eval()
    seen = {}
    net.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    x = torch.randn(1, 1, 8, 8)
    net(x)
    torch.testing.assert_close(seen["x"], teacher(x)[0].clamp(-1, 1))  # SR image, clamped to the crop range


def test_teacher_variants_require_a_teacher():
    with pytest.raises(ValueError, match="needs the SR teacher"):
        build_seg_model("dsnet", widths=WIDTHS)
    build_seg_model("backbone", widths=WIDTHS)  # LR variants do not


def test_unknown_variant_and_inconsistent_switches():
    with pytest.raises(ValueError, match="unknown variant 'dsnett'"):
        get_variant("dsnett")
    with pytest.raises(ValueError, match="gan=True needs soft_head"):
        Variant("x", "cbam", "drtm", gan=True)
    with pytest.raises(ValueError, match="soft_label"):
        Variant("x", "cbam", "drtm", soft_head=True, soft_label="fuzzy")
