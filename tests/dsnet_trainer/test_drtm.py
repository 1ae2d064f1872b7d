"""DRTM (Eqs. 9-14) against a step-by-step numpy reimplementation with the module's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import correlate

from dsnet_trainer.models.drtm import DRTM

C, S = 3, 2


def _conv(x, w, b=None, dilation=1):
    """'same' cross-correlation of x (Cin, H, W) with w (Cout, Cin, k, k), zero padding."""
    if dilation > 1:
        k = w.shape[-1]
        kd = (k - 1) * dilation + 1
        wd = np.zeros(w.shape[:2] + (kd, kd))
        wd[:, :, ::dilation, ::dilation] = w
        w = wd
    out = np.stack([sum(correlate(x[i], w[o, i], mode="same") for i in range(x.shape[0]))
                    for o in range(w.shape[0])])
    return out if b is None else out + b[:, None, None]


def _inputs(seed=0, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    lr = torch.randn(2, 1, h, w, generator=g)
    sr = torch.randn(2, 1, h * S, w * S, generator=g)
    feats = torch.rand(2, C, h * S, w * S, generator=g)
    return lr, sr, feats


def _reference(mod: DRTM, lr, sr, feats):
    p = {k: v.detach().numpy().astype(np.float64) for k, v in mod.state_dict().items()}
    up = F.interpolate(lr, scale_factor=S, mode="bicubic", align_corners=False).numpy()
    out = []
    for b in range(lr.shape[0]):
        x = np.concatenate([up[b], sr[b].numpy()])
        fc = np.maximum(_conv(x, p["context.0.weight"]), 0)
        bn = lambda v: ((v - p["context.2.running_mean"][:, None, None])  # noqa: E731
                        / np.sqrt(p["context.2.running_var"][:, None, None] + 1e-5)
                        * p["context.2.weight"][:, None, None] + p["context.2.bias"][:, None, None])
        fc = bn(fc)
        fsr = feats[b].numpy().astype(np.float64)
        if mod.detail_enhancement:
            ch = _conv(fsr, p["c_high.weight"], p["c_high.bias"])
            cl = _conv(fsr, p["c_low.weight"], p["c_low.bias"], dilation=2)
            fd = fsr / (1 + np.exp(-(ch - cl)))
        else:
            fd = fsr
        if not mod.selective_fusion:
            out.append(0.5 * (fc + fd))
            continue
        z = np.concatenate([fd, fc]).mean(axis=(1, 2))
        if mod.fc_form == "sk":  # Eq. 12: Linear(2C->C) + ReLU, then two Linear(C->C) heads
            r = np.maximum(p["fc_reduce.weight"] @ z + p["fc_reduce.bias"], 0)
            vc = p["fc_c.weight"] @ r + p["fc_c.bias"]
            vd = p["fc_d.weight"] @ r + p["fc_d.bias"]
        else:
            v = p["fc.weight"] @ z + p["fc.bias"]
            vd, vc = v[:C], v[C:]
        a = np.exp(vc) / (np.exp(vc) + np.exp(vd))
        out.append(a[:, None, None] * fc + (1 - a)[:, None, None] * fd)
    return np.stack(out)


@pytest.mark.parametrize("detail,fusion,fc", [(True, True, "sk"), (False, True, "sk"), (True, False, "sk"),
                                               (False, False, "sk"), (True, True, "joint")])
def test_drtm_matches_reference(detail, fusion, fc):
    torch.manual_seed(0)
    mod = DRTM(C, scale=S, detail_enhancement=detail, selective_fusion=fusion, fc=fc).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        mod.context[2].running_mean.uniform_(-0.5, 0.5)
        mod.context[2].running_var.uniform_(0.5, 2.0)
    lr, sr, feats = _inputs()
    got = mod(lr, sr, feats).detach().numpy()
    assert got.shape == (2, C, 8, 10)
    np.testing.assert_allclose(got, _reference(mod, lr, sr, feats), rtol=1e-4, atol=1e-5)


def test_table_v_switches_remove_the_modules():
    full = DRTM(C, scale=S)
    no_detail = DRTM(C, scale=S, detail_enhancement=False)
    no_fusion = DRTM(C, scale=S, selective_fusion=False)
    assert hasattr(full, "c_high") and hasattr(full, "c_low")
    # Eq. 12: 2C -> C reduction, two C -> C heads
    assert (full.fc_reduce.in_features, full.fc_reduce.out_features) == (2 * C, C)
    assert (full.fc_c.in_features, full.fc_c.out_features) == (C, C) == (full.fc_d.in_features,
                                                                        full.fc_d.out_features)
    joint = DRTM(C, scale=S, fc="joint")
    assert (joint.fc.in_features, joint.fc.out_features) == (2 * C, 2 * C)
    with pytest.raises(ValueError, match="fc must be"):
        DRTM(C, scale=S, fc="mlp")
    assert full.c_high.kernel_size == (1, 1)
    assert full.c_low.kernel_size == (3, 3) and full.c_low.dilation == (2, 2)
    assert not hasattr(no_detail, "c_high") and not hasattr(no_detail, "c_low")
    assert not any(hasattr(no_fusion, k) for k in ("fc", "fc_reduce", "fc_c", "fc_d"))


def test_fusion_weights_sum_to_one_per_channel():
    # When both branches hold the same map, any softmax fusion must return that map unchanged.
    torch.manual_seed(0)
    mod = DRTM(C, scale=S, detail_enhancement=False).eval()
    lr, sr, _ = _inputs(seed=2)
    with torch.no_grad():
        fc = mod.context(torch.cat([F.interpolate(lr, scale_factor=S, mode="bicubic"), sr], 1))
        out = mod(lr, sr, fc)
    torch.testing.assert_close(out, fc, rtol=1e-5, atol=1e-6)


def test_shape_errors_name_the_inputs():
    mod = DRTM(C, scale=S)
    lr, sr, feats = _inputs()
    with pytest.raises(ValueError, match="x2"):
        mod(lr, sr[..., :-2], feats)
    with pytest.raises(ValueError, match="channels"):
        mod(lr, sr, feats[:, :2])
