"""The build: patient split, plan, shard jobs (byte-identical whatever the number of jobs),
resume after a finished or killed build, rejects, and real-data builds."""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from pathlib import Path

import joblib
import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.formats.release_folder import PLAN_FILE
from softmask_builder.dataset.build import (BuildPlan, label_record, make_plan, plan_build, run_build,
                                    split_refs)
from softmask_builder.errors import InputError, SourceError
from softmask_builder.labelling.pipeline import Labels, label_from_recist
from softmask_builder.formats.recipes import SplitSpec, recipe_from_dict
from softmask_builder.dataset.release import verify
from softmask_builder.formats.shards import open_shard
from softmask_builder.sources.base import SampleRecord, SampleRef
from softmask_builder.sources.deeplesion import load_deeplesion


# --- synthetic records (module-level so that loky workers can unpickle them) ------------------

def make_refs(n, per_patient=3, fail_every=0):
    return [SampleRef(f"s{i:04d}", f"key/{i}", f"p{i // per_patient:03d}",
                      payload={"seed": i, "fail": bool(fail_every) and i % fail_every == fail_every - 1})
            for i in range(n)]


def fake_loader(ref):
    if ref.payload.get("fail"):
        raise SourceError("image missing", sample_id=ref.sample_id, stage="load")
    rng = np.random.default_rng(ref.payload["seed"])
    yy, xx = np.mgrid[:32, :32]
    mask = (yy - 16) ** 2 + (xx - 16) ** 2 < rng.uniform(4, 9) ** 2
    image = np.where(mask, 40.0, -850.0) + rng.normal(0, 20, (32, 32))
    return SampleRecord(ref, image.astype(np.float32), "mask", mask, (0.7, 0.7), lesion_type=5)


def fake_labeller(record, params):
    mask = record.prior
    inner = ndimage.binary_erosion(mask, iterations=2)
    outer = ndimage.binary_dilation(mask, iterations=2)
    trimap = np.where(inner, 255, np.where(outer, 128, 0)).astype(np.uint8)
    return Labels(trimap, ndimage.gaussian_filter(mask.astype(np.float32), 1.0), mask)


class Killed(BaseException):
    """Stands for SIGKILL/KeyboardInterrupt in the middle of a build."""


def killing_labeller(record, params):
    if record.ref.sample_id == "s0013":
        raise Killed()
    return fake_labeller(record, params)


def recipe(**over):
    data = {"dataset": "toy", "source": "masks", "crop_px": 32, "samples_per_shard": 4,
            "split": {"method": "patient", "seed": 3, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}}}
    data.update(over)
    return recipe_from_dict(data)


def fake_build(out, plan, **kw):
    return run_build(plan, out, loader=fake_loader, labeller=kw.pop("labeller", fake_labeller), **kw)


def _hashes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


# --- split ------------------------------------------------------------------------------------

def _patients(refs):
    return {r.patient for r in refs}


@pytest.mark.parametrize("per_patient", [1, 3, 7])
def test_counts_split_is_exact_patient_disjoint_and_order_free(per_patient):
    refs = make_refs(300, per_patient=per_patient)
    spec = SplitSpec(seed=5, counts={"train": 120, "val": 20, "test": 60})
    splits, unselected, rejects, targets = split_refs(refs, spec)
    assert {k: len(v) for k, v in splits.items()} == {"train": 120, "val": 20, "test": 60}
    assert not rejects and targets == {"train": 120, "val": 20, "test": 60}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not _patients(splits[a]) & _patients(splits[b])
    # unselected samples never belong to a patient of another split than the one holding the
    # patient's other samples; and everything is accounted for exactly once
    ids = [r.sample_id for v in splits.values() for r in v] + [r.sample_id for r in unselected]
    assert sorted(ids) == sorted(r.sample_id for r in refs)
    shuffled = refs[:]
    random.Random(1).shuffle(shuffled)
    assert split_refs(shuffled, spec)[0] == splits
    assert split_refs(refs, SplitSpec(seed=6, counts=spec.counts))[0] != splits


def test_counts_split_fills_in_proportion_when_short():
    refs = make_refs(30, per_patient=1)
    splits, unselected, _, _ = split_refs(refs, SplitSpec(counts={"train": 1000, "val": 100, "test": 400}))
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 30 and not unselected
    # Hand-computed: filling the most-behind split one patient at a time gives 20/2/8 of 30.
    assert sizes == {"train": 20, "val": 2, "test": 8}


def test_fraction_split_uses_every_sample_and_keeps_patients_whole():
    refs = make_refs(100, per_patient=4)
    splits, unselected, _, targets = split_refs(refs, SplitSpec(fractions={"train": 0.7, "val": 0.1, "test": 0.2}))
    assert targets == {"train": 70, "val": 10, "test": 20}
    assert not unselected and sum(len(v) for v in splits.values()) == 100
    for k, v in splits.items():
        assert abs(len(v) - targets[k]) < 4  # within one patient of the target
        by_patient = defaultdict(int)
        for r in v:
            by_patient[r.patient] += 1
        assert set(by_patient.values()) == {4}


def test_official_split_and_refs_without_one():
    refs = [SampleRef("a", "a", "p1", "train"), SampleRef("b", "b", "p2", "test"), SampleRef("c", "c", "p3", None)]
    splits, _, rejects, targets = split_refs(refs, SplitSpec(method="official"))
    assert {k: [r.sample_id for r in v] for k, v in splits.items()} == {"train": ["a"], "test": ["b"]}
    assert [(r.sample_id, r.stage) for r in rejects] == [("c", "plan")] and targets == {}


# --- plan -------------------------------------------------------------------------------------

def test_plan_shards_names_and_limits():
    rec = recipe()
    plan = make_plan(rec, make_refs(30, per_patient=2), limit=25)
    assert plan.n_planned == 25 and plan.n_unselected == 5
    counts = plan.split_counts()
    for split, n in counts.items():
        shards = [s for s in plan.shards if s.split == split]
        assert len(shards) == -(-n // 4)
        assert [s.name for s in shards] == [f"toy-{split}-{i:05d}-of-{len(shards):05d}.h5" for i in range(len(shards))]
        ids = [r.sample_id for s in shards for r in s.refs]
        assert ids == sorted(ids)
    assert len({s.plan_sha256 for s in plan.shards}) == len(plan.shards)
    assert make_plan(rec, reversed(make_refs(30, per_patient=2)), limit=25) == plan


def test_plan_rejects_ids_too_long_and_refuses_duplicates():
    refs = make_refs(4) + [SampleRef("x" * 65, "k", "p9")]
    plan = make_plan(recipe(), refs)
    assert [(r.sample_id, r.stage) for r in plan.plan_rejects] == [("x" * 65, "plan")]
    with pytest.raises(SourceError, match="duplicate"):
        make_plan(recipe(), make_refs(3) + make_refs(1))


# --- shard jobs -------------------------------------------------------------------------------

def test_shards_hold_what_the_labeller_returns(tmp_path):
    plan = make_plan(recipe(), make_refs(12, fail_every=5))
    result = fake_build(tmp_path, plan)
    seen = 0
    for shard in result.shards:
        with open_shard(tmp_path / shard.name) as f:
            assert f.attrs["plan_sha256"] == next(s.plan_sha256 for s in plan.shards if s.name == shard.name)
            for i in range(len(f)):
                sample = f.sample(i)
                ref = next(r for s in plan.shards for r in s.refs if r.sample_id == sample["sample_id"])
                record = fake_loader(ref)
                labels = fake_labeller(record, None)
                np.testing.assert_array_equal(sample["image_hu"], np.rint(record.image_hu).astype(np.int16))
                np.testing.assert_array_equal(sample["soft_mask"], labels.soft_mask)
                np.testing.assert_array_equal(sample["trimap"], labels.trimap)
                np.testing.assert_array_equal(sample["binary_mask"], labels.binary_mask)
                assert sample["patient"] == ref.patient and sample["lesion_type"] == 5
                seen += 1
    assert seen == 12 - 2  # s0004 and s0009 fail to load
    assert [(r.sample_id, r.stage, r.reason) for r in result.rejects] == [
        ("s0004", "load", "image missing"), ("s0009", "load", "image missing")]


def _bad_label(record, params):
    sid = record.ref.sample_id
    if sid == "s0001":
        raise InputError("trimap has no lesion (255) pixel", sample_id=sid)
    if sid == "s0002":
        raise InputError("GrabCut found nothing", sample_id=sid, stage="grabcut")
    if sid == "s0003":
        return Labels(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.float32), np.zeros((8, 8), bool))
    if sid == "s0004":
        raise KeyError("a bug")
    return fake_labeller(record, params)


def test_label_errors_and_unexpected_exceptions_become_label_rejects(tmp_path):
    plan = make_plan(recipe(), make_refs(4))
    result = fake_build(tmp_path / "a", plan, labeller=_bad_label)
    rows = {r.sample_id: (r.stage, r.reason) for r in result.rejects}
    assert rows["s0001"] == ("label", "trimap has no lesion (255) pixel")
    assert rows["s0002"] == ("label", "grabcut: GrabCut found nothing")
    assert rows["s0003"][0] == "label" and "shape" in rows["s0003"][1]
    assert result.n_samples == 1
    # Issue 23: an unexpected exception type is a rejects row naming the type, not a stopped build.
    result = fake_build(tmp_path / "b", make_plan(recipe(), make_refs(5)), labeller=_bad_label)
    rows = {r.sample_id: (r.stage, r.reason) for r in result.rejects}
    assert rows["s0004"] == ("label", "KeyError: 'a bug'")
    assert result.n_samples == 1


def test_all_rejected_shard_is_written_empty(tmp_path):
    refs = [SampleRef(f"s{i}", "k", "p0", payload={"seed": i, "fail": True}) for i in range(3)]
    plan = make_plan(recipe(split={"method": "patient", "counts": {"test": 3}}), refs)
    result = fake_build(tmp_path, plan)
    assert result.n_samples == 0 and len(result.shards) == 1 and result.shards[0].n_planned == 3
    assert verify(tmp_path).ok


def test_bytes_do_not_depend_on_the_number_of_jobs(tmp_path):
    plan = make_plan(recipe(), make_refs(40, per_patient=3, fail_every=7))
    fake_build(tmp_path / "one", plan)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        fake_build(tmp_path / "two", plan)
    one, two = _hashes(tmp_path / "one"), _hashes(tmp_path / "two")
    assert len([n for n in one if n.endswith(".h5")]) == len(plan.shards) > 2
    assert one == two


def test_dask_build_is_byte_identical(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    plan = make_plan(recipe(), make_refs(24, per_patient=2, fail_every=7))
    fake_build(tmp_path / "one", plan)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        with joblib.parallel_config(backend="dask"):
            fake_build(tmp_path / "dask", plan)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "dask")


# --- resume -----------------------------------------------------------------------------------

def _mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}


def test_rerun_skips_finished_shards(tmp_path):
    plan = make_plan(recipe(), make_refs(20))
    first = fake_build(tmp_path, plan)
    before, files = _mtimes(tmp_path), _hashes(tmp_path)
    again = fake_build(tmp_path, plan)
    assert again.summary()["n_shards_skipped"] == len(plan.shards)
    assert _mtimes(tmp_path) == before and _hashes(tmp_path) == files
    assert again.summary() == {**first.summary(), "n_shards_built": 0, "n_shards_skipped": len(plan.shards)}
    redo = fake_build(tmp_path, plan, overwrite=True)
    assert redo.summary()["n_shards_built"] == len(plan.shards) and _hashes(tmp_path) == files


def test_killed_build_leaves_nothing_finished_and_recovers(tmp_path):
    plan = make_plan(recipe(samples_per_shard=3), make_refs(24))
    clean = tmp_path / "clean"
    fake_build(clean, plan)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        fake_build(out, plan, labeller=killing_labeller)
    names = {p.name for p in out.iterdir()}
    assert not names & {"manifest.json", "SHA256SUMS", "rejects.csv", "DATASET_CARD.md"}
    assert not [n for n in names if n.endswith(".tmp")]
    assert not verify(out).ok
    survivors = _mtimes(out)
    assert 0 < len(survivors) < len(plan.shards)
    # A leftover temporary file of a harder kill, and a finished shard lost since.
    (out / f".{plan.shards[-1].name}.999999.tmp").write_bytes(b"partial")
    lost = sorted(survivors)[0]
    (out / lost).unlink()
    result = fake_build(out, plan)
    rebuilt = {s.name for s in result.shards if not s.skipped}
    assert lost in rebuilt and not rebuilt & (set(survivors) - {lost})
    assert {n: t for n, t in _mtimes(out).items() if n in survivors and n != lost} == \
        {n: t for n, t in survivors.items() if n != lost}
    assert not list(out.glob(".*.tmp"))
    assert verify(out).ok and _hashes(out) == _hashes(clean)


def test_a_different_plan_is_refused_unless_overwrite(tmp_path):
    fake_build(tmp_path, make_plan(recipe(), make_refs(10)))
    other = make_plan(recipe(label={"band_px": 3.0}), make_refs(10))
    with pytest.raises(InputError, match="different plan .another recipe"):
        fake_build(tmp_path, other)
    # The same recipe on a changed source (other samples): the message says so, not two equal shas.
    with pytest.raises(InputError, match="same recipe on a changed source"):
        fake_build(tmp_path, make_plan(recipe(), make_refs(12)))
    (tmp_path / PLAN_FILE).unlink()
    with pytest.raises(InputError, match="overwrite"):
        fake_build(tmp_path, other)
    result = fake_build(tmp_path, other, overwrite=True)
    assert result.summary()["n_shards_built"] == len(other.shards)
    assert json.loads((tmp_path / "manifest.json").read_text())["label_params"]["band_px"] == 3.0
    assert verify(tmp_path).ok


# --- the real pipeline and real data ----------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from softmask_builder.phantom.deeplesion_writer import write_sample

    root = tmp_path_factory.mktemp("phantom")
    write_sample(root, n=5, seed=11, n_neighbors=0)
    return root


def phantom_recipe():
    return recipe_from_dict({"dataset": "ph", "source": "deeplesion", "samples_per_shard": 2,
                             "source_options": {"exclude_noisy": False},
                             "split": {"method": "patient", "seed": 0, "fractions": {"train": 0.6, "test": 0.4}}})


def test_real_pipeline_build_is_deterministic_across_jobs(phantom_root, tmp_path):
    plan = plan_build(phantom_recipe(), phantom_root)
    one = run_build(plan, tmp_path / "one")
    assert one.n_samples == 5 and len(plan.shards) >= 3
    with joblib.parallel_config(backend="loky", n_jobs=2):
        run_build(plan, tmp_path / "two")
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "two")
    # The shard holds exactly what the pipeline computes on the adapter's record.
    ref = plan.shards[0].refs[0]
    record = load_deeplesion(ref)
    labels = label_from_recist(record.image_hu, record.prior, plan.recipe.label, sample_id=ref.sample_id)
    with open_shard(tmp_path / "one" / plan.shards[0].name) as f:
        sample = f.sample(0)
    assert sample["sample_id"] == ref.sample_id
    np.testing.assert_array_equal(sample["soft_mask"], labels.soft_mask.astype(np.float32))
    np.testing.assert_array_equal(sample["binary_mask"], labels.binary_mask.astype(np.uint8))
    np.testing.assert_allclose(sample["recist_px"], record.prior.as_array(), rtol=1e-6)
    assert label_record(record, plan.recipe.label).trimap.tobytes() == sample["trimap"].tobytes()


def test_phantom_build_carries_the_truth_cropped_like_the_image(phantom_root, tmp_path):
    from softmask_builder.phantom.deeplesion_writer import read_truth

    result = run_build(plan_build(phantom_recipe(), phantom_root), tmp_path)
    truth = read_truth(phantom_root / "phantom_truth.npz")
    seen = 0
    for sh in result.shards:
        with open_shard(tmp_path / sh.name) as f:
            assert f.has_truth == (f.n_samples > 0)
            for i in range(f.n_samples):
                s = f.sample(i)
                full = truth[s["source_key"]]["true_fraction"]
                assert s["true_fraction"].dtype == np.float32 and s["true_fraction"].shape == (64, 64)
                if s["scale"] == 1.0:  # oracle: the crop window cut by hand, edge pixels replicated
                    r0, c0 = (int(v) for v in s["origin_px"])
                    rows = np.clip(np.arange(r0, r0 + 64), 0, full.shape[0] - 1)
                    cols = np.clip(np.arange(c0, c0 + 64), 0, full.shape[1] - 1)
                    np.testing.assert_array_equal(s["true_fraction"], full[np.ix_(rows, cols)])
                    seen += 1
                else:  # rescaled: same area, less resolution
                    area = s["true_fraction"].sum() / s["scale"] ** 2
                    assert abs(area - full.sum()) < 0.05 * full.sum()
    assert seen >= 3
    assert verify(tmp_path).ok
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["optional_arrays"] == ["true_fraction"] and manifest["schema_version"] == 3
    croissant = json.loads((tmp_path / "croissant.json").read_text())
    assert "true_fraction" in {f["name"] for f in croissant["recordSet"][0]["field"]}


@pytest.mark.realdata
def test_real_deeplesion_fixture_build(deeplesion_root, tmp_path):
    rec = recipe_from_dict({"dataset": "dl", "source": "deeplesion", "samples_per_shard": 4,
                            "source_options": {"exclude_noisy": False}, "split": {"method": "official"}})
    result = run_build(plan_build(rec, deeplesion_root), tmp_path)
    with open(deeplesion_root / "DL_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    present = []
    for row in rows:
        series, key = row["File_name"].rsplit("_", 1)
        present.append(os.path.exists(deeplesion_root / "Images_png" / series / key))
    assert len(rows) == 185
    assert result.n_samples == sum(present) == 9
    rejects = result.rejects
    assert len(rejects) == 185 - 9 and all(r.reason.startswith("image missing") for r in rejects)
    built = {bytes(s).decode() for sh in result.shards for s in open_shard(tmp_path / sh.name).meta["source_key"]}
    assert built == {row["File_name"] for row, ok in zip(rows, present) if ok}
    assert not any(open_shard(tmp_path / sh.name).has_truth for sh in result.shards)  # real source: no truth
    assert "optional_arrays" not in json.loads((tmp_path / "manifest.json").read_text())
    assert verify(tmp_path).ok


@pytest.mark.realdata
def test_real_lidc_fixture_build(lidc_root, tmp_path):
    from softmask_builder.formats.recipes import load_recipe

    result = run_build(plan_build(load_recipe("lidc"), lidc_root), tmp_path)
    # LIDC-IDRI-0001's one nodule has 4 readers and its central slice is present; 0002's has 2.
    assert result.n_samples == 1
    with open_shard(tmp_path / result.shards[0].name) as f:
        sample = f.sample(0)
    assert sample["n_readers"] == 4 and sample["patient"] == "LIDC-IDRI-0001"
    assert verify(tmp_path).ok


def test_plan_type_is_a_frozen_record():
    plan = make_plan(recipe(), make_refs(3))
    assert isinstance(plan, BuildPlan)
    assert json.loads(json.dumps(plan.record()))["dataset"] == "toy"
