"""Typed configuration: frozen dataclasses loaded from YAML/JSON with command-line overrides.

Every trainer config is a tree of frozen dataclasses. This module turns a plain mapping (a YAML
or JSON file, plus ``key.sub=value`` overrides) into such a tree, checking every key and type on
the way, and back into a plain mapping for the run folder. No value is ever evaluated as code:
an override's value is parsed with :func:`yaml.safe_load` (so ``lr=1e-3``, ``window=[-1350,150]``,
``amp=off`` all work) and then checked against the field's annotation.

Generic API (reused by every command: SR teacher, DSNet, baselines)
-----------------------------------------------------------------
- :func:`load_config` ``(cls, path=None, overrides=()) -> cls``: file + overrides -> dataclass.
- :func:`from_dict` ``(cls, mapping) -> cls``: strict conversion (unknown key -> error naming it).
- :func:`to_dict` ``(cfg) -> dict``: JSON/YAML-safe plain mapping (tuples become lists).
- :func:`apply_overrides` ``(mapping, overrides) -> dict``: ``a.b=value`` on a nested mapping.
- :func:`dump_yaml` / :func:`config_sha256`: the copy written into each run folder and its hash.
- :func:`packaged_config` ``(name) -> Path``: ``sr_tiny`` -> ``dsnet_trainer/configs/sr_tiny.yaml``.
- :class:`LoopConfig`: the training-loop settings both stages and DSNet share (device, AMP,
  batch size, workers, checkpoints, logging, seed). Embed it in a command's config as ``loop``.

Supported field annotations (see :mod:`softmask_builder.core.typed`): ``int``, ``float`` (ints and
YAML 1.1 strings such as ``1e-3`` accepted, finite only), ``bool``, ``str``, ``Literal[...]``,
``tuple[T, ...]``, ``tuple[T1, T2]``, ``dict[K, V]``, ``X | None`` and nested dataclasses.
Validation of values (ranges, cross-field rules) belongs in each dataclass's ``__post_init__``,
raising :class:`~dsnet_trainer.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from softmask_builder.core.typed import from_mapping
from softmask_builder.core.yaml_safe import one_line, safe_load_strict

from .errors import ConfigError

T = TypeVar("T")

_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


# --------------------------------------------------------------------------------------------
# The shared training-loop settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopConfig:
    """Training-loop settings shared by every trainer command.

    Attributes
    ----------
    seed : int
        Seeds torch/numpy/python RNGs and every per-sample augmentation (see
        :class:`dsnet_trainer.sampling.SeededSampler`). Same seed + same data -> same weights on CPU.
    device : str
        ``auto`` (CUDA ``cuda:LOCAL_RANK`` when available, else CPU), ``cpu``, ``cuda`` or
        ``cuda:N``. Asking for CUDA on a machine without it is an error naming ``loop.device``.
    amp : {"auto", "off", "bf16", "fp16"}
        Mixed precision on CUDA: ``auto`` = bf16 where supported, else fp16 with a GradScaler;
        CPU always runs float32 (``auto``/``off``); ``bf16``/``fp16`` on CPU is an error.
    batch_size : int
        Per-process batch size (the global batch is ``batch_size * world_size`` under DDP).
    num_workers : int
        DataLoader worker processes (0 = load in the main process).
    mp_context : {"default", "fork", "spawn", "forkserver"}
        Worker start method; ``default`` uses the platform's (Python 3.14's is forkserver).
    loader_timeout_s : float
        A worker that produces no batch for this long raises instead of stalling (0 = never).
    max_steps_per_epoch : int
        Cap on optimiser steps per epoch (0 = the whole sampler); for smoke runs.
    val_every_epochs : int
        Validate every N epochs and after the last one (0 = only after the last one).
    checkpoint_every_epochs : int
        Keep ``epoch_XXXX.pt`` every N epochs besides ``last.pt``/``best.pt`` (0 = never).
    log_every_steps : int
        Write a step row (loss, lr) to the metrics log every N steps (0 = epoch rows only).
    progress : bool
        Show a tqdm progress bar on rank 0.
    tensorboard : bool
        Also log to TensorBoard when the ``tensorboard`` package is installed (silently off if not).
    grad_clip_norm : float
        Clip the global gradient norm to this value (0 = no clipping).
    num_threads : int
        ``torch.set_num_threads`` for this process (0 = torch's default). On a shared or small
        CPU machine 1 is often several times faster than oversubscribed defaults.
    select_k : int
        Model-selection rule for ``best.pt``: the checkpoint saved at the end of the window of
        ``select_k`` consecutive validations with the highest mean monitored metric (only full
        windows compete; a run with fewer validations is scored at its last epoch). 1 = the single best validation (noisy on small validation splits);
        DSNet configs use 5 (see docs/TRAINING.md, "Model selection").
    """

    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    batch_size: int = 16
    num_workers: int = 2
    mp_context: Literal["default", "fork", "spawn", "forkserver"] = "default"
    loader_timeout_s: float = 600.0
    max_steps_per_epoch: int = 0
    val_every_epochs: int = 1
    checkpoint_every_epochs: int = 0
    log_every_steps: int = 50
    progress: bool = True
    tensorboard: bool = True
    grad_clip_norm: float = 0.0
    num_threads: int = 0
    select_k: int = 1

    def __post_init__(self) -> None:
        _check(self.select_k >= 1, "loop.select_k", self.select_k, ">= 1")
        _check(self.batch_size >= 1, "loop.batch_size", self.batch_size, ">= 1")
        _check(self.num_workers >= 0, "loop.num_workers", self.num_workers, ">= 0")
        _check(self.loader_timeout_s >= 0, "loop.loader_timeout_s", self.loader_timeout_s, ">= 0")
        _check(self.max_steps_per_epoch >= 0, "loop.max_steps_per_epoch", self.max_steps_per_epoch, ">= 0")
        _check(self.val_every_epochs >= 0, "loop.val_every_epochs", self.val_every_epochs, ">= 0")
        _check(self.checkpoint_every_epochs >= 0, "loop.checkpoint_every_epochs",
               self.checkpoint_every_epochs, ">= 0")
        _check(self.log_every_steps >= 0, "loop.log_every_steps", self.log_every_steps, ">= 0")
        _check(self.grad_clip_norm >= 0, "loop.grad_clip_norm", self.grad_clip_norm, ">= 0")
        _check(self.num_threads >= 0, "loop.num_threads", self.num_threads, ">= 0")
        dev = self.device
        ok = dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
        _check(ok, "loop.device", dev, "one of auto, cpu, cuda, cuda:N")


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} must be {rule}, got {value!r}")


# --------------------------------------------------------------------------------------------
# mapping <-> dataclass
# --------------------------------------------------------------------------------------------
def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a nested mapping, strictly.

    Missing keys take the dataclass defaults; unknown keys, wrong types and values rejected by
    a ``__post_init__`` raise :class:`ConfigError` naming the dotted key (``where`` is the
    prefix used in messages, e.g. ``"stage1"``). The checks are
    :func:`softmask_builder.core.typed.from_mapping`'s (shared with the build recipes).
    """
    return from_mapping(cls, data, error=ConfigError, where=where, noun="config key")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested mapping of a config dataclass (tuples -> lists), safe for JSON and YAML."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


# --------------------------------------------------------------------------------------------
# files and overrides
# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a", "b", "c"], safe_load(value))``; never evaluates code."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p or not p.replace("_", "").isalnum() for p in parts):
        raise ConfigError(f"override {text!r}: bad key {key!r} (dotted identifiers expected)")
    try:
        value = safe_load_strict(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({one_line(exc)})") from None
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with each ``key.sub=value`` override set (creating sections)."""
    out = json.loads(json.dumps(dict(data)))  # deep copy of a plain mapping
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i + 1])!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else safe_load_strict(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def packaged_config(name: str) -> Path:
    """Path of a config shipped in ``dsnet_trainer/configs`` (``"sr_tiny"`` or ``"sr_tiny.yaml"``)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = _CONFIG_DIR / f"{stem}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in _CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no packaged config {name!r} (known: {', '.join(known)})")
    return path


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path if it exists, else a packaged config name; errors list both possibilities."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix in ("", ".yaml") and p.parent == Path("."):
        return packaged_config(str(name_or_path))
    raise ConfigError(f"config file not found: {p}")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML/JSON file (or defaults when ``path`` is None) plus overrides.

    Parameters
    ----------
    cls : dataclass type
        The config's root dataclass (e.g. :class:`dsnet_trainer.sr.SRConfig`).
    path : str or Path or None
        A YAML/JSON file, or a packaged config name (``sr_tiny``, ``sr_paper``).
    overrides : sequence of str
        ``key.sub=value`` strings applied after the file, in order; values parsed by
        :func:`yaml.safe_load`.

    Raises
    ------
    ConfigError
        Missing/unreadable file, unknown key, wrong type, value out of range (names the key).
    """
    data = read_mapping(resolve_config_path(path)) if path is not None else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def dump_yaml(cfg: Any) -> str:
    """The config as YAML text (key order as declared), the form copied into run folders."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_sha256(cfg: Any) -> str:
    """SHA-256 of the config's canonical JSON (sorted keys): equal configs, equal hashes."""
    text = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
