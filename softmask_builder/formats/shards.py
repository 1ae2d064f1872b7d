"""HDF5 shard I/O: the schema of ``docs/FORMAT.md`` (version 3; versions 1 and 2 are still read),
an atomic byte-reproducible writer and a reader.

Three shard kinds (root attribute ``kind``): ``samples`` (2-D crops (N, H, W) with their labels),
``slices`` (full CT slices for the SR teacher) and, since issue 26, ``volumes`` (3-D crops
(N, Z, H, W), axes (z, row, col) after the sample axis, at the source's native voxel spacing, with
the labels of ``samples`` and per-axis geometry: ``spacing_mm``/``origin_px``/``scale`` (N, 3)
in (z, row, col), plus ``key_z``, the crop slice of the RECIST mark). :func:`layout` gives each
kind's arrays and meta dtype; every function below handles the three. Volume shards exist only in
schema 3 (a version 1 or 2 file of kind ``volumes`` is refused).

Schema 3 (issue 25) adds one optional sample array, ``true_fraction`` (float32 (N, H, W) in
[0, 1]: the phantom's true partial-volume fraction of each crop, before the scanner's blur, in the
crop geometry of ``soft_mask``); builds from real sources have none. Volume shards may carry it
too, (N, Z, H, W). Apart from the optional array and the ``volumes`` kind, schema 3's layout is
schema 2's.

Schema 2 stores the per-sample metadata as one root dataset per field (``sample_id``, ``patient``,
``spacing_mm``, ...), each (N, ...) like the image arrays, strings variable-length UTF-8, so that
generic HDF5 readers (Hugging Face ``datasets.load_dataset("hdf5", ...)``) read every field: they
need every dataset to share the first dimension and cannot read version 1's compound ``meta``
table with fixed-length byte strings and sub-array fields. In memory the metadata is still the
structured array of :data:`SAMPLE_META_DTYPE` (:func:`encode_meta`); :meth:`Shard.meta` returns it
for both versions, whose string widths are the schema's maximum lengths in UTF-8 bytes.

Byte reproducibility: HDF5 stores a modification time in every dataset's object header unless told
not to, so every dataset is created with ``track_times=False``; the file is opened with a fixed
``libver`` and ``track_order=False``, attributes are written in sorted order, and nothing written
depends on the clock, the process or the file name. Writing the same arrays and attributes twice
gives the same bytes (``tests/softmask_builder/formats/test_shards.py`` checks it, for volumes
``test_volume_shards.py``).

Atomicity: a shard is written to a hidden temporary name in the destination folder
(``.<name>.<pid>.tmp``, :mod:`softmask_builder.core.atomic`) and then :func:`os.replace`-d onto its
final name, so a killed build never leaves a partial file under a final name.

Readers: :class:`Shard` (one file, everything; ``softmask verify``/``inspect``, the exports),
:func:`check_shard` (every rule of the schema), and for training, where many processes read
samples at random: :func:`inspect_shard` (a cheap validation of one file, no pixel read) and
:class:`ShardReader` (a global sample index over several shards; HDF5 handles opened lazily, once
per process, never inherited through ``fork`` nor pickled for ``spawn``). Both raise
:class:`ShardReadError` naming the file (a reader of another package may set its own type).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from softmask_builder.core import atomic
from softmask_builder.core.atomic import TEMP_SUFFIX, is_temp_name, temp_path  # noqa: F401 (shards.* names)
from softmask_builder.errors import InputError, SourceError

SCHEMA_VERSION = 3
#: Versions :class:`Shard`, :func:`check_shard` and ``softmask verify`` read (the writer writes 3).
READABLE_VERSIONS = (1, 2, 3)
#: First schema version that may hold the optional arrays (:data:`OPTIONAL_SAMPLE_ARRAYS`).
TRUTH_SINCE_VERSION = 3
#: First schema version that may be of kind ``volumes`` (3-D crops).
VOLUMES_SINCE_VERSION = 3
LIBVER = ("v110", "v110")
GZIP_LEVEL = 4

SAMPLE_META_DTYPE = np.dtype([
    ("sample_id", "S64"),
    ("source_key", "S256"),
    ("patient", "S32"),
    ("split", "S8"),
    ("spacing_mm", "<f4", (2,)),
    ("origin_px", "<f4", (2,)),
    ("scale", "<f4"),
    ("recist_px", "<f4", (4, 2)),
    ("n_readers", "<i2"),
    ("lesion_type", "<i2"),
])
#: Meta of volume shards (schema 3, kind ``volumes``): the sample meta with per-axis geometry in
#: (z, row, col) and ``key_z``, the crop slice (0-based) holding ``recist_px`` (-1: no RECIST).
VOLUME_META_DTYPE = np.dtype([
    ("sample_id", "S64"),
    ("source_key", "S256"),
    ("patient", "S32"),
    ("split", "S8"),
    ("spacing_mm", "<f4", (3,)),
    ("origin_px", "<f4", (3,)),
    ("scale", "<f4", (3,)),
    ("recist_px", "<f4", (4, 2)),
    ("key_z", "<i2"),
    ("n_readers", "<i2"),
    ("lesion_type", "<i2"),
])
SLICE_META_DTYPE = np.dtype([
    ("sample_id", "S64"),
    ("source_key", "S256"),
    ("patient", "S32"),
    ("split", "S8"),
    ("spacing_mm", "<f4", (2,)),
])
# name -> dtype of the (N, H, W) arrays of each shard kind ((N, Z, H, W) for volumes)
SAMPLE_ARRAYS = {"image_hu": np.dtype("<i2"), "soft_mask": np.dtype("<f4"), "binary_mask": np.dtype("u1"),
                 "trimap": np.dtype("u1")}
SLICE_ARRAYS = {"image_hu": np.dtype("<i2")}
#: The (N, Z, H, W) arrays of volume shards: the sample arrays, one axis more.
VOLUME_ARRAYS = dict(SAMPLE_ARRAYS)
#: Optional arrays of sample and volume shards (schema >= 3), shaped like ``image_hu``: present in
#: a shard when every one of its samples carries it. ``true_fraction``: a phantom's true
#: partial-volume fraction in [0, 1].
OPTIONAL_SAMPLE_ARRAYS = {"true_fraction": np.dtype("<f4")}
#: Every shard kind, and the number of spatial axes of its arrays (after the sample axis).
KINDS = ("samples", "slices", "volumes")
SPATIAL_NDIM = {"samples": 2, "slices": 2, "volumes": 3}
#: Kinds whose shards hold labels (Soft Mask, binary mask, trimap) and the sample meta.
LABELLED_KINDS = ("samples", "volumes")
REQUIRED_ATTRS = ("schema_version", "kind", "dataset", "dataset_version", "builder_version", "split",
                  "recipe_json", "recipe_sha256", "n_samples", "n_planned", "plan_sha256", "rejects_json")

SHARD_NAME_RE = re.compile(
    r"^(?P<dataset>[a-z0-9_]+)-(?:(?P<kind>slices|volumes)-)?(?P<split>train|val|test)"
    r"-(?P<index>\d{5})-of-(?P<count>\d{5})\.h5$")
#: Schema 2 on-disk dtype of a string meta field (variable-length UTF-8).
VLEN_STR = h5py.string_dtype("utf-8")


def layout(kind: str) -> tuple[dict[str, np.dtype], np.dtype]:
    """The required arrays (name -> dtype) and the meta dtype of a shard ``kind``.

    "samples": (N, H, W) arrays, :data:`SAMPLE_META_DTYPE`; "slices": (N, H, W) ``image_hu``,
    :data:`SLICE_META_DTYPE`; "volumes": (N, Z, H, W) arrays, :data:`VOLUME_META_DTYPE`. Any
    other kind raises :class:`InputError` naming it.
    """
    if kind == "samples":
        return SAMPLE_ARRAYS, SAMPLE_META_DTYPE
    if kind == "slices":
        return SLICE_ARRAYS, SLICE_META_DTYPE
    if kind == "volumes":
        return VOLUME_ARRAYS, VOLUME_META_DTYPE
    raise InputError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")


def optional_arrays(kind: str) -> dict[str, np.dtype]:
    """The optional arrays a shard of ``kind`` may hold (schema >= 3), shaped like its
    ``image_hu``: ``true_fraction`` for samples and volumes, {} for slices."""
    layout(kind)
    return dict(OPTIONAL_SAMPLE_ARRAYS) if kind in LABELLED_KINDS else {}


def shard_name(dataset: str, split: str, index: int, count: int, *, kind: str = "samples") -> str:
    """``{dataset}-{split}-{i:05d}-of-{n:05d}.h5`` for sample shards, ``{dataset}-slices-...`` for
    slice shards, ``{dataset}-volumes-...`` for volume shards (:func:`parse_shard_name` inverts it)."""
    layout(kind)
    if not 0 <= index < count:
        raise InputError(f"shard index must be in [0, {count}), got {index}")
    middle = "" if kind == "samples" else f"{kind}-"
    return f"{dataset}-{middle}{split}-{index:05d}-of-{count:05d}.h5"


@dataclass(frozen=True)
class ShardName:
    dataset: str
    kind: str
    split: str
    index: int
    count: int


def parse_shard_name(name: str) -> ShardName | None:
    """Parse a shard file name; None when ``name`` is not one."""
    m = SHARD_NAME_RE.match(name)
    if m is None:
        return None
    return ShardName(m["dataset"], m["kind"] or "samples", m["split"], int(m["index"]), int(m["count"]))


def sha256_file(path: str | Path, *, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _fixed_bytes(value: str, size: int, field: str, sample_id: str) -> bytes:
    raw = str(value).encode("utf-8")
    if len(raw) > size:
        raise InputError(f"meta field {field} is {len(raw)} bytes long, the schema allows {size}: {value!r}",
                         sample_id=sample_id, stage="write")
    return raw


def encode_meta(rows: Sequence[Mapping[str, Any]], kind: str = "samples") -> np.ndarray:
    """Pack per-sample dicts into the ``meta`` structured array of ``kind``.

    Missing numeric fields take their "not applicable" value (NaN for ``recist_px``, -1 for
    ``n_readers``/``lesion_type`` and, for volumes, ``key_z``; 1.0 for ``scale`` (every axis of a
    volume), 0 for ``origin_px``). String fields longer than the schema allows raise
    :class:`InputError` naming the field and the sample.
    """
    _, dtype = layout(kind)
    out = np.zeros(len(rows), dtype=dtype)
    if kind in LABELLED_KINDS:
        out["recist_px"] = np.nan
        out["n_readers"] = -1
        out["lesion_type"] = -1
        out["scale"] = 1.0
    if kind == "volumes":
        out["key_z"] = -1
    for i, row in enumerate(rows):
        sid = str(row["sample_id"])
        for name in dtype.names:
            if name not in row or row[name] is None:
                continue
            if dtype[name].kind == "S":
                out[name][i] = _fixed_bytes(row[name], dtype[name].itemsize, name, sid)
            else:
                try:
                    out[name][i] = row[name]
                except (TypeError, ValueError):
                    raise InputError(f"meta field {name} must be a {dtype[name].base} of shape {dtype[name].shape} "
                                     f"in a {kind} shard, got {row[name]!r}", sample_id=sid, stage="write") from None
    return out


def decode_meta_row(row: np.void) -> dict[str, Any]:
    """One ``meta`` row as a dict: strings decoded, arrays as float32/int arrays, scalars as Python."""
    out = {}
    for name in row.dtype.names:
        value = row[name]
        if row.dtype[name].kind == "S":
            out[name] = bytes(value).decode("utf-8")
        elif np.ndim(value):
            out[name] = np.array(value)
        else:
            out[name] = value.item()
    return out


def write_shard(path: str | Path, *, arrays: Mapping[str, np.ndarray], meta: np.ndarray,
                attrs: Mapping[str, Any], kind: str = "samples") -> str:
    """Write one shard atomically and return its SHA-256.

    Parameters
    ----------
    path : final file name (the folder must exist).
    arrays : the arrays of ``kind`` (see :func:`layout`), (N, H, W) for samples and slices,
        (N, Z, H, W) in (z, row, col) for volumes, all of one shape, cast to the schema dtypes;
        N may be 0 (every planned sample rejected). Sample and volume shards may add any of
        :func:`optional_arrays` (``true_fraction``: finite, in [0, 1], else :class:`InputError`).
    meta : structured array of the kind's meta dtype, length N (see :func:`encode_meta`).
    attrs : root attributes (strings, ints, floats); ``schema_version``, ``kind`` and
        ``n_samples`` are set here.

    Each array is chunked one sample (one crop, one slice, one volume) per chunk, gzip level 4 +
    shuffle, ``track_times=False``. Only the structure is checked here (names, dtypes of the meta,
    shapes); the value rules are in :func:`check_shard` and :func:`check_shard_values`.
    """
    path = Path(path)
    specs, meta_dtype = layout(kind)
    ndim = SPATIAL_NDIM[kind]
    optional = optional_arrays(kind)
    if not set(specs) <= set(arrays) or not set(arrays) <= set(specs) | set(optional):
        extra = f" (optionally {sorted(optional)})" if optional else ""
        raise InputError(f"{kind} shard arrays must be {sorted(specs)}{extra}, got {sorted(arrays)}")
    specs = {**specs, **{k: v for k, v in optional.items() if k in arrays}}
    if "true_fraction" in arrays:
        truth = np.asarray(arrays["true_fraction"])
        if truth.size and not (np.isfinite(truth).all() and truth.min() >= 0.0 and truth.max() <= 1.0):
            raise InputError("true_fraction must be finite and in [0, 1]")
    meta = np.asarray(meta)
    if meta.dtype != meta_dtype:
        raise InputError(f"meta dtype must be the schema's {kind} meta dtype, got {meta.dtype}")
    n = meta.shape[0]
    shapes = {name: np.shape(arr) for name, arr in arrays.items()}
    hw = shapes["image_hu"][1:]  # the spatial shape: (H, W), or (Z, H, W) for volumes
    axes = "(N, Z, H, W) with Z, H, W" if ndim == 3 else "(N, H, W) with H, W"
    for name, shape in shapes.items():
        if len(shape) != 1 + ndim or shape[0] != n or shape[1:] != hw:
            raise InputError(f"array {name} has shape {shape}, expected ({n}, *{hw}) like image_hu and meta, "
                             f"{axes} >= 1")
    if len(hw) != ndim or min(hw) < 1:
        raise InputError(f"arrays must be {axes} >= 1, got {shapes['image_hu']}")
    all_attrs = dict(attrs)
    all_attrs.update(schema_version=SCHEMA_VERSION, kind=kind, n_samples=n)

    with atomic.replacing(path) as tmp:
        # rdcc_nbytes=0: no chunk cache, so every chunk is compressed and placed in the file during
        # its write call, in index order. With a cache, chunks reach the file when the dataset
        # handle is closed, i.e. when Python happens to drop it, and the file layout (not the
        # content) then depends on the garbage collector (it differed inside dask workers).
        with h5py.File(tmp, "w", libver=LIBVER, track_order=False, rdcc_nbytes=0) as f:
            for key in sorted(all_attrs):
                f.attrs[key] = _attr_value(all_attrs[key])
            for name in sorted(specs):
                ds = f.create_dataset(name, data=np.asarray(arrays[name]).astype(specs[name], copy=False),
                                      chunks=(1, *hw), maxshape=(None, *hw), compression="gzip",
                                      compression_opts=GZIP_LEVEL, shuffle=True, track_times=False)
                ds.flush()
            # Schema 2: one (N, ...) dataset per meta field, in the dtype's field order.
            for name in meta_dtype.names:
                column = meta_column_to_disk(meta, name)
                ds = f.create_dataset(name, data=column, chunks=(1, *column.shape[1:]),
                                      maxshape=(None, *column.shape[1:]), compression="gzip",
                                      compression_opts=GZIP_LEVEL, shuffle=True, track_times=False)
                ds.flush()
            del ds
        digest = sha256_file(tmp)
    return digest


def meta_column_to_disk(meta: np.ndarray, name: str) -> np.ndarray:
    """Field ``name`` of a meta table as schema 2 stores it: strings as a variable-length UTF-8
    array (h5py's object-backed ``string_dtype``), numbers as the field's dtype, shape (N, ...)."""
    field = meta.dtype[name]
    if field.kind == "S":
        return np.array([bytes(v).decode("utf-8") for v in meta[name]], dtype=VLEN_STR).reshape(len(meta))
    return np.ascontiguousarray(meta[name])


def _attr_value(value):
    if isinstance(value, (bool, np.bool_)):
        return np.int8(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"unsupported shard attribute value {value!r}")  # a bug in the caller


class Shard:
    """An open shard of any kind (read-only). Use as a context manager or call :meth:`close`.

    ``attrs`` holds the root attributes (strings decoded); ``meta`` the whole meta table;
    ``sample(i)`` one sample's arrays ((H, W), or (Z, H, W) for a volume shard) and decoded meta.
    Opening checks nothing beyond "a readable HDF5 file": run :func:`check_shard` (or
    :func:`inspect_shard`) first on files of unknown origin.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"shard not found: {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
            self.attrs = {k: _decode_attr(v) for k, v in self._file.attrs.items()}
        except (OSError, RuntimeError, KeyError, ValueError) as exc:  # h5py's errors on a damaged file
            if hasattr(self, "_file"):
                self._file.close()
            raise SourceError(f"{self.path} is not a readable HDF5 shard ({exc})") from None

    @property
    def kind(self) -> str:
        return str(self.attrs.get("kind", "samples"))

    @property
    def n_samples(self) -> int:
        return int(self._file["image_hu"].shape[0]) if "image_hu" in self._file else 0

    def __len__(self) -> int:
        return self.n_samples

    @property
    def file(self) -> h5py.File:
        return self._file

    @property
    def has_truth(self) -> bool:
        """Whether the shard carries ``true_fraction`` (schema >= 3, phantom sources only)."""
        return "true_fraction" in self._file

    @property
    def schema_version(self) -> int | None:
        return file_schema_version(self._file)

    @property
    def meta(self) -> np.ndarray:
        """The whole meta table as a structured array of the kind's meta dtype (either version)."""
        return read_meta_table(self._file)

    def meta_column(self, name: str) -> np.ndarray:
        """One meta field for every sample (strings decoded to ``str``), shape (N, ...)."""
        return read_meta_column(self._file, name)

    @property
    def sample_ids(self) -> list[str]:
        return [str(s) for s in self.meta_column("sample_id")]

    def sample(self, i: int) -> dict[str, Any]:
        """Arrays (``image_hu``, and for sample and volume shards ``soft_mask``, ``binary_mask``,
        ``trimap``, plus ``true_fraction`` when the shard carries it) and meta fields of sample
        ``i`` (negative indexes count from the end). A volume's arrays are (Z, H, W) and its
        ``spacing_mm``, ``origin_px``, ``scale`` (3,) in (z, row, col), ``key_z`` an int."""
        n = self.n_samples
        if not -n <= i < n:
            raise InputError(f"sample index {i} out of range for {self.path.name} with {n} samples")
        i = i % n
        specs, _ = layout(self.kind)
        names = list(specs) + [k for k in optional_arrays(self.kind) if k in self._file]
        out = {name: self._file[name][i] for name in names}
        out.update(read_meta_row(self._file, i))
        return out

    def rejects(self) -> list[dict[str, str]]:
        """The samples planned for this shard that could not be built (``rejects_json``)."""
        return json.loads(self.attrs.get("rejects_json", "[]"))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Shard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode_attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- version-independent meta access on an open h5py.File (Shard and the trainer's lazy reader) ---

def file_schema_version(fh: h5py.File) -> int | None:
    """The ``schema_version`` root attribute as an int (None when absent or not an integer)."""
    try:
        return int(fh.attrs["schema_version"])
    except (KeyError, TypeError, ValueError):
        return None


def _kind_of(fh: h5py.File) -> str:
    return str(_decode_attr(fh.attrs.get("kind", "samples")))


def read_meta_column(fh: h5py.File, name: str, index: int | slice = slice(None)):
    """Meta field ``name`` of an open shard of either schema version.

    Version 1 reads the field of the compound ``meta`` table, version 2 the field's own dataset.
    Strings come back decoded (``str``; an array of ``str`` for a slice), numbers as stored.
    Raises ``KeyError`` when the field is absent.
    """
    if file_schema_version(fh) == 1:
        values = fh["meta"][index][name] if isinstance(index, int) else fh["meta"][name][index]
        if values.dtype.kind == "S":
            return (bytes(values).decode("utf-8") if isinstance(index, int)
                    else np.array([bytes(v).decode("utf-8") for v in values], dtype=object))
        return values
    ds = fh[name]
    if h5py.check_string_dtype(ds.dtype):
        values = ds.asstr()[index]
        return str(values) if isinstance(index, int) else np.asarray(values, dtype=object)
    return ds[index]


def meta_problem(fh: h5py.File, n: int) -> str | None:
    """A cheap check that an open shard holds every meta field of its kind for ``n`` samples, in
    its version's layout; the problem as a sentence, or None. (:func:`check_shard` checks more.)"""
    try:
        _, meta_dtype = layout(_kind_of(fh))
    except InputError as exc:
        return str(exc)
    if file_schema_version(fh) == 1:
        if "meta" not in fh or not isinstance(fh["meta"], h5py.Dataset) or fh["meta"].dtype.names is None:
            return "lacks the compound dataset 'meta' (schema version 1)"
        missing = [k for k in meta_dtype.names if k not in fh["meta"].dtype.names]
        if missing:
            return f"meta lacks fields {missing}"
        if fh["meta"].shape != (n,):
            return f"meta has shape {fh['meta'].shape}, expected ({n},)"
        return None
    missing = [k for k in meta_dtype.names if k not in fh or not isinstance(fh[k], h5py.Dataset)]
    if missing:
        return f"lacks meta datasets {missing} (schema version 2: one dataset per field)"
    for k in meta_dtype.names:
        if fh[k].shape[:1] != (n,):
            return f"meta dataset {k} has shape {fh[k].shape}, expected ({n}, ...)"
    return None


def read_meta_row(fh: h5py.File, i: int) -> dict[str, Any]:
    """Every meta field of sample ``i`` as a dict (strings decoded, arrays as numpy, scalars as Python)."""
    _, meta_dtype = layout(_kind_of(fh))
    if file_schema_version(fh) == 1:
        return decode_meta_row(fh["meta"][i])
    out: dict[str, Any] = {}
    for name in meta_dtype.names:
        value = read_meta_column(fh, name, i)
        out[name] = value if isinstance(value, str) else (np.array(value) if np.ndim(value) else value.item())
    return out


def read_meta_table(fh: h5py.File) -> np.ndarray:
    """The meta table of an open shard as a structured array of its kind's meta dtype."""
    _, meta_dtype = layout(_kind_of(fh))
    if file_schema_version(fh) == 1:
        return fh["meta"][()]
    n = fh["image_hu"].shape[0]
    out = np.zeros(n, dtype=meta_dtype)
    for name in meta_dtype.names:
        column = read_meta_column(fh, name)
        out[name] = [v.encode("utf-8") for v in column] if meta_dtype[name].kind == "S" else column
    return out


def open_shard(path: str | Path) -> Shard:
    """Open a shard for reading (raises :class:`SourceError` when missing or not HDF5)."""
    return Shard(path)


def read_sample(path: str | Path, i: int) -> dict[str, Any]:
    """Read sample ``i`` of the shard at ``path`` (see :meth:`Shard.sample`)."""
    with open_shard(path) as shard:
        return shard.sample(i)


def check_shard(path: str | Path) -> list[str]:
    """Check a shard against the schema; return a list of problems (empty when it conforms).

    Checks: required root attributes and a readable ``schema_version`` (1, 2 or 3); a known
    ``kind`` (``volumes`` only in schema >= 3); every array present with the schema dtype, shape
    (N, H, W) ((N, Z, H, W) for volumes) and chunking (one sample per chunk, gzip + shuffle); the
    meta fields (version 1: the compound ``meta`` dtype and length; version 2: one (N, ...) dataset
    per field, strings variable-length UTF-8 within the schema's byte lengths, chunked like the
    arrays); ``n_samples``; every row's ``split`` equal to the shard's; value domains of sample and
    volume shards (trimap in {0, 128, 255}, binary mask in {0, 1}, Soft Mask finite in [0, 1]);
    unique sample ids. Schema 3: the optional ``true_fraction`` (sample and volume shards) float32,
    shaped like ``image_hu``, chunked like it, finite and in [0, 1]; a version 1 or 2 shard must
    not hold it. Arrays are read a block of samples at a time (a volume shard never whole).
    """
    path = Path(path)
    try:
        shard = open_shard(path)
    except SourceError as exc:
        return [str(exc)]
    name = path.name
    with shard:
        try:
            return _check_open_shard(shard, name)
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            # h5py raises OSError on a corrupted chunk or header (e.g. a bad checksum)
            return [f"{name}: unreadable ({type(exc).__name__}: {exc})"]


#: Elements read at once by the checks (16 Mi: a whole 2-D shard of 4096 crops of 64x64, or 37
#: volume crops of 48x96x96 float32 = 64 MiB), so that checking a volume shard never loads it whole.
_BLOCK_ELEMENTS = 1 << 24


def _blocks(ds: h5py.Dataset):
    """The (N, ...) dataset ``ds`` as successive blocks of whole samples (at least one per block)."""
    per_sample = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_ELEMENTS // per_sample)
    for start in range(0, ds.shape[0], step):
        yield ds[start:start + step]


def _in_unit_interval(values: np.ndarray) -> bool:
    return bool(values.size == 0 or (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0))


def _check_open_shard(shard: Shard, name: str) -> list[str]:
    problems: list[str] = []
    f = shard.file
    missing = [k for k in REQUIRED_ATTRS if k not in shard.attrs]
    if missing:
        problems.append(f"{name}: missing root attributes {missing}")
    version = shard.attrs.get("schema_version")
    if version not in READABLE_VERSIONS:
        problems.append(f"{name}: schema_version {version!r}, expected one of {list(READABLE_VERSIONS)}")
        return problems
    try:
        specs, meta_dtype = layout(shard.kind)
    except InputError:
        return problems + [f"{name}: unknown kind {shard.kind!r}"]
    if shard.kind == "volumes" and version < VOLUMES_SINCE_VERSION:
        return problems + [f"{name}: kind 'volumes' in schema_version {version} (volume shards are schema "
                           f">= {VOLUMES_SINCE_VERSION})"]
    meta_names = {"meta"} if version == 1 else set(meta_dtype.names)
    expected = set(specs) | meta_names
    if version >= TRUTH_SINCE_VERSION:  # optional arrays: checked like the others when present
        specs = {**specs, **{k: v for k, v in optional_arrays(shard.kind).items() if k in f}}
        expected |= set(specs)
    if set(f.keys()) != expected:
        problems.append(f"{name}: datasets {sorted(f.keys())}, expected {sorted(expected)}")
        return problems
    n = f["image_hu"].shape[0]
    if version == 1:
        if f["meta"].dtype != meta_dtype or f["meta"].shape != (n,):
            problems.append(f"{name}: meta dtype {f['meta'].dtype} or shape {f['meta'].shape} differs from the schema")
            return problems
    else:
        for key in meta_dtype.names:
            ds, field = f[key], meta_dtype[key]
            want_shape = (n, *field.shape)
            if field.kind == "S":
                info = h5py.check_string_dtype(ds.dtype)
                if info is None or info.length is not None or info.encoding != "utf-8":
                    problems.append(f"{name}: {key} dtype {ds.dtype}, expected variable-length UTF-8 strings")
            elif ds.dtype != field.base:
                problems.append(f"{name}: {key} dtype {ds.dtype}, expected {field.base}")
            if ds.shape != want_shape:
                problems.append(f"{name}: {key} shape {ds.shape}, expected {want_shape}")
            elif ds.chunks != (1, *field.shape) or ds.compression != "gzip" or not ds.shuffle:
                problems.append(f"{name}: {key} is not chunked one sample per chunk with gzip + shuffle")
    hw = f["image_hu"].shape[1:]  # (H, W), or (Z, H, W) for volumes
    ndim = SPATIAL_NDIM[shard.kind]
    axes = "Z, H, W" if ndim == 3 else "H, W"
    for key, dtype in specs.items():
        ds = f[key]
        if ds.dtype != dtype:
            problems.append(f"{name}: {key} dtype {ds.dtype}, expected {dtype}")
        if ds.shape != (n, *hw) or len(hw) != ndim:
            problems.append(f"{name}: {key} shape {ds.shape}, expected ({n}, {axes}) like image_hu")
        if ds.chunks != (1, *hw) or ds.compression != "gzip" or not ds.shuffle:
            problems.append(f"{name}: {key} is not chunked one sample per chunk with gzip + shuffle")
    if shard.attrs.get("n_samples") != n:
        problems.append(f"{name}: n_samples attribute {shard.attrs.get('n_samples')} but {n} rows")
    if problems:
        return problems
    split = str(shard.attrs.get("split"))
    bad_split = sorted({s for s in shard.meta_column("split") if s != split})
    if bad_split:
        problems.append(f"{name}: meta rows with split {bad_split} in a {split!r} shard")
    if len(set(shard.meta_column("sample_id"))) != n:
        problems.append(f"{name}: duplicate sample ids")
    if version >= 2:
        too_long = [f"{key} of {sid}" for key in meta_dtype.names if meta_dtype[key].kind == "S"
                    for sid, v in zip(shard.meta_column("sample_id"), shard.meta_column(key))
                    if len(v.encode("utf-8")) > meta_dtype[key].itemsize]
        if too_long:
            problems.append(f"{name}: strings longer than the schema allows: {too_long[:3]}")
    if shard.kind in LABELLED_KINDS and n:
        if not all(np.isin(block, (0, 128, 255)).all() for block in _blocks(f["trimap"])):
            problems.append(f"{name}: trimap values outside {{0, 128, 255}}")
        if not all(np.isin(block, (0, 1)).all() for block in _blocks(f["binary_mask"])):
            problems.append(f"{name}: binary_mask values outside {{0, 1}}")
        if not all(_in_unit_interval(block) for block in _blocks(f["soft_mask"])):
            problems.append(f"{name}: soft_mask values outside [0, 1] or not finite")
        if "true_fraction" in specs:
            if not all(_in_unit_interval(block) for block in _blocks(f["true_fraction"])):
                problems.append(f"{name}: true_fraction values outside [0, 1] or not finite")
    try:
        json.loads(shard.attrs.get("recipe_json", ""))
        json.loads(shard.attrs.get("rejects_json", ""))
    except (json.JSONDecodeError, TypeError):
        problems.append(f"{name}: recipe_json/rejects_json is not valid JSON")
    return problems


# ============================================================================================
# Readers for training: validation of one file, and a lazy, per-worker reader of many
# ============================================================================================
class ShardReadError(SourceError):
    """A shard is missing, unreadable, of another schema version or kind, or does not hold the
    schema's datasets (the message names the file; for a sample, its index)."""


@dataclass(frozen=True)
class ShardInfo:
    """What :func:`inspect_shard` found in one valid shard.

    ``height_px`` and ``width_px`` are the arrays' H and W; ``depth_px`` is Z for a volume shard
    and None for the 2-D kinds.
    """

    path: Path
    kind: str
    split: str
    n_samples: int
    height_px: int
    width_px: int
    dataset: str
    #: The shard carries ``true_fraction`` (schema >= 3; phantom sources).
    has_truth: bool = False
    #: Slices per crop (Z) of a volume shard; None for samples and slices.
    depth_px: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape of one sample: (H, W), or (Z, H, W) for a volume shard."""
        hw = (self.height_px, self.width_px)
        return hw if self.depth_px is None else (self.depth_px, *hw)


def open_for_reading(path: str | Path) -> h5py.File:
    """Open a shard read-only without HDF5 file locking.

    Every reader that may hold several handles on one file in one process (a dataset's workers,
    the patient lists of :mod:`dsnet_trainer.provenance`) must open it this way: HDF5 refuses a
    second handle with other locking flags. Raises ``OSError`` for a missing or non-HDF5 file.
    """
    return h5py.File(path, "r", locking=False)


def root_attrs(fh: h5py.File) -> dict[str, Any]:
    """The root attributes of an open shard (strings decoded, numpy scalars as Python)."""
    return {k: _decode_attr(v) for k, v in fh.attrs.items()}


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


_KIND_WORDS = {"samples": "sample crops for DSNet", "slices": "CT slices for the SR teacher",
               "volumes": "3-D volume crops"}


def inspect_shard(path: str | Path, *, kind: str | None = None, error: type[Exception] = ShardReadError) -> ShardInfo:
    """Open ``path``, validate it against FORMAT.md without reading a pixel, describe it, close it.

    Checks: ``schema_version`` one of :data:`READABLE_VERSIONS`; ``kind`` one of :data:`KINDS`
    (``volumes`` only in schema >= 3; equal to ``kind`` when given); every array of the kind
    present, (N, H, W) ((N, Z, H, W) for volumes), of the schema dtype and one shape; every meta
    field present for N samples in the version's layout; ``n_samples`` equal to N.
    :func:`check_shard` checks more (value domains, chunking).

    Parameters
    ----------
    kind : {"samples", "slices", "volumes"} or None
        Required ``kind`` attribute (None accepts any).
    error : exception type
        Raised with the message (default :class:`ShardReadError`; a reader of another package
        passes its own).

    Raises
    ------
    ShardReadError
        Missing or unreadable file, another schema version or ``kind``, a missing dataset, a wrong
        dtype or shape, meta fields of another length. Names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"shard not found: {path}")
    try:
        fh = open_for_reading(path)
    except OSError as exc:
        raise error(f"cannot open shard {path}: not a readable HDF5 file ({exc})") from exc
    with fh:
        attrs = fh.attrs
        if "schema_version" not in attrs:
            raise error(f"shard {path} has no schema_version attribute (not a Soft Mask shard)")
        try:
            version = int(attrs["schema_version"])
        except (TypeError, ValueError) as exc:
            raise error(f"shard {path}: schema_version {attrs['schema_version']!r} is not an integer") from exc
        if version not in READABLE_VERSIONS:
            raise error(f"shard {path} has schema_version {version}; this toolkit reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))} (rebuild the dataset with this toolkit's builder)")
        found_kind = _attr_str(attrs.get("kind", "samples"))
        if found_kind not in KINDS:
            raise error(f"shard {path} has unknown kind {found_kind!r}")
        if found_kind == "volumes" and version < VOLUMES_SINCE_VERSION:
            raise error(f"shard {path} has kind 'volumes' in schema_version {version} "
                        f"(volume shards are schema >= {VOLUMES_SINCE_VERSION})")
        if kind is not None and found_kind != kind:
            raise error(f"shard {path} holds {found_kind!r}, expected {kind!r} ({_KIND_WORDS.get(kind, kind)})")
        arrays, _ = layout(found_kind)
        ndim = SPATIAL_NDIM[found_kind]
        shape = None
        for name, dtype in arrays.items():
            if name not in fh or not isinstance(fh[name], h5py.Dataset):
                raise error(f"shard {path} lacks dataset {name!r}")
            ds = fh[name]
            if ds.dtype != dtype:
                raise error(f"shard {path}: {name} has dtype {ds.dtype}, expected {dtype}")
            if ds.ndim != 1 + ndim:
                raise error(f"shard {path}: {name} must be {'(N, Z, H, W)' if ndim == 3 else '(N, H, W)'}, "
                            f"got shape {ds.shape}")
            if shape is None:
                shape = ds.shape
            elif ds.shape != shape:
                raise error(f"shard {path}: {name} shape {ds.shape} differs from image_hu {shape}")
        has_truth = False
        for name, dtype in optional_arrays(found_kind).items():
            if name not in fh:
                continue
            ds = fh[name]
            if version < TRUTH_SINCE_VERSION or not isinstance(ds, h5py.Dataset):
                raise error(f"shard {path}: {name} is not allowed in schema version {version}")
            if ds.dtype != dtype or ds.shape != shape:
                raise error(f"shard {path}: {name} has dtype {ds.dtype} and shape {ds.shape}, "
                            f"expected {dtype} and {shape} like image_hu")
            has_truth = name == "true_fraction" or has_truth
        problem = meta_problem(fh, shape[0])
        if problem:
            raise error(f"shard {path}: {problem}")
        if "n_samples" in attrs and int(attrs["n_samples"]) != shape[0]:
            raise error(f"shard {path}: n_samples attribute {int(attrs['n_samples'])} != {shape[0]} stored")
        if "split" in attrs:
            split = _attr_str(attrs["split"])
        elif shape[0]:
            split = read_meta_column(fh, "split", 0)
        else:
            split = ""
        return ShardInfo(path=path, kind=found_kind, split=split, n_samples=int(shape[0]),
                         height_px=int(shape[-2]), width_px=int(shape[-1]), dataset=_attr_str(attrs.get("dataset", "")),
                         has_truth=has_truth, depth_px=int(shape[1]) if ndim == 3 else None)


class ShardReader:
    """Samples of several shards under one global index, read lazily (a per-worker reader).

    Global index ``i`` is sample ``i - offset[s]`` of shard ``s`` (shards in the given order).
    Each process opens a shard on its first read of it (:func:`open_for_reading`) and keeps the
    handle: handles are never inherited through ``fork`` (a changed pid drops them) nor pickled
    for ``spawn``/``forkserver`` (:meth:`__getstate__` leaves them out), so DataLoader workers,
    persistent or not, each hold their own. A read error raises :attr:`error` naming the file and
    the sample. Any kind: a volume shard's ``read`` gives (Z, H, W) arrays (its ``region`` three
    slices in (z, row, col)); do not mix kinds in one reader (nothing here checks it).

    Parameters
    ----------
    shards : sequence of ShardInfo
        Validated shards (:func:`inspect_shard`).
    """

    #: Exception type raised (with the message) for an unreadable file or sample; a reader of
    #: another package sets its own in a subclass.
    error: type[Exception] = ShardReadError

    def __init__(self, shards: Sequence[ShardInfo]):
        self.shards = list(shards)
        self.offsets = np.cumsum([0] + [s.n_samples for s in self.shards])
        self._files: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}
        self._ids: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_datasets"], state["_ids"] = {}, {}, {}
        return state

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard position, index inside it)`` of global ``index`` (IndexError outside)."""
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return s, int(index - self.offsets[s])

    def file(self, s: int) -> h5py.File:
        """This process's open handle of shard ``s`` (opened on first use)."""
        if self._pid != os.getpid():  # inherited through fork: never reuse the parent's handles
            self._files, self._datasets, self._ids = {}, {}, {}
            self._pid = os.getpid()
        fh = self._files.get(s)
        if fh is None:
            path = self.shards[s].path
            try:
                fh = open_for_reading(path)
            except OSError as exc:
                raise self.error(f"cannot open shard {path}: {exc}") from exc
            self._files[s] = fh
        return fh

    def read(self, s: int, local: int, name: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Array ``name`` of sample ``local`` of shard ``s``: (H, W), or (Z, H, W) in a volume shard;
        only its ``region`` when given ((row, col) slices, (z, row, col) for volumes)."""
        try:
            fh = self.file(s)
            ds = self._datasets.get((s, name))
            if ds is None:  # h5py's name lookup costs about as much as reading a 64x64 crop
                ds = self._datasets[(s, name)] = fh[name]
            return ds[local] if region is None else ds[(local, *region)]
        except (OSError, KeyError, ValueError) as exc:
            raise self.error(f"shard {self.shards[s].path}: cannot read {name}[{local}] ({exc})") from exc

    def meta(self, s: int, local: int) -> dict[str, Any]:
        """Every meta field of one sample (strings decoded), either schema version."""
        try:
            return read_meta_row(self.file(s), local)
        except (OSError, KeyError, ValueError) as exc:
            raise self.error(f"shard {self.shards[s].path}: cannot read meta[{local}] ({exc})") from exc

    def sample_id(self, s: int, local: int) -> str:
        """``sample_id`` of one sample (the column is read once per shard and process)."""
        ids = self._ids.get(s)
        if ids is None:
            try:
                ids = self._ids[s] = read_meta_column(self.file(s), "sample_id")
            except (OSError, KeyError, ValueError) as exc:
                raise self.error(f"shard {self.shards[s].path}: cannot read meta ({exc})") from exc
        return _decode_id(ids[local])

    def close(self) -> None:
        """Close this process's handles (they reopen on the next read)."""
        for fh in self._files.values():
            try:
                fh.close()
            except Exception:  # closing during interpreter shutdown may fail harmlessly
                pass
        self._files, self._datasets, self._ids = {}, {}, {}


def _decode_id(b: Any) -> str:
    return b.decode("utf-8", "replace").rstrip("\x00") if isinstance(b, bytes) else str(b)


# ============================================================================================
# Value checks beyond the schema (issue 23): what `softmask verify` adds to the hashes
# ============================================================================================
#: Sources whose ``binary_mask`` is the binarised Soft Mask (alpha >= 0.5): RECIST priors.
RECIST_SOURCES = ("deeplesion",)
_HALF_TOL = 1e-6  # alpha this close to 0.5 may round either way between float64 and float32


def check_shard_values(path: str | Path) -> list[str]:
    """Problems with the *values* of a schema-valid shard (call :func:`check_shard` first): each
    names the file and the first sample ids concerned; empty when none.

    Rules: ``spacing_mm`` finite and > 0 (every kind; every axis); for samples and volumes,
    ``scale`` finite in (0, 1] (crops are never up-scaled; per axis for volumes), ``origin_px``
    finite, ``recist_px`` finite or all NaN (no RECIST), ``n_readers`` >= -1 (-1: not applicable);
    for volumes also ``key_z`` in [0, Z) when ``recist_px`` is given and exactly -1 when it is
    not; ``binary_mask`` only where the trimap is not background (0), never all zero under a Soft
    Mask that reaches 0.5, and, for RECIST sources (the recipe's ``source`` in
    :data:`RECIST_SOURCES`), equal to ``soft_mask >= 0.5`` (up to alpha within 1e-6 of 0.5). The
    mask rules are checked per sample (a volume shard is never read whole).
    """
    path = Path(path)
    name = path.name
    problems: list[str] = []

    def flag(what: str, ids) -> None:
        ids = list(ids)
        if ids:
            problems.append(f"{name}: {what}: {ids[:3]}{' ...' if len(ids) > 3 else ''}")

    with open_shard(path) as shard:
        ids = np.asarray(shard.sample_ids, dtype=object)
        n = shard.n_samples
        if not n:
            return problems
        spacing = np.asarray(shard.meta_column("spacing_mm"), dtype=np.float64).reshape(n, -1)
        flag("spacing_mm not finite or not > 0", ids[~(np.isfinite(spacing) & (spacing > 0)).all(axis=1)])
        if shard.kind not in LABELLED_KINDS:
            return problems
        scale = np.asarray(shard.meta_column("scale"), dtype=np.float64).reshape(n, -1)
        flag("scale not finite or outside (0, 1]", ids[~(np.isfinite(scale) & (scale > 0) & (scale <= 1)).all(axis=1)])
        origin = np.asarray(shard.meta_column("origin_px"), dtype=np.float64).reshape(n, -1)
        flag("origin_px not finite", ids[~np.isfinite(origin).all(axis=1)])
        recist = np.asarray(shard.meta_column("recist_px"), dtype=np.float64).reshape(n, -1)
        partial = ~(np.isfinite(recist).all(axis=1) | np.isnan(recist).all(axis=1))
        flag("recist_px partly NaN or infinite", ids[partial])
        if shard.kind == "volumes":
            depth = shard.file["image_hu"].shape[1]
            key_z = np.asarray(shard.meta_column("key_z"), dtype=np.int64)
            given = np.isfinite(recist).all(axis=1)
            off = given & ((key_z < 0) | (key_z >= depth))
            flag(f"key_z outside [0, {depth}) for a sample with recist_px", ids[off])
            flag("key_z is not -1 for a sample without recist_px", ids[~given & ~partial & (key_z != -1)])
        readers = np.asarray(shard.meta_column("n_readers"), dtype=np.int64)
        flag("n_readers < -1 (-1: not applicable)", ids[readers < -1])
        try:
            source = json.loads(shard.attrs.get("recipe_json", "")).get("source")
        except (json.JSONDecodeError, TypeError, AttributeError):
            source = None
        f = shard.file
        outside, empty, rule = [], [], []
        for i in range(n):
            binary = f["binary_mask"][i].astype(bool)
            alpha = f["soft_mask"][i]
            if (binary & (f["trimap"][i] == 0)).any():
                outside.append(ids[i])
            if not binary.any() and alpha.max() >= 0.5 + _HALF_TOL:
                empty.append(ids[i])
            if source in RECIST_SOURCES:
                differ = binary != (alpha >= 0.5)
                if (differ & (np.abs(alpha.astype(np.float64) - 0.5) > _HALF_TOL)).any():
                    rule.append(ids[i])
        flag("binary_mask set where the trimap is background", outside)
        flag("binary_mask all zero under a Soft Mask reaching 0.5", empty)
        flag("binary_mask differs from soft_mask >= 0.5 (the RECIST rule)", rule)
    return problems
