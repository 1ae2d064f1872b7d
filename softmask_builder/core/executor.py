"""Run picklable tasks on the workers of the caller's ``joblib.parallel_config``, a bounded
number at a time, and make sure no worker outlives the process that started it.

Why not ``joblib.Parallel``: the build needs to decide *when* the next task is submitted (so that
at most a stated number of chunks are held, whatever the build size) and to cancel what is
queued when it stops. Library code still never picks a backend: :class:`TaskRunner` reads the
active joblib configuration (``joblib.parallel_config``, set by the CLI) and maps it to an
executor:

==============================  ==================================================================
active joblib backend           tasks run on
==============================  ==================================================================
none / ``sequential`` / 1 job   this process, one after another, at submit time
``multiprocessing``             a :class:`concurrent.futures.ProcessPoolExecutor` whose workers
                                are *forked* from this process when the runner starts (POSIX;
                                elsewhere loky): they inherit its imports and loaded kernels
``loky``                        loky's reusable process pool (``joblib.externals.loky``)
``threading``                   a :class:`concurrent.futures.ThreadPoolExecutor`
``dask``                        the ``distributed.Client`` joblib's dask backend holds
==============================  ==================================================================

Why fork: on a 2-core machine a loky worker spends ~1.3 s of CPU importing the labelling stages
and loading their numba kernels before its first sample (``benchmarks/bench_build.py``), and
each of the N workers pays it, while a sequential build pays it once. Forked workers inherit the
imports; :func:`prestart` forks them before planning and each loads the kernels while this
process plans (off the critical path), or a runner of kind "fork" with none prestarted runs
``warm`` (e.g. :func:`softmask_builder.dataset.build.warm_worker`) once here and then forks. Workers are
forked all at once, before any thread of the pool exists (so no lock of a helper thread is
copied held). The fork happens before
any HDF5 file is opened by the build (shards are written here, after the workers exist) and
workers open their own files (zips, DICOMs, PNGs) lazily.

Worker lifetime: every worker runs :func:`ensure_parent_watchdog` with the pid of the process
that submits the tasks: loky workers as their pool initializer (before they import anything a
task needs, which may take seconds), dask workers through ``Client.run`` when the runner starts,
and every task again (idempotent) for workers that joined later. In a worker that is a direct
child of that process (loky workers, the processes of a dask ``LocalCluster``) a daemon thread
polls ``os.getppid()`` every :data:`WATCHDOG_PERIOD_S` seconds and ends the worker with
``os._exit`` once the parent is gone (SIGKILL, SIGTERM, a crash: the worker is then
re-parented). The runner waits for its loky workers to be up before it hands out work; a main
process killed during those first moments (while loky spawns them) can still leave a worker
blocked on its start-up pipe. Workers of a remote dask cluster are not our children; their
queued tasks are cancelled by :meth:`TaskRunner.close` (and by the scheduler when the client's
connection drops).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["WATCHDOG_PERIOD_S", "MALLOC_TUNING", "TRAINING_MALLOC_TUNING", "keep_freed_memory", "TaskRunner", "ensure_parent_watchdog", "active_backend", "fork_available", "prestart",
           "shutdown_prestarted"]

#: Seconds between two parent checks in a worker.
WATCHDOG_PERIOD_S = 0.2

_watchdog_lock = threading.Lock()
_watched_parent: int | None = None

# Thread pools of numerical libraries inside process workers: the workers are the parallelism.
_WORKER_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}


#: glibc malloc settings of a build process (:func:`keep_freed_memory`): allocations below
#: ``mmap_threshold`` bytes come from the heap, and up to ``trim_threshold`` bytes of freed heap
#: are kept for reuse instead of being returned to the kernel.
MALLOC_TUNING = {"mmap_threshold": 64 << 20, "trim_threshold": 256 << 20}
#: The same for a training process (`dsnet`): its activations at 256² are tens of MB each.
TRAINING_MALLOC_TUNING = {"mmap_threshold": 1 << 30, "trim_threshold": (2 << 30) - 1}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_malloc_tuned: dict | None = None


def keep_freed_memory(mmap_threshold: int = MALLOC_TUNING["mmap_threshold"],
                      trim_threshold: int = MALLOC_TUNING["trim_threshold"]) -> bool:
    """Tune glibc's malloc of this process for a loop that allocates and frees the same big
    arrays over and over; returns whether it applied (False off glibc: musl, macOS, Windows).
    A second call with the same or smaller thresholds changes nothing.

    Each sample of a build allocates and frees a few arrays of 1-4 MB (a 512² slice in
    float32/float64, GrabCut's models); a training step, activations of tens of MB. With glibc's
    defaults (mmap above 128 KiB, raised dynamically to at most 32 MiB; freed heap above twice
    that trimmed) they keep coming back as fresh pages that the kernel zeroes on first touch:
    ``benchmarks/bench_build.py --malloc-only`` prints the page faults and time per build sample
    with and without, ``benchmarks/bench_teacher_mode.py --malloc both`` a training step's. After this
    call freed blocks below the thresholds are reused. The cost: the process keeps up to
    ``trim_threshold`` of freed memory for its next allocation. Results are unchanged.
    ``SOFTMASK_KEEP_FREED_MEMORY=0`` in the environment turns it off (returns False).
    """
    global _malloc_tuned
    if os.environ.get("SOFTMASK_KEEP_FREED_MEMORY", "1") == "0":
        return False  # the user's choice: glibc's defaults (less memory kept, more page faults)
    if _malloc_tuned is not None and _malloc_tuned["mmap_threshold"] >= mmap_threshold \
            and _malloc_tuned["trim_threshold"] >= trim_threshold:
        return True
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(int(mmap_threshold))) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(int(trim_threshold))) == 1)
    except (OSError, AttributeError):
        return False
    if ok:
        _malloc_tuned = {"mmap_threshold": int(mmap_threshold), "trim_threshold": int(trim_threshold)}
    return ok


def ensure_parent_watchdog(parent_pid: int) -> bool:
    """Start (once per process) a daemon thread that exits this process when ``parent_pid`` is
    no longer its parent. Returns whether a watchdog is running.

    Nothing is started in ``parent_pid`` itself (tasks run in-process) nor in a process whose
    parent is someone else (a remote dask worker): there the build's death cannot be observed
    through the process tree.
    """
    global _watched_parent
    if os.getpid() == parent_pid or os.getppid() != parent_pid:
        return False
    with _watchdog_lock:
        if _watched_parent == parent_pid:
            return True
        _watched_parent = parent_pid

        def watch() -> None:
            import time

            while True:
                if os.getppid() != parent_pid:
                    # The build's main process is gone: stop now, without flushing anything (the
                    # shard writer lives in that process, so nothing of ours is half-written here).
                    os._exit(70)
                time.sleep(WATCHDOG_PERIOD_S)

        threading.Thread(target=watch, name="softmask-parent-watchdog", daemon=True).start()
    return True


def _started(parent_pid: int) -> int:
    ensure_parent_watchdog(parent_pid)
    return os.getpid()


def _call(parent_pid: int, fn: Callable, args: tuple) -> Any:
    ensure_parent_watchdog(parent_pid)
    return fn(*args)


def active_backend() -> tuple[str, int, Any]:
    """(kind, n_workers, backend object) of the active joblib configuration; kind is one of
    "inline", "fork", "loky", "threads", "dask"."""
    from joblib import cpu_count
    from joblib.parallel import get_active_backend

    backend, n_jobs = get_active_backend()
    name = type(backend).__name__
    if name == "DaskDistributedBackend":
        client = backend.client
        n = sum(client.ncores().values()) if n_jobs in (None, -1) else int(n_jobs)
        return "dask", max(1, n), backend
    if n_jobs is None:
        n_jobs = 1
    n = int(n_jobs) if n_jobs > 0 else max(1, cpu_count() + 1 + int(n_jobs))
    if name == "SequentialBackend" or n == 1:
        return "inline", 1, backend
    if name == "ThreadingBackend":
        return "threads", n, backend
    if name == "MultiprocessingBackend" and fork_available():
        return "fork", n, backend
    return "loky", n, backend  # loky, multiprocessing and anything process-based


def fork_available() -> bool:
    """Whether this platform can fork worker processes (Linux and the BSDs; not Windows; macOS is
    treated as not, as CPython itself does since 3.8: system libraries there are not fork-safe)."""
    import multiprocessing as mp
    import sys

    return "fork" in mp.get_all_start_methods() and sys.platform != "darwin"


def _loky_pool(n_workers: int, parent: int):
    # joblib's own flavour of loky's reusable pool: loky keeps one pool per process, and
    # ``joblib.Parallel`` (used elsewhere in the same process, e.g. by the phantom writer) expects
    # that pool to be joblib's MemmappingExecutor; a plain loky pool there breaks it.
    from joblib.executor import get_memmapping_executor

    # The same arguments every time, so that loky hands back the running pool instead of a new one.
    return get_memmapping_executor(n_workers, timeout=60, env=dict(_WORKER_ENV),
                                   initializer=ensure_parent_watchdog, initargs=(parent,))


def _resolve(warm: str) -> Callable[[], Any]:
    import importlib

    module, _, name = warm.partition(":")
    return getattr(importlib.import_module(module), name)


def _warm(parent_pid: int, warm: str) -> int:
    ensure_parent_watchdog(parent_pid)
    _resolve(warm)()
    return os.getpid()


def _fork_worker_init(parent_pid: int, warm: str | None, ready) -> None:
    ensure_parent_watchdog(parent_pid)
    if warm:
        _resolve(warm)()
    ready.put(os.getpid())  # this worker has warmed: TaskRunner waits for all of them


@dataclass
class _Prestarted:
    """The pool :func:`prestart` forked for this process, reused by every TaskRunner of kind
    "fork" with the same number of workers until :func:`shutdown_prestarted`."""

    pool: cf.ProcessPoolExecutor
    n_workers: int
    parent: int
    ready: Any  # the queue each worker puts its pid on once warm
    waited: bool = False

    def serves(self, n_workers: int, parent: int) -> bool:
        return (self.n_workers, self.parent) == (n_workers, parent) and not getattr(self.pool, "_broken", False)


_prestarted: _Prestarted | None = None

#: Seconds a TaskRunner waits for forked workers to report that they have warmed.
WARM_TIMEOUT_S = 300


def _fork_pool(n_workers: int, parent: int, warm: str | None):
    """(pool, ready queue): a fork-context pool whose workers all exist when this returns, each
    running ``warm`` and then putting its pid on the queue."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready = ctx.Queue()
    pool = cf.ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_fork_worker_init,
                                  initargs=(parent, warm, ready))
    # With the fork context the pool forks all its workers at the first submit, before its manager
    # thread starts: no helper thread of ours exists in the child.
    pool.submit(os.getpid)
    return pool, ready


def _wait_ready(ready, n: int) -> None:
    """Block until ``n`` workers have put their pid on ``ready`` (they have warmed)."""
    import queue
    import time

    deadline = time.monotonic() + WARM_TIMEOUT_S
    for got in range(n):
        try:
            ready.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{n - got} of {n} forked workers did not start within {WARM_TIMEOUT_S} s") from None


def _reusable_fork_pool(n_workers: int, parent: int):
    """The prestarted pool if it serves this runner (after waiting, once, until it is warm)."""
    if _prestarted is None or not _prestarted.serves(n_workers, parent):
        return None
    if not _prestarted.waited:
        _wait_ready(_prestarted.ready, n_workers)
        _prestarted.waited = True
    return _prestarted.pool


def shutdown_prestarted() -> None:
    """End the workers :func:`prestart` forked (a no-op when there are none); queued tasks are
    dropped, running ones finish first."""
    global _prestarted
    if _prestarted is not None:
        pool, _prestarted = _prestarted.pool, None
        pool.shutdown(wait=True, cancel_futures=True)


def prestart(warm: str | None = None) -> None:
    """Start the active backend's workers now, without waiting for them, and have each run
    ``warm`` (``"module:function"``, e.g. loading the labelling stages' numba kernels) so that
    their start-up overlaps with whatever this process does next (planning).

    "fork": the workers are forked now (inheriting this process's imports) and run ``warm`` as
    they start, in parallel; every :class:`TaskRunner` of this process with the same number of
    workers reuses them until :func:`shutdown_prestarted` (the caller's job: the CLI does it when
    its parallel setup ends). "loky": loky's reusable pool is started and each worker imports and
    runs ``warm``. A no-op for the other backends (dask workers are started by their cluster;
    threads need no start).
    """
    global _prestarted
    kind, n, _ = active_backend()
    if kind == "fork":
        if _prestarted is None or not _prestarted.serves(n, os.getpid()):
            shutdown_prestarted()
            pool, ready = _fork_pool(n, os.getpid(), warm)
            _prestarted = _Prestarted(pool, n, os.getpid(), ready)
        return
    if kind != "loky":
        return
    pool = _loky_pool(n, os.getpid())
    if warm:
        for _ in range(n):
            pool.submit(_warm, os.getpid(), warm)


class TaskRunner:
    """Submit tasks to the active joblib backend's workers; wait for any of them; cancel the rest.

    Use as a context manager: on exit (normal, an exception, KeyboardInterrupt or a SIGTERM turned
    into an exception by the CLI) every task not yet finished is cancelled.

    ``warm``: a callable run once in this process when the kind is "inline", or "fork" with no
    workers :func:`prestart` ed (before the workers are forked, so that they inherit what it
    loaded); prestarted workers (fork, loky) warm themselves.
    """

    def __init__(self, warm: Callable[[], Any] | None = None) -> None:
        self.kind, self.n_workers, backend = active_backend()
        self._parent = os.getpid()
        self._pending: set = set()
        self._pool = None
        self._client = None
        self._owns_pool = False
        if self.kind == "fork":
            self._pool = _reusable_fork_pool(self.n_workers, self._parent)  # prestarted: waits until warm
            if self._pool is None:
                if warm is not None:
                    warm()  # here, once: the workers forked next inherit what it loaded
                self._pool, ready = _fork_pool(self.n_workers, self._parent, None)
                self._owns_pool = True
                _wait_ready(ready, self.n_workers)
        elif self.kind == "inline" and warm is not None:
            warm()
        elif self.kind == "loky":
            self._pool = _loky_pool(self.n_workers, self._parent)
            # Wait until the workers are up: a worker killed orphan while loky is still sending it
            # its start-up data can block on that pipe before any of our code runs in it.
            started = [self._pool.submit(_started, self._parent) for _ in range(self.n_workers)]
            cf.wait(started)
        elif self.kind == "threads":
            self._pool = cf.ThreadPoolExecutor(max_workers=self.n_workers)
        elif self.kind == "dask":
            self._client = backend.client
            self._client.run(ensure_parent_watchdog, self._parent)

    def __enter__(self) -> "TaskRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, fn: Callable, *args):
        """Run ``fn(*args)`` on a worker (in-process for "inline", before returning)."""
        if self.kind == "inline":
            fut: cf.Future = cf.Future()
            try:
                fut.set_result(fn(*args))
            except Exception as exc:
                fut.set_exception(exc)
            return fut
        if self.kind == "dask":
            fut = self._client.submit(_call, self._parent, fn, args, pure=False)
        else:
            fut = self._pool.submit(_call, self._parent, fn, args)
        self._pending.add(fut)
        return fut

    def wait_any(self, futures: Iterable) -> list:
        """Block until at least one of ``futures`` is done; return the done ones."""
        futures = list(futures)
        done = [f for f in futures if f.done()]
        if done or not futures:
            self._pending.difference_update(done)
            return done
        if self.kind == "dask":
            from distributed import wait

            done = list(wait(futures, return_when="FIRST_COMPLETED").done)
        else:
            done = list(cf.wait(futures, return_when=cf.FIRST_COMPLETED).done)
        self._pending.difference_update(done)
        return done

    def close(self) -> None:
        """Cancel every task not yet finished (queued tasks never start). Forked workers and
        threads end here; loky's pool is kept for reuse (its workers end after an idle minute)."""
        pending, self._pending = list(self._pending), set()
        if self.kind == "dask":
            if pending:
                self._client.cancel(pending, force=True)
            return
        for fut in pending:
            fut.cancel()  # queued tasks never start; a running one finishes in its worker
        if self.kind == "threads":
            self._pool.shutdown(wait=not pending, cancel_futures=True)
        elif self.kind == "fork" and self._owns_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
