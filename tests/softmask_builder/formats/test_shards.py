"""Shard I/O against docs/FORMAT.md: round trip, schema (dtypes, chunking, compression), byte
reproducibility, atomic writes, the schema checker."""

from __future__ import annotations

import hashlib
import os
import time

import h5py
import numpy as np
import pytest

from softmask_builder.errors import InputError, SourceError
from softmask_builder.formats.shards import (TEMP_SUFFIX, ShardInfo, ShardReader, ShardReadError, check_shard,
                                             encode_meta, inspect_shard, is_temp_name, open_shard, parse_shard_name,
                                             read_sample, shard_name, temp_path, write_shard)

# The schema as written in docs/FORMAT.md, restated here independently of the module's constants.
FORMAT_ARRAYS = {"image_hu": "<i2", "soft_mask": "<f4", "binary_mask": "|u1", "trimap": "|u1"}
# Version 1: the compound meta table.
FORMAT_META = [("sample_id", "S64"), ("source_key", "S256"), ("patient", "S32"), ("split", "S8"),
               ("spacing_mm", "<f4", (2,)), ("origin_px", "<f4", (2,)), ("scale", "<f4"),
               ("recist_px", "<f4", (4, 2)), ("n_readers", "<i2"), ("lesion_type", "<i2")]
# Version 2: one root dataset per field, (dtype or "str" for variable-length UTF-8, shape after N).
FORMAT_V2_META = {"sample_id": ("str", ()), "source_key": ("str", ()), "patient": ("str", ()), "split": ("str", ()),
                  "spacing_mm": ("<f4", (2,)), "origin_px": ("<f4", (2,)), "scale": ("<f4", ()),
                  "recist_px": ("<f4", (4, 2)), "n_readers": ("<i2", ()), "lesion_type": ("<i2", ())}
ATTRS = {"dataset": "toy", "dataset_version": "1.0", "builder_version": "0.1.0", "split": "train",
         "recipe_json": "{}", "recipe_sha256": "0" * 64, "n_planned": 3, "plan_sha256": "1" * 64,
         "rejects_json": "[]"}


def _samples(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "image_hu": rng.integers(-1024, 1500, (n, size, size)).astype(np.int16),
        "soft_mask": rng.random((n, size, size), dtype=np.float32),
        "binary_mask": rng.integers(0, 2, (n, size, size)).astype(np.uint8),
        "trimap": rng.choice(np.array([0, 128, 255], np.uint8), (n, size, size)),
    }
    rows = [{"sample_id": f"s{i}", "source_key": f"k/{i}.png", "patient": f"p{i // 2}", "split": "train",
             "spacing_mm": (0.7, 0.8), "origin_px": (10.0 + i, -3.0), "scale": 0.5,
             "recist_px": np.arange(8, dtype=np.float32).reshape(4, 2) + i, "n_readers": 4, "lesion_type": 5}
             for i in range(n)]
    return arrays, rows


def _write(path, n=3, **kw):
    arrays, rows = _samples(n, **kw)
    return write_shard(path, arrays=arrays, meta=encode_meta(rows), attrs=ATTRS), arrays, rows


def test_round_trip_and_schema(tmp_path):
    path = tmp_path / shard_name("toy", "train", 0, 1)
    digest, arrays, rows = _write(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    with h5py.File(path, "r") as f:
        for name, dtype in FORMAT_ARRAYS.items():
            ds = f[name]
            assert ds.dtype == np.dtype(dtype)
            assert ds.chunks == (1, 16, 16) and ds.compression == "gzip" and ds.compression_opts == 4 and ds.shuffle
            np.testing.assert_array_equal(ds[()], arrays[name])
        assert "meta" not in f
        assert set(f.keys()) == set(FORMAT_ARRAYS) | set(FORMAT_V2_META)
        for name, (dtype, shape) in FORMAT_V2_META.items():
            ds = f[name]
            assert ds.shape == (3, *shape) and ds.chunks == (1, *shape) and ds.compression == "gzip", name
            if dtype == "str":
                info = h5py.check_string_dtype(ds.dtype)
                assert info.encoding == "utf-8" and info.length is None, name
                assert ds.asstr()[()].tolist() == [row[name] for row in rows]
            else:
                assert ds.dtype == np.dtype(dtype), name
                np.testing.assert_allclose(ds[()], np.array([row[name] for row in rows], dtype=dtype), rtol=1e-6)
        assert f.attrs["schema_version"] == 3 and f.attrs["n_samples"] == 3 and f.attrs["kind"] == "samples"
    for i, row in enumerate(rows):
        sample = read_sample(path, i)
        for key in ("sample_id", "source_key", "patient", "split", "n_readers", "lesion_type"):
            assert sample[key] == row[key]
        np.testing.assert_allclose(sample["recist_px"], row["recist_px"])
        np.testing.assert_allclose(sample["spacing_mm"], row["spacing_mm"], rtol=1e-6)
        np.testing.assert_array_equal(sample["soft_mask"], arrays["soft_mask"][i])
    assert read_sample(path, -1)["sample_id"] == "s2"
    assert check_shard(path) == []


def write_v1_shard(path, arrays, rows, attrs):
    """A schema-1 shard written with raw h5py as docs/FORMAT.md (version 1) describes it."""
    meta = np.zeros(len(rows), dtype=np.dtype(FORMAT_META))
    for i, row in enumerate(rows):
        for name in meta.dtype.names:
            value = row[name]
            meta[name][i] = value.encode() if isinstance(value, str) else value
    h, w = arrays["image_hu"].shape[1:]
    with h5py.File(path, "w") as f:
        for name, dtype in FORMAT_ARRAYS.items():
            f.create_dataset(name, data=arrays[name].astype(dtype), chunks=(1, h, w), maxshape=(None, h, w),
                             compression="gzip", compression_opts=4, shuffle=True)
        f.create_dataset("meta", data=meta, chunks=(1,), maxshape=(None,), compression="gzip", shuffle=True)
        f.attrs.update({**attrs, "schema_version": 1, "kind": "samples", "n_samples": len(rows)})


def test_version_1_shards_are_still_read(tmp_path):
    arrays, rows = _samples(3)
    v1, v2 = tmp_path / "toy-train-00000-of-00002.h5", tmp_path / "toy-train-00001-of-00002.h5"
    write_v1_shard(v1, arrays, rows, ATTRS)
    write_shard(v2, arrays=arrays, meta=encode_meta(rows), attrs=ATTRS)
    assert check_shard(v1) == [] and check_shard(v2) == []
    with open_shard(v1) as old, open_shard(v2) as new:
        assert (old.schema_version, new.schema_version) == (1, 3)
        assert old.sample_ids == new.sample_ids == [r["sample_id"] for r in rows]
        assert old.meta.tobytes() == new.meta.tobytes()
        assert old.meta_column("patient").tolist() == [r["patient"] for r in rows]
        for i, row in enumerate(rows):
            a, b = old.sample(i), new.sample(i)
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a["source_key"] == row["source_key"] and a["n_readers"] == row["n_readers"]
    with h5py.File(v1, "r+") as f:
        f.attrs["schema_version"] = 4
    assert any("schema_version 4" in p for p in check_shard(v1))


def test_missing_meta_fields_take_not_applicable_values():
    meta = encode_meta([{"sample_id": "a", "source_key": "k", "patient": "p", "split": "val",
                         "spacing_mm": (1, 1)}])
    assert np.isnan(meta["recist_px"]).all()
    assert meta["n_readers"][0] == -1 and meta["lesion_type"][0] == -1 and meta["scale"][0] == 1.0


def test_bytes_do_not_depend_on_time(tmp_path):
    _write(tmp_path / "a.h5")
    # Control: HDF5 stamps object times at 1 s resolution; with track_times they would differ.
    with h5py.File(tmp_path / "ctl_a.h5", "w") as f:
        f.create_dataset("x", data=np.arange(4), track_times=True)
    time.sleep(1.1)
    _write(tmp_path / "b.h5")
    with h5py.File(tmp_path / "ctl_b.h5", "w") as f:
        f.create_dataset("x", data=np.arange(4), track_times=True)
    assert (tmp_path / "ctl_a.h5").read_bytes() != (tmp_path / "ctl_b.h5").read_bytes()
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_bytes_do_not_depend_on_when_python_drops_handles(tmp_path, monkeypatch):
    """Inside dask workers h5py dataset handles lived until the file closed, which once changed
    where HDF5 placed the chunks (same content, other bytes). Holding every handle must not matter."""
    _write(tmp_path / "plain.h5", size=64)
    held = []
    create = h5py.Group.create_dataset

    def create_and_hold(self, *args, **kwargs):
        ds = create(self, *args, **kwargs)
        held.append(ds)
        return ds

    monkeypatch.setattr(h5py.Group, "create_dataset", create_and_hold)
    _write(tmp_path / "held.h5", size=64)
    assert len(held) == len(FORMAT_ARRAYS) + len(FORMAT_V2_META)
    assert (tmp_path / "held.h5").read_bytes() == (tmp_path / "plain.h5").read_bytes()


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "toy-train-00000-of-00001.h5"
    arrays, rows = _samples(2)
    with pytest.raises(TypeError):  # an attribute h5py cannot store, raised mid-write
        write_shard(path, arrays=arrays, meta=encode_meta(rows), attrs={**ATTRS, "bad": object()})
    assert list(tmp_path.iterdir()) == []
    arrays["trimap"] = arrays["trimap"][:1]
    with pytest.raises(InputError, match="trimap"):
        write_shard(path, arrays=arrays, meta=encode_meta(rows), attrs=ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_empty_shard_is_valid(tmp_path):
    path = tmp_path / "toy-train-00000-of-00001.h5"
    empty = {k: np.zeros((0, 16, 16), dtype=v) for k, v in FORMAT_ARRAYS.items()}
    write_shard(path, arrays=empty, meta=encode_meta([]), attrs=ATTRS)
    with open_shard(path) as shard:
        assert len(shard) == 0 and shard.file["image_hu"].shape == (0, 16, 16)
        with pytest.raises(InputError, match="out of range"):
            shard.sample(0)
    assert check_shard(path) == []


def test_too_long_string_is_an_error_naming_field_and_sample():
    with pytest.raises(InputError, match="patient") as info:
        encode_meta([{"sample_id": "s1", "source_key": "k", "patient": "p" * 33, "split": "train"}])
    assert info.value.sample_id == "s1"


@pytest.mark.parametrize("damage, text", [
    (lambda f: f["trimap"].__setitem__((0, 0, 0), 7), "trimap values"),
    (lambda f: f["binary_mask"].__setitem__((1, 2, 2), 2), "binary_mask values"),
    (lambda f: f["soft_mask"].__setitem__((0, 1, 1), 1.5), "soft_mask values"),
    (lambda f: f.attrs.__setitem__("n_samples", 9), "n_samples"),
    (lambda f: f.attrs.__setitem__("split", "val"), "split"),
    (lambda f: f.attrs.__delitem__("recipe_sha256"), "missing root attributes"),
    (lambda f: f.__delitem__("trimap"), "datasets"),
    (lambda f: f.__delitem__("patient"), "datasets"),
    (lambda f: f["split"].__setitem__(1, "val"), "meta rows with split"),
    (lambda f: f["sample_id"].__setitem__(1, "s0"), "duplicate sample ids"),
    (lambda f: f["patient"].__setitem__(0, "p" * 40), "longer than the schema allows"),
])
def test_check_shard_finds_schema_violations(tmp_path, damage, text):
    path = tmp_path / "toy-train-00000-of-00001.h5"
    _write(path)
    with h5py.File(path, "r+") as f:
        damage(f)
    problems = check_shard(path)
    assert any(text in p for p in problems), problems


def test_check_and_open_report_unreadable_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    assert "not a readable HDF5" in check_shard(junk)[0]
    with pytest.raises(SourceError):
        open_shard(tmp_path / "absent.h5")


def test_shard_names_round_trip():
    for kind, split, i, n in [("samples", "train", 0, 3), ("slices", "test", 11, 12)]:
        name = shard_name("lnsm_x", split, i, n, kind=kind)
        parsed = parse_shard_name(name)
        assert (parsed.dataset, parsed.kind, parsed.split, parsed.index, parsed.count) == ("lnsm_x", kind, split, i, n)
    assert shard_name("lnsm", "val", 2, 10) == "lnsm-val-00002-of-00010.h5"
    for bad in ("lnsm-train-0-of-1.h5", "lnsm-dev-00000-of-00001.h5", ".lnsm-train-00000-of-00001.h5.1.tmp"):
        assert parse_shard_name(bad) is None
    with pytest.raises(InputError):
        shard_name("lnsm", "train", 3, 3)


# ---- schema 3: the optional true_fraction (issue 25) -----------------------------------------
def _truth(n, size=16, seed=1):
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def test_true_fraction_round_trips_and_is_found_by_every_reader(tmp_path):
    arrays, rows = _samples(3)
    truth = _truth(3)
    path = tmp_path / "toy-train-00000-of-00001.h5"
    write_shard(path, arrays={**arrays, "true_fraction": truth}, meta=encode_meta(rows), attrs=ATTRS)
    with h5py.File(path, "r") as f:  # the layout FORMAT.md documents, read with raw h5py
        ds = f["true_fraction"]
        assert ds.dtype == np.dtype("<f4") and ds.shape == (3, 16, 16) and ds.chunks == (1, 16, 16)
        assert ds.compression == "gzip" and ds.shuffle
        np.testing.assert_array_equal(ds[()], truth)
    assert check_shard(path) == []
    with open_shard(path) as shard:
        assert shard.has_truth
        np.testing.assert_array_equal(shard.sample(2)["true_fraction"], truth[2])
    info = inspect_shard(path)
    assert info.has_truth
    reader = ShardReader([info])
    np.testing.assert_array_equal(reader.read(0, 1, "true_fraction"), truth[1])
    # without it (a real source): no such key anywhere
    plain = tmp_path / "toy-train-00000-of-00002.h5"
    write_shard(plain, arrays=arrays, meta=encode_meta(rows), attrs=ATTRS)
    with open_shard(plain) as shard:
        assert not shard.has_truth and "true_fraction" not in shard.sample(0)
    assert not inspect_shard(plain).has_truth and check_shard(plain) == []


@pytest.mark.parametrize("bad", [1.5, -0.25, np.nan, np.inf])
def test_writer_refuses_a_truth_outside_the_unit_interval(tmp_path, bad):
    arrays, rows = _samples(2)
    truth = _truth(2)
    truth[1, 3, 4] = bad
    with pytest.raises(InputError, match="true_fraction must be finite and in \\[0, 1\\]"):
        write_shard(tmp_path / "t.h5", arrays={**arrays, "true_fraction": truth}, meta=encode_meta(rows), attrs=ATTRS)
    assert not (tmp_path / "t.h5").exists()


@pytest.mark.parametrize("damage, text", [
    (lambda f: f["true_fraction"].__setitem__((1, 2, 2), 1.01), "true_fraction values outside [0, 1]"),
    (lambda f: f["true_fraction"].__setitem__((0, 0, 0), np.nan), "true_fraction values outside [0, 1] or not finite"),
    (lambda f: f["true_fraction"].__setitem__((2, 5, 5), -1e-3), "true_fraction values outside [0, 1]"),
    (lambda f: (f.__delitem__("true_fraction"),
                f.create_dataset("true_fraction", data=np.zeros((3, 16, 16), np.float64), chunks=(1, 16, 16),
                                 compression="gzip", shuffle=True)), "true_fraction dtype float64"),
    (lambda f: (f.__delitem__("true_fraction"),
                f.create_dataset("true_fraction", data=np.zeros((2, 16, 16), np.float32), chunks=(1, 16, 16),
                                 compression="gzip", shuffle=True)), "true_fraction shape (2, 16, 16)"),
    (lambda f: f.attrs.__setitem__("schema_version", 2), "datasets"),  # schema 2 has no truth
])
def test_check_shard_checks_the_truth(tmp_path, damage, text):
    arrays, rows = _samples(3)
    path = tmp_path / "toy-train-00000-of-00001.h5"
    write_shard(path, arrays={**arrays, "true_fraction": _truth(3)}, meta=encode_meta(rows), attrs=ATTRS)
    with h5py.File(path, "r+") as f:
        damage(f)
    problems = check_shard(path)
    assert any(text in p for p in problems), problems


def test_a_schema_2_file_is_still_read_and_checked(tmp_path):
    # schema 3 without the optional array is schema 2's layout: relabelled 2, it reads and checks clean
    arrays, rows = _samples(3)
    path = tmp_path / "toy-train-00000-of-00001.h5"
    write_shard(path, arrays=arrays, meta=encode_meta(rows), attrs=ATTRS)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2
    assert check_shard(path) == []
    with open_shard(path) as shard:
        assert shard.schema_version == 2 and not shard.has_truth
        np.testing.assert_array_equal(shard.sample(1)["image_hu"], arrays["image_hu"][1])
    with h5py.File(path, "r+") as f:  # a truth array in a schema-2 file is refused by the reader
        f.create_dataset("true_fraction", data=_truth(3))
    with pytest.raises(ShardReadError, match="true_fraction is not allowed in schema version 2"):
        inspect_shard(path)


# ---- readers for training: inspect_shard and the lazy, per-worker ShardReader ---------------
def test_inspect_describes_valid_shards_of_both_versions(tmp_path):
    arrays, rows = _samples(3, size=12)
    v1, v2 = tmp_path / "toy-train-00000-of-00002.h5", tmp_path / "toy-train-00001-of-00002.h5"
    write_v1_shard(v1, arrays, rows, ATTRS)
    write_shard(v2, arrays=arrays, meta=encode_meta(rows), attrs=ATTRS)
    for path in (v1, v2):
        assert inspect_shard(path, kind="samples") == ShardInfo(path=path, kind="samples", split="train", n_samples=3,
                                                                height_px=12, width_px=12, dataset="toy")


@pytest.mark.parametrize("damage, text", [
    (lambda f: f.attrs.__setitem__("schema_version", 4), "has schema_version 4; this toolkit reads versions 1, 2, 3"),
    (lambda f: f.__delitem__("trimap"), "lacks dataset 'trimap'"),
    (lambda f: f.__delitem__("patient"), r"lacks meta datasets \['patient'\]"),
    (lambda f: f.attrs.__setitem__("n_samples", 7), "n_samples attribute 7 != 3 stored"),
])
def test_inspect_names_the_file_and_the_problem(tmp_path, damage, text):
    path = tmp_path / "toy-train-00000-of-00001.h5"
    _write(path)
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(ShardReadError, match=f"toy-train-00000-of-00001.h5.*{text}"):
        inspect_shard(path)
    _write(path)  # intact again
    with pytest.raises(ShardReadError, match="holds 'samples', expected 'slices'"):
        inspect_shard(path, kind="slices")

    class Mine(ValueError):
        pass

    with pytest.raises(Mine, match="absent.h5"):  # a reader of another package raises its own type
        inspect_shard(tmp_path / "absent.h5", error=Mine)


def test_reader_indexes_shards_and_reopens_per_process(tmp_path):
    import pickle

    paths = [tmp_path / f"toy-train-0000{i}-of-00002.h5" for i in range(2)]
    stored = [_write(p, n=n, seed=i)[1:] for i, (p, n) in enumerate(zip(paths, (3, 2)))]
    reader = ShardReader([inspect_shard(p) for p in paths])
    assert len(reader) == 5 and reader.locate(4) == (1, 1)
    (arrays, rows) = stored[1]
    np.testing.assert_array_equal(reader.read(1, 1, "soft_mask"), arrays["soft_mask"][1])
    np.testing.assert_array_equal(reader.read(1, 1, "image_hu", (slice(2, 5), slice(0, 3))),
                                  arrays["image_hu"][1, 2:5, 0:3])
    assert reader.sample_id(1, 1) == rows[1]["sample_id"] and reader.meta(1, 0)["patient"] == rows[0]["patient"]
    clone = pickle.loads(pickle.dumps(reader))  # spawn: handles are never pickled ...
    assert clone._files == {} and clone.sample_id(0, 2) == stored[0][1][2]["sample_id"]
    reader._pid = -1  # ... nor reused after a fork (another pid)
    assert reader.sample_id(0, 0) == stored[0][1][0]["sample_id"] and reader._pid == os.getpid()
    with pytest.raises(IndexError):
        reader.locate(5)
    with pytest.raises(ShardReadError, match=r"toy-train-00000-of-00002.h5: cannot read nothing\[0\]"):
        reader.read(0, 0, "nothing")
    reader.close()
    clone.close()


def test_temporary_names_are_those_of_core_atomic(tmp_path):
    from softmask_builder.core import atomic

    assert (temp_path, is_temp_name, TEMP_SUFFIX) == (atomic.temp_path, atomic.is_temp_name, atomic.TEMP_SUFFIX)
    path = tmp_path / "toy-train-00000-of-00001.h5"
    assert is_temp_name(temp_path(path).name) and not is_temp_name(path.name)
