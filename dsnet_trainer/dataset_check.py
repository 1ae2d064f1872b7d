"""Check a built dataset folder before training or evaluating on it.

``dsnet train``, ``dsnet evaluate`` and ``dsnet pretrain-sr`` call :func:`check_dataset` on their
data folder (``--no-verify`` skips it, saying so on stderr). Two levels:

1. **Always** (cheap: no pixel is read): ``manifest.json`` parses; its ``kind`` is the kind the
   command needs; every shard it lists exists with the manifest's size in bytes and sample count
   and the expected ``kind`` attribute; no other ``*.h5`` lies in the folder (a duplicated or
   foreign shard would silently change the data). In a folder without a manifest (hand-made
   shards), every ``*.h5`` must still be of the expected kind.
2. **On first use**: the full :func:`softmask_builder.dataset.release.verify` (every file re-hashed
   against ``SHA256SUMS`` and the manifest, the schema and value domains of every shard, split
   counts, patients in one split only). A success is remembered in a small file under
   ``$XDG_CACHE_HOME/softmask/verified/`` (default ``~/.cache``), never inside the dataset,
   keyed by the manifest's and ``SHA256SUMS``' bytes and the size and modification time of every
   file they list: a changed file is verified again. (A byte changed behind an unchanged
   size and mtime -- ``touch -r`` -- is not seen until the cache entry is removed.)

A failed level-1 check raises :class:`DatasetMismatchError` (an :class:`InputError`: exit 2),
a failed verify :class:`DatasetVerifyError` (exit 3). Both name the folder and the first problems.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from softmask_builder.core import atomic
from softmask_builder.formats.release_folder import (MANIFEST, SUMS, ManifestError, manifest_shard_files,
                                                     parse_sums, read_manifest)

from .errors import ShardError

__all__ = ["DatasetCheck", "DatasetMismatchError", "DatasetVerifyError", "check_dataset", "cache_dir"]


class DatasetMismatchError(ShardError):
    """The folder does not match its manifest (missing, resized or stray shard, wrong kind)."""


class DatasetVerifyError(ShardError):
    """``softmask verify`` finds problems in the folder (hashes, schema, value domains, counts)."""

    exit_code = 3


@dataclass
class DatasetCheck:
    """Outcome of :func:`check_dataset`: what was checked and notes for stderr."""

    root: Path
    level: str  # "none" (a single file), "schema" (no manifest), "manifest", "verified", "cached"
    n_shards: int = 0
    notes: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/softmask/verified`` (``~/.cache/softmask/verified`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "softmask" / "verified"


def _problems_text(root: Path, problems: list[str]) -> str:
    more = f" (+{len(problems) - 3} more; run `softmask verify {root}`)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def _cache_key(root: Path, manifest_bytes: bytes, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(manifest_bytes)
    sums = root / SUMS
    h.update(sums.read_bytes() if sums.is_file() else b"<no sums>")
    for name in sorted(set(names)):
        p = root / name
        try:
            st = p.stat()
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{name}|missing\n".encode())
    return h.hexdigest()


def _shard_kind(path: Path) -> str:
    return _inspect(path).kind


def check_dataset(root: str | Path, *, kind: str, verify_hashes: bool = True, option: str = "--data") -> DatasetCheck:
    """Check the dataset at ``root`` for a command that reads shards of ``kind``.

    Parameters
    ----------
    root : a dataset folder (``softmask build``/``make lnsm`` output) or a single shard file.
    kind : "samples" (DSNet crops) or "slices" (SR teacher slices).
    verify_hashes : run level 2 (full verify, cached) as well as level 1.
    option : the option naming ``root`` in messages.

    Raises
    ------
    DatasetMismatchError : level 1 failed (exit 2).
    DatasetVerifyError : level 2 failed (exit 3).
    ShardError : ``root`` does not exist, or a shard is unreadable.
    """
    root = Path(root)
    if root.is_file():
        return DatasetCheck(root, "none", 1, [f"dataset check: {option} {root} is a single shard; its manifest "
                                              "is not checked"])
    if not root.is_dir():
        raise ShardError(f"{option} {root}: no such file or folder")
    manifest_path = root / MANIFEST
    h5 = sorted(p.name for p in root.glob("*.h5"))
    if not manifest_path.is_file():
        for name in h5:
            found = _shard_kind(root / name)
            if found != kind:
                raise DatasetMismatchError(f"{option} {root}: shard {name} holds {found!r}, expected {kind!r} "
                                           "(remove it or point to a folder of one kind)")
        return DatasetCheck(root, "schema", len(h5), [f"dataset check: {root} has no {MANIFEST} (not a "
                                                      "`softmask build` output): counts and hashes not checked"])
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = read_manifest(root)
        names = manifest_shard_files(manifest)
    except ManifestError as exc:  # a damaged manifest fails verification: exit 3 (issue 23)
        raise DatasetVerifyError(f"{option} {root}: {MANIFEST} is not a valid manifest ({exc.reason})") from exc
    entries = manifest["shards"]
    if manifest.get("kind", kind) != kind:
        raise DatasetMismatchError(f"{option} {root} is a {manifest.get('kind')!r} dataset, this command needs "
                                   f"{kind!r} shards")
    problems: list[str] = []
    for e in entries:
        p = root / e["file"]
        if not p.is_file():
            problems.append(f"shard {e['file']} is missing")
            continue
        if "bytes" in e and p.stat().st_size != int(e["bytes"]):
            problems.append(f"shard {e['file']} has {p.stat().st_size} bytes, manifest says {e['bytes']}")
            continue
        info = _inspect(p)
        if info.kind != kind:
            problems.append(f"shard {e['file']} holds {info.kind!r}, expected {kind!r}")
        elif info.n_samples != int(e.get("n_samples", info.n_samples)):
            problems.append(f"shard {e['file']} holds {info.n_samples} samples, manifest says {e['n_samples']}")
    stray = sorted(set(h5) - set(names))
    if stray:
        problems.append(f"{len(stray)} shard file(s) not in the manifest: {', '.join(stray[:3])}")
    if problems:
        raise DatasetMismatchError(f"{option} {root} does not match its {MANIFEST}: {_problems_text(root, problems)}")
    check = DatasetCheck(root, "manifest", len(entries))
    if not verify_hashes:
        return check
    listed = []  # every file SHA256SUMS covers (card, rejects, croissant.json, ...) is part of the key
    if (root / SUMS).is_file():
        listed = list(parse_sums((root / SUMS).read_text(errors="replace"))[0])
    key = _cache_key(root, manifest_bytes, names + listed + [MANIFEST, SUMS])
    marker = cache_dir() / f"{key}.json"
    if marker.is_file():
        check.level = "cached"
        return check
    from softmask_builder.dataset.release import verify

    report = verify(root)
    if not report.ok:
        raise DatasetVerifyError(f"{option} {root} fails verification: {_problems_text(root, report.problems)}")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(marker, json.dumps({"root": str(root.resolve()), "n_shards": report.n_shards,
                                              "n_samples": report.n_samples}) + "\n")
    except OSError as exc:  # a read-only cache only costs a re-verify next time
        check.notes.append(f"dataset check: could not record the verification in {marker.parent} ({exc.strerror})")
    check.level = "verified"
    check.notes.append(f"dataset check: {root} verified ({report.n_shards} shards, {report.n_samples} samples); "
                       f"result cached in {marker.parent}")
    return check


def _inspect(path: Path):
    from .data import inspect_shard

    return inspect_shard(path)
