"""Where and how a trainer process runs: device, precision, RNG state and DDP.

Nothing here knows about a model, a loss or a loop; the training loop (:mod:`.engine`) and the
inference commands (:mod:`.evaluate`, :mod:`.predict`) both build on it.

Device and precision
    :func:`select_device` (``auto``/``cpu``/``cuda[:N]``; CUDA asked for but absent -> error naming
    the option), :class:`Precision` (autocast context + GradScaler for fp16; float32 on CPU).
Reproducibility
    :func:`seed_everything`, :func:`capture_rng_state`, :func:`restore_rng_state`.
Distributed (``torchrun``)
    :func:`init_distributed` -> :class:`DistContext` (rank, world size, device; gloo on CPU, nccl
    on CUDA), :func:`wrap_ddp`, :func:`unwrap`, :func:`barrier`, :func:`all_reduce_sums`,
    :func:`sync_buffers`, :func:`shutdown_distributed`. Side effects (files, logs, progress bars)
    belong to ``ctx.is_main`` only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import DeviceError, InputError

__all__ = ["select_device", "Precision", "seed_everything", "capture_rng_state", "restore_rng_state",
           "DistContext", "init_distributed", "shutdown_distributed", "barrier", "wrap_ddp", "unwrap",
           "sync_buffers", "all_reduce_sums"]


# ============================================================================================
# Device and precision
# ============================================================================================
def select_device(request: str = "auto", *, local_rank: int = 0, option: str = "loop.device") -> torch.device:
    """Resolve a device request.

    Parameters
    ----------
    request : str
        ``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cpu``;
        ``cuda`` -> ``cuda:<local_rank>``; ``cuda:N``.
    local_rank : int
        This process's rank on its node (``LOCAL_RANK`` under torchrun).
    option : str
        Name of the option in error messages (``--device``, ``loop.device``).

    Raises
    ------
    DeviceError
        CUDA requested on a machine without CUDA, or an index beyond the visible devices.
    """
    req = str(request).strip().lower()
    if req == "auto":
        req = "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return torch.device("cpu")
    if req == "cuda" or (req.startswith("cuda:") and req[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceError(f"{option}={request!r} asks for CUDA but torch {torch.__version__} sees no CUDA "
                              "device on this machine; use --device cpu or auto")
        index = local_rank if req == "cuda" else int(req[5:])
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{option}={request!r}: CUDA device {index} does not exist "
                              f"({torch.cuda.device_count()} visible)")
        return torch.device("cuda", index)
    raise DeviceError(f"{option}={request!r} is not a device (auto, cpu, cuda, cuda:N)")


class Precision:
    """Mixed-precision policy for one device: an autocast context and a GradScaler.

    ``mode``: ``auto`` (CUDA: bf16 if supported else fp16; CPU: float32), ``off`` (float32),
    ``bf16``, ``fp16`` (CUDA only; on CPU they raise :class:`DeviceError` naming ``option``).
    The scaler is active only for fp16; with it disabled every call is a plain pass-through, so
    code written against this class runs unchanged in float32.

    Usage::

        prec = Precision(cfg.loop.amp, device)
        with prec.autocast():
            loss = criterion(model(x), y)
        prec.backward_step(loss, optimizer, clip_norm=1.0)   # scale, backward, (unscale+clip), step
        prec.update()                                        # once per iteration, after all steps
    """

    def __init__(self, mode: str, device: torch.device, *, option: str = "loop.amp"):
        mode = str(mode).lower()
        if mode not in ("auto", "off", "bf16", "fp16"):
            raise DeviceError(f"{option}={mode!r} must be auto, off, bf16 or fp16")
        self.device = torch.device(device)
        dtype: torch.dtype | None = None
        if self.device.type == "cuda":
            if mode == "auto":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            elif mode == "bf16":
                if not torch.cuda.is_bf16_supported():
                    raise DeviceError(f"{option}=bf16 but {torch.cuda.get_device_name(self.device)} has no bf16; "
                                      "use fp16 or off")
                dtype = torch.bfloat16
            elif mode == "fp16":
                dtype = torch.float16
        elif mode in ("bf16", "fp16"):
            raise DeviceError(f"{option}={mode} needs a CUDA device; this run is on {self.device} "
                              "(use amp=auto or off)")
        self.mode = mode
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)

    @property
    def name(self) -> str:
        return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                      clip_norm: float = 0.0) -> None:
        """Backward of ``loss`` (scaled under fp16), optional global-norm clipping, optimiser step."""
        self.scaler.scale(loss).backward()
        if clip_norm > 0:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        self.scaler.step(optimizer)

    def update(self) -> None:
        """Update the loss scale once per iteration (after every optimiser's step)."""
        self.scaler.update()


# ============================================================================================
# Reproducibility
# ============================================================================================
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG's state, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only where CUDA exists)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ============================================================================================
# Distributed
# ============================================================================================
@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank, device and process-group backend.

    ``backend`` is None for a single process (no process group). ``is_main`` is rank 0: only it
    writes files, logs and progress bars.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InputError(f"environment variable {name}={raw!r} is not an integer") from exc


def init_distributed(device_request: str = "auto", *, option: str = "loop.device",
                     timeout_s: float = 1800.0) -> DistContext:
    """Set up this process from ``torchrun``'s environment, or as a single process.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through
    ``env://``). With ``WORLD_SIZE > 1`` a process group is created: ``nccl`` on CUDA, ``gloo``
    on CPU. An already initialised group is reused. The device follows ``device_request``
    (:func:`select_device`) with ``cuda`` meaning ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    device = select_device(device_request, local_rank=local_rank, option=option)
    if world <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=_dt.timedelta(seconds=timeout_s))
    else:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group this context created (no-op for a single process)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.is_distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def wrap_ddp(model: nn.Module, ctx: DistContext, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` under DDP (the model must already be on ``ctx.device``),
    else the model itself. Extra keyword arguments go to DDP."""
    if not ctx.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    if ctx.device.type == "cuda":
        return DDP(model, device_ids=[ctx.device.index], output_device=ctx.device.index, **kwargs)
    return DDP(model, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DDP (or ``torch.compile``) wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def sync_buffers(module: nn.Module, ctx: DistContext, *, src: int = 0) -> None:
    """Copy every buffer (e.g. BatchNorm running statistics) of ``module`` from rank ``src`` to all
    ranks. DDP broadcasts buffers only at the start of each forward, so the last forward of an
    epoch (or a forward through the unwrapped module) leaves rank-local statistics; call this
    before evaluating or checkpointing so every rank holds identical state."""
    if not ctx.is_distributed:
        return
    for buf in unwrap(module).buffers():
        if ctx.backend == "nccl" or buf.device.type == "cpu":
            dist.broadcast(buf.data, src=src)
        else:
            tmp = buf.data.cpu()
            dist.broadcast(tmp, src=src)
            buf.data.copy_(tmp)


def all_reduce_sums(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each value over ranks (float64); identity for a single process.

    Average metrics by reducing sums and counts, then dividing: with
    :class:`~dsnet_trainer.sampling.EvalShardSampler` every sample is counted exactly once, so the
    result equals the single-process one.
    """
    keys = sorted(values)
    if not ctx.is_distributed:
        return {k: float(values[k]) for k in keys}
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}
