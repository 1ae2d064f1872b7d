"""The SR teacher end to end: a short CPU run must beat bicubic (measured, not assumed), the run
folder holds the report, curves, samples and teacher, and the exported teacher reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dsnet_trainer.config import load_config
from dsnet_trainer.data import SliceShardDataset
from dsnet_trainer.errors import CheckpointError, ConfigError, ShardError
from dsnet_trainer.models.teacher import load_teacher
from dsnet_trainer.sr import SRConfig, pretrain_sr

from .shardkit import synthetic_ct_slice, write_slice_shard

# ~180 stage-1 steps (6 slices x 16 patches / 8 per batch x 15 epochs), 12 SRGAN steps.
SHORT_RUN = ["loop.progress=false", "loop.num_workers=0", "stage1.epochs=15", "stage1.milestones=[12]",
             "stage2.epochs=1", "data.patches_per_slice=16", "loop.batch_size=8"]


@pytest.fixture(scope="module")
def short_run(slice_shards, tmp_path_factory):
    cfg = load_config(SRConfig, "sr_tiny", SHORT_RUN)
    out = tmp_path_factory.mktemp("sr_run")
    return cfg, pretrain_sr(cfg, data=slice_shards, out=out)


def _independent_scores(teacher, slice_shards, shave_px):
    """PSNR/SSIM with scikit-image of the reloaded teacher and of bicubic on the val slices."""
    val = SliceShardDataset(slice_shards, split="val", mode="val")
    rows = []
    for i in range(len(val)):
        item = val[i]
        lr, hr = item["lr"][None], item["hr"][0].numpy().astype(np.float64)
        with torch.no_grad():
            sr = teacher(lr).sr[0, 0].numpy().astype(np.float64)
        bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)[0, 0].numpy()
        s = np.s_[shave_px:-shave_px, shave_px:-shave_px]
        rows.append([peak_signal_noise_ratio(hr[s], sr[s], data_range=2.0),
                     peak_signal_noise_ratio(hr[s], bic[s].astype(np.float64), data_range=2.0),
                     structural_similarity(hr[s], sr[s], data_range=2.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False)])
    return np.mean(rows, axis=0)


def test_teacher_beats_bicubic_on_synthetic_ct(short_run, slice_shards):
    cfg, result = short_run
    report = result.report
    teacher = load_teacher(result.teacher_path)
    psnr_sr, psnr_bic, ssim_sr = _independent_scores(teacher, slice_shards, cfg.shave_px)
    # The report agrees with an independent evaluation of the exported file ...
    assert report["teacher"] == "srgan"
    assert report["srgan"]["psnr"] == pytest.approx(psnr_sr, abs=1e-3)
    assert report["bicubic"]["psnr"] == pytest.approx(psnr_bic, abs=1e-3)
    assert report["srgan"]["ssim"] == pytest.approx(ssim_sr, abs=1e-4)
    # ... and the measured gain over bicubic is real (> 0.5 dB) for both stages.
    assert psnr_sr > psnr_bic + 0.5, report
    assert report["srresnet"]["psnr"] > report["bicubic"]["psnr"] + 0.5, report
    assert report["n_val_slices"] == 2


def test_run_folder_contents(short_run):
    cfg, result = short_run
    out = result.out
    for name in ("config.yaml", "run_info.json", "report.json", "report.md", "teacher.pt"):
        assert (out / name).is_file(), name
    for stage in ("srresnet", "srgan"):
        for name in ("metrics.jsonl", "metrics.csv", "curves.png", "samples.png", "checkpoints/last.pt",
                     "checkpoints/best.pt"):
            assert (out / stage / name).is_file(), f"{stage}/{name}"
        assert (out / stage / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert load_config(SRConfig, out / "config.yaml") == cfg
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == cfg.loop.seed and "torch" in info["versions"]
    rows = [json.loads(x) for x in (out / "srresnet" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["phase"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 16))
    assert epochs[-1]["step"] == 15 * 12
    assert json.loads((out / "report.json").read_text()) == result.report
    assert "| bicubic |" in (out / "report.md").read_text()


def test_teacher_api_returns_sr_and_last_decoder_features(short_run):
    cfg, result = short_run
    teacher = load_teacher(result.teacher_path)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.generator.training  # stays frozen
    assert (teacher.scale, teacher.window_level_hu, teacher.window_width_hu) == (4, -600.0, 1500.0)
    lr = torch.rand(2, 1, 12, 16) * 2 - 1
    out = teacher(lr)
    assert out.sr.shape == (2, 1, 48, 64) and out.features.shape == (2, cfg.generator.n_channels, 48, 64)
    # Same numbers as the trained generator itself (features = output of its last decoder block).
    gen = result.generator.eval()
    with torch.no_grad():
        ref_sr, ref_feat = gen.forward_features(lr)
    assert torch.allclose(out.sr, ref_sr.clamp(-1, 1)) and torch.allclose(out.features, ref_feat)
    native = teacher.forward_native(torch.rand(1, 1, 64, 64) * 2 - 1)
    assert native.sr.shape == (1, 1, 64, 64) and native.features.shape[-2:] == (64, 64)


def test_bad_teacher_files(tmp_path, short_run):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_teacher(tmp_path / "nope.pt")
    ckpt = short_run[1].out / "srresnet" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="last.pt is not an SR teacher file"):
        load_teacher(ckpt)
    obj = torch.load(short_run[1].teacher_path, weights_only=True)
    obj["model"]["kwargs"]["n_channels"] = 32
    bad = tmp_path / "mismatch.pt"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit"):
        load_teacher(bad)


def test_held_out_patients_when_no_val_split(tmp_path):
    rng = np.random.default_rng(7)
    slices = np.stack([synthetic_ct_slice(rng, 64) for _ in range(5)])
    write_slice_shard(tmp_path / "d" / "x-slices-train-00000-of-00001.h5", slices,
                      patients=["A", "A", "B", "C", "C"])
    cfg = load_config(SRConfig, "sr_tiny", ["loop.progress=false", "stage1.epochs=1", "stage2.epochs=0",
                                            "export_from=srresnet", "data.val_fraction=0.3",
                                            "data.patches_per_slice=4", "loop.batch_size=4"])
    res = pretrain_sr(cfg, data=tmp_path / "d", out=tmp_path / "run")
    assert res.report["n_val_slices"] == 2  # patient C (last of A, B, C) held out: 2 slices
    assert "held-out patients" in res.report["val_source"]
    assert res.report["teacher"] == "srresnet" and "srgan" not in res.report


def test_bad_inputs_name_file_or_key(tmp_path, slice_shards):
    cfg = load_config(SRConfig, "sr_tiny", ["loop.progress=false"])
    with pytest.raises(ShardError, match="nowhere"):
        pretrain_sr(cfg, data=tmp_path / "nowhere", out=tmp_path / "r1")
    with pytest.raises(ConfigError, match="data.hr_patch_px"):
        load_config(SRConfig, "sr_tiny", ["data.hr_patch_px=30"])
    with pytest.raises(ShardError, match=r"smaller than the 128px HR patch"):
        pretrain_sr(load_config(SRConfig, "sr_tiny", ["data.hr_patch_px=128"]), data=slice_shards,
                    out=tmp_path / "r2")
    with pytest.raises(ShardError, match="split 'training'"):
        pretrain_sr(load_config(SRConfig, "sr_tiny", ["data.train_split=training"]), data=slice_shards,
                    out=tmp_path / "r3")
    with pytest.raises(CheckpointError, match="ghost.pt"):
        pretrain_sr(cfg, data=slice_shards, out=tmp_path / "r4", resume=tmp_path / "ghost.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_teacher_on_cuda_with_amp(tmp_path, slice_shards, amp):
    cfg = load_config(SRConfig, "sr_tiny", SHORT_RUN + ["loop.device=cuda", f"loop.amp={amp}"])
    report = pretrain_sr(cfg, data=slice_shards, out=tmp_path / amp).report
    assert np.isfinite(report["srgan"]["psnr"]) and report["srgan"]["psnr"] > report["bicubic"]["psnr"] + 0.5


def test_untrained_x2_teacher_is_the_seeded_init_in_the_teacher_format(slice_shards, tmp_path):
    """Arm B2's teacher: `sr_tiny_x2` with both stages at 0 epochs and export_from=srresnet writes
    the generator's seeded random init (the same weights as SRResNet built right after
    torch.manual_seed(loop.seed)), in the teacher file format, its stage recorded as "untrained";
    the x2 config trains on the arm-B degradation (windowed_area) at scale 2."""
    from dsnet_trainer.models import build_model
    from dsnet_trainer.models.teacher import read_teacher_file, teacher_summary

    sets = ["loop.progress=false", "stage1.epochs=0", "stage2.epochs=0", "export_from=srresnet",
            "data.hr_patch_px=32", "loop.seed=3"]
    cfg = load_config(SRConfig, "sr_tiny_x2", sets)
    assert (cfg.data.scale, cfg.data.downsample) == (2, "windowed_area")
    res = pretrain_sr(cfg, data=slice_shards, out=tmp_path / "untrained")
    obj = read_teacher_file(res.teacher_path)
    assert obj["stage"] == "untrained" and res.report["teacher"] == "untrained"
    assert obj["data"]["scale"] == 2 and obj["data"]["downsample"] == "windowed_area"
    torch.manual_seed(3)
    fresh = build_model("srresnet", **cfg.generator_kwargs()).state_dict()
    assert set(fresh) == set(obj["generator"])
    for k, v in fresh.items():
        torch.testing.assert_close(obj["generator"][k], v, rtol=0, atol=0)
    assert teacher_summary(res.teacher_path)["stage"] == "untrained"
    assert obj["metrics"] == res.report["srresnet"]                 # its validation figures travel with it
    assert "| SRResNet, untrained (seeded init) |" in (tmp_path / "untrained" / "report.md").read_text()
    other = pretrain_sr(load_config(SRConfig, "sr_tiny_x2", [*sets[:-1], "loop.seed=4"]), data=slice_shards,
                        out=tmp_path / "other")
    assert not torch.equal(read_teacher_file(other.teacher_path)["generator"]["head.0.weight"],
                           obj["generator"]["head.0.weight"])
