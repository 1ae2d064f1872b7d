"""The level-1 dataset check (:mod:`dsnet_trainer.dataset_check`) on hand-made folders: the
manifest read through the builder's release-folder owner, each mismatch named. (Level 2, the full
verify and its cache, runs on a real build in ``tests/adversarial/test_trainer_inputs.py``.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsnet_trainer.dataset_check import DatasetMismatchError, DatasetVerifyError, check_dataset
from dsnet_trainer.errors import ShardError

from .shardkit import make_sample_arrays, write_sample_shard, write_slice_shard


@pytest.fixture
def folder(tmp_path):
    """Two sample shards and a manifest listing them (sizes and counts as stored)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    entries = []
    for split, n in (("train", 3), ("test", 2)):
        name = f"synth-{split}-00000-of-00001.h5"
        write_sample_shard(root / name, make_sample_arrays(rng, n), split=split)
        entries.append({"file": name, "split": split, "n_samples": n, "bytes": (root / name).stat().st_size})
    (root / "manifest.json").write_text(json.dumps({"kind": "samples", "shards": entries}))
    return root


def test_a_matching_folder_passes_level_1(folder):
    check = check_dataset(folder, kind="samples", verify_hashes=False)
    assert (check.level, check.n_shards) == ("manifest", 2)


@pytest.mark.parametrize("manifest, text, error", [
    ("{not json", "manifest.json is not a valid manifest", "verify"),  # damaged: exit 3 (issue 23)
    ("[]", "manifest.json is not a valid manifest", "verify"),
    ('{"kind": "samples"}', "manifest.json is not a valid manifest", "verify"),
    ('{"kind": "slices", "shards": []}', "is a 'slices' dataset, this command needs 'samples' shards", "mismatch"),
])
def test_bad_manifests_are_named(folder, manifest, text, error):
    (folder / "manifest.json").write_text(manifest)
    with pytest.raises(DatasetVerifyError if error == "verify" else DatasetMismatchError,
                       match=f"--data .*ds.*{text}"):
        check_dataset(folder, kind="samples", verify_hashes=False)


def test_missing_resized_and_stray_shards(folder):
    (folder / "synth-test-00000-of-00001.h5").unlink()
    with pytest.raises(DatasetMismatchError, match="shard synth-test-00000-of-00001.h5 is missing"):
        check_dataset(folder, kind="samples", verify_hashes=False)
    write_sample_shard(folder / "synth-test-00000-of-00001.h5", make_sample_arrays(np.random.default_rng(1), 4),
                       split="test")
    with pytest.raises(DatasetMismatchError, match="synth-test-00000-of-00001.h5 has .* bytes, manifest says"):
        check_dataset(folder, kind="samples", verify_hashes=False)
    (folder / "synth-test-00000-of-00001.h5").unlink()
    m = json.loads((folder / "manifest.json").read_text())
    m["shards"] = m["shards"][:1]
    (folder / "manifest.json").write_text(json.dumps(m))
    write_slice_shard(folder / "extra.h5", np.zeros((1, 8, 8), np.int16))
    with pytest.raises(DatasetMismatchError, match=r"1 shard file\(s\) not in the manifest: extra.h5"):
        check_dataset(folder, kind="samples", verify_hashes=False)


def test_folder_without_manifest_and_missing_folder(folder, tmp_path):
    (folder / "manifest.json").unlink()
    check = check_dataset(folder, kind="samples")
    assert check.level == "schema" and "has no manifest.json" in check.notes[0]
    with pytest.raises(DatasetMismatchError, match="holds 'samples', expected 'slices'"):
        check_dataset(folder, kind="slices")
    with pytest.raises(ShardError, match="--data .*nowhere: no such file or folder"):
        check_dataset(tmp_path / "nowhere", kind="samples")
