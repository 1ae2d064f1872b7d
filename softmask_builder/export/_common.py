"""What every export shares: the verified build it reads (through :mod:`softmask_builder.formats.shards`),
deterministic NIfTI bytes, an atomic output folder and its SHA256SUMS.

Determinism: a NIfTI file is the nibabel header + data serialised in memory
(``Nifti1Image.to_bytes``) and gzip-compressed with ``mtime=0`` and no file name, so its bytes
depend only on the array, the spacing and nibabel's header layout -- never on the clock, the
path or the process. JSON is written with sorted keys, CSV with ``\\n`` line ends, files in a fixed
order.

Atomicity: an export is written into a hidden sibling folder (``.<name>.<pid>.tmp``) and renamed
onto its final name when complete; ``overwrite`` replaces a finished export only then.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softmask_builder.core import atomic
from softmask_builder.errors import InputError, SoftMaskError
from softmask_builder.formats.release_folder import MANIFEST, SUMS, read_manifest, sums_text
from softmask_builder.formats.shards import open_shard, sha256_file

SPLITS = ("train", "val", "test")


class ExportError(SoftMaskError):
    """An export cannot run (the build fails verification, the target exists, a package is missing)."""

    def __init__(self, message: str, *, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class BuildNotVerified(ExportError):
    """The build fails ``softmask verify``: exports refuse it (exit code 3)."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message, exit_code=3)
        self.problems = problems


def require_nibabel():
    """Import nibabel lazily with an install hint (it is in the ``export`` extra)."""
    try:
        import nibabel
    except ImportError:
        raise ExportError("exports write NIfTI with nibabel: pip install 'softmask-toolkit[export]'") from None
    return nibabel


@dataclass(frozen=True)
class ExportSample:
    """One sample of a build as the exports need it (arrays in (row, col), spacing (row_mm, col_mm))."""

    sample_id: str
    split: str
    patient: str
    source_key: str
    spacing_mm: tuple[float, float]
    image_hu: np.ndarray
    soft_mask: np.ndarray
    binary_mask: np.ndarray
    trimap: np.ndarray


@dataclass(frozen=True)
class VerifiedBuild:
    """A finished sample build that passed :func:`softmask_builder.dataset.release.verify`."""

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str

    @property
    def dataset(self) -> str:
        return str(self.manifest["dataset"])

    def n_samples(self, split: str | None = None) -> int:
        return sum(e["n_samples"] for e in self.manifest["shards"] if split is None or e["split"] == split)

    def samples(self, split: str) -> Iterator[ExportSample]:
        """The samples of ``split`` in shard order, then stored (``sample_id``) order."""
        entries = sorted((e for e in self.manifest["shards"] if e["split"] == split), key=lambda e: e["index"])
        for entry in entries:
            with open_shard(self.path / entry["file"]) as shard:
                for i in range(shard.n_samples):
                    s = shard.sample(i)
                    row_mm, col_mm = (float(v) for v in np.asarray(s["spacing_mm"], dtype=np.float32))
                    yield ExportSample(s["sample_id"], s["split"], s["patient"], s["source_key"], (row_mm, col_mm),
                                       s["image_hu"], s["soft_mask"], s["binary_mask"], s["trimap"])


def load_verified_build(build: str | Path) -> VerifiedBuild:
    """Verify ``build`` (hashes, schema, counts) and return it; refuse slice builds and empty ones.

    Raises
    ------
    BuildNotVerified
        ``softmask verify`` finds a problem (the problems are attached).
    ExportError
        The build holds slices (no labels to export) or no sample (exit code 4).
    """
    from softmask_builder.dataset.release import verify

    build = Path(build)
    report = verify(build)
    if not report.ok:
        raise BuildNotVerified(f"{build} fails `softmask verify` ({len(report.problems)} problem(s)); "
                               "exports read only verified builds", report.problems)
    manifest = read_manifest(build)
    if manifest.get("kind") != "samples":
        raise ExportError(f"{build} is a {manifest.get('kind')!r} build; exports take sample builds (crops + labels)")
    if not manifest["n_samples"]:
        raise ExportError(f"{build} holds no sample to export", exit_code=4)
    return VerifiedBuild(build, manifest, sha256_file(build / MANIFEST))


def nifti_bytes(array_cr: np.ndarray, *, pixdim: tuple[float, float, float], dtype: np.dtype) -> bytes:
    """Gzip-compressed NIfTI-1 bytes of a (col, row, 1) array with voxel sizes ``pixdim``.

    The affine is ``diag(*pixdim, 1)`` (no rotation, origin 0; qform and sform both set, code 1
    "scanner"); no scaling (slope 1, intercept 0), an empty description, ``mtime=0`` in the gzip
    header: equal inputs give equal bytes.
    """
    nib = require_nibabel()
    data = np.asarray(array_cr, dtype=dtype)
    affine = np.diag([*pixdim, 1.0]).astype(np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def to_col_row(array_rc: np.ndarray) -> np.ndarray:
    """(row, col) -> (col, row, 1): NIfTI's first axis is i (x, columns), the second j (rows)."""
    return np.ascontiguousarray(np.asarray(array_rc).T[:, :, None])


def pixdim_of(spacing_mm: tuple[float, float]) -> tuple[float, float, float]:
    """(row_mm, col_mm) -> NIfTI pixdim (col_mm, row_mm, 1)."""
    row_mm, col_mm = spacing_mm
    return (float(col_mm), float(row_mm), 1.0)


class AtomicFolder:
    """Write files under ``final`` via a hidden temporary sibling folder, renamed when complete."""

    def __init__(self, final: Path, *, overwrite: bool, option: str = "--out"):
        self.final = Path(final)
        if self.final.exists() and not overwrite:
            raise ExportError(f"{option} {self.final} already exists; pass --overwrite to replace it")
        if self.final.exists() and not self.final.is_dir():
            raise ExportError(f"{option} {self.final} exists and is not a folder")
        self.tmp = atomic.temp_path(self.final)
        self.files: list[str] = []

    def __enter__(self) -> "AtomicFolder":
        self.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append(rel)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=1, sort_keys=True) + "\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        (self.tmp / SUMS).write_text(sums_text({rel: sha256_file(self.tmp / rel) for rel in self.files}),
                                     encoding="utf-8")
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.{os.getpid()}.old")
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)


def provenance(build: VerifiedBuild, **options: Any) -> dict[str, Any]:
    """What an export was made from: the build's dataset, versions, manifest hash, the options, and
    the build's licence and citations (derived from what it used: :func:`~softmask_builder.formats.metadata.licence`)."""
    from softmask_builder.formats.metadata import citation_text, licence

    m = build.manifest
    return {"license": licence(m)[3], "citation": citation_text(m), "dataset": m["dataset"], "dataset_version": m["dataset_version"], "builder_version": m["builder_version"],
            "schema_version": m["schema_version"], "recipe_sha256": m["recipe_sha256"],
            "build_manifest_sha256": build.manifest_sha256, "n_samples": m["n_samples"],
            "splits": {k: v["n_samples"] for k, v in m["splits"].items()}, "options": options}


def check_name(value: str, *, option: str) -> str:
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise InputError(f"{option} must be letters, digits, '-' or '_', got {value!r}")
    return value
