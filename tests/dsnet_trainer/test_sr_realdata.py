"""The teacher on real CT: LIDC-IDRI-0001's 16 slices train it, 3 slices of another patient
(LIDC-IDRI-0002) validate it; it must beat bicubic. Needs the real fixtures (~15 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsnet_trainer.config import load_config
from dsnet_trainer.sr import SRConfig, pretrain_sr

from .shardkit import write_slice_shard

pytestmark = pytest.mark.realdata


def _read_series_hu(folder: Path) -> np.ndarray:
    import pydicom

    files = sorted(folder.rglob("*.dcm"), key=lambda p: float(p.stem))  # file name = slice z
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out.append(np.clip(np.round(hu), -32768, 32767).astype(np.int16))
    return np.stack(out)


def test_teacher_beats_bicubic_on_lidc_slices(lidc_root, tmp_path):
    train = _read_series_hu(lidc_root / "LIDC-IDRI-0001")
    val = _read_series_hu(lidc_root / "LIDC-IDRI-0002")
    assert train.shape == (16, 512, 512) and val.shape[1:] == (512, 512)
    data = tmp_path / "slices"
    write_slice_shard(data / "lidc-slices-train-00000-of-00001.h5", train, patients=["0001"] * len(train), dataset="lidc")
    write_slice_shard(data / "lidc-slices-val-00000-of-00001.h5", val[[0, len(val) // 2, -1]], split="val",
                      patients=["0002"] * 3, dataset="lidc")
    cfg = load_config(SRConfig, "sr_tiny", ["loop.progress=false", "data.patches_per_slice=16", "stage2.epochs=1",
                                            "loop.val_every_epochs=0"])
    report = pretrain_sr(cfg, data=data, out=tmp_path / "run").report
    assert report["n_val_slices"] == 3
    assert report["srresnet"]["psnr"] > report["bicubic"]["psnr"] + 0.3, report
    assert report["srgan"]["psnr"] > report["bicubic"]["psnr"] + 0.3, report
    assert report["srgan"]["ssim"] > report["bicubic"]["ssim"], report
