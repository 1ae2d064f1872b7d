"""PSNR and SSIM against scikit-image (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dsnet_trainer.errors import InputError
from dsnet_trainer.sr_metrics import psnr, shave, ssim

from .shardkit import synthetic_ct_slice


@pytest.mark.parametrize("size", [(11, 11), (24, 40), (64, 64)])
def test_psnr_and_ssim_match_skimage(size):
    rng = np.random.default_rng(sum(size))
    a = np.clip(rng.uniform(-1, 1, (3, 1, *size)), -1, 1)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1)
    ours_p = psnr(torch.from_numpy(b), torch.from_numpy(a), data_range=2.0).numpy()
    ours_s = ssim(torch.from_numpy(b), torch.from_numpy(a), data_range=2.0).numpy()
    for i in range(3):
        assert ours_p[i] == pytest.approx(peak_signal_noise_ratio(a[i, 0], b[i, 0], data_range=2.0), abs=1e-4)
        ref = structural_similarity(a[i, 0], b[i, 0], data_range=2.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ours_s[i] == pytest.approx(ref, abs=1e-5)


def test_ssim_on_ct_like_images_and_identity():
    rng = np.random.default_rng(0)
    hr = synthetic_ct_slice(rng, 64).astype(np.float64) / 1000.0
    blurred = (hr + np.roll(hr, 1, axis=0) + np.roll(hr, 1, axis=1)) / 3
    ref = structural_similarity(hr, blurred, data_range=3.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    t = lambda x: torch.from_numpy(x)[None, None]
    assert float(ssim(t(blurred), t(hr), data_range=3.0)[0]) == pytest.approx(ref, abs=1e-5)
    assert float(ssim(t(hr), t(hr), data_range=3.0)[0]) == pytest.approx(1.0, abs=1e-9)
    assert float(psnr(t(hr), t(hr), data_range=3.0)[0]) > 150  # finite cap instead of inf


def test_shapes_are_checked():
    with pytest.raises(InputError, match="one shape"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), data_range=1.0)
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), data_range=1.0)
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(shave(x, 2), x[..., 2:4, 2:4])
