"""Build throughput: the same N phantom lesions (512x512 DeepLesion-layout PNGs) built with
`softmask build deeplesion -j 1` and `-j 2` with each ``--backends`` value (forked workers, the
default, and loky, the reference it replaced, side by side), each ``--repeats`` times, for every N
of ``--n``; prints medians, the 1 -> 2 job ratios of the parallel phase and end to end, the serial
part, and checks that every build is byte-identical (with --dask, a dask LocalCluster build too).

Targets (issue 11): parallel phase (plan done -> last shard written, the build's own
``seconds.build``) >= 1.85x from 1 to 2 jobs at 300 and at 1500 lesions; end to end >= 1.7x at
1500 and >= 1.45x at 300:

    .venv/bin/python benchmarks/bench_build.py --n 300,1500 --repeats 3     # = make bench-build

Each build is a fresh `softmask` process, timed end to end as a user runs it (interpreter start,
imports, numba kernels loaded from cache, planning, workers started, shards, release files), so
both sides pay their start-up costs; the "serial part" is end to end minus the parallel phase.
Runs alternate 1 job / 2 jobs so that a change of machine load hits both. The phantom is slow to
render (~0.6 s a case), so ``--unique`` distinct cases are rendered once and their key slices
copied to N patients (new series folders and DL_info rows); loading and labelling cost the same
per lesion as with N distinct cases. Run it on an otherwise idle machine with >= 2 free cores: a
speed-up measured while other jobs share the cores says little. ``--jobs 1,2,4,8,16`` records a
scaling curve on a bigger machine (ratios are against the first entry).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from softmask_builder.phantom.deeplesion_writer import write_replicated_sample


def make_source(root: Path, n: int, unique: int, seed: int) -> Path:
    """A DeepLesion-layout folder with ``n`` lesions (key slices only) from ``unique`` phantom cases."""
    return write_replicated_sample(root, n=n, unique=unique, seed=seed)


RECIPE = {
    "dataset": "bench", "source": "deeplesion", "crop_px": 64,
    "source_options": {"lesion_types": None, "exclude_noisy": False},
    "split": {"method": "patient", "seed": 0, "fractions": {"train": 0.667, "val": 0.067, "test": 0.266}},
}


def softmask_command() -> list[str]:
    script = Path(sys.executable).parent / "softmask"
    return [str(script)] if script.exists() else [sys.executable, "-m", "softmask_builder.cli"]


def timed_build(source: Path, recipe: Path, out: Path, jobs: int, backend: str = "multiprocessing") -> tuple[float, dict]:
    """Run one `softmask build` process; return its wall time and its summary and SHA256SUMS."""
    cmd = softmask_command() + ["build", "deeplesion", str(source), "--recipe", str(recipe), "--out", str(out),
                                "-j", str(jobs), "--backend", backend, "--no-progress", "--overwrite"]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    sums = dict(line.split("  ", 1)[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    # CPU seconds of the build process and its reaped workers: far less sensitive to other load on
    # the machine than wall times.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, {"summary": summary, "sums": sums, "cpu": cpu}


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_ceiling(n: int = 10_000_000) -> float:
    """What 2 processes get over 1 on this machine right now: the same pure-Python loop twice,
    one after the other vs. in 2 processes. On an idle 2-core machine ~2.0; other load or
    shared physical cores lower it, and no build can beat it."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    _spin(n)
    _spin(n)
    serial = time.perf_counter() - t0
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # start-up outside the timing
        t0 = time.perf_counter()
        pool.map(_spin, [n, n], chunksize=1)
        parallel = time.perf_counter() - t0
    return serial / parallel


def _label_refs(args) -> float:
    return _label_refs_counted(args)[0]


def _label_refs_counted(args) -> tuple[float, int]:
    """(seconds, minor page faults) to load and label the first ``n_refs`` planned samples here."""
    import resource

    source, recipe_path, n_refs = args
    from softmask_builder.dataset.build import build_chunk, plan_build, warm_worker
    from softmask_builder.formats.recipes import load_recipe
    from softmask_builder.sources.deeplesion import load_deeplesion

    plan = plan_build(load_recipe(recipe_path), source)
    refs = [r for s in plan.shards for r in s.refs][:n_refs]
    warm_worker()
    build_chunk(refs[:2], "train", plan.recipe, load_deeplesion)  # first-use allocations outside the count
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    build_chunk(refs, "train", plan.recipe, load_deeplesion)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def malloc_effect(source: Path, recipe: Path, n_refs: int = 200) -> None:
    """Print ms and page faults per sample of the same labelling loop in fresh processes with
    glibc's malloc defaults (``SOFTMASK_KEEP_FREED_MEMORY=0``) and with the build's tuning
    (:func:`softmask_builder.core.executor.keep_freed_memory`), alternating, twice each."""
    import multiprocessing as mp
    import os

    got: dict[str, list[tuple[float, int]]] = {"0": [], "1": []}
    for flag in ("0", "1", "0", "1"):
        old = os.environ.get("SOFTMASK_KEEP_FREED_MEMORY")
        os.environ["SOFTMASK_KEEP_FREED_MEMORY"] = flag  # read by the spawned process
        try:
            with mp.get_context("spawn").Pool(1) as pool:
                got[flag].append(pool.apply(_label_refs_counted, ((source, recipe, n_refs),)))
        finally:
            if old is None:
                os.environ.pop("SOFTMASK_KEEP_FREED_MEMORY")
            else:
                os.environ["SOFTMASK_KEEP_FREED_MEMORY"] = old
    (t0, f0), (t1, f1) = (min(got[k]) for k in ("0", "1"))
    print(f"malloc, {n_refs} samples in one process (best of 2): glibc defaults {1000 * t0 / n_refs:.2f} ms and "
          f"{f0 / n_refs:.0f} page faults a sample; keep_freed_memory {1000 * t1 / n_refs:.2f} ms and "
          f"{f1 / n_refs:.0f}; speed-up {t0 / t1:.2f}x")


def work_ceiling(source: Path, recipe: Path, n_refs: int = 96) -> float:
    """What 2 processes get over 1 on *this build's own work* right now: the same ``n_refs``
    samples loaded and labelled twice in one process vs. once in each of 2 processes at the same
    time (no shards, no hand-off). Memory-bound work (512² PNG decode, GrabCut) can scale worse
    than the pure-Python loop. About a second of work, so on a shared machine it is a rough
    reference that the parallel phase may exceed, not a bound."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_label_refs, [(source, recipe, 4)] * 2)  # imports + kernels outside the timing
        one = pool.apply(_label_refs, ((source, recipe, n_refs),))
        one += pool.apply(_label_refs, ((source, recipe, n_refs),))
        t0 = time.perf_counter()
        pool.map(_label_refs, [(source, recipe, n_refs)] * 2, chunksize=1)
        both = time.perf_counter() - t0
    return one / both


def bench_size(work: Path, n: int, args) -> bool:
    t0 = time.perf_counter()
    source = make_source(work / f"n{n}", n, args.unique, args.seed)
    print(f"\n== {n} lesions from {min(args.unique, n)} phantom cases "
          f"({time.perf_counter() - t0:.1f} s to render and copy)")
    recipe = work / "bench.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "samples_per_shard": args.samples_per_shard}))
    # Untimed: fills numba's on-disk kernel cache so that no timed run compiles.
    timed_build(source, recipe, work / "warmup", 1)
    malloc_effect(source, recipe)
    if args.malloc_only:
        shutil.rmtree(work / f"n{n}", ignore_errors=True)
        return True
    # One row per (jobs, backend); at 1 job every backend runs in-process, so it runs once.
    configs = [(j, b) for j in args.jobs for b in (args.backends[:1] if j == 1 else args.backends)]
    runs: dict[tuple[int, str], list[tuple[float, float, float, float, float]]] = {c: [] for c in configs}
    sums = {}
    ceilings = []
    for rep in range(args.repeats):
        ceilings.append(work_ceiling(source, recipe))
        for jobs, backend in configs:
            wall, r = timed_build(source, recipe, work / f"out-j{jobs}-{backend}", jobs, backend)
            sec = r["summary"]["seconds"]
            runs[(jobs, backend)].append((wall, sec["build"], sec["plan"], sec.get("workers", 0.0), r["cpu"]))
            sums[(jobs, backend, rep)] = r["sums"]
    s1 = r["summary"]
    print(f"built {s1['n_samples']} samples in {s1['n_shards']} shards of <= {args.samples_per_shard} "
          f"(chunks of 8 samples), rejects: {s1['n_rejects']}; medians of {args.repeats} runs:")
    med = {c: tuple(statistics.median(v[i] for v in runs[c]) for i in range(5)) for c in configs}
    base = configs[0]
    print(f"{'jobs':>5} {'backend':>15} {'end to end s':>13} {'parallel s':>11} {'serial s':>9} {'plan s':>7} "
          f"{'workers s':>10} {'e2e ratio':>10} {'par ratio':>10} {'CPU s':>7}   (min..max end to end)")
    for c in configs:
        wall, par, plan, workers, cpu = med[c]
        walls = [v[0] for v in runs[c]]
        print(f"{c[0]:>5} {c[1] if c[0] > 1 else 'in-process':>15} {wall:13.2f} {par:11.2f} {wall - par:9.2f} "
              f"{plan:7.2f} {workers:10.2f} {med[base][0] / wall:9.2f}x {med[base][1] / par:9.2f}x {cpu:7.1f}   "
              f"({min(walls):.2f}..{max(walls):.2f})")
    ceiling = statistics.median(ceilings)
    print(f"2-process ceiling of this work (the same samples labelled in 1 vs 2 processes, measured before each "
          f"repeat): median {ceiling:.2f}x (runs: {', '.join(f'{c:.2f}' for c in ceilings)})")
    if base[0] == 1:
        for c in configs:
            if c[0] != 2:
                continue
            e2e, par = med[base][0] / med[c][0], med[base][1] / med[c][1]
            target_e2e = 1.7 if n >= 1500 else 1.45
            print(f"1 -> 2 jobs ({c[1]}): parallel phase {par:.2f}x (target >= 1.85x; {par / ceiling:.0%} of the "
                  f"work's ceiling), end to end {e2e:.2f}x (target >= {target_e2e}x); {n / med[c][0]:.1f} lesions/s "
                  "end to end")
    reference = sums[(*base, 0)]
    same = all(v == reference for v in sums.values())
    print(f"all {len(sums)} builds byte-identical (SHA256SUMS): {same}")
    ok = same
    if args.dask:
        try:
            import dask.distributed  # noqa: F401  (only checks the extra is installed)
        except ImportError:
            print("dask: not installed (pip install 'softmask-toolkit[dask]'), skipped")
        else:
            t3, r3 = timed_build(source, recipe, work / "dask2", 2, backend="dask")
            print(f"dask (LocalCluster, 2 workers): {t3:7.2f} s end to end, parallel phase "
                  f"{r3['summary']['seconds']['build']:.2f} s, byte-identical to jobs=1: {r3['sums'] == reference}")
            ok &= r3["sums"] == reference
    shutil.rmtree(work / f"n{n}", ignore_errors=True)
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="300,1500", help="comma-separated lesion counts (1500 = LNSM size)")
    ap.add_argument("--jobs", default="1,2", help="comma-separated job counts (first = reference)")
    ap.add_argument("--backends", default="multiprocessing,loky",
                    help="comma-separated `softmask build --backend` values run at every job count > 1 "
                         "(first = the default; loky is the reference it replaced)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--malloc-only", action="store_true",
                    help="only the malloc comparison (glibc defaults vs keep_freed_memory), no builds")
    ap.add_argument("--unique", type=int, default=12, help="distinct phantom cases rendered")
    ap.add_argument("--samples-per-shard", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dask", action="store_true", help="also build on a dask LocalCluster of 2 workers")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)
    args.jobs = [int(j) for j in args.jobs.split(",")]
    args.backends = args.backends.split(",")
    sizes = [int(n) for n in args.n.split(",")]

    import os
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; 2-process ceiling "
          f"(pure-Python loop, 2 procs vs 1) {cpu_ceiling():.2f}x")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_build_"))
    try:
        ok = all([bench_size(work, n, args) for n in sizes])
        print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; 2-process ceiling "
              f"{cpu_ceiling():.2f}x")
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
