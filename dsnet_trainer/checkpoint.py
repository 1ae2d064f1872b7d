"""The trainer's checkpoint file: its layout, version, weights digest, atomic save and checked load.

A checkpoint is a plain mapping written by ``torch.save`` and read back with
``torch.load(weights_only=True)`` (no pickled code runs on load). Its keys, in this order:

``format``           ``"dsnet-trainer-checkpoint"`` (:data:`CHECKPOINT_FORMAT`)
``version``          :data:`CHECKPOINT_VERSION` (3)
``weights_sha256``   :func:`~dsnet_trainer.digest.weights_sha256` of ``modules``, checked on load
``state_sha256``     :func:`state_sha256` of every other key (epoch, step, best_metric, compat,
                     modules, optimizers, schedulers, scaler, rng, extra), checked on load: a
                     flipped byte in the optimiser state or the RNG is refused like one in a weight
``kind``             what was trained (``"sr-srresnet"``, ``"sr-srgan"``, ``"seg"``)
``epoch``, ``step``  completed epochs, optimiser steps
``best_metric``      best monitored value so far (None before the first validation)
``compat``           settings a resume must match
``modules``          ``{name: state dict}`` of the bare (un-wrapped) modules
``optimizers``, ``schedulers``, ``scaler``, ``rng``, ``extra``
                     everything else a resume restores (:class:`~dsnet_trainer.engine.TrainState`)

:func:`make_checkpoint` builds the mapping, :func:`save_checkpoint` writes it (any ``torch.save``
payload; the SR teacher file of :mod:`dsnet_trainer.models.teacher` uses it too) and
:func:`load_checkpoint` reads and checks it; every problem is a
:class:`~dsnet_trainer.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from softmask_builder.core import atomic

from .digest import nonfinite_entries, weights_sha256
from .errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "make_checkpoint", "save_checkpoint",
           "load_checkpoint", "load_weights_only", "first_bytes_problem", "state_sha256"]

CHECKPOINT_FORMAT = "dsnet-trainer-checkpoint"
# Version 2 adds ``weights_sha256`` (digest of ``modules``, checked on load); version 3 adds
# ``state_sha256`` (digest of everything a resume or an evaluation restores). Older files are
# refused with one line saying how to get a new one (retrain): a version-2 file's optimiser, scaler
# and RNG state cannot be checked, and a resume or evaluation must not restore unchecked state.
CHECKPOINT_VERSION = 3
_STATE_EXCLUDED = ("format", "version", "weights_sha256", "state_sha256")


def _feed(h, value) -> None:
    """Feed ``value`` (nested mappings/sequences of tensors, arrays and scalars) to ``h`` in a
    canonical form: mapping keys sorted by their text, each item tagged by its type."""
    import numpy as np

    if isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"{type(key).__name__}:{key!s}=".encode())
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}](".encode())
        for item in value:
            _feed(h, item)
        h.update(b")")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"A|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"B|" + bytes(value))
    else:  # None, bool, int, float (repr is exact), str, torch.dtype/device ...
        h.update(f"{type(value).__name__}|{value!r};".encode())


def state_sha256(obj: Mapping[str, Any]) -> str:
    """sha256 (hex) of every key of a checkpoint mapping except the format, version and digests:
    the weights, optimisers, schedulers, scaler, RNG states, extra, counters and compat."""
    import hashlib

    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k not in _STATE_EXCLUDED})
    return h.hexdigest()


def make_checkpoint(*, kind: str, modules: Mapping[str, Any], epoch: int, step: int, best_metric: float | None,
                    compat: Mapping[str, Any], optimizers: Mapping[str, Any], schedulers: Mapping[str, Any],
                    scaler: Mapping[str, Any], rng: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint mapping (keys in the module docstring's order) with its two digests."""
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "weights_sha256": weights_sha256(modules),
        "state_sha256": "",
        "kind": kind,
        "epoch": epoch,
        "step": step,
        "best_metric": best_metric,
        "compat": compat,
        "modules": modules,
        "optimizers": optimizers,
        "schedulers": schedulers,
        "scaler": scaler,
        "rng": rng,
        "extra": extra,
    }
    obj["state_sha256"] = state_sha256(obj)
    return obj


def save_checkpoint(obj: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` atomically (:func:`softmask_builder.core.atomic.replacing`): a crash never
    leaves a half-written file under the final name. Creates the folder.

    ``torch.save`` names the zip's inner folder after the file it writes (its name up to the last
    dot), so it writes to ``.<name>.<pid>`` (folder ``.<name>``, whatever the pid) and that file
    becomes the temporary: the same payload gives the same bytes in every process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        scratch = tmp.with_name(tmp.stem)  # .<name>.<pid>
        try:
            torch.save(dict(obj), scratch)
            os.replace(scratch, tmp)
        finally:
            scratch.unlink(missing_ok=True)
    return path


def first_bytes_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a torch file, from its size and first bytes (None if it may be)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK":  # torch.save writes a zip archive
        return (f"not a checkpoint file ({size} bytes, starts with {head!r}; torch checkpoints are zip "
                "archives starting with b'PK')")
    return None


def load_weights_only(path: str | Path, *, what: str = "checkpoint",
                      map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` of a file this module wrote (a checkpoint or an SR
    teacher file), with every failure one :class:`CheckpointError` naming ``what`` and the file:
    missing, empty, not a zip archive, unreadable or not weights-only loadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    problem = first_bytes_problem(path)
    if problem:
        raise CheckpointError(f"cannot read {what} {path}: {problem}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {what} {path}: {first}") from exc


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    expect_kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load a trainer checkpoint with ``torch.load(weights_only=True)`` and check its weights.

    Raises
    ------
    CheckpointError
        Missing, empty, non-zip (e.g. text) file; unreadable, truncated or not weights-only
        loadable; not a trainer checkpoint; an older checkpoint version (1: no weights digest; 2: a
        digest of the weights only); weights whose sha256 differs from the recorded
        ``weights_sha256``, or any other restored state differing from ``state_sha256``;
        NaN or infinite weights; ``kind`` other than ``expect_kind``. The message names the file.
    """
    path = Path(path)
    obj = load_weights_only(path, what="checkpoint", map_location=map_location)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dsnet_trainer checkpoint (no format={CHECKPOINT_FORMAT!r})")
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        hint = (" (version 1 predates the weights digest and teacher patient lists: retrain the run, "
                "e.g. `dsnet train ... --resume none`)" if version == 1 else
                " (version 2's digest covers only the weights, so its optimiser, scaler and RNG state cannot be "
                "checked: retrain the run, e.g. `dsnet train ... --resume none`)" if version == 2 else "")
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
    if state_sha256(obj) != obj.get("state_sha256"):
        raise CheckpointError(f"{path}: the training state (optimiser, schedulers, scaler, RNG, extra or "
                              "counters) does not match its recorded sha256 digest (the file was corrupted or "
                              "edited); use another checkpoint or retrain")
    bad = nonfinite_entries(modules)
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite weights ({', '.join(bad)}); the run diverged "
                              "before it was saved: use an earlier checkpoint or retrain with a lower optim.lr")
    return obj
