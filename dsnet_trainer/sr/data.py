"""The SR teacher's data: training patches and validation slices from slice shards, split by
patient, optionally restricted to the patients of a segmentation train split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data import SliceShardDataset, find_shards, split_by_patient
from ..errors import ShardError
from .config import SRConfig

__all__ = ["SRData", "build_sr_datasets"]


@dataclass
class SRData:
    train: SliceShardDataset
    val: SliceShardDataset
    val_source: str


def build_sr_datasets(cfg: SRConfig, data: str | Path | Sequence[str | Path],
                      val_data: str | Path | Sequence[str | Path] | None = None) -> SRData:
    """Training patches and validation slices from slice shards.

    Training: shards of split ``data.train_split`` in ``data``. Validation: ``val_data`` if given
    (any split), else shards of ``data.val_split`` in ``data``, else the last
    ``data.val_fraction`` of the training patients (held out by patient, never by slice).
    """
    d = cfg.data
    everything = find_shards(data, kind="slices", option="--data")
    train = [s for s in everything if s.split == d.train_split]
    if not train:
        splits = sorted({s.split for s in everything})
        raise ShardError(f"--data: no slice shards of split {d.train_split!r} (found splits {splits}); "
                         f"set data.train_split")
    common = {"scale": d.scale, "downsample_method": d.downsample, "level_hu": d.window_level_hu,
              "width_hu": d.window_width_hu}
    train_idx: list[int] | None = None
    if val_data is not None:
        val_shards = find_shards(val_data, kind="slices", option="--val-data")
        val_idx = None
        source = f"--val-data ({sum(s.n_samples for s in val_shards)} slices)"
    else:
        val_shards = [s for s in everything if s.split == d.val_split]
        val_idx = None
        source = f"split {d.val_split!r}"
        if not val_shards:
            train_idx, val_idx = split_by_patient(train, val_fraction=d.val_fraction)
            val_shards = train
            source = f"held-out patients of split {d.train_split!r} (val_fraction={d.val_fraction})"
    if d.val_max_slices and val_idx is None:
        val_idx = list(range(min(d.val_max_slices, sum(s.n_samples for s in val_shards))))
    elif d.val_max_slices:
        val_idx = val_idx[:d.val_max_slices]
    if d.train_patients_from:
        train_idx = _restrict_to_seg_train(train, train_idx, d.train_patients_from)
    train_ds = SliceShardDataset(train, mode="train", hr_patch_px=d.hr_patch_px, patches_per_slice=d.patches_per_slice,
                                 augment=d.augment, min_body_fraction=d.min_body_fraction, indices=train_idx, **common)
    val_ds = SliceShardDataset(val_shards, mode="val", val_patch_px=d.val_patch_px, indices=val_idx, **common)
    n_val = len(val_ds)
    return SRData(train=train_ds, val=val_ds, val_source=f"{source}, {n_val} slices")


def _restrict_to_seg_train(train_shards, train_idx: list[int] | None, seg_root: str) -> list[int]:
    """Slice positions of ``train_shards`` (within ``train_idx``) whose patient is in the ``train``
    split of the sample shards at ``seg_root`` (patients compared within their namespace)."""
    from ..provenance import patients_per_sample

    seg = find_shards(seg_root, kind="samples", split="train", option="data.train_patients_from")
    allowed = set(patients_per_sample([s.path for s in seg]))
    per = patients_per_sample([s.path for s in train_shards])
    base = range(len(per)) if train_idx is None else train_idx
    keep = [i for i in base if per[i] in allowed]
    if not keep:
        raise ShardError(f"data.train_patients_from {seg_root}: none of the {len(base)} training slices belongs "
                         "to a patient of its train split (another source, or other patient ids?)")
    return keep
