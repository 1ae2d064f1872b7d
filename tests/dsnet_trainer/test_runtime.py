"""Runtime of a trainer process: devices, precision, RNG state (:mod:`dsnet_trainer.runtime`).
Distributed helpers are exercised by ``test_ddp.py`` (2 processes, gloo)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from dsnet_trainer import runtime
from dsnet_trainer.errors import DeviceError
from dsnet_trainer.runtime import Precision, select_device


# ---------------------------------------------------------------------------- device, precision
def test_cpu_and_auto_device():
    assert select_device("cpu") == torch.device("cpu")
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert select_device("auto") == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("request_", ["cuda", "cuda:1"])
def test_cuda_request_without_cuda_names_the_option(request_):
    with pytest.raises(DeviceError, match=r"--device.*CUDA"):
        select_device(request_, option="--device")


def test_bad_device_string():
    with pytest.raises(DeviceError, match="loop.device"):
        select_device("tpu")


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_half_precision_on_cpu_is_an_error(mode):
    with pytest.raises(DeviceError, match=f"loop.amp={mode}"):
        Precision(mode, torch.device("cpu"))


def test_cpu_precision_is_float32_passthrough():
    prec = Precision("auto", torch.device("cpu"))
    assert prec.dtype is None and prec.name == "float32" and not prec.scaler.is_enabled()
    # A step through Precision equals a plain SGD step computed by hand.
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    with prec.autocast():
        loss = (w ** 2).sum()
    prec.backward_step(loss, opt)
    prec.update()
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) * (1 - 0.2))


def test_gradient_clipping_bounds_the_step():
    prec = Precision("off", torch.device("cpu"))
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    loss = (w * torch.tensor([30.0, 40.0])).sum()  # grad (30, 40), norm 50
    prec.backward_step(loss, opt, clip_norm=5.0)
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 3.0, 4.0 - 4.0]), atol=1e-6)


# ---------------------------------------------------------------------------- RNG
def test_rng_capture_restore_replays_every_stream():
    runtime.seed_everything(123)
    state = runtime.capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    runtime.seed_everything(999)
    runtime.restore_rng_state(state)
    second = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert first == second
