"""Volume shards (schema 3, kind "volumes", issue 26) against docs/FORMAT.md: the layout read back
with raw h5py, the round trip through every reader, byte reproducibility, each corruption that
`check_shard` / `check_shard_values` must name, file names, and the lazy per-process reader."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.formats.shards import (ShardInfo, ShardReader, ShardReadError, check_shard, check_shard_values,
                                             encode_meta, inspect_shard, open_shard, parse_shard_name, read_sample,
                                             shard_name, write_shard)

# The layout as docs/FORMAT.md ("Volume shards") writes it, restated independently of the module.
FORMAT_ARRAYS = {"image_hu": "<i2", "soft_mask": "<f4", "binary_mask": "|u1", "trimap": "|u1"}
FORMAT_META = {"sample_id": ("str", ()), "source_key": ("str", ()), "patient": ("str", ()), "split": ("str", ()),
               "spacing_mm": ("<f4", (3,)), "origin_px": ("<f4", (3,)), "scale": ("<f4", (3,)),
               "recist_px": ("<f4", (4, 2)), "key_z": ("<i2", ()), "n_readers": ("<i2", ()),
               "lesion_type": ("<i2", ())}
ATTRS = {"dataset": "toy3d", "dataset_version": "1.0", "builder_version": "0.1.0", "split": "train",
         "recipe_json": '{"source": "lidc"}', "recipe_sha256": "0" * 64, "n_planned": 3, "plan_sha256": "1" * 64,
         "rejects_json": "[]"}
ZHW = (5, 12, 10)  # small and unequal axes, so that a swapped axis shows


def _volumes(n, zhw=ZHW, seed=0):
    """n labelled crops that satisfy every value rule: a trimap of nested boxes, alpha 1 inside,
    random in the band, binary = alpha >= 0.5 (inside the trimap's non-background)."""
    rng = np.random.default_rng(seed)
    z, h, w = zhw
    trimap = np.zeros((n, z, h, w), np.uint8)
    trimap[:, 1:-1, 2:-2, 2:-2] = 128
    trimap[:, 2:-2, 4:-4, 4:-4] = 255
    alpha = np.where(trimap == 255, 1.0, np.where(trimap == 128, rng.random((n, z, h, w)), 0.0)).astype(np.float32)
    arrays = {"image_hu": rng.integers(-1024, 1500, (n, z, h, w)).astype(np.int16),
              "soft_mask": alpha,
              "binary_mask": (alpha >= 0.5).astype(np.uint8),
              "trimap": trimap}
    rows = [{"sample_id": f"v{i}", "source_key": f"LIDC-IDRI-000{i}/nodule-1", "patient": f"p{i // 2}",
             "split": "train", "spacing_mm": (2.5, 0.703125, 0.703125), "origin_px": (-3.0 + i, 300.0, 290.0 + i),
             "scale": (1.0, 1.0, 1.0), "n_readers": 4, "lesion_type": -1} for i in range(n)]
    # sample 1 carries a RECIST mark on crop slice 2 (a key slice); the others none (key_z -1)
    rows[1]["recist_px"] = np.arange(8, dtype=np.float32).reshape(4, 2) + 1
    rows[1]["key_z"] = 2
    return arrays, rows


def _write(path, n=3, *, truth=False, **kw):
    arrays, rows = _volumes(n, **kw)
    if truth:
        arrays["true_fraction"] = np.clip(arrays["soft_mask"] * 0.9 + 0.05, 0, 1).astype(np.float32)
    digest = write_shard(path, arrays=arrays, meta=encode_meta(rows, kind="volumes"), attrs=ATTRS, kind="volumes")
    return digest, arrays, rows


def test_volume_shard_layout_is_the_documented_one(tmp_path):
    path = tmp_path / shard_name("toy3d", "train", 0, 1, kind="volumes")
    digest, arrays, rows = _write(path, truth=True)
    assert path.name == "toy3d-volumes-train-00000-of-00001.h5"
    with h5py.File(path, "r") as f:
        assert f.attrs["kind"] == "volumes" and f.attrs["schema_version"] == 3 and f.attrs["n_samples"] == 3
        for name, dtype in {**FORMAT_ARRAYS, "true_fraction": "<f4"}.items():
            ds = f[name]
            assert ds.dtype == np.dtype(dtype) and ds.shape == (3, *ZHW), name
            # one crop per chunk, gzip 4 + shuffle, growable along N only
            assert ds.chunks == (1, *ZHW) and ds.maxshape == (None, *ZHW), name
            assert ds.compression == "gzip" and ds.compression_opts == 4 and ds.shuffle, name
            np.testing.assert_array_equal(ds[()], arrays[name])
        assert set(f.keys()) == set(FORMAT_ARRAYS) | {"true_fraction"} | set(FORMAT_META)
        for name, (dtype, shape) in FORMAT_META.items():
            ds = f[name]
            assert ds.shape == (3, *shape) and ds.chunks == (1, *shape) and ds.compression == "gzip", name
            if dtype == "str":
                assert h5py.check_string_dtype(ds.dtype).length is None
            else:
                assert ds.dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(f["key_z"][()], [-1, 2, -1])
        np.testing.assert_array_equal(f["scale"][()], np.ones((3, 3)))
        assert np.isnan(f["recist_px"][0]).all() and np.isfinite(f["recist_px"][1]).all()
        np.testing.assert_allclose(f["spacing_mm"][2], (2.5, 0.703125, 0.703125))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert check_shard(path) == [] and check_shard_values(path) == []


def test_volume_round_trip_through_every_reader(tmp_path):
    path = tmp_path / "toy3d-volumes-train-00000-of-00001.h5"
    _, arrays, rows = _write(path)
    with open_shard(path) as shard:
        assert shard.kind == "volumes" and len(shard) == 3 and not shard.has_truth
        table = shard.meta
        assert table.dtype.names == tuple(FORMAT_META)
        np.testing.assert_array_equal(table["key_z"], [-1, 2, -1])
        assert shard.sample_ids == ["v0", "v1", "v2"]
    for i, row in enumerate(rows):
        sample = read_sample(path, i)
        for name in FORMAT_ARRAYS:
            assert sample[name].shape == ZHW
            np.testing.assert_array_equal(sample[name], arrays[name][i], err_msg=name)
        for key in ("sample_id", "source_key", "patient", "split", "n_readers", "lesion_type"):
            assert sample[key] == row[key]
        for key in ("spacing_mm", "origin_px", "scale"):
            assert sample[key].shape == (3,)
            np.testing.assert_allclose(sample[key], row[key], rtol=1e-7)
        assert sample["key_z"] == row.get("key_z", -1)
        if "recist_px" in row:
            np.testing.assert_array_equal(sample["recist_px"], row["recist_px"])
        else:
            assert np.isnan(sample["recist_px"]).all()


def test_missing_volume_meta_takes_not_applicable_values():
    meta = encode_meta([{"sample_id": "a", "source_key": "k", "patient": "p", "split": "val",
                         "spacing_mm": (1.25, 0.7, 0.7)}], kind="volumes")
    assert meta["key_z"][0] == -1 and meta["n_readers"][0] == -1 and meta["lesion_type"][0] == -1
    assert np.isnan(meta["recist_px"]).all() and meta["scale"][0].tolist() == [1.0, 1.0, 1.0]
    assert meta["origin_px"][0].tolist() == [0.0, 0.0, 0.0]


def test_two_writes_give_the_same_bytes_whatever_the_folder_and_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "deeper" / "b").mkdir(parents=True)
    d1, _, _ = _write(tmp_path / "a" / "toy3d-volumes-train-00000-of-00001.h5", truth=True)
    d2, _, _ = _write(tmp_path / "deeper" / "b" / "other-volumes-val-00003-of-00009.h5", truth=True)
    assert d1 == d2
    assert ((tmp_path / "a" / "toy3d-volumes-train-00000-of-00001.h5").read_bytes()
            == (tmp_path / "deeper" / "b" / "other-volumes-val-00003-of-00009.h5").read_bytes())
    # control: other content gives other bytes (the comparison can fail)
    d3, _, _ = _write(tmp_path / "a" / "x.h5", seed=1)
    assert d3 != d1


def test_an_empty_volume_shard_is_valid(tmp_path):
    path = tmp_path / "toy3d-volumes-test-00000-of-00001.h5"
    empty = {k: np.zeros((0, *ZHW), dtype=v) for k, v in FORMAT_ARRAYS.items()}
    write_shard(path, arrays=empty, meta=encode_meta([], kind="volumes"), attrs=ATTRS, kind="volumes")
    assert check_shard(path) == [] and check_shard_values(path) == []
    info = inspect_shard(path, kind="volumes")
    assert (info.n_samples, info.shape) == (0, ZHW)


@pytest.mark.parametrize("change, text", [
    (lambda a, m: a.__setitem__("trimap", a["trimap"][:, 0]), "trimap has shape (3, 12, 10)"),  # a 2-D array
    (lambda a, m: a.__setitem__("soft_mask", a["soft_mask"][:, :, :, :9]), "soft_mask has shape (3, 5, 12, 9)"),
    (lambda a, m: a.pop("binary_mask"), "volumes shard arrays must be"),
])
def test_writer_refuses_malformed_volumes_and_leaves_no_file(tmp_path, change, text):
    arrays, rows = _volumes(3)
    meta = encode_meta(rows, kind="volumes")
    change(arrays, meta)
    with pytest.raises(InputError) as info:
        write_shard(tmp_path / "v.h5", arrays=arrays, meta=meta, attrs=ATTRS, kind="volumes")
    assert text in str(info.value)
    assert list(tmp_path.iterdir()) == []
    arrays, rows = _volumes(3)
    flat = [{k: v for k, v in row.items() if k in ("sample_id", "source_key", "patient", "split")} for row in rows]
    with pytest.raises(InputError, match="meta dtype must be the schema's volumes meta dtype"):
        write_shard(tmp_path / "v.h5", arrays=arrays, meta=encode_meta(flat, kind="samples"), attrs=ATTRS,
                    kind="volumes")
    # a 2-D spacing in a volume's meta (or a 3-D one in a 2-D sample's) is an error naming field and sample
    with pytest.raises(InputError, match=r"\[v0\] meta field spacing_mm must be a float32 of shape \(3,\)"):
        encode_meta([{**rows[0], "spacing_mm": (0.7, 0.7)}], kind="volumes")
    with pytest.raises(InputError, match=r"\[v0\] meta field spacing_mm must be a float32 of shape \(2,\)"):
        encode_meta([flat[0] | {"spacing_mm": (2.5, 0.7, 0.7)}], kind="samples")
    assert list(tmp_path.iterdir()) == []


def _recreate(f, name, data):
    """Replace dataset ``name`` by ``data``, chunked and compressed as the schema says."""
    del f[name]
    f.create_dataset(name, data=data, chunks=(1, *data.shape[1:]), compression="gzip", shuffle=True)


@pytest.mark.parametrize("damage, text", [
    (lambda f: f["trimap"].__setitem__((1, 2, 3, 3), 7), "trimap values outside {0, 128, 255}"),
    (lambda f: f["binary_mask"].__setitem__((0, 4, 11, 9), 2), "binary_mask values outside {0, 1}"),
    (lambda f: f["soft_mask"].__setitem__((2, 0, 0, 0), 1.5), "soft_mask values outside [0, 1]"),
    (lambda f: f["soft_mask"].__setitem__((2, 3, 5, 5), np.nan), "soft_mask values outside [0, 1] or not finite"),
    (lambda f: f["true_fraction"].__setitem__((0, 1, 1, 1), -0.01), "true_fraction values outside [0, 1]"),
    (lambda f: _recreate(f, "trimap", f["trimap"][:, :4]), "trimap shape (3, 4, 12, 10), expected (3, Z, H, W)"),
    (lambda f: _recreate(f, "true_fraction", f["true_fraction"][:, 0]),
     "true_fraction shape (3, 12, 10), expected (3, Z, H, W)"),
    (lambda f: _recreate(f, "spacing_mm", f["spacing_mm"][:, :2]), "spacing_mm shape (3, 2), expected (3, 3)"),
    (lambda f: _recreate(f, "key_z", f["key_z"][()].astype(np.int32)), "key_z dtype int32, expected int16"),
    (lambda f: f.__delitem__("key_z"), "datasets"),
    (lambda f: f.attrs.__setitem__("schema_version", 2), "kind 'volumes' in schema_version 2"),
    (lambda f: f.attrs.__setitem__("kind", "volume"), "unknown kind 'volume'"),
])
def test_check_shard_names_each_corruption(tmp_path, damage, text):
    path = tmp_path / "toy3d-volumes-train-00000-of-00001.h5"
    _write(path, truth=True)
    with h5py.File(path, "r+") as f:
        damage(f)
    problems = check_shard(path)
    assert any(text in p for p in problems), problems
    assert all(p.startswith(path.name) for p in problems)


@pytest.mark.parametrize("damage, text", [
    (lambda f: f["spacing_mm"].__setitem__((1, 0), 0.0), "spacing_mm not finite or not > 0: ['v1']"),
    (lambda f: f["spacing_mm"].__setitem__((2, 2), np.inf), "spacing_mm not finite or not > 0: ['v2']"),
    (lambda f: f["scale"].__setitem__((0, 1), 1.5), "scale not finite or outside (0, 1]: ['v0']"),
    (lambda f: f["origin_px"].__setitem__((0, 0), np.nan), "origin_px not finite: ['v0']"),
    (lambda f: f["key_z"].__setitem__(1, 5), "key_z outside [0, 5) for a sample with recist_px: ['v1']"),
    (lambda f: f["key_z"].__setitem__(1, -1), "key_z outside [0, 5) for a sample with recist_px: ['v1']"),
    (lambda f: f["key_z"].__setitem__(2, 0), "key_z is not -1 for a sample without recist_px: ['v2']"),
    (lambda f: f["recist_px"].__setitem__((1, 0, 0), np.nan), "recist_px partly NaN or infinite: ['v1']"),
    (lambda f: f["n_readers"].__setitem__(0, -2), "n_readers < -1"),
    (lambda f: f["binary_mask"].__setitem__((2, 0, 0, 0), 1), "binary_mask set where the trimap is background: ['v2']"),
    (lambda f: f["binary_mask"].__setitem__(0, np.zeros(ZHW, np.uint8)),
     "binary_mask all zero under a Soft Mask reaching 0.5: ['v0']"),
])
def test_check_shard_values_names_each_bad_value(tmp_path, damage, text):
    path = tmp_path / "toy3d-volumes-train-00000-of-00001.h5"
    _write(path)
    assert check_shard_values(path) == []
    with h5py.File(path, "r+") as f:
        damage(f)
    assert check_shard(path) == []  # the schema still holds: these are value rules
    problems = check_shard_values(path)
    assert any(text in p for p in problems), problems


def test_volume_shard_names_round_trip():
    name = shard_name("lidc3d", "val", 7, 12, kind="volumes")
    assert name == "lidc3d-volumes-val-00007-of-00012.h5"
    parsed = parse_shard_name(name)
    assert (parsed.dataset, parsed.kind, parsed.split, parsed.index, parsed.count) == ("lidc3d", "volumes", "val", 7, 12)
    # the three kinds stay apart
    assert parse_shard_name("lidc3d-val-00007-of-00012.h5").kind == "samples"
    assert parse_shard_name("lidc3d-slices-val-00007-of-00012.h5").kind == "slices"
    for bad in ("lidc3d-volume-val-00007-of-00012.h5", "lidc3d-volumes-00007-of-00012.h5",
                "lidc3d-volumes-slices-val-00007-of-00012.h5"):
        assert parse_shard_name(bad) is None, bad
    with pytest.raises(InputError, match="kind must be one of"):
        shard_name("lidc3d", "val", 0, 1, kind="volume")


def test_inspect_describes_a_volume_shard_and_refuses_other_kinds(tmp_path):
    path = tmp_path / "toy3d-volumes-train-00000-of-00001.h5"
    _write(path, truth=True)
    info = inspect_shard(path, kind="volumes")
    assert info == ShardInfo(path=path, kind="volumes", split="train", n_samples=3, height_px=12, width_px=10,
                             dataset="toy3d", has_truth=True, depth_px=5)
    assert info.shape == ZHW
    with pytest.raises(ShardReadError, match="holds 'volumes', expected 'samples' \\(sample crops for DSNet\\)"):
        inspect_shard(path, kind="samples")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(ShardReadError, match="kind 'volumes' in schema_version 2"):
        inspect_shard(path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 3
        _recreate(f, "soft_mask", f["soft_mask"][:, 0])
    with pytest.raises(ShardReadError, match=r"soft_mask must be \(N, Z, H, W\), got shape \(3, 12, 10\)"):
        inspect_shard(path)


def _read_in_child(reader, queue):
    try:
        queue.put((os.getpid(), reader.read(1, 0, "soft_mask"), reader.sample_id(0, 2), reader.meta(1, 1)["key_z"]))
    except Exception as exc:  # handed to the parent, which fails the test with it
        queue.put(repr(exc))


def test_reader_serves_volumes_lazily_in_each_process(tmp_path):
    paths = [tmp_path / f"toy3d-volumes-train-0000{i}-of-00002.h5" for i in range(2)]
    stored = [_write(p, n=n, seed=i)[1:] for i, (p, n) in enumerate(zip(paths, (3, 2)))]
    reader = ShardReader([inspect_shard(p, kind="volumes") for p in paths])
    assert len(reader) == 5 and reader.locate(3) == (1, 0)
    arrays1, rows1 = stored[1]
    np.testing.assert_array_equal(reader.read(1, 1, "image_hu"), arrays1["image_hu"][1])
    np.testing.assert_array_equal(reader.read(1, 1, "trimap", (slice(1, 3), slice(2, 9), slice(0, 4))),
                                  arrays1["trimap"][1, 1:3, 2:9, 0:4])
    assert reader.meta(1, 1)["key_z"] == 2 and reader.meta(1, 1)["spacing_mm"].shape == (3,)
    assert reader._files  # the parent now holds open handles ...

    # ... which a forked worker (DataLoader's default on Linux) must not reuse: it reopens
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_read_in_child, args=(reader, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(60)
    assert not isinstance(got, str), got
    pid, alpha, sid, key_z = got
    assert pid != os.getpid() and child.exitcode == 0
    np.testing.assert_array_equal(alpha, arrays1["soft_mask"][0])
    assert sid == stored[0][1][2]["sample_id"] and key_z == 2

    # spawn / forkserver: the reader is pickled without handles and opens the files in a fresh interpreter
    blob = pickle.dumps(reader)
    assert pickle.loads(blob)._files == {}
    (tmp_path / "reader.pkl").write_bytes(blob)
    code = ("import pickle, sys, numpy as np; r = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "np.save(sys.argv[2], r.read(0, 1, 'soft_mask')); print(r.sample_id(1, 1), len(r._files))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "reader.pkl"), str(tmp_path / "a.npy")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [rows1[1]["sample_id"], "2"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), stored[0][0]["soft_mask"][1])
    reader.close()
