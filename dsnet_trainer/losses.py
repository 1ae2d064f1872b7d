"""DSNet losses: Dice (Eq. 15, squared denominators), Soft Mask L1 (Eq. 16), conditional GAN (Eqs. 17-18), total (Eq. 19).

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

__all__ = ["dice_loss", "soft_l1_loss", "L1_REDUCTIONS", "gan_generator_loss", "gan_discriminator_loss", "total_loss"]


def dice_loss(prob: torch.Tensor, target: torch.Tensor, *, smooth: float = 0.0) -> torch.Tensor:
    """Soft Dice loss of Eq. 15 (squared denominators), averaged over the batch.

    Per sample, with sums over (C, H, W)::

        L_Dice = 1 - (2 sum(p g) + smooth) / (sum(p^2) + sum(g^2) + smooth)

    ``smooth`` is 0 by default (the paper has none). When ``sum(p^2) + sum(g^2) + smooth`` is 0
    (an all-zero prediction of an empty target, smooth 0) the sample's loss is 0: the prediction
    is perfect and the ratio is 0/0, which the paper leaves undefined. ``smooth > 0`` (e.g. 1, the
    V-Net code's habit) is an option, not the paper.

    Parameters
    ----------
    prob, target : tensors of the same shape (B, C, H, W); ``prob`` in [0, 1], ``target`` in {0, 1}.
    smooth : float >= 0, added to numerator and denominator.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} must have the same shape")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    p = prob.float().flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    denom = (p * p).sum(1) + (g * g).sum(1) + smooth
    # Eq. 15; 0/0 (both empty, no smoothing) -> Dice 1, loss 0. The where keeps the gradient finite.
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    dice = torch.where(denom > 0, (2.0 * inter + smooth) / safe, torch.ones_like(denom))
    return (1.0 - dice).mean()


L1_REDUCTIONS = ("pixel_mean", "crop_band")


def soft_l1_loss(soft_pred: torch.Tensor, soft_target: torch.Tensor, *, reduction: str = "pixel_mean",
                 region: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Mask L1 term of Eq. 16, between predicted and target Soft Masks in [-1, 1].

    Eq. 16 writes ``||S - S_hat||_1``, literally a sum over pixels; its scale then depends on the
    crop size, so a reduction is a choice the paper leaves open:

    ``"pixel_mean"`` (default, as pix2pix's L1): the mean of ``|S - S_hat|`` over the batch's
        B*C*H*W pixels. A 10-pixel nodule in a 64x64 crop weighs 10/4096 of its crop.
    ``"crop_band"``: per crop, the region-balanced mean ``0.5 * (mean of |S - S_hat| over the
        lesion-plus-band pixels + mean over the other pixels)`` (``region`` != 0: the trimap's sure
        lesion and unknown band), then the mean over the batch. The nodule's region weighs half of
        its crop's term whatever its size (a 10-pixel nodule's pixels weigh 1/20 each instead of
        1/4096), and the background half still penalises soft responses away from the nodule. The
        term stays in [0, 2], the range of the pixel mean, so lambda2 keeps its scale. A crop with
        an empty region (or a region covering it) uses the mean over its pixels.
        (An earlier form divided the sum over *all* pixels by the region's area; its background
        term grew as 4096 / area and it trained far worse: docs/TRAINING.md.)

    Parameters
    ----------
    soft_pred, soft_target : (B, C, H, W) tensors of the same shape.
    reduction : "pixel_mean" or "crop_band".
    region : (B, 1 or C, H, W) tensor, non-zero on the lesion-plus-band area (the trimap);
        required by ``"crop_band"``.
    """
    if soft_pred.shape != soft_target.shape:
        raise ValueError(f"soft_pred {tuple(soft_pred.shape)} and soft_target {tuple(soft_target.shape)} "
                         "must have the same shape")
    if reduction == "pixel_mean":
        return F.l1_loss(soft_pred.float(), soft_target.float())
    if reduction != "crop_band":
        raise ValueError(f"reduction must be one of {L1_REDUCTIONS}, got {reduction!r}")
    if region is None:
        raise ValueError("reduction 'crop_band' needs region (the trimap: lesion plus unknown band)")
    if region.shape[0] != soft_pred.shape[0] or region.shape[-2:] != soft_pred.shape[-2:]:
        raise ValueError(f"region {tuple(region.shape)} does not match soft_pred {tuple(soft_pred.shape)}")
    err = (soft_pred.float() - soft_target.float()).abs()
    inside = (region != 0).expand_as(err).flatten(1).to(err.dtype)
    err = err.flatten(1)
    n_in = inside.sum(1)
    n_out = err.shape[1] - n_in
    mean_in = (err * inside).sum(1) / n_in.clamp(min=1)
    mean_out = (err * (1 - inside)).sum(1) / n_out.clamp(min=1)
    both = (n_in > 0) & (n_out > 0)
    per_crop = torch.where(both, 0.5 * (mean_in + mean_out), torch.where(n_in > 0, mean_in, mean_out))
    return per_crop.mean()


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
