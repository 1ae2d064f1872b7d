"""Datasets over the builder's HDF5 shards (``docs/FORMAT.md``, schema versions 1 and 2).

Two datasets, one reading contract:

:class:`SampleShardDataset`
    Lesion crops for DSNet: image, Soft Mask, binary mask (and trimap), jointly augmented.
:class:`SliceShardDataset`
    Full CT slices for the SR teacher: random HR patches and their x``scale`` LR versions
    made on the fly (train), or whole slices (validation).

Reading contract
----------------
The shard schema and its reading belong to :mod:`softmask_builder.formats.shards`; this module
only turns what it reads into tensors and raises the trainer's error type.

- Shards are validated when a dataset is built (:func:`inspect_shard`): ``schema_version`` must
  be one :mod:`softmask_builder.formats.shards` reads (1 or 2; meta fields are read through its
  version-independent functions), ``kind`` must match (``samples`` or ``slices``), datasets, dtypes and shapes must be those
  of FORMAT.md. Anything else raises :class:`~dsnet_trainer.errors.ShardError` naming the file.
- HDF5 files are opened lazily, once per process, on first access (never inherited through
  ``fork``, never pickled for ``spawn``/``forkserver``); workers can be persistent
  (:class:`ShardReader`, the builder's per-worker reader).
- A read error in a worker (corrupt chunk) raises ``ShardError`` naming the file and sample.

Item keys
---------
``dataset[i]`` with an ``int`` is deterministic (no augmentation; for slices, a fixed patch).
``dataset[(i, seed, epoch)]`` -- the keys :class:`dsnet_trainer.sampling.SeededSampler` yields --
draws augmentation and crop position from ``numpy.random.default_rng([seed, epoch, i])``, so a
sample's augmentation depends on nothing else (worker count, start method, resume).

Intensity conventions (the paper's tanh heads, Sec. III-B)
------------------------------------------------------------
``image = 2 * window_hu(image_hu, level_hu, width_hu) - 1`` in [-1, 1] (the builder's clipped
linear window, :func:`softmask_builder.labelling.window.window_hu`; default lung window level -600 HU,
width 1500 HU); ``soft_mask = 2 * alpha - 1`` in [-1, 1]; ``binary_mask`` in {0, 1}.
All tensors are float32 (1, H, W), axes (row, col).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from softmask_builder.formats import shards as shard_format
from softmask_builder.labelling.window import window_hu

from .errors import ConfigError, InputError, ShardError

SCHEMA_VERSIONS = shard_format.READABLE_VERSIONS
DEFAULT_WINDOW_LEVEL_HU = -600.0
DEFAULT_WINDOW_WIDTH_HU = 1500.0


# ============================================================================================
# Array-level transforms (pure)
# ============================================================================================
def to_unit_range(image_hu: np.ndarray, *, level_hu: float = DEFAULT_WINDOW_LEVEL_HU,
                  width_hu: float = DEFAULT_WINDOW_WIDTH_HU) -> np.ndarray:
    """HU -> [-1, 1] float32: ``2 * window_hu(image_hu, level_hu, width_hu) - 1``.

    Values at or below ``level_hu - width_hu/2`` map to -1, at or above ``level_hu + width_hu/2``
    to +1 (the range of DSNet's and the SR teacher's tanh outputs).
    """
    return (2.0 * window_hu(image_hu, level_hu=level_hu, width_hu=width_hu) - 1.0).astype(np.float32)


def from_unit_range(image: np.ndarray, *, level_hu: float = DEFAULT_WINDOW_LEVEL_HU,
                    width_hu: float = DEFAULT_WINDOW_WIDTH_HU) -> np.ndarray:
    """Inverse of :func:`to_unit_range` inside the window: [-1, 1] -> HU (float32)."""
    image = np.asarray(image, dtype=np.float64)
    return ((image + 1.0) / 2.0 * width_hu + (level_hu - width_hu / 2.0)).astype(np.float32)


def dihedral(array: np.ndarray, *, k: int, flip: bool) -> np.ndarray:
    """One of the 8 symmetries of the square on the last two axes (row, col): optional left-right
    flip, then ``k`` counter-clockwise 90-degree rotations. Returns a contiguous copy."""
    out = array[..., :, ::-1] if flip else array
    return np.ascontiguousarray(np.rot90(out, k=int(k) % 4, axes=(-2, -1)))


def random_dihedral(rng: np.random.Generator) -> tuple[int, bool]:
    """Draw ``(k, flip)`` uniformly over the 8 symmetries."""
    return int(rng.integers(4)), bool(rng.integers(2))


def downsample(image: np.ndarray, *, scale: int, method: str = "bicubic") -> np.ndarray:
    """Shrink a 2-D float image by an integer factor (the SR teacher's LR input).

    Parameters
    ----------
    image : ndarray, (H, W)
        H and W must be multiples of ``scale``.
    scale : int
        Factor >= 1 (4 for the paper's 512 -> 128).
    method : {"area", "bicubic"}
        ``area``: mean of each ``scale x scale`` block (exact box filter). ``bicubic``: torch's
        bicubic with anti-aliasing (``F.interpolate(..., antialias=True)``, like PIL/MATLAB
        ``imresize``).

    Returns
    -------
    ndarray float32, (H // scale, W // scale)
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"image must be 2-D (rows, cols), got shape {arr.shape}")
    h, w = arr.shape
    if scale < 1 or h % scale or w % scale:
        raise InputError(f"image shape {arr.shape} must be a multiple of scale={scale}")
    if scale == 1:
        return arr.copy()
    if method == "area":
        return arr.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    if method == "bicubic":
        t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        out = F.interpolate(t, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
        return out[0, 0].numpy()
    raise InputError(f"downsample method must be 'area' or 'bicubic', got {method!r}")


def resolve_key(key: Any) -> tuple[int, np.random.Generator | None]:
    """``int`` -> ``(i, None)``; ``(i, seed, epoch)`` -> ``(i, default_rng([seed, epoch, i]))``."""
    if isinstance(key, (tuple, list)):
        if len(key) != 3:
            raise InputError(f"dataset key must be an int or (index, seed, epoch), got {key!r}")
        i, seed, epoch = (int(v) for v in key)
        return i, np.random.default_rng([seed, epoch, i])
    return int(key), None


# ============================================================================================
# Shards: through the builder's format owner, raising the trainer's ShardError
# ============================================================================================
ShardInfo = shard_format.ShardInfo


def inspect_shard(path: str | Path, *, kind: str | None = None) -> ShardInfo:
    """Open ``path``, validate it against FORMAT.md and describe it (closes the file).

    :func:`softmask_builder.formats.shards.inspect_shard` (the schema's owner) does the work.

    Parameters
    ----------
    kind : {"samples", "slices"} or None
        Required ``kind`` attribute (None accepts either).

    Raises
    ------
    ShardError
        Missing or unreadable file, a ``schema_version`` other than 1 or 2, another ``kind``, a missing
        dataset, a wrong dtype or shape, a ``meta`` table of another length. Names the file.
    """
    return shard_format.inspect_shard(path, kind=kind, error=ShardError)


def find_shards(data: str | Path | Sequence[str | Path], *, kind: str, split: str | None = None,
                option: str = "--data") -> list[ShardInfo]:
    """Valid shards of ``kind`` (and ``split``) from a folder, a file or a list of them.

    A folder contributes every ``*.h5`` directly inside it (sorted by name) whose ``kind``
    matches; shards of the other kind are skipped, but a shard of another schema version or a
    corrupt one is an error. A file named explicitly must be of ``kind``. Empty shards are
    skipped.

    Raises
    ------
    ShardError
        A path does not exist, or nothing of ``kind``/``split`` was found (names ``option``).
    """
    items = [data] if isinstance(data, (str, Path)) else list(data)
    out: list[ShardInfo] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.glob("*.h5")):
                info = inspect_shard(f)
                if info.kind == kind and (split is None or info.split == split):
                    out.append(info)
        elif p.is_file():
            info = inspect_shard(p, kind=kind)
            if split is None or info.split == split:
                out.append(info)
        else:
            raise ShardError(f"{option} {p}: no such file or folder")
    out = [s for s in out if s.n_samples > 0]
    if not out:
        what = f"{kind} shards" + (f" of split {split!r}" if split else "")
        raise ShardError(f"{option} {', '.join(str(i) for i in items)}: no {what} found")
    return out


class ShardReader(shard_format.ShardReader):
    """The builder's lazy, per-worker reader (:class:`softmask_builder.formats.shards.ShardReader`)
    raising :class:`~dsnet_trainer.errors.ShardError`."""

    error = ShardError


# ============================================================================================
# Sample shards (DSNet)
# ============================================================================================
class SampleShardDataset(Dataset):
    """Lesion crops from sample shards, ready for DSNet.

    Parameters
    ----------
    data : folder, file or list of them
        Shard locations (see :func:`find_shards`).
    split : str or None
        Keep only shards of this split (``train``/``val``/``test``); None keeps all.
    augment : bool
        With seeded keys, apply one random symmetry of the square (flips, 90-degree rotations)
        jointly to image, Soft Mask, binary mask and trimap.
    level_hu, width_hu : float
        HU window mapped to [-1, 1] (default lung window -600 / 1500).
    image_size_px : int or (int, int) or None
        Size the model needs; shards of another size raise ShardError naming the file.

    Items
    -----
    dict with ``image`` (float32 (1,H,W) in [-1,1]), ``soft_mask`` (float32 (1,H,W) in [-1,1]),
    ``binary_mask`` (float32 (1,H,W) in {0,1}), ``trimap`` (uint8 (1,H,W), 0/128/255),
    ``index`` (int, global index) and ``sample_id`` (str); when :attr:`has_truth` (every shard
    with samples carries a phantom's truth, schema 3) also ``true_fraction`` (float32 (1,H,W) in
    [0, 1], the true partial-volume fraction, augmented jointly with the others). The key is
    present for every item or for none, so batches collate.
    """

    def __init__(self, data: str | Path | Sequence[str | Path], *, split: str | None = None,
                 augment: bool = False, level_hu: float = DEFAULT_WINDOW_LEVEL_HU,
                 width_hu: float = DEFAULT_WINDOW_WIDTH_HU, image_size_px: int | tuple[int, int] | None = None,
                 option: str = "--data"):
        shards = find_shards(data, kind="samples", split=split, option=option)
        if image_size_px is not None:
            want = (image_size_px, image_size_px) if isinstance(image_size_px, int) else tuple(image_size_px)
            for s in shards:
                if (s.height_px, s.width_px) != want:
                    raise ShardError(f"shard {s.path} holds {s.height_px}x{s.width_px} crops but the model "
                                     f"expects {want[0]}x{want[1]} (rebuild with that crop size or change the model)")
        if not (np.isfinite(level_hu) and np.isfinite(width_hu) and width_hu > 0):
            raise ConfigError(f"HU window must be finite with width > 0, got level {level_hu}, width {width_hu}")
        self.reader = ShardReader(shards)
        self.has_truth = any(s.n_samples for s in shards) and all(s.has_truth for s in shards if s.n_samples)
        self.augment = augment
        self.level_hu = float(level_hu)
        self.width_hu = float(width_hu)

    @property
    def shards(self) -> list[ShardInfo]:
        return self.reader.shards

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i, rng = resolve_key(key)
        s, j = self.reader.locate(i)
        image = to_unit_range(self.reader.read(s, j, "image_hu"), level_hu=self.level_hu, width_hu=self.width_hu)
        alpha = self.reader.read(s, j, "soft_mask").astype(np.float32)
        binary = self.reader.read(s, j, "binary_mask")
        trimap = self.reader.read(s, j, "trimap")
        sample_id = self.reader.sample_id(s, j)
        truth = self.reader.read(s, j, "true_fraction").astype(np.float32) if self.has_truth else None
        if self.augment and rng is not None:
            k, flip = random_dihedral(rng)
            image, alpha, binary, trimap = (dihedral(a, k=k, flip=flip) for a in (image, alpha, binary, trimap))
            truth = None if truth is None else dihedral(truth, k=k, flip=flip)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "soft_mask": torch.from_numpy(np.ascontiguousarray(2.0 * np.clip(alpha, 0, 1) - 1.0, dtype=np.float32))[None],
            "binary_mask": torch.from_numpy((np.asarray(binary) != 0).astype(np.float32))[None],
            "trimap": torch.from_numpy(np.ascontiguousarray(trimap))[None],
            "index": i,
            "sample_id": sample_id,
        }
        if truth is not None:
            item["true_fraction"] = torch.from_numpy(np.ascontiguousarray(np.clip(truth, 0, 1), dtype=np.float32))[None]
        return item


# ============================================================================================
# Slice shards (SR teacher)
# ============================================================================================
class SliceShardDataset(Dataset):
    """CT slices from slice shards as (LR, HR) pairs for the x``scale`` SR teacher.

    ``mode="train"``: item ``i`` is a ``hr_patch_px`` square patch of slice
    ``i // patches_per_slice``; with a seeded key its position is random (up to 10 draws, keeping
    the first with at least ``min_body_fraction`` of pixels above -900 HU, so air is not learnt
    over and over) and a random symmetry is applied when ``augment``; with an ``int`` key the
    position is the same draw from ``default_rng([i])`` (deterministic).
    ``mode="val"``: item ``i`` is slice ``i`` (its top-left part with sides a multiple of
    ``scale``, or, when ``val_patch_px`` > 0, a centred crop of at most ``val_patch_px`` per side),
    never augmented.

    LR is made from the HR patch *in HU* (:func:`downsample`, ``area`` or anti-aliased
    ``bicubic``), then both are windowed to [-1, 1] (:func:`to_unit_range`); with
    ``downsample_method="windowed_area"`` the HR patch is windowed first and the LR is the mean of
    its ``scale`` x ``scale`` blocks (the truth study's arm-B degradation of the windowed crop).

    Items: ``{"lr": float32 (1, h, w), "hr": float32 (1, h*scale, w*scale), "index": int}``.

    Raises
    ------
    ShardError
        Slices smaller than the HR patch (names the file); see :func:`find_shards`.
    ConfigError
        ``hr_patch_px`` not a positive multiple of ``scale``.
    """

    def __init__(self, data: str | Path | Sequence[str | Path] | Sequence[ShardInfo], *, split: str | None = None,
                 mode: str = "train", scale: int = 4, hr_patch_px: int = 96, patches_per_slice: int = 1,
                 downsample_method: str = "bicubic", augment: bool = True, min_body_fraction: float = 0.25,
                 val_patch_px: int = 0, level_hu: float = DEFAULT_WINDOW_LEVEL_HU,
                 width_hu: float = DEFAULT_WINDOW_WIDTH_HU, indices: Sequence[int] | None = None,
                 option: str = "--data"):
        if mode not in ("train", "val"):
            raise ConfigError(f"mode must be 'train' or 'val', got {mode!r}")
        if scale < 1:
            raise ConfigError(f"data.scale must be >= 1, got {scale}")
        if hr_patch_px < scale or hr_patch_px % scale:
            raise ConfigError(f"data.hr_patch_px={hr_patch_px} must be a positive multiple of data.scale={scale}")
        if val_patch_px % scale:
            raise ConfigError(f"data.val_patch_px={val_patch_px} must be a multiple of data.scale={scale}")
        if downsample_method not in ("area", "bicubic", "windowed_area"):
            raise ConfigError(f"data.downsample must be 'area', 'bicubic' or 'windowed_area', "
                              f"got {downsample_method!r}")
        if patches_per_slice < 1:
            raise ConfigError(f"data.patches_per_slice must be >= 1, got {patches_per_slice}")
        if isinstance(data, (list, tuple)) and data and all(isinstance(d, ShardInfo) for d in data):
            shards = list(data)
        else:
            shards = find_shards(data, kind="slices", split=split, option=option)
        need = hr_patch_px if mode == "train" else scale
        for s in shards:
            if min(s.height_px, s.width_px) < need:
                raise ShardError(f"shard {s.path} holds {s.height_px}x{s.width_px} slices, smaller than the "
                                 f"{need}px {'HR patch (data.hr_patch_px)' if mode == 'train' else 'scale'}")
        self.reader = ShardReader(shards)
        self.slice_indices = list(range(len(self.reader))) if indices is None else [int(i) for i in indices]
        self.mode = mode
        self.scale = int(scale)
        self.hr_patch_px = int(hr_patch_px)
        self.patches_per_slice = int(patches_per_slice) if mode == "train" else 1
        self.downsample_method = downsample_method
        self.augment = augment
        self.min_body_fraction = float(min_body_fraction)
        self.val_patch_px = int(val_patch_px)
        self.level_hu = float(level_hu)
        self.width_hu = float(width_hu)

    @property
    def shards(self) -> list[ShardInfo]:
        return self.reader.shards

    def __len__(self) -> int:
        return len(self.slice_indices) * self.patches_per_slice

    def slice_meta(self, slice_pos: int) -> dict[str, Any]:
        """``sample_id``, ``patient``, ``split`` of the ``slice_pos``-th slice of this dataset."""
        s, j = self.reader.locate(self.slice_indices[slice_pos])
        m = self.reader.meta(s, j)
        return {k: m[k] for k in ("sample_id", "patient", "split")}

    def _hr_region(self, s: int, j: int, index: int, rng: np.random.Generator | None) -> np.ndarray:
        info = self.reader.shards[s]
        H, W = info.height_px, info.width_px
        if self.mode == "val":
            if self.val_patch_px:
                ph = min(self.val_patch_px, H - H % self.scale)
                pw = min(self.val_patch_px, W - W % self.scale)
                r0, c0 = (H - ph) // 2, (W - pw) // 2
                return self.reader.read(s, j, "image_hu", (slice(r0, r0 + ph), slice(c0, c0 + pw)))
            h, w = H - H % self.scale, W - W % self.scale
            return self.reader.read(s, j, "image_hu", (slice(0, h), slice(0, w)))
        p = self.hr_patch_px
        full = self.reader.read(s, j, "image_hu")
        gen = rng if rng is not None else np.random.default_rng([index])
        best = None
        for _ in range(10):
            r0 = int(gen.integers(0, H - p + 1))
            c0 = int(gen.integers(0, W - p + 1))
            patch = full[r0:r0 + p, c0:c0 + p]
            if best is None:
                best = patch
            if np.count_nonzero(patch > -900) >= self.min_body_fraction * p * p:
                best = patch
                break
        return best

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i, rng = resolve_key(key)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        s, j = self.reader.locate(self.slice_indices[i // self.patches_per_slice])
        hr_hu = np.asarray(self._hr_region(s, j, i, rng), dtype=np.float32)
        if self.mode == "train" and self.augment and rng is not None:
            k, flip = random_dihedral(rng)
            hr_hu = dihedral(hr_hu, k=k, flip=flip)
        hr = to_unit_range(hr_hu, level_hu=self.level_hu, width_hu=self.width_hu)
        if self.downsample_method == "windowed_area":   # window, then block means (arm B's input)
            lr = downsample(hr, scale=self.scale, method="area")
        else:                                           # block means or bicubic of HU, then window
            lr_hu = downsample(hr_hu, scale=self.scale, method=self.downsample_method)
            lr = to_unit_range(lr_hu, level_hu=self.level_hu, width_hu=self.width_hu)
        return {"lr": torch.from_numpy(lr)[None], "hr": torch.from_numpy(hr)[None], "index": i}


def split_by_patient(dataset_shards: Sequence[ShardInfo], *, val_fraction: float) -> tuple[list[int], list[int]]:
    """Split slice indices of ``dataset_shards`` into (train, val) by patient, deterministically:
    patients sorted by id, the last ``ceil(val_fraction * n_patients)`` (at least 1, at most
    n-1) go to validation. Used when no ``val`` split shards exist."""
    reader = ShardReader(dataset_shards)
    patients: list[str] = []
    try:
        for s in range(len(reader.shards)):
            patients.extend(shard_format.read_meta_column(reader.file(s), "patient"))
    finally:
        reader.close()
    uniq = sorted(set(patients))
    if len(uniq) < 2:
        raise ShardError(f"cannot hold out validation slices by patient: the shards hold only {len(uniq)} "
                         "patient(s); provide shards of split 'val'")
    n_val = min(len(uniq) - 1, max(1, int(np.ceil(val_fraction * len(uniq)))))
    val_patients = set(uniq[-n_val:])
    train = [i for i, p in enumerate(patients) if p not in val_patients]
    val = [i for i, p in enumerate(patients) if p in val_patients]
    return train, val

