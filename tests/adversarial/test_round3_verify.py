"""Adversarial corpus, round 3 (issue 23): shards edited with impossible content and re-hashed
(manifest and SHA256SUMS restated, as a careless tool would) must fail ``softmask verify``:
NaN spacing, scale 0, one sample_id in two splits, an all-zero binary_mask under a Soft Mask."""

from __future__ import annotations

import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest

from softmask_builder.exitcodes import EXIT_VERIFY
from softmask_builder.formats.recipes import recipe_from_dict
from tests.adversarial.kit import build, invoke


@pytest.fixture(scope="module")
def built(tmp_path_factory, phantom3):
    """The 3-case phantom built with a train/test split (2 + 1)."""
    out = tmp_path_factory.mktemp("r3v") / "ds"
    build(recipe_from_dict({"dataset": "adv", "source": "deeplesion", "crop_px": 64,
                            "source_options": {"exclude_noisy": False},
                            "split": {"method": "patient", "seed": 0, "counts": {"train": 2, "test": 1}}}),
          phantom3, out)
    return out


def _rehash(ds):
    """Restate every shard's sha256 and size in manifest.json, then rewrite SHA256SUMS."""
    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    m = json.loads((ds / "manifest.json").read_text())
    for e in m["shards"]:
        e["sha256"], e["bytes"] = sha(ds / e["file"]), (ds / e["file"]).stat().st_size
    (ds / "manifest.json").write_text(json.dumps(m, indent=2))
    names = [ln.split("  ", 1)[1] for ln in (ds / "SHA256SUMS").read_text().splitlines()]
    (ds / "SHA256SUMS").write_text("".join(f"{sha(ds / n)}  {n}\n" for n in sorted(names)))


def _edit(ds, split, fn):
    (shard,) = ds.glob(f"*-{split}-*.h5")
    with h5py.File(shard, "r+") as f:
        fn(f)
    _rehash(ds)


def _set(key, value, row=0):
    def fn(f):
        data = f[key][()]
        data[row] = value
        f[key][...] = data
    return fn


CASES = {
    "nan-spacing": ("train", _set("spacing_mm", np.nan), "spacing_mm not finite"),
    "zero-spacing": ("train", _set("spacing_mm", 0.0), "spacing_mm not finite or not > 0"),
    "scale-0": ("train", _set("scale", 0.0), "scale not finite or outside (0, 1]"),
    "inf-origin": ("test", _set("origin_px", np.inf), "origin_px not finite"),
    "empty-binary": ("train", _set("binary_mask", 0), "binary_mask all zero under a Soft Mask"),
    "binary-outside-trimap": ("test", _set("binary_mask", 1), "binary_mask set where the trimap is background"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_impossible_values_fail_verify(case, built, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(built, ds)
    assert invoke("verify", ds).exit_code == 0  # the untouched copy verifies
    split, fn, needle = CASES[case]
    _edit(ds, split, fn)
    result = invoke("verify", ds)
    assert result.exit_code == EXIT_VERIFY, result.output
    assert needle in result.stderr, result.stderr


def test_one_sample_id_in_two_splits_fails_verify(built, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(built, ds)
    (train,) = ds.glob("*-train-*.h5")
    with h5py.File(train, "r") as f:
        train_id = f["sample_id"][0]
    _edit(ds, "test", _set("sample_id", train_id))
    result = invoke("verify", ds)
    assert result.exit_code == EXIT_VERIFY
    assert "sample_id in several shards" in result.stderr, result.stderr
