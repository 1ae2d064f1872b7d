"""The training loop shared by every trainer command (SR teacher stages, DSNet, baselines), and
what it writes: run state, checkpoints of a run, metric logs, curves, the run folder.

Nothing here knows about a particular model. The pieces, in the order a command uses them
(device, precision, RNG and DDP are in :mod:`.runtime`; data order in :mod:`.sampling`; the
checkpoint file format in :mod:`.checkpoint`):

State and checkpoints
    :class:`TrainState` (models, optimisers, schedulers, AMP scaler, epoch, step, best metric, RNG;
    ``state_dict`` is a :func:`~dsnet_trainer.checkpoint.make_checkpoint` mapping),
    :class:`CheckpointManager` (``last.pt``, ``best.pt``, ``epoch_XXXX.pt``; ``--resume auto|PATH``).
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

The names that lived here before the runtime, sampling, checkpoint and figure helpers got modules of
their own (``engine.select_device``, ``engine.SeededSampler``, ``engine.load_checkpoint``, ...) are
still importable from here.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from softmask_builder.core import atomic

from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, make_checkpoint, save_checkpoint
from .errors import CheckpointError, InputError
from .figures import save_figure
from .runtime import (DistContext, Precision, all_reduce_sums, barrier, capture_rng_state,
                      init_distributed, restore_rng_state, seed_everything, select_device, shutdown_distributed,
                      sync_buffers, unwrap, wrap_ddp)
from .sampling import EvalShardSampler, SeededSampler, make_loader

__all__ = [
    "TrainState", "CheckpointManager", "MetricLogger", "read_metrics", "plot_curves", "progress", "run_info",
    "prepare_run_dir", "EpochReport", "fit",
    # at home in .runtime, .sampling, .checkpoint and .figures, importable from here as before
    "select_device", "Precision", "seed_everything", "capture_rng_state", "restore_rng_state", "DistContext",
    "init_distributed", "shutdown_distributed", "barrier", "wrap_ddp", "unwrap", "sync_buffers",
    "all_reduce_sums", "SeededSampler", "EvalShardSampler", "make_loader", "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint", "save_figure",
]


# ============================================================================================
# Run state and checkpoint files of a run
# ============================================================================================
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
        """The checkpoint mapping of this state (:func:`~dsnet_trainer.checkpoint.make_checkpoint`)."""
        return make_checkpoint(
            kind=self.kind, modules={k: unwrap(m).state_dict() for k, m in self.modules.items()},
            epoch=self.epoch, step=self.step, best_metric=self.best_metric, compat=self.compat,
            optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
            schedulers={k: s.state_dict() for k, s in self.schedulers.items()},
            scaler=self.precision.scaler.state_dict() if self.precision is not None else {},
            rng=capture_rng_state(), extra=self.extra)

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
            _write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in keep))
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
        _write_text(self.csv_path, buf.getvalue())
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


def progress(iterable: Iterable, *, enabled: bool, desc: str = "", total: int | None = None,
             leave: bool = False) -> Iterable:
    """A tqdm bar when ``enabled`` (rank 0 and ``loop.progress``) and stderr is a terminal, else the
    iterable itself: off a terminal (CI logs, `make | tee`) a bar is a wall of carriage returns, and
    the loops already print one line per epoch (issue 24)."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def _write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (:mod:`softmask_builder.core.atomic`), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


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
            _write_text(p, text)
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
