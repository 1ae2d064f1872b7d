"""Segmentation networks from a config or a seg checkpoint (:mod:`dsnet_trainer.models.loading`):
where the teacher comes from, the errors that name it, and the checkpoint-only rebuild that
inference uses."""

from __future__ import annotations

import pytest
import torch

from dsnet_trainer.checkpoint import load_checkpoint
from dsnet_trainer.errors import CheckpointError, ConfigError
from dsnet_trainer.models.loading import build_from_config, load_seg_model
from dsnet_trainer.train_seg import train_seg

from .seg_helpers import tiny_config, write_sample_dataset, write_tiny_teacher


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    return write_sample_dataset(tmp / "data"), write_tiny_teacher(tmp / "teacher.pt")


def test_teacher_problems_are_named(assets, tmp_path):
    data, teacher = assets
    cfg = tiny_config(data, tmp_path / "x", teacher="")
    with pytest.raises(ConfigError, match="needs the SR teacher"):
        build_from_config(cfg.model, data_cfg=cfg.data)
    other_window = write_tiny_teacher(tmp_path / "t-mediastinal.pt", level_hu=40.0, width_hu=400.0)
    cfg = tiny_config(data, tmp_path / "x", teacher=other_window)
    with pytest.raises(CheckpointError, match="t-mediastinal.pt was trained on images windowed at level 40.0"):
        build_from_config(cfg.model, data_cfg=cfg.data)
    run = train_seg(tiny_config(data, tmp_path / "u", variant="unet", epochs=1, steps=1))
    cfg = tiny_config(data, tmp_path / "x", teacher=run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="not an SR teacher file"):
        build_from_config(cfg.model, data_cfg=cfg.data)
    # an LR variant never opens the teacher file
    cfg = tiny_config(data, tmp_path / "x", variant="backbone", teacher=tmp_path / "missing.pt")
    net, disc, _ = build_from_config(cfg.model, data_cfg=cfg.data)
    assert net.teacher is None and disc is None


def test_checkpoint_alone_rebuilds_the_trained_network(assets, tmp_path):
    data, teacher = assets
    run = train_seg(tiny_config(data, tmp_path / "r", teacher=teacher, epochs=1, steps=1))
    ckpt = run / "checkpoints" / "last.pt"
    teacher.rename(tmp_path / "teacher-gone.pt")  # the checkpoint keeps the teacher's weights
    try:
        net, info = load_seg_model(ckpt)
    finally:
        (tmp_path / "teacher-gone.pt").rename(teacher)
    assert not net.training and info["variant"] == "dsnet" and info["crop_px"] == 32
    saved = load_checkpoint(ckpt)["modules"]["model"]
    mine = net.state_dict()
    assert set(mine) == set(saved)
    for k in saved:
        torch.testing.assert_close(mine[k], saved[k], rtol=0, atol=0)
    assert info["teacher_arch"]["model"]["name"] == "srresnet"
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.pt"):
        load_seg_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="teacher.pt is not a dsnet_trainer checkpoint"):
        load_seg_model(teacher)
