"""The trainer reads what the builder writes: a phantom dataset built by `softmask make-lnsm` is
loaded by dsnet_trainer's SampleShardDataset, and each item equals the shard's arrays mapped as
the paper states (image windowed to [-1, 1], Soft Mask 2*alpha - 1, binary mask {0, 1}), computed
here by hand from the raw HDF5 read through softmask_builder.formats.shards."""

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="the trainer needs torch (extra `train`)")


def test_trainer_reads_builder_shards(tmp_path):
    from dsnet_trainer.data import SampleShardDataset
    from softmask_builder.cli import main as softmask
    from softmask_builder.formats.shards import open_shard

    out = tmp_path / "lnsm"
    res = CliRunner().invoke(softmask, ["make-lnsm", "--out", str(out), "--n", "6", "--jobs", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    shards = sorted(out.glob("*-train-*.h5"))
    assert shards
    with open_shard(shards[0]) as shard:  # read everything first: HDF5 refuses a second open in
        raws = [shard.sample(i) for i in range(len(shard.meta))]  # one process with other lock flags
    ds = SampleShardDataset(out, split="train", augment=False, level_hu=-600.0, width_hu=1500.0)
    for i, raw in enumerate(raws):
        item = ds[i]
        assert item["sample_id"] == raw["sample_id"]
        hu = raw["image_hu"].astype(np.float64)
        image = 2 * np.clip((hu - (-600 - 750)) / 1500, 0, 1) - 1
        np.testing.assert_allclose(np.asarray(item["image"][0]), image, atol=1e-6)
        np.testing.assert_allclose(np.asarray(item["soft_mask"][0]), 2 * raw["soft_mask"] - 1, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(item["binary_mask"][0]), raw["binary_mask"].astype(np.float32))
