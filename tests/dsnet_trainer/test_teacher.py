"""The SR teacher file (:mod:`dsnet_trainer.models.teacher`): its layout, the checks on load, the
architecture record a seg checkpoint keeps. (A trained teacher: ``test_sr.py``.)"""

from __future__ import annotations

import pytest
import torch

from dsnet_trainer.digest import weights_sha256
from dsnet_trainer.errors import CheckpointError
from dsnet_trainer.models.srresnet import SRResNet
from dsnet_trainer.models.teacher import (SRTeacher, load_teacher, read_teacher_arch, read_teacher_file,
                                          teacher_from_arch, teacher_summary)

from .seg_helpers import write_tiny_teacher

# The keys of every version-2 teacher file, in their order.
LAYOUT = ["format", "version", "weights_sha256", "train_patients", "data_provenance", "stage", "model", "data", "generator", "metrics",
          "config", "config_sha256"]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", level_hu=-500.0, width_hu=1400.0)


def test_layout_and_digest(teacher_file):
    obj = torch.load(teacher_file, weights_only=True)  # a plain weights-only mapping
    assert list(obj) == LAYOUT
    assert (obj["format"], obj["version"]) == ("dsnet-sr-teacher", 2)
    assert obj["weights_sha256"] == weights_sha256({"generator": obj["generator"]})
    assert obj["model"] == {"name": "srresnet", "kwargs": {"in_channels": 1, "n_channels": 4, "n_blocks": 1,
                                                           "scale": 4, "norm": "none", "residual_bicubic": True}}
    assert obj["data"] == {"scale": 4, "window_level_hu": -500.0, "window_width_hu": 1400.0, "downsample": "bicubic"}
    assert read_teacher_file(teacher_file)["config_sha256"] == obj["config_sha256"]


def test_load_and_rebuild_from_the_record(teacher_file):
    teacher = load_teacher(teacher_file)
    assert isinstance(teacher, SRTeacher) and not any(p.requires_grad for p in teacher.parameters())
    assert (teacher.scale, teacher.feature_channels, teacher.window_level_hu) == (4, 4, -500.0)
    arch = read_teacher_arch(teacher_file)
    assert set(arch) == {"model", "data", "train_patients"}
    rebuilt = teacher_from_arch(arch)
    assert isinstance(rebuilt.generator, SRResNet)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                      teacher.state_dict().items()}
    summary = teacher_summary(teacher_file)
    assert summary["n_parameters"] == sum(p.numel() for p in teacher.parameters())


def test_edited_weights_are_refused(teacher_file, tmp_path):
    obj = torch.load(teacher_file, weights_only=True)
    name = next(iter(obj["generator"]))
    obj["generator"][name] = obj["generator"][name] + 1.0
    edited = tmp_path / "edited.pt"
    torch.save(obj, edited)
    with pytest.raises(CheckpointError, match="edited.pt: teacher weights do not match their recorded sha256"):
        read_teacher_file(edited)
    obj["version"] = 1
    torch.save(obj, edited)
    with pytest.raises(CheckpointError, match="edited.pt: teacher version 1, expected 2 .*retrain"):
        load_teacher(edited)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot read teacher .*empty.pt: the file is empty"):
        load_teacher(tmp_path / "empty.pt")
