"""Weight digests and sanity checks shared by checkpoints and SR teacher files.

A checkpoint (:mod:`.checkpoint`) or teacher file (:mod:`.models.teacher`) stores
``weights_sha256``, the digest of its weights computed by :func:`weights_sha256`, and is refused on
load when the digest of what was read differs (one flipped byte is enough) or when a floating
weight is NaN or infinite. This module sits below both file formats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

__all__ = ["weights_sha256", "nonfinite_entries"]


def _walk(tree: Mapping, prefix: str = ""):
    for key in sorted(tree, key=str):
        value = tree[key]
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _walk(value, name)
        elif isinstance(value, torch.Tensor):
            yield name, value


def weights_sha256(tree: Mapping) -> str:
    """sha256 (hex) of every tensor of a (nested) mapping of state dicts.

    Each tensor contributes its dotted name, dtype, shape and raw bytes (contiguous, CPU), in
    sorted name order, so the digest depends on the values only, not on insertion order or device.
    """
    h = hashlib.sha256()
    for name, t in _walk(tree):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def nonfinite_entries(tree: Mapping, *, limit: int = 3) -> list[str]:
    """Dotted names (at most ``limit``) of floating tensors that hold a NaN or an infinity."""
    bad = []
    for name, t in _walk(tree):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad
