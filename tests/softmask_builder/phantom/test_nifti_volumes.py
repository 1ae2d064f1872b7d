"""The bundled 3-D sample (`make lnsm3d`, issue 26): 3-D hybrid nodules written as NIfTI image /
mask / truth files, built with the NIfTI volume source.

Oracles: the phantom's own volumes (``iter_hybrid_volumes`` with the same seed and margin) read
back from the files through the NIfTI adapter; the readers' 50 % consensus counted by hand
(``sum of reader masks >= R / 2``); the shard's true_fraction against the truth file's crop at the
sample's origin; byte comparison of two writes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import main
from softmask_builder.formats.release_folder import MANIFEST
from softmask_builder.formats.shards import open_shard
from softmask_builder.phantom.nifti_volumes import DEFAULT_MARGIN_MM, MARKER, write_volume_sample
from softmask_builder.sources.nifti import read_nifti_zrc

N = 2


@pytest.fixture(scope="module")
def shapes():
    from softmask_builder.phantom.hybrid import sample_patients
    from softmask_builder.phantom.shapes import load_shapes

    return load_shapes(patients=sample_patients(60)).shapes


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_hold_the_phantom_volumes_and_are_deterministic(shapes, tmp_path):
    from softmask_builder.phantom.volumes import iter_hybrid_volumes

    a = write_volume_sample(tmp_path / "a", n=N, seed=3, shapes=shapes)
    write_volume_sample(tmp_path / "b", n=N, seed=3, shapes=shapes)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert json.loads((tmp_path / "a" / MARKER).read_text()) == a and a["n_written"] == N
    vols = list(iter_hybrid_volumes(N, shapes=shapes, seed=3, margin_mm=DEFAULT_MARGIN_MM))
    for row, vol in zip(a["volumes"], vols):
        name = row["name"]
        assert name.split("_")[0] == vol.lidc_patient_id
        image, spacing = read_nifti_zrc(tmp_path / "a" / "images" / f"{name}.nii.gz")
        mask, _ = read_nifti_zrc(tmp_path / "a" / "masks" / f"{name}.nii.gz", role="mask")
        truth, _ = read_nifti_zrc(tmp_path / "a" / "truth" / f"{name}.nii.gz")
        np.testing.assert_array_equal(image, vol.image_hu)
        np.testing.assert_array_equal(truth, vol.true_fraction)
        n_readers = vol.reader_masks.shape[0]
        np.testing.assert_array_equal(mask, vol.reader_masks.sum(axis=0) * 2 >= n_readers)
        np.testing.assert_allclose(spacing, vol.spacing_mm, rtol=1e-6)
        # 40 mm of chest around the nodule: the 96 x 96 in-plane crop fits inside the volume
        assert min(vol.image_hu.shape[1:]) >= 96


def test_make_lnsm3d_builds_verifies_and_carries_the_truth(tmp_path):
    out = tmp_path / "lnsm3d"
    result = CliRunner().invoke(main, ["make-lnsm3d", "--out", str(out), "--n", str(N), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["verify"]["ok"] and summary["build"]["n_samples"] >= 1
    assert Path(summary["preview"]).read_bytes()[:4] == b"\x89PNG"
    source = tmp_path / "lnsm3d-phantom-source"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "volumes" and manifest["dataset"] == "lnsm3d"
    n_checked = 0
    for entry in manifest["shards"]:
        with open_shard(out / entry["file"]) as shard:
            for i in range(shard.n_samples):
                smp = shard.sample(i)
                name = str(smp["sample_id"]).rsplit("_n", 1)[0]
                truth, _ = read_nifti_zrc(source / "truth" / f"{name}.nii.gz")
                z0, r0, c0 = (int(v) for v in smp["origin_px"])
                # the crop of the truth file (z clipped and edge rows beyond the volume are 0)
                expected = np.zeros((48, 96, 96), np.float32)
                zs = slice(max(z0, 0), min(z0 + 48, truth.shape[0]))
                expected[zs.start - z0:zs.stop - z0] = truth[zs, r0:r0 + 96, c0:c0 + 96]
                np.testing.assert_array_equal(smp["true_fraction"], expected)
                n_checked += 1
    assert n_checked == summary["build"]["n_samples"]
    # a second run reuses the phantom source and keeps the finished shards
    again = CliRunner().invoke(main, ["make-lnsm3d", "--out", str(out), "--n", str(N), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["phantom"]["reused"] is True
