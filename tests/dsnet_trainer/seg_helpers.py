"""Test helpers of the segmentation tests (DSNet, baselines, ablations): a tiny stand-in SR
teacher and a counting wrapper that tells whether a teacher was called."""

from __future__ import annotations

import torch
from torch import nn


class TinyTeacher(nn.Module):
    """x``scale`` SR stand-in: conv -> pixel shuffle gives F_SR (``channels``), a conv gives the
    SR image. Same call contract as the real teacher: ``forward(lr) -> (sr_image, sr_features)``."""

    def __init__(self, *, channels: int = 4, scale: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Conv2d(1, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.calls = 0

    def forward(self, lr: torch.Tensor):
        self.calls += 1
        feats = torch.relu(self.shuffle(self.body(lr)))
        return self.out(feats), feats


def write_sample_shard(path, *, split: str, n: int, crop_px: int = 32, seed: int = 0,
                       dataset: str = "tiny", empty_first: bool = False) -> None:
    """Write one sample shard (docs/FORMAT.md, schema 2, via ``shardkit.write_sample_shard``) of
    ``n`` synthetic nodules: a bright disc (+40 HU) with a 1-pixel linear edge in lung (-850 HU +
    noise). The Soft Mask is the disc's coverage, the binary mask coverage >= 0.5, the trimap a
    2-pixel band around it. ``empty_first``: sample 0 has no lesion (empty masks), to exercise the
    empty-mask rules."""
    from pathlib import Path

    import numpy as np

    from tests.dsnet_trainer.shardkit import write_sample_shard as write_spec_shard

    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:crop_px, :crop_px].astype(np.float64)
    images, alphas, binaries, trimaps = [], [], [], []
    for i in range(n):
        r0, c0 = crop_px / 2 + rng.uniform(-3, 3, size=2)
        radius = 0.0 if (empty_first and i == 0) else rng.uniform(crop_px / 8, crop_px / 4)
        alpha = np.clip(radius + 0.5 - np.hypot(rr - r0, cc - c0), 0.0, 1.0)
        image = -850.0 + 890.0 * alpha + rng.normal(0, 25, alpha.shape)
        trimap = np.full(alpha.shape, 128, np.uint8)
        d = np.hypot(rr - r0, cc - c0) - radius
        trimap[d > 2] = 0
        trimap[d < -2] = 255
        images.append(np.round(image).astype(np.int16))
        alphas.append(alpha.astype(np.float32))
        binaries.append((alpha >= 0.5).astype(np.uint8))
        trimaps.append(trimap)
    arrays = {"image_hu": np.stack(images), "soft_mask": np.stack(alphas), "binary_mask": np.stack(binaries),
              "trimap": np.stack(trimaps)}
    write_spec_shard(Path(path), arrays, split=split, dataset=dataset, patient_prefix=f"p{seed}-")


def write_sample_dataset(folder, *, crop_px: int = 32, counts=(("train", 8), ("val", 4), ("test", 4)),
                         seed: int = 0):
    """A dataset folder with one shard per split; the test split's first sample is empty."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(counts):
        write_sample_shard(folder / f"tiny-{split}-00000-of-00001.h5", split=split, n=n, crop_px=crop_px,
                           seed=seed + k, empty_first=split == "test")
    return folder


def write_tiny_teacher(path, *, n_channels: int = 4, scale: int = 4, level_hu: float = -600.0,
                       width_hu: float = 1500.0, seed: int = 0):
    """An untrained tiny SRResNet saved with the SR trainer's own ``export_teacher`` (a real
    teacher file, as ``dsnet pretrain-sr`` writes it). Its last conv starts at zero, so give it
    random weights there to make the SR image differ from bicubic."""
    from dsnet_trainer.models.srresnet import SRResNet
    from dsnet_trainer.models.teacher import export_teacher
    from dsnet_trainer.sr.config import GeneratorConfig, SRConfig, SRDataConfig

    torch.manual_seed(seed)
    cfg = SRConfig(data=SRDataConfig(scale=scale, window_level_hu=level_hu, window_width_hu=width_hu),
                   generator=GeneratorConfig(n_channels=n_channels, n_blocks=1, norm="none"))
    gen = SRResNet(**cfg.generator_kwargs())
    with torch.no_grad():
        gen.tail.weight.normal_(0, 0.01)
    return export_teacher(gen, cfg, path)


def tiny_config(root, out, *, variant: str = "dsnet", teacher: str = "", epochs: int = 2, steps: int = 2,
                teacher_mode: str = "native", crop_px: int = 32, seed: int = 0, **loop_kw):
    """A :class:`SegConfig` small enough for a unit test (widths 4-8-16, 2 steps per epoch)."""
    from dsnet_trainer.config import LoopConfig
    from dsnet_trainer.seg_config import SegConfig, SegDataConfig, SegModelConfig, SegOptimConfig

    loop = dict(batch_size=4, num_workers=0, progress=False, tensorboard=False, device="cpu", seed=seed,
                max_steps_per_epoch=steps, log_every_steps=1)
    loop.update(loop_kw)
    return SegConfig(out=str(out), resume="auto", data=SegDataConfig(root=str(root), crop_px=crop_px),
                     model=SegModelConfig(variant=variant, widths=(4, 8, 16), cbam_reduction=2, disc_ndf=4,
                                          teacher=str(teacher), teacher_mode=teacher_mode),
                     optim=SegOptimConfig(epochs=epochs, lr=1e-3), loop=LoopConfig(**loop))


def trained_run(tmp, *, variant: str = "dsnet", teacher_mode: str = "native", epochs: int = 2):
    """Dataset + teacher file + a trained tiny run under ``tmp``; returns (data, teacher, run)."""
    from dsnet_trainer.train_seg import train_seg

    data = write_sample_dataset(tmp / "data")
    teacher = write_tiny_teacher(tmp / "teacher.pt")
    run = train_seg(tiny_config(data, tmp / f"run-{variant}", variant=variant, teacher=teacher,
                                teacher_mode=teacher_mode, epochs=epochs))
    return data, teacher, run
