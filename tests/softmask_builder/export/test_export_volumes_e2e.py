"""End to end (issue 26): real volume builds -> `softmask export nnunet` -> nnU-Net v2's own
``verify_dataset_integrity`` and experiment planner, which must give a ``3d_fullres`` configuration
at the crops' spacing.

Two builds made by the CLI, not written by hand (test_export_volumes.py's helpers check the file
contents on a hand-written build): the real LIDC-IDRI-0001 fixture built with
`softmask build lidc --volumes` (skipped, with the reason, when /work/shared/data is absent), and
`softmask make-lnsm3d`'s bundled 3-D sample (no external data). Oracles: the shards' own spacing
and crop size (what nnU-Net's fingerprint must read back through SimpleITK), and nnU-Net's rule for
the full-resolution spacing (the median of the cases' spacings; with one spacing, that spacing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import main
from softmask_builder.formats.release_folder import MANIFEST
from softmask_builder.formats.shards import open_shard
from softmask_builder.labelling.crop import VOLUME_CROP_ZRC

from .test_export_volumes import plan_3d

pytestmark = pytest.mark.export


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _spacings(build: Path, splits=("train", "val")) -> list[tuple[float, ...]]:
    manifest = json.loads((build / MANIFEST).read_text())
    out = []
    for entry in manifest["shards"]:
        if entry["split"] in splits:
            with open_shard(build / entry["file"]) as shard:
                out += [tuple(float(v) for v in shard.sample(i)["spacing_mm"]) for i in range(len(shard))]
    return out


def _export_verify_plan(build: Path, dataset_id: int, name: str, tmp_path: Path, monkeypatch, capsys) -> dict:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    result = invoke("export", "nnunet", build, "--dataset-id", dataset_id, "--name", name, "--out", raw)
    assert result.exit_code == 0, result.output
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    capsys.readouterr()
    verify_dataset_integrity(str(folder), 1)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out
    plans = plan_3d(raw, tmp_path / "pre", dataset_id, monkeypatch)
    fingerprint = json.loads((tmp_path / "pre" / folder.name / "dataset_fingerprint.json").read_text())
    # nnU-Net read every volume in the shards' (z, row, col) order, at the shards' spacing
    spacings = _spacings(build)
    np.testing.assert_allclose(sorted(map(tuple, fingerprint["spacings"])), sorted(spacings), rtol=1e-6)
    assert all(tuple(s) == VOLUME_CROP_ZRC for s in fingerprint["shapes_after_crop"])
    return plans, spacings


def test_lidc_0001_volume_build_exports_to_nnunet_3d_fullres(lidc_root, tmp_path, monkeypatch, capsys):
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    recipe = tmp_path / "lidc3d_all_train.yaml"  # the one nodule in train (nnU-Net needs training cases)
    recipe.write_text("dataset: lidc3d\nsource: lidc_volumes\nsamples_per_shard: 4\n"
                      "split: {method: patient, seed: 0, fractions: {train: 1.0}}\n")
    build = tmp_path / "lidc3d"
    result = invoke("build", "lidc", lidc_root, "--volumes", "--recipe", recipe, "--out", build, "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_samples"] == 1
    plans, spacings = _export_verify_plan(build, 527, "LIDC3D", tmp_path, monkeypatch, capsys)
    assert spacings == [pytest.approx((2.5, 0.703125, 0.703125))]
    full = plans["configurations"]["3d_fullres"]
    np.testing.assert_allclose(full["spacing"], spacings[0], rtol=1e-6)
    assert plans["transpose_forward"] == [0, 1, 2] and tuple(full["patch_size"]) == VOLUME_CROP_ZRC


def test_lnsm3d_build_exports_to_nnunet_3d_fullres(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nnunetv2", reason="the export extra is not installed (nnunetv2)")
    build = tmp_path / "lnsm3d"
    result = invoke("make-lnsm3d", "--out", build, "--n", 6, "--no-progress")
    assert result.exit_code == 0, result.output
    plans, spacings = _export_verify_plan(build, 528, "LNSM3D", tmp_path, monkeypatch, capsys)
    full = plans["configurations"]["3d_fullres"]
    # nnU-Net's full-resolution spacing is the per-axis median of the cases' spacings
    np.testing.assert_allclose(full["spacing"], np.median(np.array(spacings), axis=0), rtol=1e-6)
    assert plans["transpose_forward"] == [0, 1, 2]
    assert all(p <= c for p, c in zip(full["patch_size"], VOLUME_CROP_ZRC))
