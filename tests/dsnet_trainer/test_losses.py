"""Losses (Eqs. 15-19) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsnet_trainer.losses import (dice_loss, gan_discriminator_loss, gan_generator_loss, soft_l1_loss,
                                  total_loss)


def test_dice_loss_hand_case_eq15_squared():
    prob = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # Eq. 15: inter 1, sum p^2 = 1.25, sum g^2 = 2 -> dice 2 / 3.25
    assert dice_loss(prob, target).item() == pytest.approx(1 - 2 / 3.25, abs=1e-7)
    # smoothing is an option: (2 + 1) / (3.25 + 1)
    assert dice_loss(prob, target, smooth=1.0).item() == pytest.approx(1 - 3 / 4.25, abs=1e-7)


def test_dice_loss_both_empty_is_zero_with_finite_gradient():
    prob = torch.zeros(2, 1, 3, 3, requires_grad=True)
    target = torch.zeros(2, 1, 3, 3)
    loss = dice_loss(prob, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(prob.grad).all()
    # a non-empty prediction of an empty target is a full miss: 1 - 0 / sum(p^2)
    assert dice_loss(torch.full((1, 1, 2, 2), 0.3), torch.zeros(1, 1, 2, 2)).item() == pytest.approx(1.0)


def test_dice_loss_against_numpy_oracle():
    import numpy as np

    rng = np.random.default_rng(3)
    p = rng.random((4, 1, 8, 8)).astype(np.float32)
    g = (rng.random((4, 1, 8, 8)) > 0.6).astype(np.float32)
    ref = np.mean([1 - 2 * (a * b).sum() / ((a ** 2).sum() + (b ** 2).sum()) for a, b in zip(p, g)])
    assert dice_loss(torch.from_numpy(p), torch.from_numpy(g)).item() == pytest.approx(ref, rel=1e-5)


def test_dice_loss_gradient_points_to_the_target():
    target = torch.tensor([[[[1.0, 0.0]]]])
    prob = torch.tensor([[[[0.5, 0.5]]]], requires_grad=True)
    dice_loss(prob, target).backward()
    assert prob.grad[0, 0, 0, 0] < 0 < prob.grad[0, 0, 0, 1]


def test_soft_l1_hand_case():
    a = torch.tensor([[[[1.0, -1.0, 0.5]]]])
    b = torch.tensor([[[[0.0, -1.0, -0.5]]]])
    assert soft_l1_loss(a, b).item() == pytest.approx(2.0 / 3.0)
    with pytest.raises(ValueError, match="same shape"):
        soft_l1_loss(a, b[..., :2])


def test_soft_l1_crop_band_balances_each_crops_region_and_background():
    rng = np.random.default_rng(3)
    pred = torch.from_numpy(rng.uniform(-1, 1, (3, 1, 6, 5)).astype(np.float32))
    target = torch.from_numpy(rng.uniform(-1, 1, (3, 1, 6, 5)).astype(np.float32))
    region = torch.zeros(3, 1, 6, 5, dtype=torch.uint8)
    region[0, 0, 1, 1] = 255                 # crop 0: a 1-pixel region
    region[1, 0, :4, :] = 128                # crop 1: 20 of 30 pixels
    region[2] = 255                          # crop 2: region covers the crop (no background)
    got = soft_l1_loss(pred, target, reduction="crop_band", region=region).item()
    err = np.abs(pred.numpy() - target.numpy()).reshape(3, -1)
    inside = region.numpy().reshape(3, -1) != 0
    want = [0.5 * (err[0][inside[0]].mean() + err[0][~inside[0]].mean()),
            0.5 * (err[1][inside[1]].mean() + err[1][~inside[1]].mean()),
            err[2].mean()]
    assert got == pytest.approx(float(np.mean(want)), rel=1e-6)
    # a one-pixel nodule weighs half its crop's term; in the pixel mean it weighs 1/30
    assert soft_l1_loss(pred, target).item() == pytest.approx(float(err.mean()), rel=1e-6)
    # an empty region: the crop's plain mean (no division by zero)
    empty = soft_l1_loss(pred, target, reduction="crop_band", region=torch.zeros_like(region)).item()
    assert empty == pytest.approx(float(err.mean(1).mean()), rel=1e-6)
    # bounded like the pixel mean
    assert soft_l1_loss(-torch.ones_like(pred), torch.ones_like(pred), reduction="crop_band",
                        region=region).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="needs region"):
        soft_l1_loss(pred, target, reduction="crop_band")
    with pytest.raises(ValueError, match="reduction"):
        soft_l1_loss(pred, target, reduction="sum")


def test_gan_losses_hand_case():
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([-1.0, 1.0])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    d_expected = 0.5 * ((softplus(-0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(1.0)) / 2)
    assert gan_discriminator_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert gan_generator_loss(fake).item() == pytest.approx((softplus(1.0) + softplus(-1.0)) / 2, rel=1e-6)


def test_total_loss_weights_eq19():
    d, l1, g = torch.tensor(0.3), torch.tensor(0.02), torch.tensor(0.7)
    assert total_loss(dice=d, l1=l1, gan=g).item() == pytest.approx(0.5 * 0.3 + 100 * 0.02 + 0.7)
    assert total_loss(dice=d).item() == pytest.approx(0.15)
    assert total_loss(dice=d, l1=l1, dice_weight=1.0, l1_weight=10.0).item() == pytest.approx(0.5)
