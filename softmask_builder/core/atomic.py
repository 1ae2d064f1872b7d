"""Atomic file writes: a file appears under its final name whole, or not at all.

Every writer of the project writes to a hidden temporary sibling (``.<name>.<pid>.tmp``, in the
same folder, so :func:`os.replace` is a rename on one file system) and renames it onto the final
name only once the content is complete; on any error the temporary is removed. A killed process can
leave a temporary behind, never a truncated file under a final name; :func:`is_temp_name` lets a
build or a release check recognise (and ignore or clean) such leftovers.

One helper for every format: :func:`replacing` for writers that need a path (HDF5, torch.save,
matplotlib, whole folders), :func:`write_bytes` and :func:`write_text` for content in memory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "temp_path", "is_temp_name", "replacing", "write_bytes", "write_text"]

TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.\d+\.tmp(\.[A-Za-z0-9]+)?$")


def temp_path(path: str | os.PathLike, *, keep_suffix: bool = False) -> Path:
    """The hidden temporary sibling ``.<name>.<pid>.tmp`` that ``path`` is written under.

    ``keep_suffix=True`` appends the final suffix again (``.<name>.<pid>.tmp.png``) for writers
    that choose their format by the file name's suffix (matplotlib, ``torch.export``).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}{path.suffix if keep_suffix else ''}")


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_path` makes (a leftover of a killed writer)."""
    return bool(_TEMP_RE.match(name))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write; on a clean exit rename it onto ``path``.

    The caller writes a file (or creates a folder) at the yielded path. When the block raises, the
    temporary is removed and the exception propagates; ``path`` is untouched. A folder replaces only
    a missing or empty ``path`` (:func:`os.replace` semantics).
    """
    path = Path(path)
    tmp = temp_path(path, keep_suffix=keep_suffix)
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, encoded, with no newline translation."""
    return write_bytes(path, text.encode(encoding))
