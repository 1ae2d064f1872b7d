"""Sample-level parallelism: chunks of samples, not shards, are the unit of work, and the shard
bytes do not depend on the number of jobs, the chunk size, the backend or the order in which
chunks come back; the number of chunks held at once is bounded."""

from __future__ import annotations

import concurrent.futures as cf
import random
from pathlib import Path

import joblib
import pytest

from softmask_builder.dataset import build as build_mod
from softmask_builder.dataset.build import make_plan, plan_chunks, run_build

from .test_build import _hashes, fake_labeller, fake_loader, make_refs, recipe


def _plan(n=41, per_shard=7, fail_every=5):
    return make_plan(recipe(samples_per_shard=per_shard), make_refs(n, fail_every=fail_every))


def _build(out, plan, **kw):
    return run_build(plan, out, loader=fake_loader, labeller=fake_labeller, **kw)


def test_plan_chunks_cover_every_ref_once_in_plan_order():
    plan = _plan()
    for size in (1, 3, 7, 50):
        chunks = plan_chunks(plan.shards, size)
        covered = [(c.shard, i) for c in chunks for i in range(c.start, c.stop)]
        expected = [(k, i) for k, s in enumerate(plan.shards) for i in range(len(s.refs))]
        assert covered == expected
        assert all(0 < c.stop - c.start <= size for c in chunks)


@pytest.mark.parametrize("backend,jobs,chunk", [("loky", 2, 1), ("loky", 2, 3), ("loky", 3, 5),
                                               ("multiprocessing", 2, 1), ("multiprocessing", 3, 5)])
def test_process_jobs_and_chunking_give_identical_bytes(tmp_path, backend, jobs, chunk):
    plan = _plan()
    ref = _build(tmp_path / "one", plan, chunk_samples=64)  # one chunk per shard, in-process
    with joblib.parallel_config(backend=backend, n_jobs=jobs):
        got = _build(tmp_path / "par", plan, chunk_samples=chunk)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "par")
    assert got.rejects == ref.rejects and len(ref.rejects) > 0


def test_threads_backend_gives_identical_bytes(tmp_path):
    plan = _plan()
    _build(tmp_path / "one", plan)
    with joblib.parallel_config(backend="threading", n_jobs=3):
        _build(tmp_path / "thr", plan, chunk_samples=2)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "thr")


def test_dask_localcluster_with_small_chunks_gives_identical_bytes(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    plan = _plan(n=23)
    _build(tmp_path / "one", plan)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster):
        with joblib.parallel_config(backend="dask"):
            _build(tmp_path / "dask", plan, chunk_samples=2)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "dask")


class _ShuffledRunner:
    """A stand-in TaskRunner with ``n_workers`` that finishes its submitted tasks in a random
    order, one per wait, and records how many tasks were submitted and not yet returned."""

    n_workers = 2
    peak = 0

    def __init__(self, warm=None):
        self.rng = random.Random(7)
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def submit(self, fn, *args):
        fut = cf.Future()
        fut.work = (fn, args)
        self.pending.append(fut)
        _ShuffledRunner.peak = max(_ShuffledRunner.peak, len(self.pending))
        return fut

    def wait_any(self, futures):
        fut = self.pending.pop(self.rng.randrange(len(self.pending)))
        fn, args = fut.work
        fut.set_result(fn(*args))
        return [fut]


def test_out_of_order_completion_is_bounded_and_gives_identical_bytes(tmp_path, monkeypatch):
    plan = _plan(n=60, per_shard=9)
    _build(tmp_path / "one", plan)
    monkeypatch.setattr(build_mod, "TaskRunner", _ShuffledRunner)
    _ShuffledRunner.peak = 0
    _build(tmp_path / "shuf", plan, chunk_samples=2, max_chunks_in_flight=3)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "shuf")
    assert _ShuffledRunner.peak == 3  # the window is used, and never exceeded


def test_held_chunks_never_exceed_window_plus_one_shard(tmp_path, monkeypatch):
    """Count, at every submit, the chunks whose shard is not yet written: the bound stated in
    run_build's docstring (in flight + chunks of the largest shard) must hold."""
    plan = _plan(n=60, per_shard=9)
    written: set[str] = set()
    submitted: list[str] = []
    peaks = []
    real_assemble = build_mod.assemble_shard

    class Recording(_ShuffledRunner):
        def submit(self, fn, refs, split, *rest):
            name = next(s.name for s in plan.shards if refs[0] in s.refs)
            submitted.append(name)
            peaks.append(sum(1 for n in submitted if n not in written))
            return super().submit(fn, refs, split, *rest)

    def recording_assemble(shard, outcomes, out_dir, rec):
        written.add(shard.name)
        return real_assemble(shard, outcomes, out_dir, rec)

    monkeypatch.setattr(build_mod, "TaskRunner", Recording)
    monkeypatch.setattr(build_mod, "assemble_shard", recording_assemble)
    _build(tmp_path / "b", plan, chunk_samples=2, max_chunks_in_flight=3)
    assert max(peaks) <= 3 + 5  # 9 refs per shard in chunks of 2 -> 5 chunks
    assert len(submitted) == len(plan_chunks(plan.shards, 2))


def test_seconds_are_reported(tmp_path):
    result = _build(tmp_path, _plan(n=8))
    assert set(result.seconds) == {"workers", "build", "release"} and result.seconds["build"] > 0


def test_forked_workers_inherit_what_the_warm_step_loaded(tmp_path):
    """The "multiprocessing" kind forks after ``warm`` ran here: a module-level flag set by the warm
    step is seen by every worker (a loky worker, started fresh, would see it unset), and the
    workers are children of this process that end when the runner closes."""
    import os

    from softmask_builder.core import executor

    _WARMED.clear()
    with joblib.parallel_config(backend="multiprocessing", n_jobs=2):
        with executor.TaskRunner(warm=lambda: _WARMED.append(os.getpid())) as runner:
            assert runner.kind == "fork" and _WARMED == [os.getpid()]
            futs = [runner.submit(_seen_warm) for _ in range(6)]
            seen = [f.result() for f in futs]
            workers = {pid for pid, _ in seen}
            pool_pids = set(runner._pool._processes)
    assert all(flag == [os.getpid()] for _, flag in seen)
    assert workers and workers <= pool_pids and os.getpid() not in workers
    # close() ended and reaped them: no orphan, no zombie.
    assert not [pid for pid in pool_pids if Path(f"/proc/{pid}").exists()]


_WARMED: list = []


def _seen_warm():
    import os
    import time

    time.sleep(0.05)
    return os.getpid(), list(_WARMED)


def _mark_warm():
    _WARMED.append(("worker", __import__("os").getpid()))


def test_prestarted_forked_workers_warm_themselves_and_are_reused_until_shut_down():
    """prestart forks the workers at once (they warm in parallel while the caller plans); a later
    TaskRunner with the same number of workers runs on exactly those processes, leaves them up
    when it closes, and shutdown_prestarted ends them."""
    import os

    from softmask_builder.core import executor

    _WARMED.clear()
    with joblib.parallel_config(backend="multiprocessing", n_jobs=2):
        executor.prestart(f"{__name__}:_mark_warm")
        try:
            pool = executor._prestarted.pool
            with executor.TaskRunner(warm=lambda: _WARMED.append("main")) as runner:
                assert runner._pool is pool
                seen = [f.result() for f in [runner.submit(_seen_warm) for _ in range(8)]]
            assert _WARMED == []  # the main process did not warm: the prestarted workers did
            for pid, flags in seen:
                assert flags == [("worker", pid)]  # each worker ran the warm step itself, once
            pids = set(pool._processes)
            assert {pid for pid, _ in seen} <= pids and all(Path(f"/proc/{p}").exists() for p in pids)
        finally:
            executor.shutdown_prestarted()
    assert executor._prestarted is None
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert os.getpid() not in pids


_FAULTS = """
import resource, sys
import numpy as np
from softmask_builder.core.executor import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(1 << 20, np.float32).sum()  # numpy's own first-use allocations outside the count
before = faults()
for _ in range(20):  # what a sample does: several arrays of a few MB alive at once, then all freed
    arrays = [np.ones(1 << 20, np.float32) for _ in range(10)]
    del arrays
print(faults() - before, applied)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="malloc tuning is glibc-only")
def test_keep_freed_memory_stops_the_page_faults_of_freed_multi_mb_arrays():
    """The labelling loop's pattern: 40 MB of 4 MB arrays alive at once, then freed. With glibc's
    defaults the freed heap top is trimmed back to the kernel and the next round faults its pages in
    again (1024 per array); after keep_freed_memory() the freed memory is reused."""
    import subprocess
    import sys

    import os

    def run(mode, **env):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        n, applied = out.stdout.split()
        return int(n), applied

    default, _ = run("default")
    tuned, applied = run("tuned")
    assert applied == "True"
    off, applied_off = run("tuned", SOFTMASK_KEEP_FREED_MEMORY="0")  # the user's switch
    assert applied_off == "False" and off > default / 2
    assert default > 20 * 10 * 100  # the oracle: the kernel's own fault count (up to 1024 per array; ~90-100k here)
    assert tuned < default / 10  # measured here: 101960 vs 4617 (the first round only)
