"""What every export shares: the verified build it reads (through :mod:`softmask_builder.formats.shards`),
deterministic NIfTI bytes, an atomic output folder and its SHA256SUMS.

Two kinds of build are exported: ``samples`` (2-D crops (row, col), spacing (row_mm, col_mm)) and,
since issue 26, ``volumes`` (3-D crops (z, row, col) at the source's native spacing
(z_mm, row_mm, col_mm)). NIfTI's voxel axes are (i, j, k) = (x, y, z), x fastest in memory, so
a crop is written with its axes reversed: a 2-D crop as (col, row, 1) with pixdim
(col_mm, row_mm, 1), a volume as (col, row, z) with pixdim (col_mm, row_mm, z_mm)
(:func:`to_nifti_axes`, :func:`pixdim_of`). The affine (:func:`export_affine`) has origin 0 (the
crop's place in its series stays in the shard's ``origin_px``; ``cases.csv`` / the datalist point
back to the sample): a 2-D crop's is ``diag(col_mm, row_mm, 1, 1)``, the spacing only; a volume's
is ``diag(-col_mm, -row_mm, z_mm, 1)``, the anatomical orientation of the shards' (z, row, col) =
(Superior, Posterior, patient's Left) axes (axis codes L, P, S, as dcm2niix stores axial CT), so a
viewer shows it the right way round and ``softmask build masks --volumes`` reads an export back
unchanged. nnU-Net (SimpleITK) reads a volume as a (z, row, col) array with spacing
(z_mm, row_mm, col_mm), the shard's own order (its direction is then the identity in ITK's LPS).

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
    """Import nibabel lazily, with a reinstall hint: it is a core dependency of the package (the
    NIfTI volume source reads it), so it is missing only from a broken environment."""
    try:
        import nibabel
    except ImportError:
        raise ExportError("exports write NIfTI with nibabel, a core dependency that is missing from this "
                          "environment: pip install 'nibabel>=5.0' (or reinstall softmask-toolkit)") from None
    return nibabel


#: Build kinds the exports take (manifest ``kind``), and the spatial axes of their crops.
EXPORTABLE_KINDS = {"samples": 2, "volumes": 3}


@dataclass(frozen=True)
class ExportSample:
    """One sample of a build as the exports need it: arrays (row, col) with ``spacing_mm``
    (row_mm, col_mm) for a sample build, (z, row, col) with (z_mm, row_mm, col_mm) for a volume
    build (the shard's axis order in both)."""

    sample_id: str
    split: str
    patient: str
    source_key: str
    spacing_mm: tuple[float, ...]
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

    @property
    def kind(self) -> str:
        """``"samples"`` (2-D crops) or ``"volumes"`` (3-D crops)."""
        return str(self.manifest["kind"])

    def n_samples(self, split: str | None = None) -> int:
        return sum(e["n_samples"] for e in self.manifest["shards"] if split is None or e["split"] == split)

    def samples(self, split: str) -> Iterator[ExportSample]:
        """The samples of ``split`` in shard order, then stored (``sample_id``) order."""
        entries = sorted((e for e in self.manifest["shards"] if e["split"] == split), key=lambda e: e["index"])
        for entry in entries:
            with open_shard(self.path / entry["file"]) as shard:
                for i in range(shard.n_samples):
                    s = shard.sample(i)
                    spacing = tuple(float(v) for v in np.asarray(s["spacing_mm"], dtype=np.float32))
                    yield ExportSample(s["sample_id"], s["split"], s["patient"], s["source_key"], spacing,
                                       s["image_hu"], s["soft_mask"], s["binary_mask"], s["trimap"])


def load_verified_build(build: str | Path) -> VerifiedBuild:
    """Verify ``build`` (hashes, schema, counts) and return it; refuse slice builds and empty ones.

    A sample build (manifest ``kind`` "samples") and a volume build ("volumes") are both taken;
    every shard's own ``kind`` must be the manifest's (``softmask verify`` does not compare them
    yet, and a 2-D shard in a volume build would otherwise be exported as a one-slice volume).

    Raises
    ------
    BuildNotVerified
        ``softmask verify`` finds a problem (the problems are attached), or a shard's kind is not
        the manifest's (exit code 3).
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
    kind = manifest.get("kind")
    if kind not in EXPORTABLE_KINDS:
        raise ExportError(f"{build} is a {kind!r} build; exports take sample builds (2-D crops + labels) and "
                          "volume builds (3-D crops + labels)")
    if not manifest["n_samples"]:
        raise ExportError(f"{build} holds no sample to export", exit_code=4)
    for entry in manifest["shards"]:
        with open_shard(build / entry["file"]) as shard:
            if shard.kind != kind:
                problem = f"shard {entry['file']}: kind {shard.kind!r}, manifest says {kind!r}"
                raise BuildNotVerified(f"{build} mixes shard kinds ({problem}); exports read only verified builds",
                                       [problem])
    return VerifiedBuild(build, manifest, sha256_file(build / MANIFEST))


def nifti_bytes(array_cr: np.ndarray, *, pixdim: tuple[float, float, float], dtype: np.dtype,
                affine: np.ndarray | None = None) -> bytes:
    """Gzip-compressed NIfTI-1 bytes of an array already in NIfTI axis order ((col, row, 1) or
    (col, row, z): :func:`to_nifti_axes`) with voxel sizes ``pixdim`` in mm (:func:`pixdim_of`).

    The affine is ``affine`` (:func:`export_affine`), by default ``diag(*pixdim, 1)`` (no rotation,
    origin 0); qform and sform both set, code 1 "scanner"; no scaling (slope 1, intercept 0), an
    empty description, ``mtime=0`` in the gzip header: equal inputs give equal bytes.
    """
    nib = require_nibabel()
    data = np.asarray(array_cr, dtype=dtype)
    affine = (np.diag([*pixdim, 1.0]) if affine is None else np.asarray(affine)).astype(np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def to_nifti_axes(array: np.ndarray) -> np.ndarray:
    """A crop in the shard's axis order -> NIfTI's (i, j, k) = (x, y, z) order.

    (row, col) -> (col, row, 1); (z, row, col) -> (col, row, z), i.e. the axes reversed. NIfTI's
    first axis is i (x, columns), the second j (rows), the third k (slices). Any other number of
    axes is a bug in the caller (ValueError).
    """
    array = np.asarray(array)
    if array.ndim == 2:
        return np.ascontiguousarray(array.T[:, :, None])
    if array.ndim == 3:
        return np.ascontiguousarray(array.transpose(2, 1, 0))
    raise ValueError(f"a crop must be (row, col) or (z, row, col), got shape {array.shape}")


def to_col_row(array_rc: np.ndarray) -> np.ndarray:
    """(row, col) -> (col, row, 1) (2-D only; :func:`to_nifti_axes` takes volumes too)."""
    if np.ndim(array_rc) != 2:
        raise ValueError(f"to_col_row takes (row, col) arrays, got shape {np.shape(array_rc)}")
    return to_nifti_axes(array_rc)


def export_affine(spacing_mm: tuple[float, ...]) -> np.ndarray:
    """The NIfTI affine of an exported crop, from its spacing in the shard's axis order.

    2-D (row_mm, col_mm): ``diag(col_mm, row_mm, 1, 1)``, spacing only (as before issue 26: 2-D
    exports keep their bytes). 3-D (z_mm, row_mm, col_mm): the anatomical orientation of the
    volume shards' (z, row, col) = (Superior, Posterior, patient's Left) axes,
    ``diag(-col_mm, -row_mm, z_mm, 1)`` (:func:`softmask_builder.sources.nifti.zrc_affine`, what
    ``zrc_to_nifti`` writes and the NIfTI source reads back unchanged), origin 0: a viewer shows
    the patient's right on the left of an axial slice and anterior at the top, as a CT viewer does.
    """
    from softmask_builder.sources.nifti import zrc_affine

    spacing = tuple(float(v) for v in spacing_mm)
    if len(spacing) == 3:
        return zrc_affine(spacing)
    return np.diag([*pixdim_of(spacing), 1.0])


def pixdim_of(spacing_mm: tuple[float, ...]) -> tuple[float, float, float]:
    """Spacing in the shard's axis order -> NIfTI pixdim in mm.

    (row_mm, col_mm) -> (col_mm, row_mm, 1) (a 2-D crop is one slice of nominal thickness 1);
    (z_mm, row_mm, col_mm) -> (col_mm, row_mm, z_mm).
    """
    spacing = tuple(float(v) for v in spacing_mm)
    if len(spacing) == 2:
        return (spacing[1], spacing[0], 1.0)
    if len(spacing) == 3:
        return (spacing[2], spacing[1], spacing[0])
    raise ValueError(f"spacing_mm must be (row_mm, col_mm) or (z_mm, row_mm, col_mm), got {spacing_mm!r}")


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
