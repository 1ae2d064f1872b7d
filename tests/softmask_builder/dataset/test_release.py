"""Release files (manifest, SHA256SUMS, rejects.csv, dataset card), verification and preview."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from softmask_builder.dataset.build import make_plan, run_build
from softmask_builder.dataset.release import verify, write_preview
from tests.softmask_builder.dataset.test_build import fake_labeller, fake_loader, make_refs, recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    plan = make_plan(recipe(label={"band_px": 3.5}), make_refs(30, per_patient=2, fail_every=9))
    run_build(plan, out, loader=fake_loader, labeller=fake_labeller)
    return out


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def test_manifest_counts_match_the_shards(built):
    manifest = json.loads((built / "manifest.json").read_text())
    per_split, patients, total = {}, {}, 0
    for entry in manifest["shards"]:
        path = built / entry["file"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        with h5py.File(path, "r") as f:
            n = f["image_hu"].shape[0]
            pats = set(f["patient"].asstr()[()])  # schema 2: one dataset per meta field
        assert entry["n_samples"] == n
        per_split[entry["split"]] = per_split.get(entry["split"], 0) + n
        patients.setdefault(entry["split"], set()).update(pats)
        total += n
    assert {k: v["n_samples"] for k, v in manifest["splits"].items()} == per_split
    assert {k: v["n_patients"] for k, v in manifest["splits"].items()} == {k: len(v) for k, v in patients.items()}
    assert manifest["n_samples"] == total == 30 - 3
    assert manifest["label_params"]["band_px"] == 3.5
    with open(built / "rejects.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["sample_id", "stage", "reason"]
    assert [r[0] for r in rows[1:]] == ["s0008", "s0017", "s0026"] and manifest["n_rejects"] == 3


def test_sha256sums_work_with_sha256sum(built):
    lines = (built / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1] for line in lines}
    on_disk = {p.name for p in built.iterdir() if not p.name.startswith(".")}
    assert listed == on_disk - {"SHA256SUMS"}
    for line in lines:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((built / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=built, check=True)


def test_dataset_card_states_composition_and_parameters(built):
    card = (built / "DATASET_CARD.md").read_text()
    manifest = json.loads((built / "manifest.json").read_text())
    for split, c in manifest["splits"].items():
        assert f"| {split} | {c['n_samples']} | {c['n_patients']} | {c['n_shards']} |" in card
    assert '"band_px": 3.5' in card and "3.5 px" in card
    assert manifest["recipe_sha256"] in card


def test_release_files_are_reproducible(built, tmp_path):
    plan = make_plan(recipe(label={"band_px": 3.5}), make_refs(30, per_patient=2, fail_every=9))
    run_build(plan, tmp_path, loader=fake_loader, labeller=fake_labeller)
    for name in ("manifest.json", "SHA256SUMS", "rejects.csv", "DATASET_CARD.md", "croissant.json"):
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card[4:card.index("\n---\n", 4)])


def test_card_front_matter_lists_each_split_and_the_shard_fields(built):
    """The Hub YAML parses, lists exactly the manifest's shards per split and one feature per
    dataset in the shards (names and per-sample shapes checked against the files)."""
    manifest = json.loads((built / "manifest.json").read_text())
    meta = _front_matter((built / "DATASET_CARD.md").read_text())
    source = manifest["recipe"]["source"]
    licence = {"lidc": ("cc-by-3.0", None), "deeplesion": ("other", "DeepLesion")}.get(source.split("_")[0],
                                                                                      ("other", "user-supplied"))
    assert meta["license"] == licence[0] and (licence[1] is None or licence[1] in meta["license_name"]), source
    (config,) = meta["configs"]
    files = {d["split"]: d["path"] for d in config["data_files"]}
    want: dict = {}
    for e in sorted(manifest["shards"], key=lambda e: e["index"]):
        want.setdefault(e["split"], []).append(e["file"])
    assert files == want
    with h5py.File(built / manifest["shards"][0]["file"], "r") as f:
        shapes = {name: f[name].shape[1:] for name in f}
    features = {feat["name"]: feat for feat in meta["dataset_info"]["features"]}
    assert set(features) == set(shapes)
    for name, shape in shapes.items():
        feat = features[name]
        got = (tuple(feat["dtype"]["array2_d"]["shape"]) if isinstance(feat.get("dtype"), dict)
               else (feat["length"],) if "list" in feat else ())
        assert got == shape, name


def test_croissant_lists_every_shard_with_its_hash_and_size(built, copy):
    doc = json.loads((built / "croissant.json").read_text())
    assert doc["@type"] == "sc:Dataset" and doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    files = {d["@id"]: d for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    shards = sorted(p.name for p in built.glob("*.h5"))
    assert sorted(files) == shards
    for name in shards:
        assert files[name]["sha256"] == hashlib.sha256((built / name).read_bytes()).hexdigest()
        assert files[name]["contentSize"] == f"{(built / name).stat().st_size} B"
    with h5py.File(built / shards[0], "r") as f:
        assert {fld["name"] for fld in doc["recordSet"][0]["field"]} == set(f)
    assert "croissant.json" in (built / "SHA256SUMS").read_text()
    (copy / "croissant.json").write_text("{}")
    report = verify(copy)
    assert any("croissant.json" in p and "sha256" in p for p in report.problems), report.problems


def test_verify_passes_on_a_fresh_build(built):
    report = verify(built)
    assert report.ok, report.problems
    assert report.n_samples == json.loads((built / "manifest.json").read_text())["n_samples"]


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.5, 0.02, 0.97])  # chunk data, file header / B-tree, tail
def test_verify_detects_one_flipped_byte(copy, where):
    shard = sorted(copy.glob("*.h5"))[0]
    _flip_byte(shard, int(shard.stat().st_size * where))
    report = verify(copy)
    assert not report.ok
    assert any(shard.name in p and "sha256" in p for p in report.problems)


@pytest.mark.parametrize("damage, text", [
    (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda d: sorted(d.glob("*.h5"))[-1].unlink(), "missing"),
    (lambda d: shutil.copy(sorted(d.glob("*.h5"))[0], d / "toy-train-00099-of-00100.h5"), "stray shard"),
    (lambda d: (d / "rejects.csv").write_text("sample_id,stage,reason\n"), "rejects.csv"),
    (lambda d: (d / "SHA256SUMS").write_text("junk\n"), "SHA256SUMS line 1"),
])
def test_verify_detects_damage(copy, damage, text):
    damage(copy)
    report = verify(copy)
    assert not report.ok and any(text in p for p in report.problems), report.problems


def test_verify_detects_a_consistent_but_wrong_manifest(copy):
    """Counts edited in the manifest and SHA256SUMS re-hashed to match: the counts check still fails."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["n_samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    sums = (copy / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    (copy / "SHA256SUMS").write_text("".join(
        (f"{digest}  manifest.json" if line.endswith("  manifest.json") else line) + "\n" for line in sums))
    report = verify(copy)
    assert not report.ok and any("manifest says" in p for p in report.problems), report.problems


def test_verify_detects_a_patient_in_two_splits(copy):
    """Rewrite one shard so a test patient appears in train, and re-hash everything consistently."""
    train = sorted(copy.glob("toy-train-*.h5"))[0]
    test = sorted(copy.glob("toy-test-*.h5"))[0]
    with h5py.File(test, "r") as f:
        other = f["patient"].asstr()[0]
    with h5py.File(train, "r+") as f:
        f["patient"][0] = other
    manifest = json.loads((copy / "manifest.json").read_text())
    for e in manifest["shards"]:
        e["sha256"] = hashlib.sha256((copy / e["file"]).read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    names = [p.name for p in copy.iterdir() if not p.name.startswith(".") and p.name != "SHA256SUMS"]
    (copy / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((copy / n).read_bytes()).hexdigest()}  {n}\n" for n in sorted(names)))
    report = verify(copy)
    assert any("patients in both" in p for p in report.problems), report.problems


def test_preview_draws_four_samples_a_row(built, tmp_path):
    import matplotlib.image as mpimg

    out = write_preview(built, tmp_path / "p.png", n=4)
    image = mpimg.imread(out)
    again = write_preview(built, tmp_path / "q.png", n=8)
    taller = mpimg.imread(again)
    assert image.shape[1] == taller.shape[1]  # four samples wide either way
    # two rows of (overlay + Soft Mask) panels instead of one, under the same title and legend
    assert 1.6 * image.shape[0] < taller.shape[0] < 2 * image.shape[0]
    assert out.read_bytes() == write_preview(built, tmp_path / "r.png", n=4).read_bytes()
    # Pixels are drawn (not a blank canvas): the sheet has dark and bright regions.
    assert np.ptp(image[..., :3]) > 0.5


@pytest.mark.parametrize("source, licence, name", [
    ("lidc", "cc-by-3.0", None), ("lidc_slices", "cc-by-3.0", None),
    ("deeplesion", "other", "NIH Clinical Center DeepLesion terms"), ("masks", "other", "licence of the user-supplied source"),
])
def test_card_licence_follows_the_source(built, source, licence, name):
    from softmask_builder.formats.metadata import hub_front_matter

    manifest = json.loads((built / "manifest.json").read_text())
    manifest["recipe"]["source"] = source
    meta = _front_matter(hub_front_matter(manifest) + "# x\n")
    assert meta["license"] == licence and meta.get("license_name") == name
