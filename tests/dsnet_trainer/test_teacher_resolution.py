"""`dsnet train` never finds the SR teacher in the current folder by accident (issue 24): a
teacher-using variant without --teacher is a one-line error saying where teachers come from; a
missing file names the absolute path looked at; a teacher trained on phantom slices, given a
real-source dataset, prints a loud warning on stderr (the teacher file records what its slices
were made of)."""

from __future__ import annotations

import json
import os

import torch
from click.testing import CliRunner

from dsnet_trainer.cli import main
from dsnet_trainer.provenance import phantom_teacher_warning
from tests.dsnet_trainer.seg_helpers import write_sample_dataset, write_tiny_teacher

PHANTOM = {"phantom": "hybrid", "shapes": "lidc", "backgrounds": ["synthetic"]}


def _train(tmp_path, *extra):
    ds = write_sample_dataset(tmp_path / "ds")
    return CliRunner().invoke(main, ["train", "--data", str(ds), "--out", str(tmp_path / "run"), "--no-verify",
                                     "--config", "seg_tiny", "--resume", "none", *extra])


def test_no_teacher_is_an_error_even_with_one_in_the_current_folder(tmp_path, monkeypatch):
    # A teacher where the old default pointed (runs/sr-sr_tiny/teacher.pt, relative to the cwd)
    # must not be picked up silently.
    (tmp_path / "runs" / "sr-sr_tiny").mkdir(parents=True)
    write_tiny_teacher(tmp_path / "runs" / "sr-sr_tiny" / "teacher.pt")
    monkeypatch.chdir(tmp_path)
    res = _train(tmp_path)
    assert res.exit_code == 2, res.output
    assert "variant dsnet needs an SR teacher: pass --teacher PATH" in res.output
    assert "make pretrain-sr" in res.output and "Traceback" not in res.output


def test_a_missing_teacher_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _train(tmp_path, "--teacher", "nowhere/teacher.pt")
    assert res.exit_code == 2, res.output
    assert f"looked for {os.path.join(str(tmp_path), 'nowhere', 'teacher.pt')}" in res.output


def _dataset_with_manifest(folder, provenance):
    folder.mkdir(parents=True)
    manifest = {"dataset": "x", "recipe": {"source": "deeplesion"}}
    if provenance:
        manifest["provenance"] = provenance
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_phantom_teacher_on_real_data_is_warned_about(tmp_path):
    teacher = write_tiny_teacher(tmp_path / "t.pt")
    obj = torch.load(teacher, map_location="cpu", weights_only=True)
    assert obj["data_provenance"] is None  # written by export_teacher without a provenance: real slices
    obj["data_provenance"] = PHANTOM
    torch.save(obj, tmp_path / "phantom_t.pt")
    real = _dataset_with_manifest(tmp_path / "real", None)
    phantom = _dataset_with_manifest(tmp_path / "ph", PHANTOM)
    warning = phantom_teacher_warning(tmp_path / "phantom_t.pt", real)
    assert warning and warning.startswith("WARNING: SR teacher") and "PHANTOM" in warning and "REAL" in warning
    assert phantom_teacher_warning(tmp_path / "phantom_t.pt", phantom) is None  # phantom on phantom: fine
    assert phantom_teacher_warning(teacher, real) is None  # real teacher on real data
    del obj["data_provenance"]
    torch.save(obj, tmp_path / "old_t.pt")
    assert phantom_teacher_warning(tmp_path / "old_t.pt", real) is None  # an older file: nothing known
