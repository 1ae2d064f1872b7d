"""DSNet losses: Dice (Eq. 15), Soft Mask L1 (Eq. 16), conditional GAN (Eqs. 17-18), total (Eq. 19).

Shapes: (B, 1, H, W) everywhere. ``prob`` in [0, 1]; Soft Masks (predicted and target) in
[-1, 1]; discriminator outputs are logits.

GAN objective: the paper does not say which; we use the original (non-saturating) cross-entropy
objective of pix2pix, whose pixel discriminator DSNet borrows: the discriminator minimises
``BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)`` (halved, as pix2pix does, to slow it relative to the
generator), the generator minimises ``BCE(D(x, G(x)), 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_loss", "soft_l1_loss", "gan_generator_loss", "gan_discriminator_loss", "total_loss"]


def dice_loss(prob: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss (Eq. 15), averaged over the batch.

    ``1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)`` per sample, sums over (C, H, W).
    ``smooth`` (1 by default) keeps an empty target defined: an empty target and an all-zero
    prediction give loss 0, an empty target and a non-empty prediction a loss that grows with
    the predicted area.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} must have the same shape")
    p = prob.float().flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    dice = (2.0 * inter + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1.0 - dice).mean()


def soft_l1_loss(soft_pred: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between predicted and target Soft Masks in [-1, 1] (Eq. 16)."""
    if soft_pred.shape != soft_target.shape:
        raise ValueError(f"soft_pred {tuple(soft_pred.shape)} and soft_target {tuple(soft_target.shape)} "
                         "must have the same shape")
    return F.l1_loss(soft_pred.float(), soft_target.float())


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator term: every fake pixel should be judged real (Eq. 18, non-saturating form)."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator term (Eq. 17): 0.5 (BCE(real, 1) + BCE(fake, 0)); pass detached fakes."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32))
    return 0.5 * (real + fake)


def total_loss(*, dice: torch.Tensor, l1: torch.Tensor | None = None, gan: torch.Tensor | None = None,
               dice_weight: float = 0.5, l1_weight: float = 100.0, gan_weight: float = 1.0) -> torch.Tensor:
    """Eq. 19: ``dice_weight * dice + l1_weight * l1 + gan_weight * gan``; absent terms count 0."""
    out = dice_weight * dice
    if l1 is not None:
        out = out + l1_weight * l1
    if gan is not None:
        out = out + gan_weight * gan
    return out
