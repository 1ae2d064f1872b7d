"""DeepLesion's official zip files, read in place: ``Images_png_NN.zip`` -> PNG bytes of members.

NIH delivers DeepLesion's slices as 56 zip files ``Images_png_01.zip`` ... ``Images_png_56.zip``
(~220 GB), each holding members ``Images_png/<PPPPPP_SS_RR>/<KKK>.png``; one series may span two
zips. A DeepLesion root may hold any subset of them, next to (or instead of) extracted
``Images_png/`` folders.

* :func:`zip_member_index` maps every member to the zip that holds it. Listing a 4 GB zip means
  reading its central directory, so each zip's member list is cached outside the source (which
  may be read-only) in ``<cache>/deeplesion-zips/<key>.json``, the key being the sha256 of the
  zip's resolved path, size and mtime: a replaced or re-downloaded zip is listed again.
  ``<cache>`` is ``$SOFTMASK_CACHE_DIR``, else ``$XDG_CACHE_HOME/softmask``, else
  ``~/.cache/softmask`` (:func:`softmask_cache_dir`).
* :func:`read_member` reads one member's bytes; each process (build worker) opens the zips
  itself, lazily, and keeps them open for its next reads.

Names used in reasons and reject rows are ``Images_png_NN.zip:Images_png/...``: relative to the
source root, never absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import zipfile
from pathlib import Path

from softmask_builder.core import atomic
from softmask_builder.errors import SourceError

__all__ = ["ZIP_NAME_RE", "MEMBER_PREFIX", "softmask_cache_dir", "find_zips", "zip_member_index", "read_member",
           "ZipIndex"]

ZIP_NAME_RE = re.compile(r"^Images_png_\d+\.zip$")
MEMBER_PREFIX = "Images_png/"
_INDEX_VERSION = 1


def softmask_cache_dir() -> Path:
    """The toolkit's cache folder: ``$SOFTMASK_CACHE_DIR``, else ``$XDG_CACHE_HOME/softmask``,
    else ``~/.cache/softmask``. Nothing in it is needed for correctness: deleting it only costs
    time."""
    explicit = os.environ.get("SOFTMASK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "softmask"


def find_zips(root) -> list[Path]:
    """The ``Images_png_NN.zip`` files directly under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if ZIP_NAME_RE.match(p.name) and p.is_file())


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(data, separators=(",", ":")))


def _zip_members(path: Path) -> list[str]:
    """PNG members under ``Images_png/`` of one zip, from the cache or its central directory."""
    st = path.stat()
    key_text = f"{_INDEX_VERSION}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    cache = softmask_cache_dir() / "deeplesion-zips" / f"{hashlib.sha256(key_text.encode()).hexdigest()}.json"
    try:
        data = json.loads(cache.read_text())
        if data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns:
            return list(data["members"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with zipfile.ZipFile(path) as zf:
            members = sorted(n for n in zf.namelist() if n.startswith(MEMBER_PREFIX) and n.endswith(".png"))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise SourceError(f"cannot list {path.name} as a zip file ({exc}); re-download it or move it out of "
                          "the DeepLesion root") from None
    try:
        _write_json_atomic(cache, {"zip": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "members": members})
    except OSError:
        pass  # an unwritable cache only costs time on the next run
    return members


class ZipIndex:
    """Which zip under a DeepLesion root holds each ``Images_png/...`` member (see the module doc).

    A member found in several zips is taken from the first by name.
    """

    def __init__(self, root) -> None:
        self.root = Path(root)
        self.zips = find_zips(self.root)
        self._where: dict[str, str] = {}
        for path in self.zips:
            for member in _zip_members(path):
                self._where.setdefault(member, path.name)

    def __bool__(self) -> bool:
        return bool(self.zips)

    def __len__(self) -> int:
        return len(self._where)

    def members(self) -> dict[str, str]:
        """Every indexed member -> the zip file name holding it."""
        return dict(self._where)

    def find(self, member: str) -> str | None:
        """The zip file name (``Images_png_NN.zip``) holding ``member``, or None."""
        return self._where.get(member)


def zip_member_index(root) -> ZipIndex:
    """The :class:`ZipIndex` of ``root`` (built once per zip, then read from the cache)."""
    return ZipIndex(root)


_open_zips: dict[str, zipfile.ZipFile] = {}
_open_lock = threading.Lock()


def read_member(zip_path: str, member: str) -> bytes:
    """The bytes of ``member`` of ``zip_path`` (checked against the zip's CRC-32).

    The zip is opened on first use in this process and kept open; reads are serialised (a
    ``ZipFile`` is not safe for concurrent reads from threads).

    Raises
    ------
    OSError, zipfile.BadZipFile, KeyError
        Unreadable zip, corrupt member (bad CRC, bad compressed data), member absent.
    """
    with _open_lock:
        zf = _open_zips.get(zip_path)
        if zf is None:
            zf = _open_zips[zip_path] = zipfile.ZipFile(zip_path)
        return zf.read(member)
