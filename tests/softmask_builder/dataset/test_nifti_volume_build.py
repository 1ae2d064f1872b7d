"""`softmask build masks FOLDER --volumes` (issue 26): NIfTI image / mask pairs written in tmp_path
(through ``sources.nifti.zrc_to_nifti``, the dcm2niix storage) build volume shards with the same
bytes at --jobs 1 and 2 from two different paths, pass `softmask verify`, keep a bad pair as a
rejects row, and carry an optional truth file into the shards as ``true_fraction``.

Oracles: the arrays written by hand (the shard's image_hu is the hand-cut window of the written
volume; its true_fraction the same window of the written truth), byte comparison of two builds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import main
from softmask_builder.formats.release_folder import MANIFEST
from softmask_builder.formats.shards import open_shard
from softmask_builder.sources.nifti import zrc_to_nifti

SHAPE = (20, 40, 44)           # (z, row, col)
SPACING = (2.5, 0.8, 0.65)     # (z, row, col) mm
CROP = (12, 24, 24)
RECIPE = ("dataset: nii3d\nsource: nifti_volumes\nsamples_per_shard: 2\n"
          f"volume: {{crop_zrc: [{CROP[0]}, {CROP[1]}, {CROP[2]}]}}\n"
          "split: {method: patient, seed: 0, fractions: {train: 1.0}}\n")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".lock"}


def _save(path: Path, volume_zrc, spacing=SPACING) -> None:
    data, affine = zrc_to_nifti(volume_zrc, spacing, origin_mm=(120.0, 90.0, -300.0))
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def _volume(seed: int) -> np.ndarray:
    """Lung-like noise with one dense ball (the lesion) at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-800.0, 30.0, size=SHAPE).astype(np.float32)
    z, r, c = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    centre = (10, 18 + seed, 20 + seed)
    ball = ((z - centre[0]) * SPACING[0]) ** 2 + ((r - centre[1]) * SPACING[1]) ** 2 + \
        ((c - centre[2]) * SPACING[2]) ** 2 <= 4.5 ** 2
    image[ball] = rng.normal(30.0, 20.0, size=int(ball.sum()))
    return image, ball


def _write_folder(folder: Path, *, bad: bool = True, truth: bool = False) -> dict:
    folder.mkdir(parents=True)
    written = {}
    for k, name in enumerate(("p01", "p02")):
        image, ball = _volume(k)
        _save(folder / f"{name}.nii.gz", image.round().astype(np.int16))
        _save(folder / f"{name}_mask.nii.gz", ball.astype(np.uint8))
        if truth:
            frac = ball.astype(np.float32) * np.float32(0.75)
            _save(folder / f"{name}_truth.nii.gz", frac)
        written[name] = (image.round().astype(np.int16), ball)
    if bad:  # a label map, not a binary mask: rejected, not thresholded
        image, ball = _volume(2)
        _save(folder / "p03.nii.gz", image.round().astype(np.int16))
        _save(folder / "p03_mask.nii.gz", ball.astype(np.uint8) * 3)
    return written


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nii3d")
    src = tmp / "data" / "nifti"
    written = _write_folder(src)
    link = tmp / "mount-a" / "nifti"
    link.parent.mkdir()
    link.symlink_to(src, target_is_directory=True)
    copy = tmp / "elsewhere" / "deeper" / "N"
    shutil.copytree(src, copy)
    recipe = tmp / "nii3d.yaml"
    recipe.write_text(RECIPE)
    outs = []
    for folder, jobs in ((link, 1), (copy, 2)):
        out = tmp / f"out-j{jobs}"
        result = invoke("build", "masks", folder, "--volumes", "--recipe", recipe, "--out", out, "--jobs", jobs,
                        "--no-progress")
        assert result.exit_code == 0, result.output
        outs.append((out, json.loads(result.stdout)))
    return outs, written


def test_same_bytes_at_any_jobs_and_mount_path(two_builds):
    (a, _), (b, _) = two_builds[0]
    files_a = _files(a)
    assert "nii3d-volumes-train-00000-of-00001.h5" in files_a
    assert files_a == _files(b)


def test_content_rejects_and_verify(two_builds):
    (out, summary), _ = two_builds[0]
    written = two_builds[1]
    assert summary["n_samples"] == 2 and summary["rejects_by_stage"] == {"plan": 1}
    rejects = (out / "rejects.csv").read_text().splitlines()
    assert len(rejects) == 2 and rejects[1].startswith("p03,plan,") and "p03_mask.nii.gz" in rejects[1]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "volumes" and manifest["recipe"]["source"] == "nifti_volumes"
    with open_shard(out / manifest["shards"][0]["file"]) as shard:
        assert shard.kind == "volumes"
        for i in range(2):
            sample = shard.sample(i)
            name = sample["sample_id"].split("_")[0]
            image, ball = written[name]
            z0, r0, c0 = (int(v) for v in sample["origin_px"])
            window = (slice(z0, z0 + CROP[0]), slice(r0, r0 + CROP[1]), slice(c0, c0 + CROP[2]))
            assert (z0, r0, c0) >= (0, 0, 0)  # the ball's crop lies inside the volume
            np.testing.assert_array_equal(sample["image_hu"], image[window].astype(np.float32))
            np.testing.assert_allclose(sample["spacing_mm"], SPACING, rtol=1e-6)
            trimap = sample["trimap"]
            assert (trimap[ball[window]] != 0).all()  # the mask lies inside the unknown or sure-lesion band
            assert "true_fraction" not in sample
    result = invoke("verify", out)
    assert result.exit_code == 0, result.output


def test_default_volume_recipe_and_out(tmp_path):
    src = tmp_path / "nifti"
    _write_folder(src, bad=False)
    result = invoke("build", "masks", src, "--volumes", "--dry-run", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "masks3d" and summary["n_planned"] == 2
    help_text = invoke("build", "masks", "--help").output
    assert "--volumes" in help_text and "build/masks3d" in help_text


def test_truth_file_travels_as_true_fraction(tmp_path):
    src = tmp_path / "nifti"
    written = _write_folder(src, bad=False, truth=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    result = invoke("build", "masks", src, "--volumes", "--recipe", recipe, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_rejects"] == 0  # the _truth files are not unpaired images
    manifest = json.loads((out / MANIFEST).read_text())
    with open_shard(out / manifest["shards"][0]["file"]) as shard:
        for i in range(2):
            sample = shard.sample(i)
            _, ball = written[sample["sample_id"].split("_")[0]]
            z0, r0, c0 = (int(v) for v in sample["origin_px"])
            expected = ball[z0:z0 + CROP[0], r0:r0 + CROP[1], c0:c0 + CROP[2]] * np.float32(0.75)
            np.testing.assert_array_equal(sample["true_fraction"], expected.astype(np.float32))
    assert invoke("verify", out).exit_code == 0
    # one pair without its truth while the others have one: a rejects row, the rest builds
    (src / "p02_truth.nii.gz").unlink()
    result = invoke("build", "masks", src, "--volumes", "--recipe", recipe, "--out", tmp_path / "out2",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "out2" / "rejects.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("p02,plan,") and "no truth file" in rows[1]


def test_report_of_a_volume_build_lists_the_volumes(two_builds, tmp_path):
    (out, _), _ = two_builds[0]
    written = two_builds[1]
    html_out = tmp_path / "r.html"
    result = invoke("report", out, "--out", html_out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_samples"] == 2 and summary["n_rejects"] == 1
    assert "2 samples, 1 rejects" in result.stderr
    page = html_out.read_text()
    voxel_mm3 = float(np.prod(SPACING))
    for name, (_, ball) in written.items():  # the whole ball lies inside its crop
        n = int(ball.sum())
        assert f"<td>{name}_n01</td><td>train</td><td>{n}</td><td>{n * voxel_mm3:.1f}</td>" in page
    assert page.count("three planes") == 2


def test_preview_draws_a_volume_build_and_refuses_per_sample_on_2d(two_builds, tmp_path):
    (out, _), _ = two_builds[0]
    result = invoke("preview", out, "--out", tmp_path / "p.png", "--per-sample", tmp_path / "each")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["p01_n01.png", "p02_n01.png"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
