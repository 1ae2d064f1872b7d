"""The SR teacher file (``teacher.pt`` of ``dsnet pretrain-sr``) and the frozen teacher module.

The file is the one format the SR trainer and DSNet share: :func:`export_teacher` writes it,
:func:`read_teacher_file` reads and checks it, :func:`load_teacher` rebuilds the frozen
:class:`SRTeacher` (through the model registry) for DRTM. A seg checkpoint keeps the teacher's
architecture record (:func:`read_teacher_arch`) and weights, from which :func:`teacher_from_arch`
rebuilds the module without the file. Nothing here trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_weights_only, save_checkpoint
from ..config import config_sha256, to_dict
from ..digest import nonfinite_entries, weights_sha256
from ..errors import CheckpointError, ConfigError, InputError
from ..runtime import unwrap
from . import build_model

__all__ = ["TEACHER_FORMAT", "TEACHER_VERSION", "TeacherOutput", "SRTeacher", "export_teacher", "read_teacher_file",
           "load_teacher", "teacher_summary", "read_teacher_arch", "teacher_from_arch"]

TEACHER_FORMAT = "dsnet-sr-teacher"
# Version 2 adds ``weights_sha256`` (checked on load) and ``train_patients`` ({namespace: ids}).
TEACHER_VERSION = 2


class TeacherOutput(NamedTuple):
    """``sr``: (N, 1, h*s, w*s) SR image in [-1, 1] (clamped); ``features``: (N, C, h*s, w*s)
    output of the generator's last decoder (up-sampling) block."""

    sr: torch.Tensor
    features: torch.Tensor


class SRTeacher(nn.Module):
    """The frozen SR teacher for DRTM (weights never require grad, always in eval mode).

    Attributes: ``scale``, ``feature_channels`` (C of ``features``), ``window_level_hu``,
    ``window_width_hu`` (the window its inputs must use), ``downsample`` (how its LR was made),
    ``metrics`` (validation figures at export), ``generator`` (the SRResNet).

    ``teacher(lr)`` -> :class:`TeacherOutput` for an LR input (N, 1, h, w) in [-1, 1].
    ``teacher.forward_native(image)`` -> :class:`TeacherOutput` at the image's own resolution:
    the image (N, 1, H, W; H, W multiples of ``scale``) is first down-sampled x``scale`` the way
    the teacher's training LR was, so ``sr`` and ``features`` are (.., H, W) and align
    pixel-for-pixel with ``image`` (the form DRTM transfers into DSNet's decoder).
    """

    def __init__(self, generator: nn.Module, *, scale: int, feature_channels: int, window_level_hu: float,
                 window_width_hu: float, downsample: str, metrics: dict[str, Any] | None = None,
                 train_patients: dict[str, list[str]] | None = None):
        super().__init__()
        # {namespace: patient ids} of the slices it was trained on (None: unknown, an old file)
        self.train_patients = None if train_patients is None else {k: list(v) for k, v in train_patients.items()}
        self.generator = generator
        self.scale = int(scale)
        self.feature_channels = int(feature_channels)
        self.window_level_hu = float(window_level_hu)
        self.window_width_hu = float(window_width_hu)
        self.downsample = downsample
        self.metrics = dict(metrics or {})
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.generator.eval()

    def train(self, mode: bool = True) -> SRTeacher:  # frozen: stays in eval mode
        super().train(False)
        return self

    def forward(self, lr: torch.Tensor) -> TeacherOutput:
        sr, feats = self.generator.forward_features(lr)
        return TeacherOutput(sr.clamp(-1.0, 1.0), feats)

    def forward_native(self, image: torch.Tensor) -> TeacherOutput:
        if image.ndim != 4 or image.shape[-1] % self.scale or image.shape[-2] % self.scale:
            raise InputError(f"image must be (N, 1, H, W) with H, W multiples of {self.scale}, got "
                             f"{tuple(image.shape)}")
        if self.downsample in ("area", "windowed_area"):
            lr = F.avg_pool2d(image, self.scale)
        else:
            lr = F.interpolate(image, scale_factor=1.0 / self.scale, mode="bicubic", align_corners=False,
                               antialias=True)
        return self.forward(lr)


def export_teacher(generator: nn.Module, cfg, path: str | Path, *,
                   metrics: dict[str, Any] | None = None, stage: str = "srgan",
                   train_patients: dict[str, list[str]] | None = None,
                   data_provenance: dict[str, Any] | None = None) -> Path:
    """Save the generator's weights and everything needed to rebuild it (atomic write).

    ``cfg`` is the run's :class:`~dsnet_trainer.sr.SRConfig` (its generator, data and whole config
    are recorded).

    The file is a plain mapping readable with ``torch.load(weights_only=True)``:
    ``format="dsnet-sr-teacher"``, ``version`` (2), ``model`` (registry name + kwargs),
    ``data`` (scale, HU window, down-sampling), ``generator`` (state dict, CPU),
    ``weights_sha256`` (:func:`~dsnet_trainer.digest.weights_sha256` of ``{"generator": ...}``),
    ``train_patients`` (``{namespace: sorted patient ids}`` of its training slices, see
    :mod:`~dsnet_trainer.provenance`), ``data_provenance`` (the training slices' build
    ``provenance``: what a phantom is made of; None for real slices), ``metrics``, ``stage``,
    ``config`` (the whole SRConfig), ``config_sha256``.
    """
    weights = {k: v.detach().cpu() for k, v in unwrap(generator).state_dict().items()}
    payload = {
        "format": TEACHER_FORMAT,
        "version": TEACHER_VERSION,
        "weights_sha256": weights_sha256({"generator": weights}),
        "train_patients": {k: sorted(v) for k, v in (train_patients or {}).items()},
        "data_provenance": json.loads(json.dumps(data_provenance)) if data_provenance else None,
        "stage": stage,
        "model": {"name": cfg.generator.name, "kwargs": cfg.generator_kwargs()},
        "data": {"scale": cfg.data.scale, "window_level_hu": cfg.data.window_level_hu,
                 "window_width_hu": cfg.data.window_width_hu, "downsample": cfg.data.downsample},
        "generator": weights,
        "metrics": json.loads(json.dumps(metrics or {})),
        "config": to_dict(cfg),
        "config_sha256": config_sha256(cfg),
    }
    return save_checkpoint(payload, path)


def read_teacher_file(path: str | Path) -> dict[str, Any]:
    """The checked content of a teacher file (see :func:`export_teacher`).

    Raises
    ------
    CheckpointError
        Missing, empty, non-zip or unreadable file; not a teacher file; an older version (1: no
        weights digest, no patient list); weights that differ from their digest or are not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher file not found: {path}")
    obj = load_weights_only(path, what="teacher", map_location="cpu")
    if not isinstance(obj, dict) or obj.get("format") != TEACHER_FORMAT:
        raise CheckpointError(f"{path} is not an SR teacher file (format {TEACHER_FORMAT!r} expected)")
    if obj.get("version") != TEACHER_VERSION:
        hint = (" (version 1 has no weights digest and no training-patient list: retrain it with "
                "`make pretrain-sr` or `dsnet pretrain-sr --train-patients-from LNSM_DIR ...`)"
                if obj.get("version") == 1 else "")
        raise CheckpointError(f"{path}: teacher version {obj.get('version')!r}, expected {TEACHER_VERSION}{hint}")
    weights = obj.get("generator")
    if not isinstance(weights, dict) or weights_sha256({"generator": weights}) != obj.get("weights_sha256"):
        raise CheckpointError(f"{path}: teacher weights do not match their recorded sha256 digest (the file was "
                              "corrupted or edited); retrain or copy it again")
    bad = nonfinite_entries({"generator": weights})
    if bad:
        raise CheckpointError(f"{path}: teacher holds NaN or infinite weights ({', '.join(bad)}); retrain it")
    return obj


def load_teacher(path: str | Path, *, device: str | torch.device = "cpu") -> SRTeacher:
    """Rebuild the frozen teacher saved by :func:`export_teacher`.

    Raises
    ------
    CheckpointError
        See :func:`read_teacher_file`; also weights that do not fit the recorded architecture
        (the message names the file).
    """
    path = Path(path)
    obj = read_teacher_file(path)
    try:
        generator = build_model(obj["model"]["name"], **obj["model"]["kwargs"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the generator ({exc})") from exc
    try:
        generator.load_state_dict(obj["generator"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded generator: "
                              f"{str(exc).splitlines()[0][:300]}") from exc
    d = obj["data"]
    teacher = SRTeacher(generator, scale=d["scale"], feature_channels=obj["model"]["kwargs"]["n_channels"],
                        window_level_hu=d["window_level_hu"], window_width_hu=d["window_width_hu"],
                        downsample=d["downsample"], metrics=obj.get("metrics"),
                        train_patients=obj.get("train_patients"))
    return teacher.to(device)


def teacher_summary(path: str | Path) -> dict[str, Any]:
    """Scale, HU window, down-sampling, training stage ("srresnet", "srgan", or "untrained": a
    seeded random init), feature channels, parameter count and metrics of a teacher file."""
    t = load_teacher(path)
    return {"scale": t.scale, "stage": read_teacher_file(path).get("stage"), "feature_channels": t.feature_channels,
            "window_level_hu": t.window_level_hu,
            "n_train_patients": {k: len(v) for k, v in (t.train_patients or {}).items()},
            "window_width_hu": t.window_width_hu, "downsample": t.downsample, "metrics": t.metrics,
            "n_parameters": int(sum(p.numel() for p in t.parameters()))}


def read_teacher_arch(path: str | Path) -> dict[str, Any]:
    """The architecture record a seg checkpoint keeps of its teacher: ``model`` (registry name +
    kwargs), ``data`` (scale, HU window, down-sampling) and ``train_patients`` of a teacher file."""
    obj = read_teacher_file(path)
    return {"model": obj["model"], "data": obj["data"], "train_patients": obj.get("train_patients")}


def teacher_from_arch(arch: Mapping[str, Any]) -> SRTeacher:
    """An :class:`SRTeacher` of the recorded architecture (:func:`read_teacher_arch`), weights
    untrained: the seg checkpoint that keeps the record brings them."""
    d = arch["data"]
    generator = build_model(arch["model"]["name"], **arch["model"]["kwargs"])
    return SRTeacher(generator, scale=d["scale"], feature_channels=arch["model"]["kwargs"]["n_channels"],
                     window_level_hu=d["window_level_hu"], window_width_hu=d["window_width_hu"],
                     downsample=d["downsample"], train_patients=arch.get("train_patients"))
