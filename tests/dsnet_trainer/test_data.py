"""Shard datasets: validation against FORMAT.md, values, joint augmentation, LR making, loaders
under fork/spawn/forkserver with persistent workers, corrupt data in a worker."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from dsnet_trainer.data import (SampleShardDataset, SliceShardDataset, dihedral, downsample, find_shards,
                                inspect_shard, to_unit_range)
from dsnet_trainer.errors import ConfigError, ShardError
from dsnet_trainer.runtime import DistContext
from dsnet_trainer.sampling import SeededSampler, make_loader

from .shardkit import make_sample_arrays, synthetic_ct_slice, write_sample_shard, write_slice_shard

LEVEL, WIDTH = -600.0, 1500.0


def _window(hu):
    """Independent lung window: [-1350, 150] HU -> [-1, 1]."""
    lo = LEVEL - WIDTH / 2
    return np.clip((np.asarray(hu, np.float64) - lo) / WIDTH, 0, 1) * 2 - 1


# ---------------------------------------------------------------------------- validation
def test_inspect_valid_shards(sample_shards, slice_shards):
    info = inspect_shard(sample_shards / "synth-train-00000-of-00002.h5", kind="samples")
    assert (info.kind, info.split, info.n_samples, info.height_px, info.width_px) == ("samples", "train", 5, 32, 32)
    assert [s.n_samples for s in find_shards(sample_shards, kind="samples", split="train")] == [5, 4]
    assert [s.split for s in find_shards(slice_shards, kind="slices")] == ["train", "val"]


def test_bad_shards_name_the_file(tmp_path):
    rng = np.random.default_rng(1)
    arrays = make_sample_arrays(rng, 2)
    with pytest.raises(ShardError, match="missing.h5"):
        inspect_shard(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ShardError, match="junk.h5.*not a readable HDF5"):
        inspect_shard(junk)
    junk.unlink()
    v4 = write_sample_shard(tmp_path / "v4.h5", arrays, schema_version=4)
    with pytest.raises(ShardError, match="v4.h5 has schema_version 4"):
        SampleShardDataset(v4)
    with pytest.raises(ShardError, match="v4.h5"):  # also when found inside a folder
        find_shards(tmp_path, kind="samples")
    v4.unlink()
    nometa = write_sample_shard(tmp_path / "nometa.h5", arrays)
    with h5py.File(nometa, "a") as f:
        del f["patient"]
    with pytest.raises(ShardError, match=r"nometa.h5: lacks meta datasets \['patient'\]"):
        inspect_shard(nometa)
    nometa.unlink()
    slices = write_slice_shard(tmp_path / "slices.h5", np.zeros((1, 8, 8), np.int16))
    with pytest.raises(ShardError, match="slices.h5 holds 'slices', expected 'samples'"):
        SampleShardDataset(slices)
    nodata = tmp_path / "nodata.h5"
    write_sample_shard(nodata, arrays)
    with h5py.File(nodata, "a") as f:
        del f["soft_mask"]
    with pytest.raises(ShardError, match="nodata.h5 lacks dataset 'soft_mask'"):
        inspect_shard(nodata)
    wrongtype = tmp_path / "wrongtype.h5"
    write_sample_shard(wrongtype, arrays)
    with h5py.File(wrongtype, "a") as f:
        data = f["image_hu"][...]
        del f["image_hu"]
        f["image_hu"] = data.astype(np.float32)
    with pytest.raises(ShardError, match="wrongtype.h5: image_hu has dtype float32, expected int16"):
        inspect_shard(wrongtype)
    with pytest.raises(ShardError, match="slices.h5: no slices shards of split 'test'"):
        find_shards(tmp_path / "slices.h5", kind="slices", split="test")
    with pytest.raises(ShardError, match="--data .*nowhere"):
        find_shards(tmp_path / "nowhere", kind="samples")


def test_wrong_image_size_for_the_model(sample_shards):
    with pytest.raises(ShardError, match=r"synth-train-00000-of-00002.h5 holds 32x32 crops but the model expects 64x64"):
        SampleShardDataset(sample_shards, split="train", image_size_px=64)


# ---------------------------------------------------------------------------- sample items
def test_sample_items_match_the_stored_arrays(sample_shards):
    ds = SampleShardDataset(sample_shards, split="train")
    assert len(ds) == 9
    path = sample_shards / "synth-train-00001-of-00002.h5"
    with h5py.File(path) as f:  # global index 6 = second shard, local 1
        hu, alpha, binary, trimap = (f[k][1] for k in ("image_hu", "soft_mask", "binary_mask", "trimap"))
        sid = f["sample_id"].asstr()[1]
    item = ds[6]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"][0].numpy(), _window(hu), atol=1e-6)
    np.testing.assert_allclose(item["soft_mask"][0].numpy(), 2 * alpha - 1, atol=1e-6)
    assert set(np.unique(item["binary_mask"].numpy())) <= {0.0, 1.0}
    np.testing.assert_array_equal(item["binary_mask"][0].numpy(), binary.astype(np.float32))
    np.testing.assert_array_equal(item["trimap"][0].numpy(), trimap)
    assert item["sample_id"] == sid and item["index"] == 6
    assert float(item["image"].min()) >= -1 and float(item["image"].max()) <= 1


def test_version_1_shards_read_like_version_2(tmp_path):
    """The same crops and meta written as schema 1 (compound meta) and schema 2 give the same items."""
    arrays = make_sample_arrays(np.random.default_rng(5), 4)
    old = write_sample_shard(tmp_path / "v1" / "synth-train-00000-of-00001.h5", arrays, schema_version=1)
    new = write_sample_shard(tmp_path / "v2" / "synth-train-00000-of-00001.h5", arrays, schema_version=2)
    a, b = SampleShardDataset(old), SampleShardDataset(new)
    assert len(a) == len(b) == 4
    for i in range(4):
        x, y = a[i], b[i]
        assert x["sample_id"] == y["sample_id"] == f"synth-train-{i}"
        for key in ("image", "soft_mask", "binary_mask", "trimap"):
            assert torch.equal(x[key], y[key]), key
    slices = np.zeros((3, 16, 16), np.int16)
    s1 = SliceShardDataset(write_slice_shard(tmp_path / "s1.h5", slices, schema_version=1), mode="val")
    s2 = SliceShardDataset(write_slice_shard(tmp_path / "s2.h5", slices, schema_version=2), mode="val")
    assert [s1.slice_meta(i) for i in range(3)] == [s2.slice_meta(i) for i in range(3)]
    assert s2.slice_meta(1) == {"sample_id": "synth-train-1", "patient": "P001", "split": "train"}


def _which_symmetry(src, dst):
    hits = [(k, f) for k in range(4) for f in (False, True) if np.array_equal(dihedral(src, k=k, flip=f), dst)]
    return hits


def test_joint_augmentation_applies_one_symmetry_to_all(sample_shards):
    plain = SampleShardDataset(sample_shards, split="train")
    aug = SampleShardDataset(sample_shards, split="train", augment=True)
    seen = set()
    for epoch in range(12):
        for i in (0, 3, 7):
            a, b = plain[i], aug[(i, 11, epoch)]
            hits = _which_symmetry(a["image"][0].numpy(), b["image"][0].numpy())
            assert len(hits) == 1  # the image is asymmetric: exactly one of the 8 transforms
            k, f = hits[0]
            seen.add((k, f))
            for name in ("soft_mask", "binary_mask", "trimap"):
                np.testing.assert_array_equal(dihedral(a[name][0].numpy(), k=k, flip=f), b[name][0].numpy())
            again = aug[(i, 11, epoch)]  # the key alone decides
            assert torch.equal(again["image"], b["image"])
    assert len(seen) >= 6  # 36 draws cover (nearly) all 8 symmetries
    assert torch.equal(aug[4]["image"], plain[4]["image"])  # int keys are never augmented


def test_truth_is_an_item_only_when_every_shard_carries_it(tmp_path):
    arrays = make_sample_arrays(np.random.default_rng(3), 4, size_px=32)
    truth = np.random.default_rng(5).random((4, 32, 32)).astype(np.float32)
    with_truth = write_sample_shard(tmp_path / "t" / "synth-train-00000-of-00001.h5", {**arrays, "true_fraction": truth},
                                    schema_version=3)
    ds = SampleShardDataset(with_truth)
    assert ds.has_truth
    for i in range(4):
        np.testing.assert_array_equal(ds[i]["true_fraction"][0].numpy(), truth[i])
    aug = SampleShardDataset(with_truth, augment=True)[(2, 7, 0)]
    hits = _which_symmetry(ds[2]["image"][0].numpy(), aug["image"][0].numpy())
    k, f = hits[0]  # the truth follows the image's symmetry
    np.testing.assert_array_equal(dihedral(truth[2], k=k, flip=f), aug["true_fraction"][0].numpy())
    plain = write_sample_shard(tmp_path / "p" / "synth-train-00000-of-00001.h5", arrays, schema_version=3)
    mixed = SampleShardDataset([with_truth, plain])
    assert not mixed.has_truth and "true_fraction" not in mixed[0]
    assert "true_fraction" not in SampleShardDataset(plain)[0]


def test_dihedral_matches_numpy_primitives():
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(dihedral(a, k=1, flip=False), np.rot90(a))
    np.testing.assert_array_equal(dihedral(a, k=0, flip=True), np.fliplr(a))
    np.testing.assert_array_equal(dihedral(a, k=2, flip=True), np.flipud(a))


# ---------------------------------------------------------------------------- LR / HR
def test_area_downsample_is_the_block_mean():
    rng = np.random.default_rng(2)
    img = rng.normal(size=(8, 12)).astype(np.float32)
    expect = np.array([[img[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].mean() for c in range(3)] for r in range(2)])
    np.testing.assert_allclose(downsample(img, scale=4, method="area"), expect, atol=1e-6)


def test_bicubic_downsample_matches_pil_antialiased_resize():
    rng = np.random.default_rng(3)
    img = synthetic_ct_slice(rng, 64).astype(np.float32)
    ours = downsample(img, scale=4, method="bicubic")
    pil = np.asarray(Image.fromarray(img, mode="F").resize((16, 16), Image.Resampling.BICUBIC))
    # Same filter (Keys a=-0.5, support scaled by 4); PIL works in float32 with its own rounding.
    assert np.abs(ours - pil).max() < 0.5  # HU, on a 1700-HU range
    with pytest.raises(Exception, match="multiple of scale"):
        downsample(img[:63], scale=4, method="bicubic")


def test_slice_items(slice_shards):
    val = SliceShardDataset(slice_shards, split="val", mode="val", downsample_method="area")
    with h5py.File(slice_shards / "synth-slices-val-00000-of-00001.h5") as f:
        hu = f["image_hu"][1].astype(np.float32)
    item = val[1]
    np.testing.assert_allclose(item["hr"][0].numpy(), _window(hu), atol=1e-6)
    lr_hu = hu.reshape(24, 4, 24, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(item["lr"][0].numpy(), _window(lr_hu), atol=1e-5)

    train = SliceShardDataset(slice_shards, split="train", mode="train", hr_patch_px=32, patches_per_slice=5,
                              augment=False)
    assert len(train) == 30
    with h5py.File(slice_shards / "synth-slices-train-00000-of-00001.h5") as f:
        full = _window(f["image_hu"][2])
    patch = train[(12, 0, 0)]["hr"][0].numpy()  # item 12 = slice 2
    found = [(r, c) for r in range(0, 65) for c in range(0, 65) if np.allclose(full[r:r + 32, c:c + 32], patch)]
    assert len(found) == 1
    assert torch.equal(train[(12, 0, 0)]["hr"], patch_again := train[(12, 0, 0)]["hr"]) and patch_again.shape == (1, 32, 32)
    assert not torch.equal(train[(12, 0, 1)]["hr"], train[(12, 0, 0)]["hr"])  # new epoch, new position


def test_slices_smaller_than_the_patch(tmp_path):
    small = write_slice_shard(tmp_path / "small.h5", np.zeros((2, 40, 40), np.int16))
    with pytest.raises(ShardError, match="small.h5 holds 40x40 slices, smaller than the 64px HR patch"):
        SliceShardDataset(small, mode="train", hr_patch_px=64)


def test_to_unit_range_matches_independent_window():
    hu = np.array([[-2000, -1350, -600, 150, 3000]], np.int16)
    np.testing.assert_allclose(to_unit_range(hu), _window(hu), atol=1e-7)


# ---------------------------------------------------------------------------- loaders
def _epochs(ds, *, workers, context, epochs=2, parent_touch=False):
    if parent_touch:
        ds[0]  # parent opens the HDF5 file before the workers start
    sampler = SeededSampler(len(ds), seed=5)
    loader = make_loader(ds, sampler, batch_size=4, num_workers=workers, mp_context=context, timeout_s=120)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append([(b["index"].tolist(), b["image"].clone(), b["soft_mask"].clone()) for b in loader])
    return out


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_loader_workers_give_the_same_batches(sample_shards, context):
    ds = SampleShardDataset(sample_shards, split="train", augment=True)
    ref = _epochs(ds, workers=0, context="default")
    got = _epochs(ds, workers=2 if context == "fork" else 1, context=context, parent_touch=True)
    assert len(got) == len(ref) == 2
    for e_ref, e_got in zip(ref, got):
        assert [b[0] for b in e_ref] == [b[0] for b in e_got]
        for (_, im1, sm1), (_, im2, sm2) in zip(e_ref, e_got):
            assert torch.equal(im1, im2) and torch.equal(sm1, sm2)
    assert [b[0] for b in ref[0]] != [b[0] for b in ref[1]]  # epochs are reshuffled


def test_ddp_shards_are_disjoint_and_complete(sample_shards):
    ds = SampleShardDataset(sample_shards, split="train")
    shares = []
    for rank in range(3):
        s = SeededSampler(len(ds), seed=1, ctx=DistContext(rank=rank, world_size=3))
        s.set_epoch(0)
        shares.append([k[0] for k in s])
    assert sorted(i for s in shares for i in s) == list(range(len(ds)))


def test_corrupt_chunk_in_a_worker_names_the_file(tmp_path):
    rng = np.random.default_rng(4)
    path = write_sample_shard(tmp_path / "corrupt.h5", make_sample_arrays(rng, 4))
    with h5py.File(path) as f:
        info = f["soft_mask"].id.get_chunk_info(2)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 4: info.byte_offset + info.size - 4] = bytes(info.size - 8)
    path.write_bytes(bytes(raw))
    ds = SampleShardDataset(path)  # the header is intact: validation passes
    ds[0]
    loader = make_loader(ds, SeededSampler(len(ds), seed=0, shuffle=False), batch_size=1, num_workers=1,
                         mp_context="fork", timeout_s=60)
    with pytest.raises(ShardError, match=r"corrupt.h5: cannot read soft_mask\[2\]"):
        for _ in loader:
            pass


def test_windowed_area_lr_is_the_block_mean_of_the_windowed_slice(slice_shards):
    """The truth study's arm-B degradation for the x2 teacher (data.downsample: windowed_area):
    window first, then 2x2 block means (by hand here) -- the same as the seg network's
    shrink_by_area of the windowed crop; `area` (block means of HU, then window) differs where the
    window clips."""
    from dsnet_trainer.models.dsnet import shrink_by_area

    kw = dict(split="val", mode="val", scale=2)
    item = SliceShardDataset(slice_shards, downsample_method="windowed_area", **kw)[0]
    with h5py.File(slice_shards / "synth-slices-val-00000-of-00001.h5") as f:
        hu = f["image_hu"][0].astype(np.float64)
    want = _window(hu).reshape(48, 2, 48, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(item["lr"][0].numpy(), want, atol=1e-6)
    torch.testing.assert_close(item["lr"][None], shrink_by_area(item["hr"][None], 2))
    area = SliceShardDataset(slice_shards, downsample_method="area", **kw)[0]["lr"][0].numpy()
    clipped = (hu < LEVEL - WIDTH / 2) | (hu > LEVEL + WIDTH / 2)
    straddle = clipped.reshape(48, 2, 48, 2).any(axis=(1, 3)) & ~clipped.reshape(48, 2, 48, 2).all(axis=(1, 3))
    assert straddle.any()                                   # the fixture has pixels beyond the window
    assert np.abs(area - want)[straddle].max() > 1e-3
    np.testing.assert_allclose(area[~clipped.reshape(48, 2, 48, 2).any(axis=(1, 3))],
                               want[~clipped.reshape(48, 2, 48, 2).any(axis=(1, 3))], atol=1e-5)
    with pytest.raises(ConfigError, match="windowed_area"):
        SliceShardDataset(slice_shards, downsample_method="nearest", **kw)
