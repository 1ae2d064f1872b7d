"""Build throughput: the same N phantom lesions (512x512 DeepLesion-layout PNGs) built with
`softmask build deeplesion -j 1` and `-j 2` (loky) in one run; prints lesions/s, the 2-job speed-up,
and checks that both builds are byte-identical (with --dask, a dask LocalCluster build too).

Target (issue 3): an LNSM-size build (1500 lesions) in <= 15 s at 2 jobs, >= 1.7x from 1 to 2 jobs:

    .venv/bin/python benchmarks/bench_build.py --n 1500

Each build is a fresh `softmask` process, timed end to end as a user runs it (interpreter start,
imports, numba kernels loaded from cache, planning, workers started, shards, release files), so
both sides pay their start-up costs. The phantom is slow to render (~0.6 s a case), so
``--unique`` distinct cases are rendered once and their key slices copied to N patients (new series
folders and DL_info rows); loading and labelling cost the same per lesion as with N distinct cases.
Run it on an otherwise idle machine with >= 2 free cores: a speed-up measured while other jobs
share the cores says little.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from softmask_builder.phantom import write_sample


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


RECIPE = {
    "dataset": "bench", "source": "deeplesion", "crop_px": 64,
    "source_options": {"lesion_types": None, "exclude_noisy": False},
    "split": {"method": "patient", "seed": 0, "fractions": {"train": 0.667, "val": 0.067, "test": 0.266}},
}


def softmask_command() -> list[str]:
    script = Path(sys.executable).parent / "softmask"
    return [str(script)] if script.exists() else [sys.executable, "-m", "softmask_builder.cli"]


def timed_build(source: Path, recipe: Path, out: Path, jobs: int, backend: str = "loky") -> tuple[float, dict]:
    """Run one `softmask build` process; return its wall time and the SHA256SUMS entries."""
    cmd = softmask_command() + ["build", "deeplesion", str(source), "--recipe", str(recipe), "--out", str(out),
                                "-j", str(jobs), "--backend", backend, "--no-progress", "--overwrite"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    sums = dict(line.split("  ", 1)[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    return elapsed, {"summary": summary, "sums": sums}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="lesions to build (1500 = LNSM size)")
    ap.add_argument("--unique", type=int, default=12, help="distinct phantom cases rendered")
    ap.add_argument("--samples-per-shard", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dask", action="store_true", help="also build on a dask LocalCluster of 2 workers")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_build_"))
    try:
        t0 = time.perf_counter()
        source = make_source(work, args.n, args.unique, args.seed)
        print(f"source: {args.n} lesions from {min(args.unique, args.n)} phantom cases "
              f"({time.perf_counter() - t0:.1f} s to render and copy)")
        recipe = work / "bench.yaml"
        recipe.write_text(yaml.safe_dump({**RECIPE, "samples_per_shard": args.samples_per_shard}))
        # Untimed: fills numba's on-disk kernel cache so neither timed run compiles.
        timed_build(source, recipe, work / "warmup", 1)

        t1, r1 = timed_build(source, recipe, work / "jobs1", 1)
        t2, r2 = timed_build(source, recipe, work / "jobs2", 2)
        s1 = r1["summary"]
        print(f"built {s1['n_samples']} samples in {s1['n_shards']} shards of <= {args.samples_per_shard}, "
              f"rejects: {s1['n_rejects']}")
        print(f"jobs=1:        {t1:7.2f} s  {args.n / t1:7.1f} lesions/s")
        print(f"jobs=2 (loky): {t2:7.2f} s  {args.n / t2:7.1f} lesions/s")
        print(f"speed-up 1 -> 2 jobs: {t1 / t2:.2f}x (target >= 1.7x)")
        if args.n >= 1500:
            print(f"LNSM-size build at 2 jobs: {t2:.1f} s (target <= 15 s)")
        same = r1["sums"] == r2["sums"]
        print(f"jobs=1 and jobs=2 outputs byte-identical (SHA256SUMS): {same}")
        ok = same
        if args.dask:
            try:
                import dask.distributed  # noqa: F401  (only checks the extra is installed)
            except ImportError:
                print("dask: not installed (pip install 'softmask-toolkit[dask]'), skipped")
            else:
                t3, r3 = timed_build(source, recipe, work / "dask2", 2, backend="dask")
                print(f"dask (LocalCluster, 2 workers): {t3:7.2f} s  {args.n / t3:7.1f} lesions/s, "
                      f"byte-identical to jobs=1: {r3['sums'] == r1['sums']}")
                ok &= r3["sums"] == r1["sums"]
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
