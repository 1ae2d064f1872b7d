"""Exports of a volume build (issue 26, kind "volumes"): the nnU-Net v2 raw dataset and the MONAI
datalist hold NIfTI volumes with the crop's spacing, read back with nibabel, SimpleITK (through
nnU-Net's own integrity check and planner) and MONAI's ``LoadImaged``; two exports are
byte-identical; a volume build whose shards are not all volumes is refused.

The volume build is written here with the shard writer and the release helpers (the build path for
volumes is another engineer's work in progress), small but of the real crop size: 3 train, 1 val,
1 test crops of ``VOLUME_CROP_ZRC`` (48, 96, 96) with an anisotropic spacing whose three values
differ, so a swapped axis shows in the shapes, the zooms and nnU-Net's planned spacing.

The nibabel, nnU-Net and MONAI tests are marked ``export`` (``make test-export``); the axis mapping
(by hand) and the refusal run without them.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import EXIT_VERIFY, main
from softmask_builder.dataset.counting import unselected_csv_text
from softmask_builder.dataset.release import dataset_card, rejects_csv_text
from softmask_builder.export._common import pixdim_of, to_nifti_axes
from softmask_builder.formats.metadata import citation_text, croissant
from softmask_builder.formats.release_folder import (CARD, CROISSANT, MANIFEST, REJECTS, SUMS, UNSELECTED,
                                                     sums_text)
from softmask_builder.formats.shards import (SCHEMA_VERSION, encode_meta, open_shard, sha256_file, shard_name,
                                             write_shard)
from softmask_builder.labelling.crop import VOLUME_CROP_ZRC
from softmask_builder.labelling.pipeline import LabelParams

DATASET = "toy3d"
#: (z_mm, row_mm, col_mm): LIDC-like slices, and row != col so that a row/col swap shows.
SPACING_ZRC = (2.5, 0.75, 0.8)
#: The NIfTI order of the same spacing, written out by hand: (col_mm, row_mm, z_mm).
PIXDIM = (0.8, 0.75, 2.5)
SPLIT_SIZES = {"train": 3, "val": 1, "test": 1}
RECIPE = {"dataset": DATASET, "version": "1.0", "source": "lidc_volumes",
          "volume": {"crop_zrc": list(VOLUME_CROP_ZRC), "isotropic": False},
          "split": {"method": "patient", "seed": 0, "counts": dict(SPLIT_SIZES)}}
RECIPE_SHA = "2" * 64


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------------------- the volume build
def _nodule(k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One labelled crop: an ellipsoid nodule of ~5 mm radius off the crop's centre; the Soft Mask
    falls linearly across a 1.2 mm band of the signed distance (in mm); binary = alpha >= 0.5 inside
    the band or the core; CT = lung -800 HU + 840 HU x alpha + noise."""
    z, h, w = VOLUME_CROP_ZRC
    centre = np.array([z / 2 + k - 2, h / 2 + 3 * k - 4, w / 2 - 2 * k + 1])
    radius_mm = 4.0 + k
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (z, h, w)), indexing="ij"), axis=-1)
    dist_mm = np.linalg.norm((grid - centre) * np.array(SPACING_ZRC), axis=-1) - radius_mm
    alpha = np.clip(0.5 - dist_mm / 1.2, 0.0, 1.0).astype(np.float32)
    trimap = np.where(alpha >= 1.0, 255, np.where(alpha > 0.0, 128, 0)).astype(np.uint8)
    noise = rng.normal(0.0, 30.0, (z, h, w))
    image = np.round(-800.0 + 840.0 * alpha + noise).astype(np.int16)
    return {"image_hu": image, "soft_mask": alpha, "binary_mask": (alpha >= 0.5).astype(np.uint8),
            "trimap": trimap}


def write_volume_build(out: Path) -> Path:
    """A verified volume build in ``out``: one shard per split (3 train, 1 val, 1 test crops of
    (48, 96, 96)), manifest (kind "volumes"), rejects, unselected, card, croissant, SHA256SUMS."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(26)
    entries, hashes, splits = [], {}, {}
    k = 0
    for split, n in SPLIT_SIZES.items():
        crops = [_nodule(k + i, rng) for i in range(n)]
        rows = [{"sample_id": f"LIDC-{k + i:04d}-n1", "source_key": f"LIDC-IDRI-{k + i:04d}/nodule-1",
                 "patient": f"LIDC-IDRI-{k + i:04d}", "split": split, "spacing_mm": SPACING_ZRC,
                 "origin_px": (3.0 + i, 200.0, 180.0), "scale": (1.0, 1.0, 1.0), "n_readers": 4} for i in range(n)]
        k += n
        arrays = {name: np.stack([c[name] for c in crops]) for name in crops[0]}
        name = shard_name(DATASET, split, 0, 1, kind="volumes")
        attrs = {"dataset": DATASET, "dataset_version": "1.0", "builder_version": "0.1.0", "split": split,
                 "recipe_json": json.dumps(RECIPE, sort_keys=True), "recipe_sha256": RECIPE_SHA, "n_planned": n,
                 "plan_sha256": "1" * 64, "rejects_json": "[]"}
        digest = write_shard(out / name, arrays=arrays, meta=encode_meta(rows, kind="volumes"), attrs=attrs,
                             kind="volumes")
        hashes[name] = digest
        entries.append({"file": name, "split": split, "index": 0, "count": 1, "n_samples": n, "n_planned": n,
                        "sha256": digest, "bytes": (out / name).stat().st_size})
        splits[split] = {"n_samples": n, "n_patients": n, "n_shards": 1, "n_planned": n}
    manifest = {"schema_version": SCHEMA_VERSION, "kind": "volumes", "dataset": DATASET, "dataset_version": "1.0",
                "builder_version": "0.1.0", "recipe": RECIPE, "recipe_sha256": RECIPE_SHA,
                "label_params": json.loads(LabelParams().to_json()), "label_params_sha256": LabelParams().sha256(),
                "n_samples": k, "n_planned": k, "n_unselected": 0, "unselected_by_filter": {}, "warnings": [],
                "n_rejects": 0, "rejects_by_stage": {}, "targets": dict(SPLIT_SIZES), "splits": splits,
                "shards": entries, "versions": {"python": "3"}}
    texts = {REJECTS: rejects_csv_text([]), UNSELECTED: unselected_csv_text([]),
             MANIFEST: json.dumps(manifest, indent=1, sort_keys=True) + "\n",
             CARD: dataset_card({**manifest, "recipe": {**RECIPE, "crop_px": VOLUME_CROP_ZRC[1]}}, []),
             CROISSANT: json.dumps(croissant(manifest, cite_as=citation_text(manifest)), indent=1, sort_keys=True)}
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        hashes[name] = sha256_file(out / name)
    (out / SUMS).write_text(sums_text(hashes), encoding="utf-8")
    return out


def shard_samples(build: Path, split: str) -> list[dict]:
    """The build's samples of ``split`` straight from its shards, in manifest order."""
    manifest = json.loads((build / MANIFEST).read_text())
    out = []
    for entry in sorted((e for e in manifest["shards"] if e["split"] == split), key=lambda e: e["index"]):
        with open_shard(build / entry["file"]) as shard:
            out.extend(shard.sample(i) for i in range(len(shard)))
    return out


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def vbuild(tmp_path_factory) -> Path:
    build = write_volume_build(tmp_path_factory.mktemp("vol") / "build")
    result = invoke("verify", build)
    assert result.exit_code == 0, result.output  # the fixture is a build `softmask verify` accepts
    return build


@pytest.fixture(scope="module")
def vexport(vbuild, tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("nibabel", reason="the export extra is not installed (nibabel)")
    root = tmp_path_factory.mktemp("vnnunet")
    result = invoke("export", "nnunet", vbuild, "--dataset-id", 526, "--name", "Toy3D", "--out", root / "raw",
                    "--band-as-ignore", "--splits-final", "--preprocessed", root / "pre")
    assert result.exit_code == 0, result.output
    return root / "raw" / "Dataset526_Toy3D", root / "pre"


# ---------------------------------------------------------------------------- axis order by hand
def test_volume_axes_and_spacing_map_to_nifti_order_by_hand():
    zrc = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (z, row, col), every value distinct
    xyz = to_nifti_axes(zrc)
    assert xyz.shape == (4, 3, 2) and xyz.flags.c_contiguous
    for z, r, c in np.ndindex(2, 3, 4):
        assert xyz[c, r, z] == zrc[z, r, c]
    assert pixdim_of(SPACING_ZRC) == PIXDIM
    # 2-D crops keep their layout: (row, col) -> (col, row, 1), pixdim (col_mm, row_mm, 1)
    rc = np.arange(6).reshape(2, 3)
    assert to_nifti_axes(rc).shape == (3, 2, 1) and to_nifti_axes(rc)[2, 1, 0] == rc[1, 2]
    assert pixdim_of((0.75, 0.8)) == (0.8, 0.75, 1.0)
    with pytest.raises(ValueError, match="spacing_mm must be"):
        pixdim_of((1.0,))


# ---------------------------------------------------------------------------- nnU-Net
@pytest.mark.export
def test_nnunet_volume_export_round_trip(vbuild, vexport):
    nib = pytest.importorskip("nibabel", reason="the export extra is not installed (nibabel)")
    folder, pre = vexport
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, "nodule": 1, "ignore": 2}
    assert ds["numTraining"] == SPLIT_SIZES["train"] + SPLIT_SIZES["val"]
    assert "3-D nodule crops" in ds["description"] and "LIDC-IDRI" in ds["licence"]
    with open(folder / "cases.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    n_band = 0
    for split, (images, labels) in {"train": ("imagesTr", "labelsTr"), "val": ("imagesTr", "labelsTr"),
                                    "test": ("imagesTs", "labelsTs")}.items():
        rows = [c for c in cases if c["split"] == split]
        samples = shard_samples(vbuild, split)
        assert [c["sample_id"] for c in rows] == [s["sample_id"] for s in samples]
        for case, sample in zip(rows, samples):
            img = nib.load(str(folder / images / f"{case['case_id']}_0000.nii.gz"))
            image = np.asanyarray(img.dataobj)
            # NIfTI (x, y, z) = (col, row, z): the shard's (z, row, col) crop with its axes reversed
            assert image.dtype == np.int16 and image.shape == VOLUME_CROP_ZRC[::-1]
            np.testing.assert_array_equal(image.transpose(2, 1, 0), sample["image_hu"])
            assert img.header.get_zooms() == PIXDIM
            # the shards' (z, row, col) = (Superior, Posterior, patient's Left), written out by hand
            np.testing.assert_allclose(img.affine, np.diag([-PIXDIM[0], -PIXDIM[1], PIXDIM[2], 1.0]), atol=1e-6)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            lab = nib.load(str(folder / labels / f"{case['case_id']}.nii.gz"))
            assert lab.get_data_dtype() == np.uint8 and lab.header.get_zooms() == PIXDIM
            label = np.asanyarray(lab.dataobj).transpose(2, 1, 0)
            band = sample["trimap"] == 128
            n_band += int(band.sum())
            assert (label[band] == 2).all()
            np.testing.assert_array_equal(label[~band], sample["binary_mask"][~band])
    assert n_band > 0
    splits = json.loads((pre / folder.name / "splits_final.json").read_text())
    assert splits == [{"train": [c["case_id"] for c in cases if c["split"] == "train"],
                       "val": [c["case_id"] for c in cases if c["split"] == "val"]}]


@pytest.mark.export
def test_nnunet_integrity_check_passes_on_volumes_and_catches_a_lost_z_spacing(vexport, tmp_path, capsys):
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    nib = pytest.importorskip("nibabel", reason="the export extra is not installed (nibabel)")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder, _ = vexport
    verify_dataset_integrity(str(folder), 1)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out
    # Control: one label written with the 2-D export's pixdim (z = 1 mm) disagrees with its image.
    broken = tmp_path / folder.name
    shutil.copytree(folder, broken)
    label_path = next((broken / "labelsTr").iterdir())
    lab = nib.load(str(label_path))
    affine = np.diag([-PIXDIM[0], -PIXDIM[1], 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj), affine), str(label_path))
    with pytest.raises(RuntimeError, match="Some images have errors"):
        verify_dataset_integrity(str(broken), 1)


def plan_3d(raw: Path, pre: Path, dataset_id: int, monkeypatch) -> dict:
    """nnU-Net v2's own fingerprint extraction and default experiment planner (what
    ``nnUNetv2_plan_and_preprocess -d ID --no_pp`` runs) on ``raw``; the plans written to ``pre``,
    returned with ``_seconds`` (the time of each step) added."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset)

    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(pre.parent / "results"))
    t0 = time.perf_counter()
    extract_fingerprint_dataset(dataset_id, num_processes=1, check_dataset_integrity=False, verbose=False,
                                show_progress_bar=False)
    t1 = time.perf_counter()
    _, plans_name = plan_experiment_dataset(dataset_id)
    t2 = time.perf_counter()
    folder = next(pre.glob(f"Dataset{dataset_id:03d}_*"))
    plans = json.loads((folder / f"{plans_name}.json").read_text())
    plans["_seconds"] = {"fingerprint_s": round(t1 - t0, 2), "planner_s": round(t2 - t1, 2)}
    return plans


@pytest.mark.export
def test_nnunet_plans_3d_fullres_at_the_crops_spacing(vexport, monkeypatch, tmp_path):
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    folder, _ = vexport
    plans = plan_3d(folder.parent, tmp_path / "pre", 526, monkeypatch)
    # nnU-Net read the volumes (SimpleITK) in the shard's own (z, row, col) order and spacing ...
    fingerprint = json.loads((tmp_path / "pre" / folder.name / "dataset_fingerprint.json").read_text())
    n_training = SPLIT_SIZES["train"] + SPLIT_SIZES["val"]
    # (the shards keep spacing_mm in float32: 0.8 comes back as 0.800000011920929)
    np.testing.assert_allclose(fingerprint["spacings"], [SPACING_ZRC] * n_training, rtol=1e-6)
    assert all(tuple(s) == VOLUME_CROP_ZRC for s in fingerprint["shapes_after_crop"])
    # ... and plans 3d_fullres at the crops' spacing (every crop has it: the median is it), the
    # lowest-resolution axis (z) first, so no transpose; the patch is the crop itself
    # (tests/softmask_builder/labelling/test_crop_volume.py: 48 x 96 x 96 needs no padding).
    assert plans["transpose_forward"] == [0, 1, 2]
    full = plans["configurations"]["3d_fullres"]
    np.testing.assert_allclose(full["spacing"], SPACING_ZRC, rtol=1e-6)
    assert tuple(full["patch_size"]) == VOLUME_CROP_ZRC
    assert tuple(plans["original_median_shape_after_transp"]) == VOLUME_CROP_ZRC
    assert plans["foreground_intensity_properties_per_channel"]["0"]["max"] > 0  # the nodule's HU, not lung


# ---------------------------------------------------------------------------- MONAI
@pytest.mark.export
@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI registers its DICOM reader on import
def test_monai_volume_export_loads_with_shape_and_pixdim(vbuild, tmp_path):
    pytest.importorskip("monai", reason="the export extra is not installed (monai)")
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    out = tmp_path / "monai"
    result = invoke("export", "monai", vbuild, "--out", out)
    assert result.exit_code == 0, result.output
    keys = ["image", "label", "soft_label"]
    load = Compose([LoadImaged(keys=keys, reader="NibabelReader"), EnsureChannelFirstd(keys=keys)])
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        files = load_decathlon_datalist(str(out / "datalist.json"), True, key)
        samples = shard_samples(vbuild, split)
        assert [f["sample_id"] for f in files] == [s["sample_id"] for s in samples]
        for f, sample in zip(files, samples):
            assert f["pixdim_mm"] == list(PIXDIM)
            item = load(f)
            for name, array in (("image", "image_hu"), ("label", "binary_mask"), ("soft_label", "soft_mask")):
                assert tuple(item[name].shape) == (1, *VOLUME_CROP_ZRC[::-1]), name
                np.testing.assert_allclose(item[name].pixdim.numpy(), PIXDIM, rtol=1e-6)
                np.testing.assert_array_equal(item[name][0].numpy().transpose(2, 1, 0), sample[array])


# ---------------------------------------------------------------------------- determinism, refusal
@pytest.mark.export
def test_volume_exports_are_byte_identical_wherever_written(vbuild, vexport, tmp_path):
    folder, _ = vexport
    result = invoke("export", "nnunet", vbuild, "--dataset-id", 526, "--name", "Toy3D", "--out",
                    tmp_path / "elsewhere" / "raw", "--band-as-ignore", "--splits-final", "--preprocessed",
                    tmp_path / "pre")
    assert result.exit_code == 0, result.output
    a, b = tree_bytes(folder), tree_bytes(tmp_path / "elsewhere" / "raw" / folder.name)
    assert a == b and len(a) == 2 * 5 + 4  # images + labels of 5 cases, dataset.json, cases.csv, export.json, sums
    for name, data in a.items():
        if name.endswith(".nii.gz"):
            assert data[4:8] == b"\x00\x00\x00\x00" and not data[3] & 0x08  # gzip: mtime 0, no file name
            assert len(gzip.decompress(data)) > 96 * 96 * 48  # a whole volume, not a slice
    for out in ("m1", "m2/deeper"):
        assert invoke("export", "monai", vbuild, "--out", tmp_path / out).exit_code == 0
    m1, m2 = tree_bytes(tmp_path / "m1"), tree_bytes(tmp_path / "m2" / "deeper")
    assert m1 == m2 and len(m1) == 3 * 5 + 3


def test_a_volume_export_reads_back_unchanged_through_the_nifti_source(vbuild, tmp_path):
    """The export's orientation is the NIfTI source's (z, row, col) convention: its images and labels,
    laid out as a NIfTI source folder, read back as the shards' arrays and build again with
    `softmask build masks --volumes` (whose crops are windows of the exported volumes)."""
    from softmask_builder.sources.nifti import read_nifti_zrc

    raw = tmp_path / "raw"
    result = invoke("export", "nnunet", vbuild, "--dataset-id", 529, "--name", "Back", "--out", raw)
    assert result.exit_code == 0, result.output
    folder = raw / "Dataset529_Back"
    with open(folder / "cases.csv", newline="") as fh:
        cases = [c for c in csv.DictReader(fh) if c["split"] != "test"]
    src = tmp_path / "again"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    originals = {}
    samples = {s["sample_id"]: s for split in ("train", "val") for s in shard_samples(vbuild, split)}
    for case in cases:
        shutil.copy(folder / "imagesTr" / f"{case['case_id']}_0000.nii.gz", src / "images" / f"{case['case_id']}.nii.gz")
        shutil.copy(folder / "labelsTr" / f"{case['case_id']}.nii.gz", src / "masks" / f"{case['case_id']}.nii.gz")
        sample = samples[case["sample_id"]]
        image, spacing = read_nifti_zrc(src / "images" / f"{case['case_id']}.nii.gz")
        mask, _ = read_nifti_zrc(src / "masks" / f"{case['case_id']}.nii.gz", role="mask")
        np.testing.assert_array_equal(image, sample["image_hu"])
        np.testing.assert_array_equal(mask, sample["binary_mask"].astype(bool))
        np.testing.assert_allclose(spacing, SPACING_ZRC, rtol=1e-6)
        originals[case["case_id"]] = image
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: back\nsource: nifti_volumes\nvolume: {crop_zrc: [24, 48, 48]}\n"
                      "split: {method: patient, seed: 0, fractions: {train: 1.0}}\n")
    result = invoke("build", "masks", src, "--volumes", "--recipe", recipe, "--out", tmp_path / "b", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_samples"] == len(cases)
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    with open_shard(tmp_path / "b" / manifest["shards"][0]["file"]) as shard:
        for i in range(len(shard)):
            smp = shard.sample(i)
            z0, r0, c0 = (int(v) for v in smp["origin_px"])
            whole = originals[str(smp["sample_id"]).rsplit("_n", 1)[0]]
            np.testing.assert_array_equal(smp["image_hu"], whole[z0:z0 + 24, r0:r0 + 48, c0:c0 + 48])


def test_2d_exports_keep_the_spacing_only_affine():
    from softmask_builder.export._common import export_affine

    np.testing.assert_array_equal(export_affine((0.75, 0.8)), np.diag([0.8, 0.75, 1.0, 1.0]))
    np.testing.assert_array_equal(export_affine(SPACING_ZRC), np.diag([-0.8, -0.75, 2.5, 1.0]))


def test_a_volume_build_holding_a_2d_shard_is_refused(vbuild, tmp_path):
    """A sample shard under a volume build's name: `softmask verify` and the exports refuse it (exit 3,
    naming the shard). The refusal
    comes before any NIfTI is written, so this runs without the export extra."""
    build = tmp_path / "mixed"
    shutil.copytree(vbuild, build)
    name = shard_name(DATASET, "test", 0, 1, kind="volumes")
    with open_shard(build / name) as shard:
        sample, attrs = shard.sample(0), dict(shard.attrs)
    attrs = {k: v for k, v in attrs.items() if k not in ("schema_version", "kind", "n_samples")}
    rows = [{**{k: sample[k] for k in ("sample_id", "source_key", "patient", "split", "n_readers")},
             "spacing_mm": SPACING_ZRC[1:], "origin_px": (200.0, 180.0)}]
    arrays = {k: sample[k][24][None] for k in ("image_hu", "soft_mask", "binary_mask", "trimap")}
    digest = write_shard(build / name, arrays=arrays, meta=encode_meta(rows), attrs=attrs)
    manifest = json.loads((build / MANIFEST).read_text())
    for entry in manifest["shards"]:
        if entry["file"] == name:
            entry.update(sha256=digest, bytes=(build / name).stat().st_size)
    (build / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    sums = {line.split("  ")[1]: line.split("  ")[0] for line in (build / SUMS).read_text().splitlines()}
    sums.update({name: digest, MANIFEST: sha256_file(build / MANIFEST)})
    (build / SUMS).write_text(sums_text(sums))
    # `softmask verify` compares each shard's kind with the manifest's since the volume build landed
    verified = invoke("verify", build)
    assert verified.exit_code == EXIT_VERIFY and "kind 'samples', manifest says 'volumes'" in verified.stderr
    for args in (("nnunet", build, "--dataset-id", 9, "--out", tmp_path / "raw"),
                 ("monai", build, "--out", tmp_path / "monai")):
        result = invoke("export", *args)
        assert result.exit_code == EXIT_VERIFY, result.output
        assert f"shard {name}: kind 'samples', manifest says 'volumes'" in result.stderr
    assert not (tmp_path / "raw").exists() and not (tmp_path / "monai").exists()


# ---------------------------------------------------------------------------- timing (issue 26, item 5)
def time_export_and_plan(root: Path, monkeypatch) -> dict:
    """Seconds to export the fixture for nnU-Net and to plan it (fingerprint + planner), and the
    planned 3d_fullres patch and spacing: the figures of the issue's closing note."""
    build = write_volume_build(root / "build")
    t0 = time.perf_counter()
    result = invoke("export", "nnunet", build, "--dataset-id", 527, "--out", root / "raw")
    t1 = time.perf_counter()
    assert result.exit_code == 0, result.output
    plans = plan_3d(root / "raw", root / "pre", 527, monkeypatch)
    t2 = time.perf_counter()
    full = plans["configurations"]["3d_fullres"]
    return {"export_s": round(t1 - t0, 2), "plan_s": round(t2 - t1, 2), **plans["_seconds"],
            "configurations": sorted(plans["configurations"]), "patch_size": full["patch_size"],
            "spacing": full["spacing"], "batch_size": full["batch_size"]}


@pytest.mark.export
@pytest.mark.slow
def test_print_export_and_plan_time(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    figures = time_export_and_plan(tmp_path, monkeypatch)
    with capsys.disabled():
        print(f"\nvolume export + plan on 3+1+1 crops of {VOLUME_CROP_ZRC}: {json.dumps(figures)}")
    assert tuple(figures["patch_size"]) == VOLUME_CROP_ZRC
