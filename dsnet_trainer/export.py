"""Export a trained segmentation checkpoint for deployment, checked against the eager model.

The exported module takes crops **in HU** and does the training-time window itself::

    (prob, alpha) = module(image_hu)      image_hu: float32 (B, 1, crop_px, crop_px), in HU
    prob  : float32 (B, 1, crop_px, crop_px) in [0, 1], lesion probability (binarise at 0.5 or at
            the validation threshold of ``dsnet evaluate``)
    alpha : float32 (B, 1, crop_px, crop_px) in [0, 1], the Soft Mask

HU outside the training window (``level_hu ± width_hu / 2``, the lung window -600/1500 HU of the
packaged configs) is clipped to it. Any floating or integer dtype is accepted (cast to float32).
The module is frozen: eval mode, no parameter requires grad, so ``prob.numpy()`` works without
``.detach()``. An input of another rank or size raises at once with a message naming the expected
shape (``torchscript``: a ``torch.jit.Error`` whose text says ``expected image_hu of shape (B, 1,
64, 64)``; ``exported``: torch.export's shape guard, which names the expected size).

Formats:

* ``torchscript`` (default): the network is ``torch.jit.trace``-d and the HU wrapper around it
  ``torch.jit.script``-ed (so its input checks survive); load with ``torch.jit.load(path)``.
  torch 2.13 marks TorchScript deprecated and warns on trace, script and load.
* ``exported``: ``torch.export`` (ExportedProgram, ``.pt2``) with a dynamic batch dimension; load
  with ``torch.export.load(path).module()``.

After writing, the file is loaded back and its outputs are compared with the eager model's on
random crops at batch sizes 1 and 3 (and on real crops when ``data`` is given); a difference
above ``atol`` raises :class:`ExportMismatchError` and nothing is left under the final name.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from softmask_builder.core import atomic

from .errors import InputError, TrainerError

__all__ = ["ExportMismatchError", "HUInference", "export_checkpoint", "load_exported"]

FORMATS = ("torchscript", "exported")


class ExportMismatchError(TrainerError):
    """The exported module's outputs differ from the eager model's."""


class HUInference(nn.Module):
    """Window HU to [-1, 1] (as :func:`dsnet_trainer.data.to_unit_range`), run the network,
    return ``(prob, alpha)`` (see the module docstring)."""

    def __init__(self, net: nn.Module, *, level_hu: float, width_hu: float, crop_px: int):
        super().__init__()
        self.net = net
        self.low_hu = float(level_hu) - float(width_hu) / 2.0
        self.width_hu = float(width_hu)
        self.crop_px = int(crop_px)

    def forward(self, image_hu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Written for torch.jit.script as well as eager and torch.export: string concatenation, no f-string.
        if (image_hu.dim() != 4 or image_hu.size(1) != 1 or image_hu.size(2) != self.crop_px
                or image_hu.size(3) != self.crop_px):
            raise ValueError("expected image_hu of shape (B, 1, " + str(self.crop_px) + ", " + str(self.crop_px)
                             + ") in HU, got shape " + str(list(image_hu.shape)))
        x = torch.clamp((image_hu.float() - self.low_hu) / self.width_hu, 0.0, 1.0) * 2.0 - 1.0
        prob, soft = self.net(x)
        return prob, torch.clamp((soft + 1.0) * 0.5, 0.0, 1.0)


def load_exported(path: str | Path):
    """Load an exported file (either format) as a callable module."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"exported model not found: {path}")
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; loading is still what this format is for.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load. is deprecated", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _crop_batches(crop_px: int, data, info, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    batches = [rng.uniform(-1100.0, 400.0, size=(b, 1, crop_px, crop_px)).astype(np.float32) for b in (1, 3)]
    if data is not None:
        from .data import SampleShardDataset

        ds = SampleShardDataset(data, image_size_px=crop_px, option="--data")
        idx = range(min(len(ds), 8))
        hu = np.stack([ds.reader.read(*ds.reader.locate(i), "image_hu") for i in idx]).astype(np.float32)
        batches.append(hu[:, None])
    return batches


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, fmt: str = "torchscript",
                      data: str | Path | None = None, atol: float = 1e-5) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` in format ``fmt`` and verify it (see the module docstring).

    Returns ``{"path", "format", "variant", "crop_px", "max_abs_diff", "checked_batches"}``.

    Raises
    ------
    InputError : unknown format, or a suffix that does not fit it (``.pt2`` is for ``exported``).
    CheckpointError : unreadable checkpoint.
    ExportMismatchError : exported outputs differ from eager outputs by more than ``atol``.
    """
    from .models.loading import load_seg_model

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    if (fmt == "exported") != (out.suffix == ".pt2"):
        raise InputError(f"--out {out}: use a .pt2 name for --format exported and another suffix for torchscript")
    net, info = load_seg_model(checkpoint)
    crop = int(info["crop_px"])
    net.eval().requires_grad_(False)  # frozen: outputs never carry grad
    module = HUInference(net, level_hu=info["level_hu"], width_hu=info["width_hu"], crop_px=crop).eval()
    example = torch.zeros(2, 1, crop, crop)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out, keep_suffix=True) as tmp:  # torch.export picks the format by suffix
        with torch.no_grad():
            if fmt == "torchscript":
                with warnings.catch_warnings():
                    # Deprecation of TorchScript in torch 2.13, and the tracer's notes on the
                    # Python-side shape checks (run once at trace time; the check below covers them).
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace(_method)?. is deprecated",
                                            category=DeprecationWarning)
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script. is deprecated",
                                            category=DeprecationWarning)
                    traced_net = torch.jit.trace(net, example * 0.0, check_trace=False)
                    scripted = torch.jit.script(HUInference(traced_net, level_hu=info["level_hu"],
                                                            width_hu=info["width_hu"], crop_px=crop).eval())
                scripted.save(str(tmp))
            else:
                batch = torch.export.Dim("batch", min=1, max=4096)
                program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
                torch.export.save(program, str(tmp))
        loaded = load_exported(tmp)
        worst = 0.0
        batches = _crop_batches(crop, data, info)
        with torch.no_grad():
            for b in batches:
                x = torch.from_numpy(b)
                eager = module(x)
                got = loaded(x)
                for e, g in zip(eager, got):
                    if tuple(e.shape) != tuple(g.shape):
                        raise ExportMismatchError(f"exported output shape {tuple(g.shape)} != eager {tuple(e.shape)} "
                                                  f"at batch {len(b)}")
                    worst = max(worst, float((e - g).abs().max()))
        if not worst <= atol:
            raise ExportMismatchError(f"exported outputs differ from eager outputs by {worst:.3g} > atol {atol:g}; "
                                      f"{out} not written")
    return {"path": str(out), "format": fmt, "variant": info["variant"], "crop_px": crop, "max_abs_diff": worst,
            "checked_batches": [len(b) for b in batches]}
