"""Exports (nnU-Net v2, MONAI) of a real phantom build: round trip against the shards, nnU-Net's
own integrity check, MONAI's datalist loader and a one-step soft-Dice training (docs/MONAI.md),
byte identity of two exports, refusal of unverified builds and of overwriting.

Marked ``export``: `make test-export` installs the `export` extra and runs them; `make test`
deselects them. Each test skips with the reason when its package is missing."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import EXIT_INPUT, EXIT_VERIFY, main
from softmask_builder.formats.shards import open_shard

pytestmark = pytest.mark.export

DOCS = Path(__file__).resolve().parents[3] / "docs"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def shard_samples(build: Path, split: str) -> list[dict]:
    """The build's samples of ``split`` read straight from its shards (manifest order)."""
    manifest = json.loads((build / "manifest.json").read_text())
    out = []
    for entry in sorted((e for e in manifest["shards"] if e["split"] == split), key=lambda e: e["index"]):
        with open_shard(build / entry["file"]) as shard:
            out.extend(shard.sample(i) for i in range(len(shard)))
    return out


def read_nifti(path: Path):
    nib = pytest.importorskip("nibabel", reason="the export extra is not installed (nibabel)")
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.header


def check_sums(folder: Path) -> None:
    """Independent SHA256SUMS check (hashlib), and every file but SHA256SUMS is listed."""
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert set(listed) == files


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    pytest.importorskip("nibabel", reason="the export extra is not installed (nibabel)")
    root = tmp_path_factory.mktemp("exp")
    assert invoke("phantom", "--kind", "analytic", "--out", root / "ph", "--n", 12, "--seed", 1).exit_code == 0
    result = invoke("build", "deeplesion", root / "ph", "--recipe", "sample_analytic", "--out", root / "build", "--no-progress")
    assert result.exit_code == 0, result.output
    return root / "build"


@pytest.fixture(scope="module")
def nnunet_export(build, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nnunet")
    result = invoke("export", "nnunet", build, "--dataset-id", 501, "--out", root / "raw", "--band-as-ignore",
                    "--splits-final", "--preprocessed", root / "pre")
    assert result.exit_code == 0, result.output
    return root / "raw" / "Dataset501_LNSM", root / "pre" / "Dataset501_LNSM" / "splits_final.json"


def test_nnunet_export_round_trip(build, nnunet_export):
    folder, splits_final = nnunet_export
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, "nodule": 1, "ignore": 2}
    # The analytic phantom is synthetic throughout: this project's licence, not DeepLesion's (issue 24).
    prov = json.loads((folder / "export.json").read_text())
    for text in (ds["licence"], prov["license"]):
        assert "Apache-2.0" in text and "DeepLesion" not in text
    assert "Synthetic phantom" in ds["reference"] and "Synthetic phantom" in prov["citation"]
    with open(folder / "cases.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    by_split = {s: [c for c in cases if c["split"] == s] for s in ("train", "val", "test")}
    assert ds["numTraining"] == len(by_split["train"]) + len(by_split["val"])
    n_band = 0
    for split, (images, labels) in {"train": ("imagesTr", "labelsTr"), "val": ("imagesTr", "labelsTr"),
                                    "test": ("imagesTs", "labelsTs")}.items():
        samples = shard_samples(build, split)
        assert [c["sample_id"] for c in by_split[split]] == [s["sample_id"] for s in samples]
        for case, sample in zip(by_split[split], samples):
            assert re.fullmatch(r"[A-Za-z0-9_]+", case["case_id"])
            image, header = read_nifti(folder / images / f"{case['case_id']}_0000.nii.gz")
            assert image.dtype == np.int16 and image.shape == (64, 64, 1)
            np.testing.assert_array_equal(image[:, :, 0].T, sample["image_hu"])  # (col, row, 1) -> (row, col)
            row_mm, col_mm = sample["spacing_mm"]
            np.testing.assert_array_equal(header.get_zooms(), np.array([col_mm, row_mm, 1.0], np.float32))
            label, _ = read_nifti(folder / labels / f"{case['case_id']}.nii.gz")
            label = label[:, :, 0].T
            band = sample["trimap"] == 128
            n_band += int(band.sum())
            assert (label[band] == 2).all()
            np.testing.assert_array_equal(label[~band], sample["binary_mask"][~band])
    assert n_band > 0
    assert json.loads(splits_final.read_text()) == [{"train": [c["case_id"] for c in by_split["train"]],
                                                     "val": [c["case_id"] for c in by_split["val"]]}]
    check_sums(folder)


def test_nnunet_integrity_check_passes_and_can_fail(nnunet_export, tmp_path, capsys):
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder, _ = nnunet_export
    verify_dataset_integrity(str(folder), 1)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out
    # Control: without the ignore label in dataset.json, the band's label 2 is an unexpected value.
    broken = tmp_path / folder.name
    shutil.copytree(folder, broken)
    ds = json.loads((broken / "dataset.json").read_text())
    del ds["labels"]["ignore"]
    (broken / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(RuntimeError, match="unexpected labels"):
        verify_dataset_integrity(str(broken), 1)


def test_exports_are_byte_identical(build, nnunet_export, tmp_path):
    folder, _ = nnunet_export
    again = invoke("export", "nnunet", build, "--dataset-id", 501, "--out", tmp_path / "raw", "--band-as-ignore",
                   "--splits-final", "--preprocessed", tmp_path / "pre")
    assert again.exit_code == 0, again.output
    a = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    second = tmp_path / "raw" / folder.name
    b = {str(p.relative_to(second)): p.read_bytes() for p in sorted(second.rglob("*")) if p.is_file()}
    assert a == b and len(a) > 10
    gz = next(iter(v for k, v in a.items() if k.endswith(".nii.gz")))
    assert gz[4:8] == b"\x00\x00\x00\x00" and not gz[3] & 0x08  # gzip: mtime 0, no file name
    for out in ("m1", "m2"):
        assert invoke("export", "monai", build, "--out", tmp_path / out).exit_code == 0
    m1 = {str(p.relative_to(tmp_path / "m1")): p.read_bytes() for p in (tmp_path / "m1").rglob("*") if p.is_file()}
    m2 = {str(p.relative_to(tmp_path / "m2")): p.read_bytes() for p in (tmp_path / "m2").rglob("*") if p.is_file()}
    assert m1 == m2 and len(m1) > 10


def test_exports_refuse_unverified_builds_and_overwriting(build, tmp_path):
    out = tmp_path / "m"
    assert invoke("export", "monai", build, "--out", out).exit_code == 0
    before = (out / "SHA256SUMS").read_bytes()
    result = invoke("export", "monai", build, "--out", out)
    assert result.exit_code == EXIT_INPUT and "--overwrite" in result.stderr
    (out / "datalist.json").write_text("{}")
    assert invoke("export", "monai", build, "--out", out, "--overwrite").exit_code == 0
    assert (out / "SHA256SUMS").read_bytes() == before and json.loads((out / "datalist.json").read_text())["training"]
    damaged = tmp_path / "damaged"
    shutil.copytree(build, damaged)
    shard = next(damaged.glob("*-train-*.h5"))
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    for args in (("monai", damaged, "--out", tmp_path / "x"),
                 ("nnunet", damaged, "--dataset-id", 7, "--out", tmp_path / "y")):
        result = invoke("export", *args)
        assert result.exit_code == EXIT_VERIFY and "fails `softmask verify`" in result.stderr, result.output
        assert "sha256" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    result = invoke("export", "nnunet", build, "--dataset-id", 1000, "--out", tmp_path / "z")
    assert result.exit_code == EXIT_INPUT and "--dataset-id" in result.stderr
    result = invoke("export", "nnunet", build, "--dataset-id", 5, "--out", tmp_path / "z", "--splits-final")
    assert result.exit_code == EXIT_INPUT and "--preprocessed" in result.stderr


def _monai_imports():
    pytest.importorskip("monai", reason="the export extra is not installed (monai)")


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI registers its DICOM reader on import
def test_monai_export_loads_and_matches_the_shards(build, tmp_path):
    _monai_imports()
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    out = tmp_path / "monai"
    assert invoke("export", "monai", build, "--out", out).exit_code == 0
    check_sums(out)
    load = Compose([LoadImaged(keys=["image", "label", "soft_label"], reader="NibabelReader"),
                    EnsureChannelFirstd(keys=["image", "label", "soft_label"])])
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        files = load_decathlon_datalist(str(out / "datalist.json"), True, key)
        samples = shard_samples(build, split)
        assert [f["sample_id"] for f in files] == [s["sample_id"] for s in samples]
        for f, sample in zip(files, samples):
            item = load(f)
            assert tuple(item["image"].shape) == (1, 64, 64, 1)
            np.testing.assert_array_equal(item["image"][0, :, :, 0].numpy().T, sample["image_hu"])
            np.testing.assert_array_equal(item["label"][0, :, :, 0].numpy().T, sample["binary_mask"])
            np.testing.assert_array_equal(item["soft_label"][0, :, :, 0].numpy().T, sample["soft_mask"])
            row_mm, col_mm = sample["spacing_mm"]
            np.testing.assert_allclose(item["image"].pixdim.numpy(), [col_mm, row_mm, 1.0], rtol=1e-6)


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_docs_monai_example_trains_one_step_on_the_soft_mask(build, tmp_path):
    _monai_imports()
    import torch

    out = tmp_path / "monai"
    assert invoke("export", "monai", build, "--out", out).exit_code == 0
    text = (DOCS / "MONAI.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {"EXPORT": str(out)}
    exec(compile(code, "docs/MONAI.md", "exec"), scope)  # noqa: S102 - our own docs example, on purpose
    batch, logits, loss = scope["batch"], scope["logits"], scope["loss"]
    soft = batch["soft_label"]
    assert ((soft > 0) & (soft < 1)).any()  # the targets really are soft
    # Independent soft Dice: the Dice semimetric MONAI's soft_label=True uses (Wang & Blaschko 2023),
    # intersection = (|p|_1 + |t|_1 - |p - t|_1) / 2, per sample and channel, smooth 1e-5, mean.
    p = torch.sigmoid(logits.detach()).flatten(2)
    t = soft.flatten(2)
    inter = (p.sum(-1) + t.sum(-1) - (p - t).abs().sum(-1)) / 2
    denom = p.sum(-1) + t.sum(-1)
    want = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    assert abs(loss.detach().item() - want.item()) < 1e-5
    after = scope["net"](batch["image"])
    assert not torch.equal(after, logits)  # the step changed the network


# ---------------------------------------------------------------------------- Hub and Croissant
def test_datasets_loads_every_field_as_the_card_declares(build, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the export extra is not installed (datasets)")
    import yaml

    card = (build / "DATASET_CARD.md").read_text()
    front = yaml.safe_load(card[4:card.index("\n---\n", 4)])
    # The Hub reads a folder's README.md: a copy of the build with the card under that name.
    hub = tmp_path / "hub"
    shutil.copytree(build, hub)
    (hub / "README.md").write_text(card)
    loaded = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "cache"))
    declared = datasets.Features._from_yaml_list(front["dataset_info"]["features"])
    for split in ("train", "val", "test"):
        ds = loaded[split]
        assert ds.features == declared
        samples = shard_samples(build, split)
        assert ds.num_rows == len(samples) > 0
        rows = ds.with_format("numpy")
        for i, sample in enumerate(samples):
            row = rows[i]
            assert set(row) == set(sample)
            for key, value in sample.items():
                if isinstance(value, str):
                    assert row[key] == value, key
                else:
                    np.testing.assert_array_equal(np.asarray(row[key]), np.asarray(value), err_msg=key)


@pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning")  # rdflib inside mlcroissant
def test_croissant_validates_with_mlcroissant(build):
    mlc = pytest.importorskip("mlcroissant", reason="the export extra is not installed (mlcroissant)")
    dataset = mlc.Dataset(jsonld=str(build / "croissant.json"))  # raises ValidationError on any error
    issues = dataset.metadata.ctx.issues
    assert not issues.errors
    # The one warning: datePublished is left out on purpose (no time stamps in a build).
    assert all("datePublished" in w for w in issues.warnings), issues.warnings
    fields = {f.name for f in dataset.metadata.record_sets[0].fields}
    with open_shard(next(build.glob("*-train-*.h5"))) as shard:
        assert fields == set(shard.file)
    # Control: a broken reference is an error mlcroissant reports.
    doc = json.loads((build / "croissant.json").read_text())
    doc["recordSet"][0]["field"][0]["source"]["fileSet"]["@id"] = "nowhere"
    with pytest.raises(mlc.ValidationError):
        mlc.Dataset(jsonld=doc)


def test_exports_end_with_a_human_line(build, tmp_path):
    """Both exports end with one stderr line whose counts are those of the files written (issue 24)."""
    result = invoke("export", "monai", build, "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    datalist = json.loads((tmp_path / "m" / "datalist.json").read_text())
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("exported ") and str(tmp_path / "m") in last
    for key, entries in datalist.items():
        if isinstance(entries, list):
            assert f"{key} {len(entries)}" in last, (key, last)
    result = invoke("export", "nnunet", build, "--dataset-id", 502, "--out", tmp_path / "raw")
    assert result.exit_code == 0, result.output
    ds = json.loads((tmp_path / "raw" / "Dataset502_LNSM" / "dataset.json").read_text())
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"exported {ds['numTraining']} training and ") and "Dataset502_LNSM" in last
