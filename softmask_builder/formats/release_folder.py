"""The release folder of a build: its file names, and the reading of ``manifest.json`` and
``SHA256SUMS``.

A finished build folder holds its shards (:mod:`softmask_builder.formats.shards`) and these release
files, written by :func:`softmask_builder.dataset.release.write_release` (``SHA256SUMS`` last):

========================  ======================================================================
``manifest.json``         every shard with its split, sha256, byte size and sample count; the recipe,
                          label parameters, counts, versions (docs/FORMAT.md)
``rejects.csv``           ``sample_id,stage,reason`` of every rejected sample
``unselected.csv``        ``sample_id,filter,detail`` of every sample a selection filter left out
``DATASET_CARD.md``       the dataset card (Hugging Face Hub front matter + prose)
``croissant.json``        Croissant 1.1 metadata (schema version >= 2)
``SHA256SUMS``            ``<sha256>  <file>`` for the shards and the files above (``sha256sum -c``)
========================  ======================================================================

plus two hidden files of the build itself: ``.plan.json`` (the plan a resumed build must match) and
``.lock`` (one build at a time). Every reader of a build folder — ``softmask verify``/``inspect``/
``report``/``preview``, the exports, the trainer's dataset check — takes the names and the parsing
from here, so a new release file is one edit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softmask_builder.errors import InputError

__all__ = ["MANIFEST", "SUMS", "REJECTS", "UNSELECTED", "CARD", "CROISSANT", "PLAN_FILE", "LOCK_FILE",
           "RELEASE_FILES", "REJECTS_HEADER", "UNSELECTED_HEADER", "ManifestError", "read_manifest",
           "manifest_shard_files", "parse_sums", "sums_text"]

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
REJECTS = "rejects.csv"
UNSELECTED = "unselected.csv"
CARD = "DATASET_CARD.md"
CROISSANT = "croissant.json"
PLAN_FILE = ".plan.json"
LOCK_FILE = ".lock"

#: Every file :func:`~softmask_builder.dataset.release.write_release` writes, ``SHA256SUMS`` last.
RELEASE_FILES = (REJECTS, UNSELECTED, MANIFEST, CARD, CROISSANT, SUMS)
REJECTS_HEADER = ["sample_id", "stage", "reason"]
UNSELECTED_HEADER = ["sample_id", "filter", "detail"]


class ManifestError(InputError):
    """A build folder's ``manifest.json`` is missing, not JSON, or not a JSON object."""


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``folder/manifest.json`` parsed.

    Raises
    ------
    ManifestError
        The file is missing (an unfinished build, or not a build folder), unreadable, not valid
        JSON, or not a JSON object; the message names the file.
    """
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST} is missing in {Path(folder)} (an unfinished build, or not a build "
                            "folder)") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not a JSON object (got {type(data).__name__})")
    return data


def manifest_shard_files(manifest: dict[str, Any], *, split: str | None = None) -> list[str]:
    """The shard file names a manifest lists (of one ``split`` if given), in manifest order."""
    try:
        return [e["file"] for e in manifest["shards"] if split is None or e["split"] == split]
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{MANIFEST}: the shard list lacks or mistypes a field ({exc!r})") from None


def parse_sums(text: str) -> tuple[dict[str, str], list[str]]:
    """``SHA256SUMS`` text -> ({file: sha256}, [problem per malformed line])."""
    entries, bad = {}, []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or len(parts[0]) != 64 or not all(c in "0123456789abcdef" for c in parts[0]):
            bad.append(f"{SUMS} line {i} is not '<sha256>  <file>': {line[:80]!r}")
            continue
        entries[parts[1].lstrip("*")] = parts[0]
    return entries, bad


def sums_text(hashes: dict[str, str]) -> str:
    """``SHA256SUMS`` content for {file: sha256}: one line per file, sorted by name."""
    return "".join(f"{hashes[k]}  {k}\n" for k in sorted(hashes))
