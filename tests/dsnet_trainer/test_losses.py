"""Losses (Eqs. 15-19) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dsnet_trainer.losses import (dice_loss, gan_discriminator_loss, gan_generator_loss, soft_l1_loss,
                                  total_loss)


def test_dice_loss_hand_case():
    prob = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    # sample 0: inter 1, sums 1.5 + 2 -> dice (2+1)/(3.5+1) = 2/3; sample 1 (both empty): dice 1
    expected = ((1 - 2 / 3) + 0.0) / 2
    assert dice_loss(prob, target).item() == pytest.approx(expected, abs=1e-7)
    assert dice_loss(prob[:1], target[:1], smooth=0.0).item() == pytest.approx(1 - 2 / 3.5, abs=1e-7)


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
