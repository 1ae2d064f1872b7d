"""3-D agreement of a Soft Mask and of the readers with the readers' consensus volume (issue 26).

For one nodule with R reader mask volumes (R >= 2) and its 3-D Soft Mask (all (Z, H, W) on one
voxel grid of ``spacing_mm`` = (z_mm, row_mm, col_mm)):

* **Soft Mask vs consensus**: Dice of ``alpha >= 0.5`` against the readers' ``level`` consensus
  (voxels marked by a fraction >= ``level`` of the R readers, pylidc's ``consensus(clevel)``), and
  the Soft Mask's volume ``sum(alpha) * voxel volume`` (the partial-volume reading of alpha)
  beside the consensus volume, in mm^3.
* **each reader vs the others**: reader r against the ``level`` consensus of the R - 1 others
  (leave-one-out, so a reader is never compared with a consensus it voted in): Dice, and both
  volumes in mm^3. This is the yardstick: how far one radiologist is from the rest.
* **leave one reader out** (:func:`held_out_agreement`): the Soft Mask made from the R - 1 other
  readers against the held-out reader, beside those readers' consensus against the same reader:
  both labels see the same readers, so this row compares like with like (the first one's Soft
  Mask has seen every reader of its reference).

Pure functions of arrays (no I/O); ``benchmarks/lidc3d_agreement.py`` runs them on LIDC-IDRI-0001.
Dice of two empty volumes is NaN.
"""

from __future__ import annotations

import math

import numpy as np

from softmask_builder.errors import InputError

__all__ = ["voxel_volume_mm3", "dice3d", "soft_mask_agreement", "reader_agreement", "held_out_agreement",
           "agreement_table_markdown", "held_out_table_markdown"]


def voxel_volume_mm3(spacing_mm) -> float:
    """Volume of one voxel, ``z_mm * row_mm * col_mm``; each spacing finite and > 0."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise InputError(f"spacing_mm must be three finite numbers > 0 (z, row, col), got {spacing_mm!r}")
    return float(np.prod(sp))


def dice3d(a, b) -> float:
    """Dice ``2 |A & B| / (|A| + |B|)`` of two bool volumes of one shape (NaN when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"volumes must be 3-D of one shape, got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return math.nan if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def _readers(reader_masks) -> np.ndarray:
    m = np.asarray(reader_masks)
    if m.ndim != 4 or m.shape[0] < 2:
        raise InputError(f"reader_masks must be (R, Z, H, W) with R >= 2, got shape {m.shape}")
    return m.astype(bool)


def _check_level(level) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) <= 1.0):
        raise InputError(f"level must be in (0, 1], got {level!r}")
    return float(level)


def soft_mask_agreement(soft_mask, reader_masks, spacing_mm, *, level: float = 0.5) -> dict:
    """The Soft Mask against the readers' ``level`` consensus volume.

    Returns
    -------
    dict
        ``dice`` (alpha >= 0.5 vs the consensus), ``volume_mm3`` (sum(alpha) x voxel volume),
        ``consensus_mm3`` (consensus voxels x voxel volume), ``volume_error_pct`` (100 x (volume /
        consensus - 1); NaN for an empty consensus).
    """
    m = _readers(reader_masks)
    alpha = np.asarray(soft_mask, dtype=np.float64)
    if alpha.shape != m.shape[1:]:
        raise InputError(f"soft_mask {alpha.shape} and reader_masks {m.shape[1:]} differ in shape")
    voxel = voxel_volume_mm3(spacing_mm)
    cons = m.mean(axis=0) >= _check_level(level)
    volume, cons_mm3 = float(alpha.sum()) * voxel, float(cons.sum()) * voxel
    return {"dice": dice3d(alpha >= 0.5, cons), "volume_mm3": volume, "consensus_mm3": cons_mm3,
            "volume_error_pct": 100.0 * (volume / cons_mm3 - 1.0) if cons_mm3 else math.nan}


def reader_agreement(reader_masks, spacing_mm, *, level: float = 0.5) -> list[dict]:
    """Each reader against the ``level`` consensus of the other R - 1 readers (R >= 3 gives a
    consensus of at least two readers; with R = 2 the "consensus" is the other reader).

    Returns
    -------
    list of dict, one per reader in order
        ``dice``, ``volume_mm3`` (the reader's voxels), ``others_mm3`` (the others' consensus),
        ``volume_error_pct`` (100 x (reader / others - 1)).
    """
    m = _readers(reader_masks)
    lv = _check_level(level)
    voxel = voxel_volume_mm3(spacing_mm)
    rows = []
    for r in range(len(m)):
        others = np.delete(m, r, axis=0).mean(axis=0) >= lv
        volume, others_mm3 = float(m[r].sum()) * voxel, float(others.sum()) * voxel
        rows.append({"dice": dice3d(m[r], others), "volume_mm3": volume, "others_mm3": others_mm3,
                     "volume_error_pct": 100.0 * (volume / others_mm3 - 1.0) if others_mm3 else math.nan})
    return rows


def held_out_agreement(soft_mask_without_r, reader_masks, r: int, spacing_mm, *, level: float = 0.5) -> dict:
    """Reader ``r`` against (a) the Soft Mask made from the other readers (``soft_mask_without_r``,
    thresholded at 0.5) and (b) the ``level`` consensus of the other readers.

    Returns
    -------
    dict
        ``soft_dice``, ``consensus_dice`` (Dice with reader r), ``soft_mm3`` (sum(alpha) x voxel),
        ``consensus_mm3``, ``reader_mm3``.
    """
    m = _readers(reader_masks)
    if not 0 <= r < len(m):
        raise InputError(f"r must index one of the {len(m)} readers, got {r}")
    alpha = np.asarray(soft_mask_without_r, dtype=np.float64)
    if alpha.shape != m.shape[1:]:
        raise InputError(f"soft_mask_without_r {alpha.shape} and reader_masks {m.shape[1:]} differ in shape")
    voxel = voxel_volume_mm3(spacing_mm)
    others = np.delete(m, r, axis=0).mean(axis=0) >= _check_level(level)
    return {"soft_dice": dice3d(alpha >= 0.5, m[r]), "consensus_dice": dice3d(others, m[r]),
            "soft_mm3": float(alpha.sum()) * voxel, "consensus_mm3": float(others.sum()) * voxel,
            "reader_mm3": float(m[r].sum()) * voxel}


def held_out_table_markdown(rows: dict[str, list[dict]], *, level: float = 0.5) -> str:
    """A markdown table of :func:`held_out_agreement` rows: per Soft Mask variant (name -> one row
    per held-out reader) the Dice with the held-out reader, beside the others' consensus."""
    pct = f"{100 * level:g} %"
    lines = [f"| held-out reader | reader volume (mm³) | Dice: {pct} consensus of the others | "
             + " | ".join(f"Dice: {name} from the others" for name in rows) + " |",
             "|---|---|---|" + "---|" * len(rows)]
    first = next(iter(rows.values()))
    for i in range(len(first)):
        cells = " | ".join(f"{rows[name][i]['soft_dice']:.3f}" for name in rows)
        lines.append(f"| reader {i + 1} | {first[i]['reader_mm3']:.0f} | {first[i]['consensus_dice']:.3f} | {cells} |")
    means = " | ".join(f"{np.mean([x['soft_dice'] for x in rows[name]]):.3f}" for name in rows)
    lines.append(f"| mean | | {np.mean([x['consensus_dice'] for x in first]):.3f} | {means} |")
    return "\n".join(lines)


def agreement_table_markdown(soft_rows: dict[str, dict], reader_rows: list[dict], *, level: float = 0.5) -> str:
    """A markdown table: one row per Soft Mask variant (name -> :func:`soft_mask_agreement`) and one
    per reader (:func:`reader_agreement`)."""
    pct = f"{100 * level:g} %"
    lines = [f"| labels | compared with | Dice | volume (mm³) | reference volume (mm³) | volume error |",
             "|---|---|---|---|---|---|"]
    for name, row in soft_rows.items():
        lines.append(f"| {name} | {pct} consensus of all readers | {row['dice']:.3f} | {row['volume_mm3']:.0f} | "
                     f"{row['consensus_mm3']:.0f} | {row['volume_error_pct']:+.1f} % |")
    for i, row in enumerate(reader_rows, start=1):
        lines.append(f"| reader {i} (its own mask) | {pct} consensus of the other {len(reader_rows) - 1} | "
                     f"{row['dice']:.3f} | {row['volume_mm3']:.0f} | {row['others_mm3']:.0f} | "
                     f"{row['volume_error_pct']:+.1f} % |")
    return "\n".join(lines)
