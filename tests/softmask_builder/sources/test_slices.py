"""Full-slice adapter on the real DeepLesion fixture (23 PNGs) and tmp copies.

Oracles: ``os.walk`` for the listing, the ``csv`` module for DL_info, Pillow for the pixels.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from softmask_builder.errors import SoftMaskError, SourceError
from softmask_builder.sources.slices import load_slice, plan_deeplesion_slices


def _csv_rows(root: Path):
    with open(root / "DL_info.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _copy_images(src_root: Path, dst_root: Path, series: list[str]) -> None:
    for s in series:
        shutil.copytree(src_root / "Images_png" / s, dst_root / "Images_png" / s)


@pytest.mark.realdata
def test_plan_lists_every_png_with_dl_info_spacing_and_split(deeplesion_root):
    walked = {}
    for dirpath, _, files in os.walk(deeplesion_root / "Images_png"):
        for f in files:
            if f.endswith(".png"):
                walked[f"{Path(dirpath).name}_{f[:-4]}"] = Path(dirpath) / f
    _, rows = _csv_rows(deeplesion_root)
    refs, rejects = plan_deeplesion_slices(deeplesion_root)
    assert not rejects
    assert [r.sample_id for r in refs] == sorted(walked)
    assert len(refs) == 23
    split_name = {"1": "train", "2": "val", "3": "test"}
    for ref in refs:
        series = ref.sample_id.rsplit("_", 1)[0]
        assert ref.patient == series.split("_")[0]
        assert ref.source_key == ref.sample_id + ".png"
        series_rows = [r for r in rows if r["File_name"].rsplit("_", 1)[0] == series]
        assert series_rows, "every fixture series has a DL_info row"
        x_mm, y_mm, _ = (float(v) for v in series_rows[0]["Spacing_mm_px_"].split(","))
        assert ref.payload["spacing_mm"] == (y_mm, x_mm)
        patient_splits = {split_name[r["Train_Val_Test"]] for r in rows if int(r["Patient_index"]) == int(ref.patient)}
        assert ref.split == (patient_splits.pop() if len(patient_splits) == 1 else None)


@pytest.mark.realdata
def test_load_slice_matches_pillow(deeplesion_root):
    refs, _ = plan_deeplesion_slices(deeplesion_root)
    for ref in refs[::4]:
        rec = load_slice(ref)
        expected = np.array(Image.open(ref.payload["image_path"])).astype(np.int64) - 32768
        assert rec.image_hu.dtype == np.float32 and rec.image_hu.shape == expected.shape
        np.testing.assert_array_equal(rec.image_hu, expected)
        assert rec.spacing_mm == ref.payload["spacing_mm"]
        assert rec.ref == ref


@pytest.mark.realdata
def test_without_dl_info_spacing_is_nan_and_split_none(deeplesion_root, tmp_path):
    _copy_images(deeplesion_root, tmp_path, ["002648_01_01"])
    (ref,), rejects = plan_deeplesion_slices(tmp_path)
    assert not rejects and ref.split is None
    assert all(math.isnan(v) for v in ref.payload["spacing_mm"])
    rec = load_slice(ref)
    assert all(math.isnan(v) for v in rec.spacing_mm)


@pytest.mark.realdata
def test_series_without_row_gets_nan(deeplesion_root, tmp_path):
    header, rows = _csv_rows(deeplesion_root)
    _copy_images(deeplesion_root, tmp_path, ["002648_01_01", "002677_01_01"])
    with open(tmp_path / "DL_info.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows([r for r in rows if r["File_name"].startswith("002648_01_01_")])
    refs, _ = plan_deeplesion_slices(tmp_path)
    by_id = {r.sample_id: r for r in refs}
    assert not any(math.isnan(v) for v in by_id["002648_01_01_061"].payload["spacing_mm"])
    assert all(math.isnan(v) for v in by_id["002677_01_01_044"].payload["spacing_mm"])
    assert by_id["002677_01_01_044"].split is None


@pytest.mark.realdata
def test_conflicting_spacing_rejects_the_series(deeplesion_root, tmp_path):
    header, rows = _csv_rows(deeplesion_root)
    _copy_images(deeplesion_root, tmp_path, ["000001_02_01"])
    sel = [dict(r) for r in rows if r["File_name"].startswith("000001_02_01_")]
    assert len(sel) >= 2
    sel[1]["Spacing_mm_px_"] = "0.9, 0.9, 5"
    with open(tmp_path / "DL_info.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(sel)
    refs, rejects = plan_deeplesion_slices(tmp_path)
    assert refs == []
    assert len(rejects) == len(list((tmp_path / "Images_png/000001_02_01").glob("*.png")))
    assert all("disagree" in j.reason and j.stage == "plan" for j in rejects)


def test_missing_images_folder(tmp_path):
    with pytest.raises(SourceError, match="Images_png"):
        plan_deeplesion_slices(tmp_path)


def test_eight_bit_slice_rejected_at_load(tmp_path):
    (tmp_path / "Images_png/000009_01_01").mkdir(parents=True)
    ok, buf = cv2.imencode(".png", np.full((8, 8), 7, np.uint8))
    (tmp_path / "Images_png/000009_01_01/003.png").write_bytes(buf.tobytes())
    (ref,), _ = plan_deeplesion_slices(tmp_path)
    with pytest.raises(SoftMaskError, match="8-bit PNG, expected 16-bit") as info:
        load_slice(ref)
    assert info.value.sample_id == "000009_01_01_003" and info.value.stage == "load"
