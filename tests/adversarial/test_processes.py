"""Processes: no worker outlives a build's main process (SIGKILL, SIGTERM, Ctrl-C), and one
output folder takes one build at a time (``OUT/.lock``; a second build exits 6 naming the
holder's pid). Every build here is a real ``softmask`` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from softmask_builder.dataset.locking import LOCK_FILE, OutLockedError, out_lock

EXIT_LOCKED = 6
SOFTMASK = [str(Path(sys.executable).parent / "softmask")]
RECIPE = """dataset: proc
source: deeplesion
crop_px: 64
samples_per_shard: 16
source_options: {lesion_types: null, exclude_noisy: false}
split: {method: patient, seed: 0, fractions: {train: 0.75, test: 0.25}}
"""


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> Path:
    """A DeepLesion-layout source of 192 lesions made from 3 phantom cases (key slices copied to
    new patients), so that a 2-job build runs for a few seconds."""
    from softmask_builder.phantom.deeplesion_writer import write_replicated_sample

    work = tmp_path_factory.mktemp("procsrc")
    source = write_replicated_sample(work, n=192, unique=3, seed=5)
    (work / "proc.yaml").write_text(RECIPE)
    return source


def _cmd(source: Path, out: Path, *extra: str) -> list[str]:
    return SOFTMASK + ["build", "deeplesion", str(source), "--recipe", str(source.parent / "proc.yaml"),
                       "--out", str(out), "--no-progress", *extra]


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _sums(out: Path) -> str:
    return (out / "SHA256SUMS").read_text()


@pytest.fixture(scope="module")
def reference(slow_source, tmp_path_factory) -> str:
    """SHA256SUMS of an uninterrupted one-job build (the oracle for every rerun)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = subprocess.run(_cmd(slow_source, out, "-j", "1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return _sums(out)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to list worker processes")
@pytest.mark.parametrize("sig,backend", [
    (signal.SIGKILL, "multiprocessing"),
    (signal.SIGKILL, "loky"),
    pytest.param(signal.SIGTERM, "multiprocessing", marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, "loky", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, "loky", marks=pytest.mark.slow),
    pytest.param(signal.SIGKILL, "dask", marks=pytest.mark.slow),
])
def test_workers_end_with_the_main_process_and_a_rerun_is_identical(slow_source, reference, tmp_path, sig,
                                                                    backend):
    if backend == "dask":
        pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_cmd(slow_source, out, "-j", "2", "--backend", backend), stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        # Wait until the workers have returned work (the first shard is written), then kill.
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(p.suffix == ".h5" for p in out.iterdir()):
                workers = _children(proc.pid)
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the build ended before it could be killed: {err_path.read_text()[-2000:]}"
        assert len(workers) >= 2
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != 0
        if sig != signal.SIGKILL:  # the build's cleanup ran: a one-line message, the lock released
            assert "Traceback" not in err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:  # do not leak them into the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} worker(s) outlived the build's main process ({sig.name})"
    assert not (out / "SHA256SUMS").exists()  # the killed build does not look finished
    # Nothing is written after the main process died (the writer lives there).
    snapshot = sorted(p.name for p in out.iterdir())
    time.sleep(0.5)
    assert sorted(p.name for p in out.iterdir()) == snapshot
    rerun = subprocess.run(_cmd(slow_source, out, "-j", "2"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _sums(out) == reference
    assert json.loads(rerun.stdout)["n_samples"] > 0


def test_second_build_into_a_locked_out_exits_6_naming_the_holder(slow_source, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom softmask_builder.dataset.locking import out_lock\n"
         "with out_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.stdout.close()
        second = subprocess.run(_cmd(slow_source, out, "-j", "1"), capture_output=True, text=True, timeout=120)
        assert second.returncode == EXIT_LOCKED
        assert f"pid {holder.pid}" in second.stderr and str(out) in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert not any(p.name.endswith(".h5") for p in out.iterdir())  # the refused build touched nothing
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: the stale .lock file does not block a rerun.
    assert (out / LOCK_FILE).exists()
    again = subprocess.run(_cmd(slow_source, out, "-j", "1", "--limit", "4"), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr


def test_out_lock_is_exclusive_within_one_process_and_released_after(tmp_path):
    with out_lock(tmp_path / "o"):
        with pytest.raises(OutLockedError, match=f"pid {os.getpid()}") as info:
            with out_lock(tmp_path / "o"):
                pass
        assert info.value.holder_pid == os.getpid()
    with out_lock(tmp_path / "o"):  # released on exit
        pass


@pytest.mark.slow
def test_remote_dask_scheduler_tasks_are_cancelled_when_the_build_is_terminated(slow_source, tmp_path):
    """A build on a dask scheduler it does not own: SIGTERM to the build cancels its queued and
    running tasks on the cluster (nothing of the build is left in the scheduler)."""
    distributed = pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        err_path = tmp_path / "stderr.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(_cmd(slow_source, out, "--backend", "dask", "--scheduler",
                                         cluster.scheduler_address), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if out.is_dir() and any(p.suffix == ".h5" for p in out.iterdir()):
                    break
                time.sleep(0.05)
            assert proc.poll() is None, err_path.read_text()[-2000:]
            assert sum(len(v) for v in client.processing().values()) > 0  # the build's tasks are there
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.run_on_scheduler(lambda dask_scheduler: len(
                [t for t in dask_scheduler.tasks if "build_chunk" in str(t) or "_call" in str(t)])):
            time.sleep(0.2)
        left = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        assert left == 0, f"{left} task(s) of the terminated build are still on the scheduler"
