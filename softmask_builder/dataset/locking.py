"""One build at a time per output folder: an exclusive ``fcntl.flock`` on ``OUT/.lock``.

The lock is taken before anything in ``OUT`` is touched and held until the release files are
written. The kernel drops it when the holder dies, however it dies (SIGKILL included), so a
stale ``.lock`` file never blocks a rerun. The file holds the holder's pid, which the refusal
names. File descriptors are opened close-on-exec, so spawned workers do not inherit the lock.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from softmask_builder.errors import SoftMaskError

__all__ = ["LOCK_FILE", "OutLockedError", "out_lock"]

LOCK_FILE = ".lock"


class OutLockedError(SoftMaskError):
    """Another live build holds the output folder's lock (``holder_pid``, None when unknown)."""

    def __init__(self, message: str, *, holder_pid: int | None):
        super().__init__(message)
        self.holder_pid = holder_pid


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


@contextmanager
def out_lock(out: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of build folder ``out`` (created) for the ``with`` block.

    Raises
    ------
    OutLockedError
        Another process holds it; the message names its pid and the folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            who = f"pid {pid}" if pid is not None else "a process whose pid is not yet written"
            raise OutLockedError(f"{out} is being built by another build ({who}); wait for it to finish or "
                                 "choose another --out", holder_pid=pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
