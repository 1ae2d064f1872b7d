"""Calibration against real data: the LIDC slices of the shared fixtures that >= 3 readers marked.

    PYTHONPATH=. .venv/bin/python benchmarks/calibrate_real.py [--data ../shared/data] [--json out.json]

Per slice (``plan_lidc(min_readers=3, slices="all")``, the 64x64 crop of the build, only slices
where >= 3 readers drew a contour):

* Dice against the readers' 50 % consensus (all readers of the nodule; an absent contour votes
  "no"), of the binarized Soft Mask (alpha >= 0.5) of strategy 1 (``mask``: the consensus itself
  as the binary mask), strategy 2 (``readers``), strategy 3 with a RECIST mark measured on the
  consensus (``phantom.recist_from_mask``, as a radiologist draws it) by the ``region`` method and
  by the ULS23 recipe (``uls23``), and of the GrabCut masks those two start from; beside each
  reader against the 50 % consensus of the *other* readers (``reader_vs_others``, one value per
  reader who drew on the slice);
* image statistics (:mod:`softmask_builder.image_stats`): noise std and autocorrelation HWHM in
  soft-tissue patches (16 px, all pixels in [-200, 200] HU) of the full slice; the 10-90 % edge
  width across the consensus boundary; the HU percentiles inside the consensus (eroded 1 px).

Summaries: mean over slices with a 95 % percentile-bootstrap interval over slices (seed 0, 2000
resamples). The slices are neighbours of one or two nodules, so they are not independent: the
intervals are lower bounds on the uncertainty. :func:`real_cases` and :func:`score_case` are
reused by ``benchmarks/bench_accuracy_hybrid.py`` to score hybrid cases the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softmask_builder import image_stats
from softmask_builder.metrics import dice
from softmask_builder.phantom import recist_from_mask
from softmask_builder.pipeline import LabelParams, label_from_mask, label_from_readers, label_from_recist
from softmask_builder.recist import mask_from_recist, mask_from_recist_uls23
from softmask_builder.trimap import consensus_mask
from softmask_builder.window import window_hu

DICE_KEYS = ("mask", "readers", "recist_region", "recist_uls23", "grabcut_region", "grabcut_uls23")
STAT_KEYS = ("noise_std_hu", "noise_acf_hwhm_mm", "edge_width_mm", "lesion_p50_hu", "lesion_iqr_hu")
N_BOOT = 2000


@dataclass
class CalibCase:
    """One slice: a crop with its readers, the full slice for the noise, the geometry."""

    sample_id: str
    image_hu: np.ndarray        # float (S, S) crop
    readers: np.ndarray         # bool (R, S, S), readers who drew on this slice
    all_readers: np.ndarray     # bool (R_all, S, S), every reader of the nodule (empty = "no")
    spacing_mm: tuple[float, float]
    slice_hu: np.ndarray | None = None   # the full slice (noise statistics)
    exclude: np.ndarray | None = None    # bool, full-slice pixels not to use for noise (lesion)


def real_cases(data_root: Path, *, min_readers: int = 3, crop_px: int = 64) -> list[CalibCase]:
    """The fixture slices with >= ``min_readers`` contours, loaded as the build loads them."""
    from softmask_builder.sources.lidc import _read_slice, load_lidc, plan_lidc

    refs, _ = plan_lidc(data_root / "lidc", min_readers=min_readers, slices="all", crop_px=crop_px)
    cases = []
    for ref in refs:
        rec = load_lidc(ref)
        prior = np.asarray(rec.prior)
        drawn = prior[prior.any(axis=(1, 2))]
        if len(drawn) < min_readers:
            continue
        full, _, _ = _read_slice(ref.payload["dicom_path"], ref.sample_id)
        exclude = np.zeros(full.shape, dtype=bool)
        r0, c0 = (int(math.floor(v)) for v in rec.origin_px)
        extent = int(math.ceil(crop_px / rec.scale))
        exclude[max(r0, 0):r0 + extent, max(c0, 0):c0 + extent] = True
        cases.append(CalibCase(ref.sample_id, np.asarray(rec.image_hu, dtype=np.float64), drawn, prior,
                               rec.spacing_mm, np.asarray(full, dtype=np.float64), exclude))
    return cases


def reader_vs_others(readers: np.ndarray) -> list[float]:
    """Dice of each reader against the 50 % consensus of the others (R >= 3)."""
    out = []
    for i in range(len(readers)):
        others = np.delete(readers, i, axis=0)
        out.append(dice(readers[i], others.mean(axis=0) >= 0.5))
    return out


def score_case(case: CalibCase, params: LabelParams = LabelParams(), *, truth_fraction=None) -> dict:
    """Dice of every pipeline against the readers' consensus, and the image statistics.

    With ``truth_fraction`` (hybrid cases) the Dice against the truth (fraction >= 0.5) is added
    under ``<key>_vs_truth``.
    """
    image = case.image_hu
    cons = consensus_mask(case.all_readers, level=0.5)
    out: dict = {"sample_id": case.sample_id, "n_readers": int(len(case.readers))}
    refs = {"": cons}
    if truth_fraction is not None:
        refs["_vs_truth"] = np.asarray(truth_fraction) >= 0.5
    if cons.sum() < 3:
        return out
    rec = recist_from_mask(cons, sample_id=case.sample_id)
    image01 = window_hu(image, level_hu=params.window_level_hu, width_hu=params.window_width_hu)
    binaries = {
        "mask": label_from_mask(image, cons, params).binary_mask if cons.any() else None,
        "readers": label_from_readers(image, case.readers, params).soft_mask >= 0.5,
        "recist_region": label_from_recist(image, rec, params).binary_mask,
        "recist_uls23": label_from_recist(image, rec, LabelParams(**{**params.__dict__,
                                                                     "recist_method": "uls23"})).binary_mask,
        "grabcut_region": mask_from_recist(image01, rec, iterations=params.grabcut_iterations),
        "grabcut_uls23": mask_from_recist_uls23(image, rec),
    }
    # Strategy 1's binary mask is the consensus; its Soft Mask is binarized here.
    binaries["mask"] = label_from_mask(image, cons, params).soft_mask >= 0.5
    for key, m in binaries.items():
        for suffix, ref in refs.items():
            out[key + suffix] = dice(m, ref)
    out["reader_vs_others"] = reader_vs_others(case.readers) if len(case.readers) >= 3 else []
    if truth_fraction is not None:
        out["reader_vs_truth"] = [dice(r, refs["_vs_truth"]) for r in case.readers]
        out["consensus_vs_truth"] = dice(cons, refs["_vs_truth"])
    # Image statistics.
    if case.slice_hu is not None:
        noise = image_stats.noise_stats(case.slice_hu, case.spacing_mm, exclude=case.exclude, n_boot=200)
        out["noise_std_hu"], out["noise_acf_hwhm_mm"] = noise["std_hu"], noise["acf_hwhm_mm"]
        out["noise_patches"] = noise["n_patches"]
    edge = image_stats.edge_width(image, cons, case.spacing_mm, n_boot=50)
    out["edge_width_mm"], out["edge_profiles"] = edge["width_mm"], edge["n_profiles"]
    hist = image_stats.hu_histogram(image, cons, n_boot=50)
    out["lesion_p50_hu"], out["lesion_iqr_hu"] = hist["p50"], hist["p75"] - hist["p25"]
    out["lesion_p5_hu"], out["lesion_p95_hu"] = hist["p5"], hist["p95"]
    return out


def summarize(rows: list[dict], keys) -> dict:
    """{key: (n, mean, lo, hi)} over the rows that have a finite value (lists are pooled)."""
    out = {}
    for key in keys:
        vals = []
        for r in rows:
            v = r.get(key)
            if isinstance(v, list):
                vals += [x for x in v if math.isfinite(x)]
            elif v is not None and math.isfinite(v):
                vals.append(v)
        vals = np.asarray(vals, dtype=np.float64)
        if len(vals) == 0:
            out[key] = (0, math.nan, math.nan, math.nan)
            continue
        lo, hi = image_stats.bootstrap_ci(vals, n_boot=N_BOOT, seed=0)
        out[key] = (len(vals), float(vals.mean()), lo, hi)
    return out


def fmt(entry, digits: int = 3) -> str:
    n, mean, lo, hi = entry
    if n == 0:
        return "-"
    if n == 1 or not math.isfinite(lo):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (n={n})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SOFTMASK_SHARED_DATA", "../shared/data")))
    ap.add_argument("--json", type=Path, default=None, help="write the per-slice rows here")
    args = ap.parse_args()
    if not (args.data / "lidc").is_dir():
        print(f"calibrate_real: no LIDC fixtures under {args.data} (set --data or SOFTMASK_SHARED_DATA)",
              file=sys.stderr)
        return 2
    cases = real_cases(args.data)
    rows = [score_case(c) for c in cases]
    summary = summarize(rows, DICE_KEYS + ("reader_vs_others",) + STAT_KEYS)
    print(f"real LIDC slices with >= 3 readers: {len(rows)} (nodules {', '.join(sorted({r['sample_id'].split('_z')[0] for r in rows}))})")
    print("| quantity | real: mean [95 % CI] (n) |")
    print("|---|---|")
    for key, entry in summary.items():
        print(f"| {key} | {fmt(entry)} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
