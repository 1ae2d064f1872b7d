"""Image-quality metrics for the SR teacher: PSNR and SSIM per image, batched in torch.

Both take (N, C, H, W) tensors and return one value per image (N,). ``data_range`` is the span
of valid values (2.0 for images in [-1, 1]). They match scikit-image's
``peak_signal_noise_ratio`` and ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` (checked in ``tests/dsnet_trainer/test_sr_metrics.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

_PSNR_FLOOR_MSE = 1e-20  # identical images give 10*log10(range^2 / 1e-20) (~200 dB), not inf


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise InputError(f"images must be two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def shave(x: torch.Tensor, border_px: int) -> torch.Tensor:
    """Drop ``border_px`` pixels on each side (SR evaluation ignores the border by convention)."""
    if border_px <= 0:
        return x
    if min(x.shape[-2:]) <= 2 * border_px:
        raise InputError(f"image {tuple(x.shape[-2:])} too small to shave {border_px}px per side")
    return x[..., border_px:-border_px, border_px:-border_px]


def psnr(pred: torch.Tensor, target: torch.Tensor, *, data_range: float) -> torch.Tensor:
    """Per-image PSNR in dB: ``10 log10(data_range^2 / MSE)`` over all C*H*W values."""
    _check_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1).clamp_min(_PSNR_FLOOR_MSE)
    return (10.0 * torch.log10(data_range ** 2 / mse)).float()


def _gaussian_kernel(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al., IEEE TIP 2004) with an 11x11 Gaussian window.

    Local means, variances and covariance are Gaussian-weighted (sigma 1.5, radius
    ``int(3.5 sigma + 0.5)``); the SSIM map is averaged over pixels whose window lies inside the
    image (and over channels). Images must be at least 11x11.
    """
    _check_pair(pred, target)
    radius = int(3.5 * sigma + 0.5)
    if min(pred.shape[-2:]) < 2 * radius + 1:
        raise InputError(f"SSIM needs images of at least {2 * radius + 1}x{2 * radius + 1}, got {tuple(pred.shape[-2:])}")
    n, c, h, w = pred.shape
    x = pred.double().reshape(n * c, 1, h, w)
    y = target.double().reshape(n * c, 1, h, w)
    g = _gaussian_kernel(sigma, radius, torch.float64, x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, 'valid' region only
        t = F.conv2d(t, g.view(1, 1, -1, 1))
        return F.conv2d(t, g.view(1, 1, 1, -1))

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.reshape(n, c, -1).mean(dim=(1, 2)).float()

