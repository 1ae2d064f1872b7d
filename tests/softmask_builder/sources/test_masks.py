"""Binary-mask adapter: files written to tmp_path in every format, and pydicom's real CT_small.dcm.

Oracles: the arrays written to disk (round trip), pydicom's own ``apply_modality_lut`` for the
DICOM rescale, hand-computed bounding boxes and crop windows.
"""

from __future__ import annotations

import math
import shutil

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

try:
    from pydicom.pixels import apply_modality_lut  # pydicom >= 3
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut

from softmask_builder.errors import InputError, SoftMaskError, SourceError
from softmask_builder.sources.masks import load_mask_sample, pair_files, plan_masks


def _png(path, arr):
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    path.write_bytes(buf.tobytes())


def _tiff(path, arr):
    ok, buf = cv2.imencode(".tiff", arr)
    assert ok
    path.write_bytes(buf.tobytes())


def _disk(shape, center, radius):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius ** 2


def _image(shape, seed=0, lo=-1000, hi=400, dtype=np.int16):
    return np.random.default_rng(seed).integers(lo, hi, size=shape).astype(dtype)


def _by_id(refs):
    return {r.sample_id: r for r in refs}


# --- formats (whole image: exact round trip) --------------------------------------------------------

def test_every_format_round_trips_side_by_side_layout(tmp_path):
    shape = (40, 50)
    mask = _disk(shape, (20, 25), 6)
    hu = _image(shape)
    # 8-bit PNG: a windowed export, mapped back to HU with the window given (level 40, width 400)
    img8 = _image(shape, 1, 0, 255, np.uint8)
    _png(tmp_path / "a_png8.png", img8)
    _png(tmp_path / "a_png8_mask.png", mask.astype(np.uint8) * 255)
    # 16-bit PNG: value - hu_offset
    _png(tmp_path / "b_png16.png", (hu.astype(np.int32) + 32768).astype(np.uint16))
    _png(tmp_path / "b_png16_mask.png", mask.astype(np.uint8))
    # TIFF int16 (HU stored directly) and float32
    _tiff(tmp_path / "c_tif16.tif", hu)
    _tiff(tmp_path / "c_tif16_mask.tif", mask.astype(np.uint8) * 255)
    _tiff(tmp_path / "d_tiff32.tiff", hu.astype(np.float32) + 0.25)
    _png(tmp_path / "d_tiff32_mask.png", mask.astype(np.uint8))
    # npy float64 and uint16 (offset applies to unsigned 16-bit data of any format)
    np.save(tmp_path / "e_npy.npy", hu.astype(np.float64))
    np.save(tmp_path / "e_npy_mask.npy", mask)
    np.save(tmp_path / "f_npyu16.npy", (hu.astype(np.int32) + 32768).astype(np.uint16))
    np.save(tmp_path / "f_npyu16_mask.npy", mask.astype(np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")

    refs, rejects = plan_masks(tmp_path, hu_offset=32768, window_hu=(40, 400), crop_px=None)
    assert not rejects
    refs = _by_id(refs)
    assert sorted(refs) == ["a_png8", "b_png16", "c_tif16", "d_tiff32", "e_npy", "f_npyu16"]
    expected = {"a_png8": 40 - 200 + img8.astype(np.float64) * (400 / 255), "b_png16": hu, "c_tif16": hu, "d_tiff32": hu + 0.25, "e_npy": hu, "f_npyu16": hu}
    for sid, ref in refs.items():
        rec = load_mask_sample(ref)
        assert rec.prior_kind == "mask" and rec.image_hu.dtype == np.float32
        np.testing.assert_array_equal(rec.image_hu, expected[sid].astype(np.float32), err_msg=sid)
        np.testing.assert_array_equal(rec.prior, mask, err_msg=sid)
        assert rec.spacing_mm == (1.0, 1.0) and rec.scale == 1.0 and rec.origin_px == (0.0, 0.0)
        assert ref.patient == sid.split("_")[0]


def test_explicit_hu_offset_is_subtracted_from_raw_16bit(tmp_path):
    hu = _image((30, 30), 3)
    raw = (hu.astype(np.int32) + 1024).astype(np.uint16)  # raw CT stored values, intercept -1024
    _png(tmp_path / "x.png", raw)
    _png(tmp_path / "x_mask.png", _disk(raw.shape, (15, 15), 4).astype(np.uint8))
    (ref,), _ = plan_masks(tmp_path, hu_offset=1024, crop_px=None)
    np.testing.assert_array_equal(load_mask_sample(ref).image_hu, hu.astype(np.float32))


def test_grey_rgb_png_is_read_as_greyscale_colour_rejected(tmp_path):
    grey = _image((20, 20), 2, 0, 255, np.uint8)
    _png(tmp_path / "g.png", np.dstack([grey] * 3))
    _png(tmp_path / "g_mask.png", _disk(grey.shape, (10, 10), 3).astype(np.uint8) * 255)
    colour = np.dstack([grey, grey, 255 - grey])
    _png(tmp_path / "h.png", colour)
    _png(tmp_path / "h_mask.png", _disk(grey.shape, (10, 10), 3).astype(np.uint8))
    refs = _by_id(plan_masks(tmp_path, window_hu=(0, 255), crop_px=None)[0])
    np.testing.assert_array_equal(load_mask_sample(refs["g"]).image_hu, grey.astype(np.float32) - 127.5)
    with pytest.raises(SoftMaskError, match="colour") as info:
        load_mask_sample(refs["h"])
    assert info.value.sample_id == "h" and info.value.stage == "load"


def test_real_dicom_with_synthetic_mask_two_folder_layout(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    shutil.copyfile(src, tmp_path / "images" / "ct01_s1.dcm")
    mask = _disk(ds.pixel_array.shape, (60, 70), 8)
    _png(tmp_path / "masks" / "ct01_s1.png", mask.astype(np.uint8) * 255)
    (ref,), rejects = plan_masks(tmp_path, crop_px=None)
    assert not rejects and ref.source_key == "images/ct01_s1.dcm" and ref.patient == "ct01"
    rec = load_mask_sample(ref)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(rec.image_hu, expected)
    assert rec.spacing_mm == tuple(float(v) for v in ds.PixelSpacing)
    np.testing.assert_array_equal(rec.prior, mask)
    # nothing identifying travels with the sample
    text = repr(ref) + repr(rec.spacing_mm)
    for field in ("PatientName", "PatientID", "StudyInstanceUID"):
        value = str(ds.get(field, ""))
        assert not value or value not in text
    # an explicit spacing overrides PixelSpacing
    (ref2,), _ = plan_masks(tmp_path, crop_px=None, spacing_mm=(0.5, 0.7))
    assert load_mask_sample(ref2).spacing_mm == (0.5, 0.7)


def test_dicom_crop_matches_window(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    shutil.copyfile(src, tmp_path / "ct.dcm")
    mask = np.zeros(ds.pixel_array.shape, bool)
    mask[50:61, 40:47] = True  # bbox centre (55, 43), diagonal hypot(11, 7)
    np.save(tmp_path / "ct_mask.npy", mask)
    (ref,), _ = plan_masks(tmp_path, crop_px=32)
    rec = load_mask_sample(ref)
    r0, c0 = math.floor(55 + 0.5 - 16), math.floor(43 + 0.5 - 16)
    assert rec.origin_px == (r0, c0) and rec.scale == 1.0
    full = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(rec.image_hu, full[r0:r0 + 32, c0:c0 + 32])
    np.testing.assert_array_equal(rec.prior, mask[r0:r0 + 32, c0:c0 + 32])


# --- crop ------------------------------------------------------------------------------------------

def test_crop_centres_bbox_and_pads_at_border(tmp_path):
    hu = _image((100, 90), 3)
    mask = np.zeros(hu.shape, bool)
    mask[0:7, 80:90] = True  # touches the top and right borders
    np.save(tmp_path / "p.npy", hu)
    np.save(tmp_path / "p_mask.npy", mask)
    (ref,), _ = plan_masks(tmp_path, crop_px=32)
    rec = load_mask_sample(ref)
    r0, c0 = (int(v) for v in rec.origin_px)
    assert (r0, c0) == (math.floor(3 + 0.5 - 16), math.floor(84.5 + 0.5 - 16))
    rows = np.clip(np.arange(r0, r0 + 32), 0, 99)
    cols = np.clip(np.arange(c0, c0 + 32), 0, 89)
    np.testing.assert_array_equal(rec.image_hu, hu[np.ix_(rows, cols)].astype(np.float32))
    # the image is edge-replicated, the mask is 0 outside the image (issue 23: no invented label pixels)
    inside = np.outer((np.arange(r0, r0 + 32) >= 0) & (np.arange(r0, r0 + 32) < 100),
                      (np.arange(c0, c0 + 32) >= 0) & (np.arange(c0, c0 + 32) < 90))
    np.testing.assert_array_equal(rec.prior, mask[np.ix_(rows, cols)] & inside)
    assert rec.prior.sum() == mask.sum()


def test_large_mask_is_downscaled_to_fit(tmp_path):
    hu = _image((200, 200), 4)
    mask = _disk(hu.shape, (100, 90), 40)  # bbox 81 x 81 px
    np.save(tmp_path / "big.npy", hu)
    np.save(tmp_path / "big_mask.npy", mask)
    (ref,), _ = plan_masks(tmp_path, crop_px=64, spacing_mm=0.5)
    rec = load_mask_sample(ref)
    diag = math.hypot(81, 81)
    assert rec.scale == pytest.approx(0.75 * 64 / diag)
    assert rec.spacing_mm == pytest.approx((0.5 / rec.scale, 0.5 / rec.scale))
    # the disk's area in mm^2 is kept by the rescale (nearest-neighbour mask, within a few %)
    area_src = mask.sum() * 0.5 ** 2
    area_crop = rec.prior.sum() * rec.spacing_mm[0] * rec.spacing_mm[1]
    assert area_crop == pytest.approx(area_src, rel=0.05)
    assert not rec.prior[0].any() and not rec.prior[-1].any()  # the whole lesion fits


# --- pairing, patients and errors --------------------------------------------------------------------

def test_pairing_rejects_unpaired_and_ambiguous(tmp_path):
    m = _disk((10, 10), (5, 5), 2).astype(np.uint8)
    np.save(tmp_path / "ok.npy", np.zeros((10, 10)))
    np.save(tmp_path / "ok_mask.npy", m)
    np.save(tmp_path / "lonely.npy", np.zeros((10, 10)))
    np.save(tmp_path / "orphan_mask.npy", m)
    np.save(tmp_path / "dup.npy", np.zeros((10, 10)))
    _png(tmp_path / "dup.png", np.zeros((10, 10), np.uint8))
    np.save(tmp_path / "dup_mask.npy", m)
    pairs, rejects = pair_files(tmp_path)
    assert [p[0] for p in pairs] == ["ok"]
    reasons = {j.sample_id: j.reason for j in rejects}
    assert set(reasons) == {"lonely", "orphan", "dup"}
    assert "without mask" in reasons["lonely"] and "without image" in reasons["orphan"]
    assert "ambiguous" in reasons["dup"]
    assert all(j.stage == "plan" for j in rejects)


def test_patient_separator(tmp_path):
    m = _disk((10, 10), (5, 5), 2).astype(np.uint8)
    for name in ("case01_s1", "case01_s2", "case02-s1"):
        np.save(tmp_path / f"{name}.npy", np.zeros((10, 10)))
        np.save(tmp_path / f"{name}_mask.npy", m)
    patients = {r.sample_id: r.patient for r in plan_masks(tmp_path)[0]}
    assert patients == {"case01_s1": "case01", "case01_s2": "case01", "case02-s1": "case02-s1"}
    patients = {r.sample_id: r.patient for r in plan_masks(tmp_path, patient_sep="-")[0]}
    assert patients["case02-s1"] == "case02" and patients["case01_s1"] == "case01_s1"
    assert {r.patient for r in plan_masks(tmp_path, patient_sep=None)[0]} == {"case01_s1", "case01_s2", "case02-s1"}


@pytest.mark.parametrize("case", ["empty", "shape", "truncated", "nonbinary", "bad_npy"])
def test_load_errors_carry_sample_id(tmp_path, case):
    img = _image((20, 20), 5, 0, 255, np.uint8)
    mask = _disk(img.shape, (10, 10), 3).astype(np.uint8)
    _png(tmp_path / "s.png", img)
    if case == "empty":
        _png(tmp_path / "s_mask.png", np.zeros_like(mask))
    elif case == "shape":
        _png(tmp_path / "s_mask.png", mask[:15])
    elif case == "truncated":
        _png(tmp_path / "s_mask.png", mask)
        data = (tmp_path / "s.png").read_bytes()
        (tmp_path / "s.png").write_bytes(data[: len(data) // 2])
    elif case == "nonbinary":
        _png(tmp_path / "s_mask.png", mask * 3 + (mask == 0))
    elif case == "bad_npy":
        (tmp_path / "s.png").unlink()
        (tmp_path / "s.npy").write_bytes(b"not a numpy file")
        _png(tmp_path / "s_mask.png", mask)
    (ref,), _ = plan_masks(tmp_path, window_hu=(40, 400))
    with pytest.raises(SoftMaskError) as info:
        load_mask_sample(ref)
    assert info.value.sample_id == "s" and info.value.stage == "load"
    expected = {"empty": "empty", "shape": "shape", "truncated": "truncated", "nonbinary": "binary",
                "bad_npy": "cannot read"}[case]
    assert expected in str(info.value)


def test_bad_options_and_missing_folder(tmp_path):
    with pytest.raises(SourceError):
        plan_masks(tmp_path / "nope")
    for kw in ({"spacing_mm": -1.0}, {"spacing_mm": (1.0, 2.0, 3.0)}, {"hu_offset": -5},
               {"patient_sep": ""}, {"crop_px": 2}, {"limit": 0}):
        with pytest.raises(InputError):
            plan_masks(tmp_path, **kw)
