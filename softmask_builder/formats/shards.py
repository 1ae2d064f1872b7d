"""HDF5 shard I/O: the schema of ``docs/FORMAT.md`` (version 2; version 1 is still read), an atomic
byte-reproducible writer and a reader.

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
gives the same bytes (``tests/softmask_builder/test_shards.py`` checks it).

Atomicity: a shard is written to a hidden temporary name in the destination folder
(``.<name>.<pid>.tmp``) and then :func:`os.replace`-d onto its final name, so a killed build never
leaves a partial file under a final name.
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

from softmask_builder.errors import InputError, SourceError

SCHEMA_VERSION = 2
#: Versions :class:`Shard`, :func:`check_shard` and ``softmask verify`` read (the writer writes 2).
READABLE_VERSIONS = (1, 2)
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
SLICE_META_DTYPE = np.dtype([
    ("sample_id", "S64"),
    ("source_key", "S256"),
    ("patient", "S32"),
    ("split", "S8"),
    ("spacing_mm", "<f4", (2,)),
])
# name -> dtype of the (N, H, W) arrays of each shard kind
SAMPLE_ARRAYS = {"image_hu": np.dtype("<i2"), "soft_mask": np.dtype("<f4"), "binary_mask": np.dtype("u1"),
                 "trimap": np.dtype("u1")}
SLICE_ARRAYS = {"image_hu": np.dtype("<i2")}
REQUIRED_ATTRS = ("schema_version", "kind", "dataset", "dataset_version", "builder_version", "split",
                  "recipe_json", "recipe_sha256", "n_samples", "n_planned", "plan_sha256", "rejects_json")

SHARD_NAME_RE = re.compile(
    r"^(?P<dataset>[a-z0-9_]+)-(?:(?P<slices>slices)-)?(?P<split>train|val|test)"
    r"-(?P<index>\d{5})-of-(?P<count>\d{5})\.h5$")
TEMP_SUFFIX = ".tmp"
#: Schema 2 on-disk dtype of a string meta field (variable-length UTF-8).
VLEN_STR = h5py.string_dtype("utf-8")


def layout(kind: str) -> tuple[dict[str, np.dtype], np.dtype]:
    """The (N, H, W) arrays and the meta dtype of a shard ``kind`` ("samples" or "slices")."""
    if kind == "samples":
        return SAMPLE_ARRAYS, SAMPLE_META_DTYPE
    if kind == "slices":
        return SLICE_ARRAYS, SLICE_META_DTYPE
    raise InputError(f"kind must be 'samples' or 'slices', got {kind!r}")


def shard_name(dataset: str, split: str, index: int, count: int, *, kind: str = "samples") -> str:
    """``{dataset}-{split}-{i:05d}-of-{n:05d}.h5`` (``{dataset}-slices-...`` for slice shards)."""
    if not 0 <= index < count:
        raise InputError(f"shard index must be in [0, {count}), got {index}")
    middle = "slices-" if kind == "slices" else ""
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
    return ShardName(m["dataset"], "slices" if m["slices"] else "samples", m["split"], int(m["index"]),
                     int(m["count"]))


def temp_path(path: Path) -> Path:
    """The hidden temporary name a shard is written under before :func:`os.replace`."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


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
    ``n_readers``/``lesion_type``, 1.0 for ``scale``, 0 for ``origin_px``). String fields longer
    than the schema allows raise :class:`InputError` naming the field and the sample.
    """
    _, dtype = layout(kind)
    out = np.zeros(len(rows), dtype=dtype)
    if kind == "samples":
        out["recist_px"] = np.nan
        out["n_readers"] = -1
        out["lesion_type"] = -1
        out["scale"] = 1.0
    for i, row in enumerate(rows):
        sid = str(row["sample_id"])
        for name in dtype.names:
            if name not in row or row[name] is None:
                continue
            if dtype[name].kind == "S":
                out[name][i] = _fixed_bytes(row[name], dtype[name].itemsize, name, sid)
            else:
                out[name][i] = row[name]
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
    arrays : the (N, H, W) arrays of ``kind`` (see :func:`layout`), cast to the schema dtypes;
        N may be 0 (every planned sample rejected).
    meta : structured array of the kind's meta dtype, length N (see :func:`encode_meta`).
    attrs : root attributes (strings, ints, floats); ``schema_version``, ``kind`` and
        ``n_samples`` are set here.

    Each array is chunked one sample per chunk, gzip level 4 + shuffle, ``track_times=False``.
    """
    path = Path(path)
    specs, meta_dtype = layout(kind)
    if set(arrays) != set(specs):
        raise InputError(f"{kind} shard arrays must be {sorted(specs)}, got {sorted(arrays)}")
    meta = np.asarray(meta)
    if meta.dtype != meta_dtype:
        raise InputError(f"meta dtype must be the schema's {kind} meta dtype, got {meta.dtype}")
    n = meta.shape[0]
    shapes = {name: np.shape(arr) for name, arr in arrays.items()}
    hw = shapes["image_hu"][1:]
    for name, shape in shapes.items():
        if len(shape) != 3 or shape[0] != n or shape[1:] != hw:
            raise InputError(f"array {name} has shape {shape}, expected ({n}, *{hw}) like image_hu and meta")
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"arrays must be (N, H, W) with H, W >= 1, got {shapes['image_hu']}")
    all_attrs = dict(attrs)
    all_attrs.update(schema_version=SCHEMA_VERSION, kind=kind, n_samples=n)

    tmp = temp_path(path)
    try:
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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
    """An open shard (read-only). Use as a context manager or call :meth:`close`.

    ``attrs`` holds the root attributes (strings decoded); ``meta`` the whole meta table;
    ``sample(i)`` one sample's arrays and decoded meta.
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
        """Arrays (``image_hu``, and for sample shards ``soft_mask``, ``binary_mask``, ``trimap``)
        and meta fields of sample ``i`` (negative indexes count from the end)."""
        n = self.n_samples
        if not -n <= i < n:
            raise InputError(f"sample index {i} out of range for {self.path.name} with {n} samples")
        i = i % n
        specs, _ = layout(self.kind)
        out = {name: self._file[name][i] for name in specs}
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

    Checks: required root attributes and a readable ``schema_version`` (1 or 2); every array
    present with the schema dtype, shape (N, H, W) and chunking (one sample per chunk, gzip +
    shuffle); the meta fields (version 1: the compound ``meta`` dtype and length; version 2: one
    (N, ...) dataset per field, strings variable-length UTF-8 within the schema's byte lengths,
    chunked like the arrays); ``n_samples``; every row's ``split`` equal to the shard's; value domains (trimap in
    {0, 128, 255}, binary mask in {0, 1}, Soft Mask finite in [0, 1]); unique sample ids.
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
    meta_names = {"meta"} if version == 1 else set(meta_dtype.names)
    expected = set(specs) | meta_names
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
    hw = f["image_hu"].shape[1:]
    for key, dtype in specs.items():
        ds = f[key]
        if ds.dtype != dtype:
            problems.append(f"{name}: {key} dtype {ds.dtype}, expected {dtype}")
        if ds.shape != (n, *hw) or len(hw) != 2:
            problems.append(f"{name}: {key} shape {ds.shape}, expected ({n}, H, W)")
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
    if shard.kind == "samples" and n:
        trimap = f["trimap"][()]
        if not np.isin(trimap, (0, 128, 255)).all():
            problems.append(f"{name}: trimap values outside {{0, 128, 255}}")
        if not np.isin(f["binary_mask"][()], (0, 1)).all():
            problems.append(f"{name}: binary_mask values outside {{0, 1}}")
        alpha = f["soft_mask"][()]
        if not (np.isfinite(alpha).all() and alpha.min() >= 0.0 and alpha.max() <= 1.0):
            problems.append(f"{name}: soft_mask values outside [0, 1] or not finite")
    try:
        json.loads(shard.attrs.get("recipe_json", ""))
        json.loads(shard.attrs.get("rejects_json", ""))
    except (json.JSONDecodeError, TypeError):
        problems.append(f"{name}: recipe_json/rejects_json is not valid JSON")
    return problems
