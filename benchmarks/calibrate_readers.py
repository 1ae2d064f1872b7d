"""Calibrate the simulated readers of the hybrid phantom on the LIDC annotation database alone.

For every nodule with exactly four readers (``softmask lidc-agreement --cohort eq4``), on its
central slice: the real readers' pairwise Dice (softmask_builder.reports.agreement.nodule_agreement) and,
for each candidate (bias_sd_mm, bias_rel, wobble_mm), the pairwise Dice of four simulated readers drawn
around the readers' 50 % consensus (softmask_builder.phantom.hybrid.simulate_readers). Size buckets by
the consensus' long axis on that slice (pixel centres + 1 px): 3-6, 6-12, 12-30 mm (and > 30).
Prints the real figures per bucket, the grid, and the candidate of least squared error over
the buckets (each bucket weighted by its nodule count). Seeded: same database -> same table.

    python benchmarks/calibrate_readers.py [--every 1] [--corr-mm 2.0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np

from softmask_builder.reports.agreement import nodule_agreement, pairwise_dice
from softmask_builder.phantom.hybrid import simulate_readers
from softmask_builder.phantom.recist_marks import long_axis as _long_axis
from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

BUCKETS = ((3.0, 6.0), (6.0, 12.0), (12.0, 30.0), (30.0, 1e9))


def bucket_of(d_mm: float) -> int | None:
    for i, (lo, hi) in enumerate(BUCKETS):
        if lo <= d_mm < hi:
            return i
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=1, help="use every n-th eq4 nodule")
    ap.add_argument("--corr-mm", type=float, default=2.0)
    ap.add_argument("--bias", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--wobble", default="0.1,0.2,0.3")
    ap.add_argument("--bias-rel", default="0,0.03,0.06,0.09")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    nodules = []
    i = 0
    for scan in read_lidc_db():
        for group in cluster_annotations(scan):
            if len(group) != 4:
                continue
            i += 1
            if (i - 1) % args.every:
                continue
            one = nodule_agreement(group)
            masks = one["masks"]
            cons = masks.mean(axis=0) >= 0.5
            if cons.sum() < 3:
                continue
            pts = np.argwhere(cons).astype(np.float64)
            a, b = _long_axis(pts)
            d = (float(np.hypot(*(pts[a] - pts[b]))) + 1.0) * scan.pixel_spacing_mm
            k = bucket_of(d)
            if k is None:
                continue
            pad = np.pad(cons, 12)
            nodules.append((k, one["pairwise"], pad, float(scan.pixel_spacing_mm)))
    real = {k: [] for k in range(len(BUCKETS))}
    for k, pw, _, _ in nodules:
        real[k] += [v for v in pw.tolist() if v == v]
    print(f"eq4 nodules used: {len(nodules)} ({time.time() - t0:.1f} s)")
    print("bucket      n   real pairwise Dice")
    for k, (lo, hi) in enumerate(BUCKETS):
        n = sum(1 for x in nodules if x[0] == k)
        print(f"{lo:>4g}-{hi:<6g} {n:4d}   {np.mean(real[k]):.3f}" if real[k] else f"{lo}-{hi} 0")
    allreal = [v for k in real for v in real[k]]
    print(f"overall          {np.mean(allreal):.3f} (n pairs {len(allreal)})")
    grid = []
    for bias, rel, wob in itertools.product([float(v) for v in args.bias.split(",")],
                                            [float(v) for v in args.bias_rel.split(",")],
                                            [float(v) for v in args.wobble.split(",")]):
        rng = np.random.default_rng(12345)
        sim = {k: [] for k in range(len(BUCKETS))}
        for k, _, cons, sp in nodules:
            m = simulate_readers(cons.astype(np.float32), spacing_mm=sp, rng=rng, n_readers=4, bias_sd_mm=bias,
                                 bias_rel=rel, wobble_mm=wob, corr_mm=args.corr_mm)
            sim[k] += [v for v in pairwise_dice(m).tolist() if v == v]
        err = sum(len(real[k]) * (np.mean(sim[k]) - np.mean(real[k])) ** 2 for k in sim if real[k] and sim[k])
        err /= max(len(allreal), 1)
        grid.append((err, bias, rel, wob, {k: float(np.mean(v)) for k, v in sim.items() if v},
                     float(np.mean([v for k in sim for v in sim[k]]))))
        print(f"bias_sd {bias:.2f} bias_rel {rel:.2f} wobble {wob:.2f}: " + " ".join(
            f"{np.mean(sim[k]):.3f}" for k in sim if sim[k]) + f"  overall {grid[-1][5]:.3f}  rmse {err ** 0.5:.4f}")
    best = min(grid, key=lambda g: g[0])
    print(f"best: bias_sd_mm={best[1]} bias_rel={best[2]} wobble_mm={best[3]} corr_mm={args.corr_mm}: per bucket "
          + " ".join(f"{v:.3f}" for v in best[4].values()) + f", overall {best[5]:.3f}, rmse {best[0] ** 0.5:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"real": {k: float(np.mean(v)) for k, v in real.items() if v},
                       "best": {"bias_sd_mm": best[1], "bias_rel": best[2], "wobble_mm": best[3],
                                "corr_mm": args.corr_mm, "sim": best[4], "overall": best[5]}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
