"""Fixtures of the trainer tests: shards written per FORMAT.md by ``shardkit`` (not by the
builder), and one torch thread per test process (2 threads on a shared 2-core machine are many
times slower than 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .shardkit import make_sample_arrays, write_sample_shard, write_synthetic_slices


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def slice_shards(tmp_path_factory) -> Path:
    """Synthetic CT slice shards: 6 train slices, 2 val slices (other patients), 96x96."""
    return write_synthetic_slices(tmp_path_factory.mktemp("slices"), n_train=6, n_val=2, size_px=96, seed=0)


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> Path:
    """Two train sample shards (5 + 4 crops) and one val shard (3 crops), 32x32."""
    folder = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    write_sample_shard(folder / "synth-train-00000-of-00002.h5", make_sample_arrays(rng, 5), split="train")
    write_sample_shard(folder / "synth-train-00001-of-00002.h5", make_sample_arrays(rng, 4), split="train",
                       patient_prefix="Q")
    write_sample_shard(folder / "synth-val-00000-of-00001.h5", make_sample_arrays(rng, 3), split="val",
                       patient_prefix="V")
    return folder
