"""HDF5 shard I/O: the schema of ``docs/FORMAT.md`` (version 1), an atomic byte-reproducible writer
and a reader.

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

from .errors import InputError, SourceError

SCHEMA_VERSION = 1
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
            ds = f.create_dataset("meta", data=meta, chunks=(1,), maxshape=(None,), compression="gzip",
                                  compression_opts=GZIP_LEVEL, shuffle=True, track_times=False)
            ds.flush()
            del ds
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


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
    def meta(self) -> np.ndarray:
        return self._file["meta"][()]

    @property
    def sample_ids(self) -> list[str]:
        return [bytes(s).decode("utf-8") for s in self._file["meta"]["sample_id"]]

    def sample(self, i: int) -> dict[str, Any]:
        """Arrays (``image_hu``, and for sample shards ``soft_mask``, ``binary_mask``, ``trimap``)
        and meta fields of sample ``i`` (negative indexes count from the end)."""
        n = self.n_samples
        if not -n <= i < n:
            raise InputError(f"sample index {i} out of range for {self.path.name} with {n} samples")
        i = i % n
        specs, _ = layout(self.kind)
        out = {name: self._file[name][i] for name in specs}
        out.update(decode_meta_row(self._file["meta"][i]))
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


def open_shard(path: str | Path) -> Shard:
    """Open a shard for reading (raises :class:`SourceError` when missing or not HDF5)."""
    return Shard(path)


def read_sample(path: str | Path, i: int) -> dict[str, Any]:
    """Read sample ``i`` of the shard at ``path`` (see :meth:`Shard.sample`)."""
    with open_shard(path) as shard:
        return shard.sample(i)


def check_shard(path: str | Path) -> list[str]:
    """Check a shard against the schema; return a list of problems (empty when it conforms).

    Checks: required root attributes and ``schema_version``; every array present with the schema
    dtype, shape (N, H, W) and chunking (one sample per chunk, gzip + shuffle); ``meta`` dtype and
    length; ``n_samples``; every row's ``split`` equal to the shard's; value domains (trimap in
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
    if shard.attrs.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"{name}: schema_version {shard.attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    try:
        specs, meta_dtype = layout(shard.kind)
    except InputError:
        return problems + [f"{name}: unknown kind {shard.kind!r}"]
    expected = set(specs) | {"meta"}
    if set(f.keys()) != expected:
        problems.append(f"{name}: datasets {sorted(f.keys())}, expected {sorted(expected)}")
        return problems
    n = f["meta"].shape[0]
    if f["meta"].dtype != meta_dtype:
        problems.append(f"{name}: meta dtype {f['meta'].dtype} differs from the schema")
        return problems
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
    meta = f["meta"][()]
    split = str(shard.attrs.get("split"))
    bad_split = [s for s in np.unique(meta["split"]) if bytes(s).decode() != split]
    if bad_split:
        problems.append(f"{name}: meta rows with split {bad_split} in a {split!r} shard")
    if len(np.unique(meta["sample_id"])) != n:
        problems.append(f"{name}: duplicate sample ids")
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
