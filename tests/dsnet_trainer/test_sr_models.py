"""SRResNet generator, VGG discriminator, the model registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsnet_trainer.errors import ConfigError, InputError
from dsnet_trainer.models import REGISTRY, available_models, build_model, model_class


@pytest.mark.parametrize("scale, norm", [(4, "batch"), (4, "none"), (2, "none"), (3, "batch")])
def test_untrained_generator_is_exactly_bicubic(scale, norm):
    torch.manual_seed(0)
    g = build_model("srresnet", n_channels=8, n_blocks=2, scale=scale, norm=norm).eval()
    lr = torch.rand(2, 1, 10, 12) * 2 - 1
    sr, feats = g.forward_features(lr)
    expect = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    assert sr.shape == (2, 1, 10 * scale, 12 * scale)
    assert torch.equal(sr, expect)
    assert feats.shape == (2, 8, 10 * scale, 12 * scale)


def test_generator_learns_a_residual_that_changes_the_output():
    torch.manual_seed(0)
    g = build_model("srresnet", n_channels=8, n_blocks=1, norm="none")
    lr = torch.rand(2, 1, 8, 8)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (g(lr) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(g(lr), F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))


def test_plain_srresnet_without_bicubic_skip():
    g = build_model("srresnet", n_channels=8, n_blocks=1, residual_bicubic=False)
    assert g.tail.weight.abs().sum() > 0  # normal init, not the zero residual head


def test_generator_input_checks():
    g = build_model("srresnet", n_channels=4, n_blocks=1)
    with pytest.raises(InputError, match=r"lr must be a \(N, 1, h, w\) tensor, got \(1, 3, 8, 8\)"):
        g(torch.zeros(1, 3, 8, 8))
    with pytest.raises(InputError, match="lr must be"):
        g(torch.zeros(8, 8))
    with pytest.raises(ConfigError, match="scale"):
        build_model("srresnet", scale=5)
    with pytest.raises(ConfigError, match="norm"):
        build_model("srresnet", norm="group")


def test_discriminator_logits_features_and_minimum_size():
    d = build_model("sr_vgg", base_channels=4, n_stages=3, fc_channels=16)
    x = torch.randn(5, 1, 32, 24)
    logits, feats = d(x, return_features=True)
    assert logits.shape == (5,)
    assert [f.shape for f in feats] == [(5, 4, 16, 12), (5, 8, 8, 6), (5, 16, 4, 3)]
    assert torch.equal(d(x), logits)
    with pytest.raises(InputError, match="smaller than 8px"):
        d(torch.randn(1, 1, 4, 32))


def test_registry_is_explicit_and_lazy():
    assert {"srresnet", "sr_vgg"} <= set(available_models())
    assert model_class("srresnet").__name__ == "SRResNet"
    assert all(":" in target for target in REGISTRY.values())
    with pytest.raises(ConfigError, match="unknown model 'nope'.*srresnet"):
        build_model("nope")
    with pytest.raises(ConfigError, match="model 'srresnet'.*n_layers"):
        build_model("srresnet", n_layers=3)
