"""The teacher on the project's sample data: phantom chest CT (``softmask phantom``) built into
slice shards by the builder (``softmask build slices``), then ``dsnet pretrain-sr`` with the
tiny config. It must beat bicubic, as measured by scikit-image on the validation slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from skimage.metrics import peak_signal_noise_ratio

from dsnet_trainer.cli import main as dsnet
from dsnet_trainer.config import load_config
from dsnet_trainer.models.teacher import load_teacher
from dsnet_trainer.sr import SRConfig, build_sr_datasets

# Shorter than sr_tiny's defaults (fewer slices per epoch, validation only at the end).
QUICK = ["-s", "stage1.epochs=6", "-s", "stage1.milestones=[5]", "-s", "stage2.epochs=1",
         "-s", "loop.val_every_epochs=0", "-s", "data.val_max_slices=3", "-s", "data.patches_per_slice=6"]


@pytest.fixture(scope="module")
def phantom_slices(tmp_path_factory):
    from softmask_builder.cli import main as softmask

    root = tmp_path_factory.mktemp("phantom")
    res = CliRunner().invoke(softmask, ["phantom", "--out", str(root / "src"), "--n", "8"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(softmask, ["build", "slices", str(root / "src"), "--recipe", "slices",
                                        "--out", str(root / "slices"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "slices"


def test_teacher_beats_bicubic_on_the_phantom_sample(phantom_slices, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(dsnet, ["pretrain-sr", "--data", str(phantom_slices), "--out", str(out),
                                     "--config", "sr_tiny", "--no-progress", *QUICK])
    assert res.exit_code == 0, res.output
    cfg = load_config(SRConfig, out / "config.yaml")
    val = build_sr_datasets(cfg, phantom_slices).val
    teacher = load_teacher(out / "teacher.pt")
    b = cfg.shave_px
    scores = []
    for i in range(len(val)):
        item = val[i]
        lr, hr = item["lr"][None], item["hr"][0].numpy().astype(np.float64)[b:-b, b:-b]
        with torch.no_grad():
            sr = teacher(lr).sr[0, 0].numpy().astype(np.float64)[b:-b, b:-b]
        bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
        bic = bic[0, 0].numpy().astype(np.float64)[b:-b, b:-b]
        scores.append((peak_signal_noise_ratio(hr, sr, data_range=2.0), peak_signal_noise_ratio(hr, bic, data_range=2.0)))
    psnr_sr, psnr_bic = np.mean(scores, axis=0)
    assert psnr_sr > psnr_bic + 0.5, (psnr_sr, psnr_bic)
    report = json.loads((out / "report.json").read_text())
    assert report["bicubic"]["psnr"] == pytest.approx(psnr_bic, abs=1e-3)
    assert report["srgan"]["psnr"] == pytest.approx(psnr_sr, abs=1e-3)
    assert "| + adversarial fine-tuning (stage 2) |" in res.output
