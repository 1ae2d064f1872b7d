"""Speed of the phantom sample: rendering + PNG writing, hybrid (new) vs analytic (reference).

Times, for N cases at J joblib workers (loky):

* hybrid: ``softmask_builder.phantom.hybrid.iter_hybrid_cases`` (synthetic backgrounds, one per 20 cases,
  real LIDC shapes) and the PNG encoding/writing of every slice (key + 2 neighbours, 512 x 512);
* analytic (reference): ``softmask_builder.phantom.cases.generate_case`` for the same N, same PNG work,
  over the same J workers (cases spread over the workers in chunks);
* separately: loading the shapes from the annotation database (done once per sample) and the
  truth file (``phantom_truth.npz``, written by the main process).

Prints seconds, cases/s, the ratio and the 1500-cases-in-60-s target check. The CPU may be shared
with other jobs: the figure is an upper bound of the time on a quiet machine.

    python benchmarks/bench_phantom.py [--n 300] [--jobs 2] [--skip-analytic]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, parallel_config


def _write_pngs(case, folder: Path) -> int:
    from softmask_builder.phantom.deeplesion_writer import encode_png_hu

    d = folder / case.series_dir
    d.mkdir(parents=True, exist_ok=True)
    n = 0
    for off, img in [(0, case.image_hu)] + list(zip(case.neighbor_offsets, case.neighbor_hu)):
        (d / f"{case.key_slice_index + off:03d}.png").write_bytes(encode_png_hu(img))
        n += 1
    return n


def _analytic_chunk(seeds, folder: str) -> int:
    from softmask_builder.phantom.cases import KINDS, generate_case

    n = 0
    for i, s in seeds:
        case = generate_case(s, kind=KINDS[i % len(KINDS)], diameter_mm=3.0 + (i * 7.3) % 27, patient_index=i + 1)
        n += _write_pngs(case, Path(folder))
    return n


def _hybrid_group_and_pngs(bg_spec, specs, shapes, params, folder: str) -> int:
    from softmask_builder.phantom.hybrid import _render_group

    n = 0
    for case in _render_group(bg_spec, specs, shapes, params, None):
        if not isinstance(case, tuple):
            n += _write_pngs(case, Path(folder))
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-analytic", action="store_true")
    args = ap.parse_args(argv)
    from softmask_builder.phantom.hybrid import HybridParams, plan_hybrid_cases
    from softmask_builder.phantom.shapes import load_shapes

    print(f"N={args.n} cases, jobs={args.jobs}, cpus={os.cpu_count()}, load avg {os.getloadavg()[0]:.2f} "
          "(shared machine: other jobs may be running)")
    t = time.perf_counter()
    with parallel_config(backend="loky", n_jobs=args.jobs):
        report = load_shapes()
    t_shapes = time.perf_counter() - t
    print(f"load shapes (whole DB, {len(report.shapes)} shapes): {t_shapes:.1f} s")
    cases, bgs, _ = plan_hybrid_cases(args.n, shapes=report.shapes, seed=0)
    by_id = {s.shape_id: s for s in report.shapes}
    groups: dict[int, list] = {}
    for c in cases:
        groups.setdefault(c.background, []).append(c)
    params = HybridParams()
    with tempfile.TemporaryDirectory() as tmp:
        # warm the workers and the numba caches outside the timing
        with parallel_config(backend="loky", n_jobs=args.jobs):
            Parallel()(delayed(_hybrid_group_and_pngs)(bgs[j], groups[j][:1], {groups[j][0].shape_id:
                                                       by_id[groups[j][0].shape_id]}, params, tmp + "/warm")
                       for j in list(groups)[:args.jobs])
            t = time.perf_counter()
            n_png = sum(Parallel()(delayed(_hybrid_group_and_pngs)(
                bgs[j], specs, {s.shape_id: by_id[s.shape_id] for s in specs}, params, tmp + "/h")
                for j, specs in groups.items()))
            t_h = time.perf_counter() - t
        print(f"hybrid   render + PNG: {t_h:7.1f} s  {args.n / t_h:6.1f} cases/s  ({n_png} PNGs)  "
              f"-> 1500 cases: {1500 * t_h / args.n:.0f} s (target <= 60 s at 2 jobs)")
        if not args.skip_analytic:
            ss = np.random.SeedSequence(0).spawn(args.n)
            chunks = [[(i, ss[i]) for i in range(k, args.n, args.jobs * 4)] for k in range(args.jobs * 4)]
            with parallel_config(backend="loky", n_jobs=args.jobs):
                Parallel()(delayed(_analytic_chunk)(c[:1], tmp + "/warm") for c in chunks[:args.jobs])
                t = time.perf_counter()
                Parallel()(delayed(_analytic_chunk)(c, tmp + "/a") for c in chunks)
                t_a = time.perf_counter() - t
            print(f"analytic render + PNG: {t_a:7.1f} s  {args.n / t_a:6.1f} cases/s  (reference)")
            print(f"ratio hybrid / analytic time: {t_h / t_a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
