"""Export: the exported module (HU in) matches the eager network fed by the training-time window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsnet_trainer.data import SampleShardDataset
from dsnet_trainer.errors import InputError
from dsnet_trainer.export import ExportMismatchError, export_checkpoint, load_exported
from dsnet_trainer.train_seg import load_seg_model

from .seg_helpers import trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("exprun"), variant="dsnet")


def _check_against_eager(path, data, ckpt):
    module = load_exported(path)
    net, _ = load_seg_model(ckpt)
    ds = SampleShardDataset(data, split="test")
    hu = np.stack([ds.reader.read(*ds.reader.locate(i), "image_hu") for i in range(len(ds))]).astype(np.float32)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])  # windowed by the data loader
    with torch.no_grad():
        prob, alpha = module(torch.from_numpy(hu)[:, None])
        prob_ref, soft_ref = net(x)
    torch.testing.assert_close(prob, prob_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, (soft_ref + 1) / 2, rtol=0, atol=1e-5)


def test_torchscript_export_matches_eager(run, tmp_path):
    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    info = export_checkpoint(ckpt, tmp_path / "dsnet.pt", data=data)
    assert info["max_abs_diff"] <= 1e-5 and info["checked_batches"][:2] == [1, 3]
    _check_against_eager(tmp_path / "dsnet.pt", data, ckpt)


@pytest.mark.slow
def test_torch_export_matches_eager(run, tmp_path):
    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    export_checkpoint(ckpt, tmp_path / "dsnet.pt2", fmt="exported")
    _check_against_eager(tmp_path / "dsnet.pt2", data, ckpt)


def test_mismatch_leaves_no_file_and_bad_options(run, tmp_path):
    _, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    with pytest.raises(ExportMismatchError, match="differ from eager outputs"):
        export_checkpoint(ckpt, tmp_path / "m.pt", atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=".pt2"):
        export_checkpoint(ckpt, tmp_path / "m.pt", fmt="exported")
    with pytest.raises(InputError, match="--format"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", fmt="onnx")
