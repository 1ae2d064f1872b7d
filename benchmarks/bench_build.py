"""Build throughput: the same N phantom lesions (512x512 DeepLesion-layout PNGs) built at --jobs 1
and --jobs 2 (loky) in one run; prints lesions/s, the 2-job speed-up, and checks that both builds
are byte-identical (and, with --dask, a dask LocalCluster build too).

Target (issue 3): an LNSM-size build (1500 lesions) in <= 15 s at 2 jobs, >= 1.7x from 1 to 2 jobs:

    .venv/bin/python benchmarks/bench_build.py --n 1500

The phantom is slow to render (~0.6 s a case), so ``--unique`` distinct cases are rendered once and
their key slices copied to N patients (new series folders and DL_info rows); loading and labelling
cost the same per lesion as with N distinct cases. Both timed builds include planning, shard
writing, release files and (for 2 jobs) starting the worker processes; the numba kernels are
compiled (or loaded from cache) by an untimed one-lesion warm-up build first.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import joblib

from softmask_builder.build import plan_build, run_build
from softmask_builder.phantom import write_sample
from softmask_builder.recipes import recipe_from_dict


def make_source(root: Path, n: int, unique: int, seed: int) -> Path:
    """A DeepLesion-layout folder with ``n`` lesions (key slices only) from ``unique`` phantom cases."""
    cases = root / "cases"
    write_sample(cases, n=min(unique, n), seed=seed, n_neighbors=0)
    with open(cases / "DL_info.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    source = root / "source"
    (source / "Images_png").mkdir(parents=True)
    out_rows = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        series, key = row["File_name"].rsplit("_", 1)
        new_series = f"{i + 1:06d}_01_01"
        folder = source / "Images_png" / new_series
        folder.mkdir()
        shutil.copyfile(cases / "Images_png" / series / key, folder / key)
        row.update(File_name=f"{new_series}_{key}", Patient_index=str(i + 1), Study_index="1", Series_ID="1")
        out_rows.append(row)
    with open(source / "DL_info.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(out_rows)
    return source


def recipe(samples_per_shard: int):
    return recipe_from_dict({
        "dataset": "bench", "source": "deeplesion", "crop_px": 64, "samples_per_shard": samples_per_shard,
        "source_options": {"lesion_types": None, "exclude_noisy": False},
        "split": {"method": "patient", "seed": 0, "fractions": {"train": 0.667, "val": 0.067, "test": 0.266}},
    })


def timed_build(plan, out: Path, backend: str | None, jobs: int) -> tuple[float, dict]:
    start = time.perf_counter()
    if backend is None:
        result = run_build(plan, out, overwrite=True)
    else:
        with joblib.parallel_config(backend=backend, n_jobs=jobs):
            result = run_build(plan, out, overwrite=True)
    elapsed = time.perf_counter() - start
    return elapsed, {s.name: s.sha256 for s in result.shards} | {"_rejects": len(result.rejects)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="lesions to build (1500 = LNSM size)")
    ap.add_argument("--unique", type=int, default=12, help="distinct phantom cases rendered")
    ap.add_argument("--samples-per-shard", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dask", action="store_true", help="also build on a dask LocalCluster of 2 workers")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_build_"))
    try:
        t0 = time.perf_counter()
        source = make_source(work, args.n, args.unique, args.seed)
        print(f"source: {args.n} lesions from {min(args.unique, args.n)} phantom cases "
              f"({time.perf_counter() - t0:.1f} s to render)")
        rec = recipe(args.samples_per_shard)
        plan = plan_build(rec, source)
        run_build(plan_build(rec, source, limit=1), work / "warmup", overwrite=True)  # JIT / caches

        t1, h1 = timed_build(plan, work / "jobs1", None, 1)
        t2, h2 = timed_build(plan, work / "jobs2", "loky", 2)
        n_shards = len(plan.shards)
        print(f"shards: {n_shards} of <= {args.samples_per_shard} samples, rejects: {h1['_rejects']}")
        print(f"jobs=1 (in-process): {t1:7.2f} s  {args.n / t1:7.1f} lesions/s")
        print(f"jobs=2 (loky):       {t2:7.2f} s  {args.n / t2:7.1f} lesions/s")
        print(f"speed-up 1 -> 2 jobs: {t1 / t2:.2f}x (target >= 1.7x)")
        if args.n >= 1500:
            print(f"LNSM-size build at 2 jobs: {t2:.1f} s (target <= 15 s)")
        same = h1 == h2
        print(f"jobs=1 and jobs=2 shards byte-identical: {same}")
        ok = same
        if args.dask:
            try:
                from dask.distributed import Client, LocalCluster
            except ImportError:
                print("dask: not installed (pip install 'softmask-toolkit[dask]'), skipped")
            else:
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, Client(cluster):
                    t3, h3 = timed_build(plan, work / "dask2", "dask", -1)
                print(f"dask (2 workers):    {t3:7.2f} s  {args.n / t3:7.1f} lesions/s, "
                      f"byte-identical to jobs=1: {h3 == h1}")
                ok &= h3 == h1
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
