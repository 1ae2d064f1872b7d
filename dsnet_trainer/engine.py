"""Training-loop machinery shared by every trainer command (SR teacher stages, DSNet, baselines).

Nothing here knows about a particular model. The pieces, in the order a command uses them:

Device and precision
    :func:`select_device` (``auto``/``cpu``/``cuda[:N]``; CUDA asked for but absent -> error naming
    the option), :class:`Precision` (autocast context + GradScaler for fp16; float32 on CPU).
Reproducibility
    :func:`seed_everything`, :func:`capture_rng_state`, :func:`restore_rng_state`.
Distributed (``torchrun``)
    :func:`init_distributed` -> :class:`DistContext` (rank, world size, device; gloo on CPU, nccl
    on CUDA), :func:`wrap_ddp`, :func:`unwrap`, :func:`barrier`, :func:`all_reduce_sums`,
    :func:`sync_buffers`, :func:`shutdown_distributed`. Side effects (files, logs, progress bars) belong to
    ``ctx.is_main`` only.
Data order
    :class:`SeededSampler` (shuffled, rank-disjoint, padded like ``DistributedSampler``, yields
    ``(index, seed, epoch)`` keys so each sample's augmentation depends only on those three numbers,
    never on worker count or start method), :class:`EvalShardSampler` (rank-disjoint, *no*
    padding, so summed metrics are exact), :func:`make_loader`.
State and checkpoints
    :class:`TrainState` (models, optimisers, schedulers, AMP scaler, epoch, step, best metric, RNG),
    :func:`save_checkpoint` (atomic), :func:`load_checkpoint` (``torch.load(weights_only=True)``,
    clear errors naming the file), :class:`CheckpointManager` (``last.pt``, ``best.pt``,
    ``epoch_XXXX.pt``; ``--resume auto|PATH``).
Logging
    :class:`MetricLogger` (``metrics.jsonl`` + ``metrics.csv`` + TensorBoard when installed),
    :func:`plot_curves` (PNG), :func:`progress` (tqdm on rank 0), :func:`prepare_run_dir`
    (config copy, seed, git commit, library versions).
The loop
    :func:`fit` runs epochs from ``state.epoch`` to ``epochs``: a caller-supplied
    ``train_epoch(epoch) -> metrics`` and ``evaluate(epoch) -> metrics``, schedulers stepped per
    epoch, best metric tracked, checkpoints saved on rank 0, metrics logged.

Resume contract: checkpoints are taken at epoch ends. A run killed at any point and restarted with
``resume="auto"`` restores everything saved at the last completed epoch and replays the following
epochs identically (same sampler order, same per-sample augmentation, same RNG streams), so on CPU
it reaches bit-identical weights (``tests/dsnet_trainer/test_resume.py``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import CheckpointError, DeviceError, InputError

CHECKPOINT_FORMAT = "dsnet-trainer-checkpoint"
# Version 2 adds ``weights_sha256`` (digest of ``modules``, checked on load); version 1 files are
# refused with a message saying how to get a new one.
CHECKPOINT_VERSION = 2


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

    Average metrics by reducing sums and counts, then dividing: with :class:`EvalShardSampler`
    every sample is counted exactly once, so the result equals the single-process one.
    """
    keys = sorted(values)
    if not ctx.is_distributed:
        return {k: float(values[k]) for k in keys}
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}


# ============================================================================================
# Data order
# ============================================================================================
class SeededSampler(Sampler):
    """Epoch-shuffled, rank-disjoint sample order that carries a seed to the dataset.

    Order and rank split are exactly those of :class:`torch.utils.data.DistributedSampler`
    (shuffled with ``seed + epoch``; padded by repeating indices so every rank gets the same
    count, or trimmed with ``drop_last``). Each item is a key ``(index, seed, epoch)``; a dataset
    that accepts such keys (:func:`dsnet_trainer.data.resolve_key`) draws its augmentation from
    ``numpy.random.default_rng([seed, epoch, index])``. Augmentation thus depends only on those
    numbers, not on the number of workers, their start method or a resume.

    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, n_samples: int, *, seed: int, shuffle: bool = True, drop_last: bool = False,
                 ctx: DistContext | None = None):
        if n_samples < 1:
            raise InputError(f"cannot sample from an empty dataset (n_samples={n_samples})")
        ctx = ctx or DistContext()
        self.seed = int(seed)
        self.epoch = 0
        self._inner = DistributedSampler(range(n_samples), num_replicas=ctx.world_size, rank=ctx.rank,
                                         shuffle=shuffle, seed=self.seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._inner.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for i in self._inner:
            yield (int(i), self.seed, self.epoch)

    def __len__(self) -> int:
        return len(self._inner)


class EvalShardSampler(Sampler):
    """Rank ``r`` of ``w`` gets indices ``r, r+w, r+2w, ...``: disjoint, complete, no padding.

    Use for evaluation: metrics summed over ranks (:func:`all_reduce_sums`) then count every
    sample exactly once, unlike ``DistributedSampler`` whose padding repeats samples.
    Yields plain ``int`` indices (deterministic, no augmentation).
    """

    def __init__(self, n_samples: int, *, ctx: DistContext | None = None):
        ctx = ctx or DistContext()
        self.indices = list(range(ctx.rank, n_samples, ctx.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, sampler: Sampler, *, batch_size: int, num_workers: int = 0,
                mp_context: str = "default", timeout_s: float = 0.0, drop_last: bool = False,
                pin_memory: bool = False, persistent_workers: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader with the project's settings.

    - ``persistent_workers`` when ``num_workers > 0`` (workers keep their open HDF5 handles).
    - ``mp_context``: ``default``, ``fork``, ``spawn`` or ``forkserver``.
    - ``timeout_s``: a worker silent that long raises (never a silent stall); ignored with 0 workers.
    - its own ``torch.Generator`` seeded with ``seed``, so creating iterators never consumes
      the global torch RNG (which a resume would otherwise replay differently).
    """
    if mp_context not in ("default", "fork", "spawn", "forkserver"):
        raise InputError(f"mp_context must be default, fork, spawn or forkserver, got {mp_context!r}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        kwargs["timeout"] = float(timeout_s)
        if mp_context != "default":
            kwargs["multiprocessing_context"] = mp_context
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, generator=gen, **kwargs)


# ============================================================================================
# Checkpoints
# ============================================================================================
def save_checkpoint(obj: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary name in the same folder, then ``os.replace``: a crash never
    leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(dict(obj), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _first_bytes_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, from its size and first bytes (None if it may be)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK":  # torch.save writes a zip archive
        return (f"not a checkpoint file ({size} bytes, starts with {head!r}; torch checkpoints are zip "
                "archives starting with b'PK')")
    return None


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    expect_kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load a trainer checkpoint with ``torch.load(weights_only=True)`` and check its weights.

    Raises
    ------
    CheckpointError
        Missing, empty, non-zip (e.g. text) file; unreadable, truncated or not weights-only
        loadable; not a trainer checkpoint; an older checkpoint version (1: no weights digest);
        weights whose sha256 differs from the recorded ``weights_sha256`` (corrupted or edited);
        NaN or infinite weights; ``kind`` other than ``expect_kind``. The message names the file.
    """
    from .digest import nonfinite_entries, weights_sha256

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    problem = _first_bytes_problem(path)
    if problem:
        raise CheckpointError(f"cannot read checkpoint {path}: {problem}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dsnet_trainer checkpoint (no format={CHECKPOINT_FORMAT!r})")
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        hint = (" (version 1 predates the weights digest and teacher patient lists: retrain the run, "
                "e.g. `dsnet train ... --resume none`)" if version == 1 else "")
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this trainer reads version "
                              f"{CHECKPOINT_VERSION}{hint}")
    if expect_kind is not None:
        kinds = (expect_kind,) if isinstance(expect_kind, str) else tuple(expect_kind)
        if obj.get("kind") not in kinds:
            raise CheckpointError(f"{path} is a {obj.get('kind')!r} checkpoint, expected {' or '.join(kinds)}")
    modules = obj.get("modules")
    if not isinstance(modules, dict):
        raise CheckpointError(f"{path} has no weights (no 'modules' mapping)")
    if weights_sha256(modules) != obj.get("weights_sha256"):
        raise CheckpointError(f"{path}: weights do not match their recorded sha256 digest (the file was "
                              "corrupted or edited); use another checkpoint or retrain")
    bad = nonfinite_entries(modules)
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite weights ({', '.join(bad)}); the run diverged "
                              "before it was saved: use an earlier checkpoint or retrain with a lower optim.lr")
    return obj


class CheckpointManager:
    """Writes ``last.pt`` every epoch, ``best.pt`` when the monitored metric improves and
    ``epoch_XXXX.pt`` every ``every_n_epochs`` into ``directory``; resolves ``--resume``.

    Only rank 0 should call :meth:`save` (``enabled=False`` makes it a no-op elsewhere).
    """

    def __init__(self, directory: str | Path, *, every_n_epochs: int = 0, enabled: bool = True):
        self.directory = Path(directory)
        self.every_n_epochs = int(every_n_epochs)
        self.enabled = enabled

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def save(self, state: Mapping[str, Any], *, epoch: int, improved: bool) -> None:
        if not self.enabled:
            return
        save_checkpoint(state, self.last_path)
        if improved:
            save_checkpoint(state, self.best_path)
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            save_checkpoint(state, self.directory / f"epoch_{epoch:04d}.pt")

    def resolve_resume(self, resume: str | Path | None, *, option: str = "--resume") -> Path | None:
        """``None``/``""``/``"none"`` -> None; ``"auto"`` -> ``last.pt`` if present else None;
        any other value must be an existing file (else :class:`CheckpointError` naming it)."""
        if resume is None or str(resume).strip().lower() in ("", "none", "no", "false"):
            return None
        if str(resume).strip().lower() == "auto":
            return self.last_path if self.last_path.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"{option} {path}: checkpoint not found")
        return path


class TrainState:
    """Everything a resume needs, with ``state_dict``/``load_state_dict``.

    Parameters
    ----------
    kind : str
        Checkpoint kind (``"sr-srresnet"``, ``"sr-srgan"``, ``"dsnet"``...); a checkpoint of
        another kind is refused on load.
    modules, optimizers, schedulers : dict
        Named objects with ``state_dict``/``load_state_dict``. Modules may be DDP-wrapped; the
        bare module's weights are saved.
    precision : Precision or None
        Its GradScaler state is saved and restored.
    compat : dict
        Settings that must match on resume (e.g. the model config); a mismatch raises
        :class:`CheckpointError` listing the differing keys. Other settings (epochs, lr) may change.
    extra : dict
        Free, weights-only-safe payload (plain types, tensors).

    ``epoch`` counts completed epochs, ``step`` optimiser steps; ``best_metric`` is the best
    monitored value so far (None before the first validation).
    """

    def __init__(self, kind: str, *, modules: Mapping[str, nn.Module], optimizers: Mapping[str, Any] | None = None,
                 schedulers: Mapping[str, Any] | None = None, precision: Precision | None = None,
                 compat: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None):
        self.kind = kind
        self.modules = dict(modules)
        self.optimizers = dict(optimizers or {})
        self.schedulers = dict(schedulers or {})
        self.precision = precision
        self.compat = json.loads(json.dumps(dict(compat or {})))
        self.extra = dict(extra or {})
        self.epoch = 0
        self.step = 0
        self.best_metric: float | None = None

    def update_best(self, value: float | None, mode: str = "max") -> bool:
        """Record ``value`` if it beats ``best_metric`` (``mode`` max or min); return whether it did."""
        if value is None or not math.isfinite(float(value)):
            return False
        v = float(value)
        if self.best_metric is None or (v > self.best_metric if mode == "max" else v < self.best_metric):
            self.best_metric = v
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        from .digest import weights_sha256

        modules = {k: unwrap(m).state_dict() for k, m in self.modules.items()}
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "weights_sha256": weights_sha256(modules),
            "kind": self.kind,
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "compat": self.compat,
            "modules": modules,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.precision.scaler.state_dict() if self.precision is not None else {},
            "rng": capture_rng_state(),
            "extra": self.extra,
        }

    def load_state_dict(self, ckpt: Mapping[str, Any], *, source: str | Path = "<checkpoint>",
                        restore_rng: bool = True) -> None:
        """Restore from a checkpoint mapping (as returned by :func:`load_checkpoint`).

        Raises
        ------
        CheckpointError
            Kind, compat settings, module/optimiser names or weight shapes do not match
            (message names ``source`` and the first differences).
        """
        if ckpt.get("kind") != self.kind:
            raise CheckpointError(f"{source} is a {ckpt.get('kind')!r} checkpoint, expected {self.kind!r}")
        diffs = _dict_diff(ckpt.get("compat", {}), self.compat)
        if diffs:
            raise CheckpointError(f"{source} was made with other settings: {'; '.join(diffs[:5])}")
        for group, mine in (("modules", self.modules), ("optimizers", self.optimizers),
                            ("schedulers", self.schedulers)):
            theirs = ckpt.get(group, {})
            if set(theirs) != set(mine):
                raise CheckpointError(f"{source}: {group} {sorted(theirs)} do not match expected {sorted(mine)}")
        for name, module in self.modules.items():
            try:
                unwrap(module).load_state_dict(ckpt["modules"][name], strict=True)
            except RuntimeError as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                raise CheckpointError(f"{source}: weights of {name!r} do not fit the model: "
                                      f"{' '.join(lines[:3])[:400]}") from exc
        for group, mine in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            for name, obj in mine.items():
                try:
                    obj.load_state_dict(ckpt[group][name])
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"{source}: state of {group[:-1]} {name!r} does not fit: {exc}") from exc
        if self.precision is not None and ckpt.get("scaler"):
            self.precision.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt.get("epoch", 0))
        self.step = int(ckpt.get("step", 0))
        best = ckpt.get("best_metric")
        self.best_metric = None if best is None else float(best)
        self.extra = dict(ckpt.get("extra", {}))
        if restore_rng and "rng" in ckpt:
            restore_rng_state(ckpt["rng"])


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out.append(f"{key}: absent in checkpoint, now {b[k]!r}")
            elif k not in b:
                out.append(f"{key}: {a[k]!r} in checkpoint, absent now")
            else:
                out.extend(_dict_diff(a[k], b[k], key))
        return out
    return [] if a == b else [f"{prefix}: {a!r} in checkpoint, now {b!r}"]


# ============================================================================================
# Logging
# ============================================================================================
class MetricLogger:
    """Metric rows to ``<run_dir>/<name>.jsonl`` (appended, flushed) and ``<name>.csv``
    (rewritten by :meth:`write_csv`), plus TensorBoard scalars when the ``tensorboard`` package
    is installed and ``tensorboard=True``. With ``enabled=False`` (ranks other than 0) it does
    nothing.

    A row is a flat mapping; ``phase`` (``"train"``, ``"epoch"``...), ``epoch`` and ``step`` are
    conventional keys, the rest are numbers. ``resume_step``: rows of an earlier, killed run with
    ``step > resume_step`` (written after the checkpoint it resumes from) are dropped, so the log
    matches an uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, *, name: str = "metrics", enabled: bool = True,
                 tensorboard: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / f"{name}.jsonl"
        self.csv_path = self.run_dir / f"{name}.csv"
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl_path.exists():
            rows = read_metrics(self.jsonl_path)
            keep = rows if resume_step is not None else []
            if resume_step is not None:
                keep = [r for r in rows if int(r.get("step", 0)) <= resume_step]
            _atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in keep))
        self._fh = open(self.jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` package
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in row.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        if self._tb is not None:
            phase = str(clean.get("phase", ""))
            step = int(clean.get("step", 0))
            for k, v in clean.items():
                if k not in ("phase", "epoch", "step") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{phase}/{k}" if phase else k, v, step)

    def write_csv(self) -> Path | None:
        """Rewrite the CSV from the JSONL (union of columns, first-seen order)."""
        if not self.enabled:
            return None
        self._fh.flush()
        rows = read_metrics(self.jsonl_path)
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        _atomic_write_text(self.csv_path, buf.getvalue())
        return self.csv_path

    def close(self) -> None:
        """Write the CSV and close the files (idempotent)."""
        if not self.enabled or self._fh.closed:
            return
        self.write_csv()
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics JSONL file (a torn last line from a kill is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


_PHASE_LABELS = {"train": "every N training steps", "epoch": "epoch mean (val_*: validation split)"}


def plot_curves(jsonl_path: str | Path, png_path: str | Path, *, title: str = "",
                skip: tuple[str, ...] = ("n", "val_n", "selected_epoch"), selected_epoch: int | None = None,
                selection_rule: str = "") -> Path:
    """One panel per numeric metric (except ``skip``), x = optimiser step, one line per
    ``phase`` (legend: "every N training steps" / "epoch mean"); saved as PNG.

    ``selected_epoch``: drawn as a dashed vertical line in every panel, labelled with the epoch
    and ``selection_rule`` (how ``best.pt`` was chosen), so a reader sees which weights the
    reported numbers come from."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = read_metrics(jsonl_path)
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    selected_step = None
    for r in rows:
        phase = str(r.get("phase", ""))
        if selected_epoch is not None and phase == "epoch" and r.get("epoch") == selected_epoch:
            selected_step = float(r.get("step", 0))
        for k, v in r.items():
            if k in ("phase", "epoch", "step", *skip) or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if not math.isfinite(float(v)):
                continue
            xs, ys = series.setdefault(k, {}).setdefault(phase, ([], []))
            xs.append(float(r.get("step", len(xs))))
            ys.append(float(v))
    keys = sorted(series)
    n = max(1, len(keys))
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow + 0.4), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        for phase, (xs, ys) in sorted(series[k].items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, lw=1,
                    label=_PHASE_LABELS.get(phase, phase or k))
        if selected_step is not None:
            ax.axvline(selected_step, color="k", ls="--", lw=0.8, label=f"selected epoch {selected_epoch}")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("optimiser step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if selected_step is not None:
        fig.text(0.5, 0.005, f"dashed line: the selected epoch {selected_epoch} (best.pt)"
                 + (f", chosen by {selection_rule}" if selection_rule else ""), ha="center", va="bottom", fontsize=8)
    return save_figure(fig, png_path, title=title, dpi=100)


def save_figure(fig, path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Lay out, title and write a matplotlib figure as PNG atomically (temp name, then rename),
    without the "Software" metadata (so the same figure gives the same bytes); closes it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path


def progress(iterable: Iterable, *, enabled: bool, desc: str = "", total: int | None = None,
             leave: bool = False) -> Iterable:
    """A tqdm bar when ``enabled`` (rank 0 and ``loop.progress``), else the iterable itself."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ============================================================================================
# Run folder
# ============================================================================================
def run_info(*, seed: int, command: str = "", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Seed, git commit (and dirty flag), library versions, command line and host of this run."""
    import h5py

    from . import __version__

    repo = Path(__file__).resolve().parents[1]
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        if commit:
            status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout
            dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    info: dict[str, Any] = {
        "command": command or " ".join(sys.argv),
        "seed": int(seed),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {
            "dsnet_trainer": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "numpy": np.__version__,
            "h5py": h5py.__version__,
        },
        "host": platform.node(),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info.update(dict(extra or {}))
    return info


def prepare_run_dir(out: str | Path, cfg: Any, *, ctx: DistContext, seed: int, command: str = "",
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Create ``out`` and (rank 0) write ``config.yaml`` (the resolved config) and
    ``run_info.json`` (seed, git commit, versions, world size). Earlier copies from a resumed run
    are kept as ``config.prev.yaml`` / ``run_info.prev.json``."""
    from .config import dump_yaml

    out = Path(out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        info = run_info(seed=seed, command=command,
                        extra={"world_size": ctx.world_size, "device": str(ctx.device), **dict(extra or {})})
        for name, text in (("config.yaml", dump_yaml(cfg)), ("run_info.json", json.dumps(info, indent=2) + "\n")):
            p = out / name
            if p.exists():
                os.replace(p, p.with_name(p.stem + ".prev" + p.suffix))
            _atomic_write_text(p, text)
    barrier(ctx)
    return out


# ============================================================================================
# The loop
# ============================================================================================
@dataclass
class EpochReport:
    """What :func:`fit` tells its ``on_epoch`` callback after each epoch (for progress lines)."""

    epoch: int                      # completed epochs (1-based)
    epochs: int
    train: dict[str, float]
    val: dict[str, float]
    selected_epoch: int | None      # epoch of best.pt so far under the selection rule
    selected_score: float | None    # its window mean of the monitored metric
    elapsed_s: float                # since fit() started (this process)
    remaining_s: float              # mean epoch time of this process x epochs left


def _window_score(history: list[list[float]], k: int) -> float:
    vals = [v for _, v in history[-k:]]
    return sum(vals) / len(vals)


def fit(state: TrainState, *, epochs: int, train_epoch: Callable[[int], Mapping[str, float]],
        evaluate: Callable[[int], Mapping[str, float]] | None, checkpoints: CheckpointManager,
        logger: MetricLogger, ctx: DistContext, monitor: str | None = None, mode: str = "max",
        val_every_epochs: int = 1, phase: str = "epoch", select_k: int = 1,
        on_epoch: Callable[[EpochReport], None] | None = None) -> TrainState:
    """Run epochs ``state.epoch .. epochs-1``.

    Per epoch: ``train_epoch(epoch)`` (must advance ``state.step`` and return mean training
    metrics), every scheduler's ``step()``, ``evaluate(epoch)`` every ``val_every_epochs`` and
    after the last epoch (returns metrics already reduced over ranks), model selection on
    ``monitor`` (``mode`` max/min), a ``phase`` row in the log (validation keys prefixed ``val_``,
    plus ``select_score`` and ``selected_epoch``) and, on rank 0, checkpoints (``last``, ``best``
    when the selection improves, every N). Returns ``state``.

    Selection rule: after each validation, the score is the mean of the monitored metric over
    the last ``select_k`` validations, once ``select_k`` exist (a run with fewer validations in
    all is scored at its last epoch over those it has); ``best.pt`` is the checkpoint at the end
    of the window with the best score. ``select_k=1`` is the single best validation.
    The history lives in ``state.extra["val_history"]`` so a resumed run selects identically.
    ``on_epoch`` (rank 0) receives an :class:`EpochReport` after each epoch.
    """
    import time

    if mode not in ("max", "min"):
        raise InputError(f"mode must be max or min, got {mode!r}")
    if select_k < 1:
        raise InputError(f"select_k must be >= 1, got {select_k}")
    history: list[list[float]] = [list(map(float, h)) for h in state.extra.get("val_history", [])]
    t0 = time.monotonic()
    first = state.epoch
    for epoch in range(state.epoch, epochs):
        train_metrics = dict(train_epoch(epoch))
        for sched in state.schedulers.values():
            sched.step()
        state.epoch = epoch + 1
        val_metrics: dict[str, float] = {}
        last = state.epoch == epochs
        if evaluate is not None and (last or (val_every_epochs and state.epoch % val_every_epochs == 0)):
            val_metrics = dict(evaluate(epoch))
        score = None
        value = val_metrics.get(monitor) if monitor else None
        if value is not None and math.isfinite(float(value)):
            history.append([float(state.epoch), float(value)])
            # only full windows compete (an early lucky validation cannot win alone); a run too
            # short for one full window is scored at its last epoch with what it has
            if len(history) >= select_k or last:
                score = _window_score(history, select_k)
        improved = state.update_best(score, mode)
        if improved:
            state.extra["selected_epoch"] = state.epoch
        state.extra["val_history"] = history
        lrs = {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in state.optimizers.items()}
        sel = {"select_score": score, "selected_epoch": state.extra.get("selected_epoch")} if score is not None else {}
        logger.log({"phase": phase, "epoch": state.epoch, "step": state.step, **train_metrics, **lrs,
                    **{f"val_{k}": v for k, v in val_metrics.items()}, **sel})
        if ctx.is_main:
            checkpoints.save(state.state_dict(), epoch=state.epoch, improved=improved or
                             (monitor is None and last))
            if on_epoch is not None:
                elapsed = time.monotonic() - t0
                per = elapsed / (state.epoch - first)
                on_epoch(EpochReport(epoch=state.epoch, epochs=epochs, train=train_metrics, val=val_metrics,
                                     selected_epoch=state.extra.get("selected_epoch"),
                                     selected_score=state.best_metric, elapsed_s=elapsed,
                                     remaining_s=per * (epochs - state.epoch)))
        barrier(ctx)
    return state
