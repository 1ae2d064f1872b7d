"""Volume builds (issue 26) on the real LIDC fixture: `softmask build lidc --volumes` writes shards
of kind "volumes", a manifest / card / croissant.json describing (Z, H, W) arrays, rejects rows for
bad nodules, passes `softmask verify`, and gives the same bytes at --jobs 1 and 2 from two
different source paths; verify catches a shard whose kind is not the manifest's."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import EXIT_INPUT, EXIT_VERIFY, main
from softmask_builder.formats.release_folder import MANIFEST, SUMS, sums_text
from softmask_builder.formats.shards import open_shard, sha256_file

CASE1, CASE2 = "LIDC-IDRI-0001", "LIDC-IDRI-0002"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file a build leaves (the lock file holds a process id: left out)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def two_builds(lidc_root, tmp_path_factory):
    """The fixture built twice: through a symlink at --jobs 1, and from a copy elsewhere at --jobs 2
    (multiprocessing workers). min_readers 2, so that LIDC-IDRI-0002's nodule (2 readers, a
    partial series) is planned and becomes a rejects row."""
    tmp = tmp_path_factory.mktemp("vol")
    link = tmp / "mount-a" / "lidc"
    link.parent.mkdir()
    link.symlink_to(lidc_root, target_is_directory=True)
    copy = tmp / "elsewhere" / "deeper" / "LIDC"
    for case in (CASE1, CASE2):
        shutil.copytree(lidc_root / case, copy / case)
    recipe = tmp / "lidc3d_two.yaml"
    recipe.write_text("dataset: lidc3d\nsource: lidc_volumes\nsamples_per_shard: 4\n"
                      "source_options: {min_readers: 2}\n"
                      "split: {method: patient, seed: 0, fractions: {train: 1.0}}\n")
    outs = []
    for src, jobs in ((link, 1), (copy, 2)):
        out = tmp / f"out-j{jobs}"
        result = invoke("build", "lidc", src, "--volumes", "--recipe", recipe, "--out", out, "--jobs", jobs,
                        "--no-progress")
        assert result.exit_code == 0, result.output
        outs.append((out, json.loads(result.stdout), result.stderr))
    return outs


def test_same_bytes_at_any_jobs_and_mount_path(two_builds):
    (a, _, _), (b, _, _) = two_builds
    files_a, files_b = _files(a), _files(b)
    assert "lidc3d-volumes-train-00000-of-00001.h5" in files_a
    assert files_a == files_b


def test_volume_build_content_rejects_and_verify(two_builds):
    out, summary, stderr = two_builds[0]
    assert summary["n_samples"] == 1 and summary["rejects_by_stage"] == {"plan": 1}
    assert "built 1 volumes of lidc3d" in stderr
    rejects = (out / "rejects.csv").read_text().splitlines()
    assert rejects[1].startswith(f"{CASE2}_n01,plan,") and "partial series" in rejects[1]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "volumes"
    assert manifest["recipe"]["volume"] == {"crop_zrc": [48, 96, 96], "isotropic": False}
    assert "crop_px" not in manifest["recipe"]
    with open_shard(out / manifest["shards"][0]["file"]) as shard:
        assert shard.kind == "volumes"
        arrays = meta = shard.sample(0)
    assert arrays["image_hu"].shape == arrays["soft_mask"].shape == (48, 96, 96)
    assert meta["sample_id"] == f"{CASE1}_n01" and meta["n_readers"] == 4
    assert np.allclose(meta["spacing_mm"], (2.5, 0.703125, 0.703125))
    # the binary ground truth is the readers' 50 % consensus; the Soft Mask is 1 on the intersection
    # (sure lesion) and 0 outside the union (sure background): the readers' trimap, strategy 2
    trimap = arrays["trimap"]
    assert set(np.unique(trimap)) <= {0, 128, 255}
    assert (arrays["soft_mask"][trimap == 255] == 1).all() and (arrays["soft_mask"][trimap == 0] == 0).all()
    assert 0 < arrays["soft_mask"][trimap == 128].mean() < 1
    croissant = json.loads((out / "croissant.json").read_text())
    shapes = {f["name"]: f.get("arrayShape") for f in croissant["recordSet"][0]["field"]}
    assert shapes["soft_mask"] == shapes["image_hu"] == "48,96,96" and shapes["spacing_mm"] == "3"
    card = (out / "DATASET_CARD.md").read_text()
    assert "array3_d" in card and "48x96x96 (z, row, col)" in card
    result = invoke("verify", out)
    assert result.exit_code == 0, result.output


def test_verify_catches_a_shard_of_another_kind(two_builds, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(two_builds[0][0], out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["kind"] = "samples"  # the shards hold volumes
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    names = [line.split("  ", 1)[1] for line in (out / SUMS).read_text().splitlines()]
    (out / SUMS).write_text(sums_text({n: sha256_file(out / n) for n in names}))
    result = invoke("verify", out)
    assert result.exit_code == EXIT_VERIFY
    assert "kind 'volumes', manifest says 'samples'" in result.stderr


def test_cli_volume_options(lidc_root, tmp_path):
    # --volumes picks the bundled 3-D recipe (4 readers: 0002's 2-reader nodule is left out)
    result = invoke("build", "lidc", lidc_root, "--volumes", "--dry-run", "--out", tmp_path / "x")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "lidc3d" and summary["n_planned"] == 1 and summary["n_unselected"] == 1
    # --isotropic on a 2-D recipe, and a 2-D recipe with --volumes: one line, exit 2
    result = invoke("build", "lidc", lidc_root, "--isotropic", "--dry-run", "--out", tmp_path / "y")
    assert result.exit_code == EXIT_INPUT and "applies to a volume build" in result.stderr
    result = invoke("build", "lidc", lidc_root, "--volumes", "--recipe", "lidc", "--dry-run", "--out", tmp_path / "z")
    assert result.exit_code == EXIT_INPUT and "lidc_volumes" in result.stderr


def test_preview_of_a_volume_build_draws_the_three_planes(two_builds, tmp_path):
    from PIL import Image

    from softmask_builder.reports.preview3d import preview_volume_png, volume_preview_report

    out, _, _ = two_builds[0]
    result = invoke("preview", out, "--out", tmp_path / "p.png", "--n", 2, "--per-sample", tmp_path / "each")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n"] == 1 and summary["sample_ids"] == [f"{CASE1}_n01"]
    # the sheet is the volume renderer's, not the 2-D one's (which fails on (Z, H, W) arrays)
    direct = volume_preview_report(out, tmp_path / "direct.png", n=2)
    assert (tmp_path / "p.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    assert direct["sample_ids"] == summary["sample_ids"]
    with Image.open(tmp_path / "p.png") as img:
        assert img.format == "PNG" and img.width > 0
    manifest = json.loads((out / MANIFEST).read_text())
    with open_shard(out / manifest["shards"][0]["file"]) as shard:
        smp = shard.sample(0)
    expected = preview_volume_png(smp["image_hu"], smp["soft_mask"], smp["binary_mask"],
                                  tuple(float(v) for v in smp["spacing_mm"]), window_hu=(-700.0, 1000.0),
                                  title=f"{CASE1}_n01 [train]")
    assert summary["per_sample"] == [str(tmp_path / "each" / f"{CASE1}_n01.png")]
    assert (tmp_path / "each" / f"{CASE1}_n01.png").read_bytes() == expected
