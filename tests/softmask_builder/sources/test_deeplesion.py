"""DeepLesion adapter on the real fixture (185 real DL_info rows, 9 key slices) and tmp copies.

Oracles: the CSV read with the ``csv`` module, the PNGs read with Pillow (not OpenCV), the folder
listed with ``os.walk``; the coordinates are parsed here by hand, (x, y) -> (row, col).
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

from softmask_builder.errors import InputError, RecistError, SoftMaskError, SourceError
from softmask_builder.sources.deeplesion import (load_deeplesion, parse_file_name, plan_deeplesion,
                                                 read_dl_info)


def _rows(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "DL_info.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _write_root(tmp: Path, header, rows, images: dict[str, Path | bytes]) -> Path:
    """A DeepLesion root under ``tmp`` with ``rows`` and ``images`` {relpath under Images_png: src}."""
    with open(tmp / "DL_info.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    for rel, src in images.items():
        dst = tmp / "Images_png" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dst.write_bytes(src)
        else:
            shutil.copyfile(src, dst)
    return tmp


def _pil_hu(path) -> np.ndarray:
    return np.array(Image.open(path)).astype(np.int64) - 32768


def _xy_cell(cell: str) -> np.ndarray:
    v = [float(t) for t in cell.split(",")]
    return np.array([[v[1], v[0]], [v[3], v[2]], [v[5], v[4]], [v[7], v[6]]])  # (row, col)


def _existing_pngs(root: Path) -> set[str]:
    out = set()
    for dirpath, _, files in os.walk(root / "Images_png"):
        for f in files:
            out.add(f"{Path(dirpath).name}_{f}")
    return out


def _one_row(deeplesion_root, stem="000001_01_01_109"):
    header, rows = _rows(deeplesion_root)
    row = next(r for r in rows if r["File_name"] == f"{stem}.png")
    series, k = stem.rsplit("_", 1)
    return header, dict(row), deeplesion_root / "Images_png" / series / f"{k}.png"


# --- DL_info ------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_read_dl_info_matches_csv_module(deeplesion_root):
    header, rows = _rows(deeplesion_root)
    table = read_dl_info(deeplesion_root / "DL_info.csv")
    assert list(table.columns) == header
    assert len(table) == len(rows)
    assert table["Measurement_coordinates"].tolist() == [r["Measurement_coordinates"] for r in rows]


@pytest.mark.realdata
def test_header_check_lists_missing_columns(deeplesion_root, tmp_path):
    header, rows = _rows(deeplesion_root)
    drop = ["Spacing_mm_px_", "Train_Val_Test"]
    kept = [c for c in header if c not in drop]
    _write_root(tmp_path, kept, [{c: r[c] for c in kept} for r in rows[:3]], {})
    with pytest.raises(SourceError) as info:
        read_dl_info(tmp_path / "DL_info.csv")
    assert all(c in str(info.value) for c in drop)
    with pytest.raises(SourceError, match="Spacing_mm_px_"):
        plan_deeplesion(tmp_path)


def test_missing_csv_is_source_error(tmp_path):
    with pytest.raises(SourceError, match="DL_info.csv"):
        plan_deeplesion(tmp_path)


@pytest.mark.parametrize("name, expected", [
    ("000001_01_01_109.png", ("000001_01_01", "109.png")),
    ("004416_01_01_1047.png", ("004416_01_01", "1047.png")),
])
def test_parse_file_name_splits_at_last_underscore(name, expected):
    assert parse_file_name(name) == expected


@pytest.mark.parametrize("bad", ["000001.png", "000001_01_01_109.jpg", "_109.png", "a/b_1.png"])
def test_parse_file_name_rejects(bad):
    with pytest.raises(ValueError, match="File_name"):
        parse_file_name(bad)


# --- plan -----------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_plan_real_fixture_nine_images_176_missing(deeplesion_root):
    _, rows = _rows(deeplesion_root)
    existing = _existing_pngs(deeplesion_root)
    refs, rejects = plan_deeplesion(deeplesion_root)
    have = [r for r in rows if r["File_name"] in existing]
    assert sorted(r.source_key for r in refs) == sorted(r["File_name"] for r in have)
    assert len(refs) + len(rejects) == len(rows)
    assert len(rejects) == len(rows) - len(have)
    assert all(j.stage == "plan" and j.reason.startswith("image missing") for j in rejects)
    assert {j.sample_id for j in rejects}.isdisjoint({r.sample_id for r in refs})
    ids = [r.sample_id for r in refs]
    assert ids == sorted(ids)
    for ref in refs:
        row = next(r for r in have if r["File_name"] == ref.source_key)
        assert ref.patient == f"{int(row['Patient_index']):06d}"
        assert ref.split == {"1": "train", "2": "val", "3": "test"}[row["Train_Val_Test"]]


@pytest.mark.realdata
def test_duplicate_file_names_get_distinct_ids(deeplesion_root):
    _, rows = _rows(deeplesion_root)
    refs, rejects = plan_deeplesion(deeplesion_root, check_images=False)
    assert not rejects
    assert len({r.sample_id for r in refs}) == len(rows)
    names = [r["File_name"] for r in rows]
    dup = next(n for n in names if names.count(n) > 1)
    dup_refs = [r for r in refs if r.source_key == dup]
    assert len(dup_refs) == names.count(dup)
    # the rows keep their own marks, in CSV order
    cells = [r["Measurement_coordinates"] for r in rows if r["File_name"] == dup]
    for ref, cell in zip(sorted(dup_refs, key=lambda r: r.sample_id), cells):
        np.testing.assert_allclose(np.array(ref.payload["recist_rc"]), _xy_cell(cell))


@pytest.mark.realdata
def test_filters_lesion_type_split_noisy(deeplesion_root, tmp_path):
    _, rows = _rows(deeplesion_root)

    def keys(**kw):
        return sorted(r.sample_id for r in plan_deeplesion(deeplesion_root, check_images=False, **kw)[0])

    all_refs = {r.sample_id: r for r in plan_deeplesion(deeplesion_root, check_images=False)[0]}
    by_type = lambda types: sorted(s for s, r in all_refs.items() if r.payload["lesion_type"] in types)  # noqa: E731
    lung = keys(lesion_types=(5,))
    assert len(lung) == sum(r["Coarse_lesion_type"] == "5" for r in rows) > 0
    assert lung == by_type({5})
    assert all(all_refs[s].split in ("val", "test") for s in lung)
    # training rows are all unlabelled: "lung only" on the training split selects nothing
    assert keys(lesion_types=(5,), splits=("train",)) == []
    assert keys(lesion_types=(5, -1)) == by_type({5, -1})
    n_val = sum(r["Train_Val_Test"] == "2" for r in rows)
    assert len(keys(splits=("val",))) == n_val
    assert len(keys(splits=("val", "test"))) == sum(r["Train_Val_Test"] in "23" for r in rows)

    # Possibly_noisy: flag three rows in a tmp copy
    header, rows2 = _rows(deeplesion_root)
    flagged = {rows2[i]["File_name"] for i in (0, 1, 2)}
    for i in (0, 1, 2):
        rows2[i]["Possibly_noisy"] = "1"
    _write_root(tmp_path, header, rows2, {})
    kept = plan_deeplesion(tmp_path, check_images=False)[0]
    assert not flagged & {r.source_key for r in kept}
    assert len(kept) == len(rows2) - sum(r["File_name"] in flagged for r in rows2)
    assert len(plan_deeplesion(tmp_path, check_images=False, exclude_noisy=False)[0]) == len(rows2)


def _expected_ids(rows) -> list[str]:
    """The documented id rule: the stem, or stem-k (k = 1, 2, ... in row order) for repeated names."""
    names = [r["File_name"] for r in rows]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if names.count(n) == 1:
            out.append(n[:-4])
        else:
            seen[n] = seen.get(n, 0) + 1
            out.append(f"{n[:-4]}-{seen[n]}")
    return out


@pytest.mark.realdata
def test_sample_ids_follow_documented_rule(deeplesion_root):
    _, rows = _rows(deeplesion_root)
    refs = plan_deeplesion(deeplesion_root, check_images=False)[0]
    assert [r.sample_id for r in refs] == sorted(_expected_ids(rows))


@pytest.mark.realdata
def test_long_axis_filter_matches_lesion_diameters_column(deeplesion_root):
    _, rows = _rows(deeplesion_root)
    lo, hi = 10.0, 20.0
    expected, ambiguous = set(), set()
    for sid, row in zip(_expected_ids(rows), rows):
        long_px = float(row["Lesion_diameters_Pixel_"].split(",")[0])
        x_mm, y_mm = (float(v) for v in row["Spacing_mm_px_"].split(",")[:2])
        assert x_mm == y_mm  # isotropic in-plane: the diameter in px times x_mm is the length in mm
        long_mm = long_px * x_mm
        if min(abs(long_mm - lo), abs(long_mm - hi)) < 0.01:
            ambiguous.add(sid)
        elif lo <= long_mm <= hi:
            expected.add(sid)
    got = {r.sample_id for r in plan_deeplesion(deeplesion_root, check_images=False, long_axis_mm=(lo, hi))[0]}
    assert 0 < len(expected) < len(rows)
    assert got - ambiguous == expected


@pytest.mark.realdata
@pytest.mark.parametrize("column, value", [
    ("Measurement_coordinates", "233.5, 95.0, 234.0"),
    ("Measurement_coordinates", "a, b, c, d, e, f, g, h"),
    ("Measurement_coordinates", "1, 2, 3, 4, nan, 6, 7, 8"),
    ("Spacing_mm_px_", "0.48, 0.48"),
    ("Spacing_mm_px_", "0.48, -0.48, 5"),
    ("Train_Val_Test", "4"),
    ("Patient_index", "x"),
    ("File_name", "000001_01_01_109.jpg"),
])
def test_malformed_cell_is_a_plan_reject_naming_sample_and_column(deeplesion_root, tmp_path, column, value):
    header, row, png = _one_row(deeplesion_root)
    _, rows = _rows(deeplesion_root)
    other = dict(next(r for r in rows if r["File_name"] == "002648_01_01_061.png"))
    row[column] = value
    _write_root(tmp_path, header, [row, other], {"000001_01_01/109.png": png, "002648_01_01/061.png":
                                                  deeplesion_root / "Images_png/002648_01_01/061.png"})
    refs, rejects = plan_deeplesion(tmp_path)
    assert [r.source_key for r in refs] == ["002648_01_01_061.png"]
    assert len(rejects) == 1
    stem = row["File_name"].removesuffix(".png")
    assert rejects[0].sample_id == stem and rejects[0].stage == "plan"
    assert column in rejects[0].reason


@pytest.mark.realdata
def test_bad_options_raise_input_error(deeplesion_root):
    for kw in ({"lesion_types": 5}, {"long_axis_mm": (20, 10)}, {"splits": ("training",)},
               {"crop_px": 4}, {"limit": 0}):
        with pytest.raises(InputError):
            plan_deeplesion(deeplesion_root, **kw)


@pytest.mark.realdata
def test_limit_keeps_first_ids(deeplesion_root):
    refs = plan_deeplesion(deeplesion_root)[0]
    assert plan_deeplesion(deeplesion_root, limit=3)[0] == refs[:3]


# --- load -----------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_load_real_rows_matches_pillow_and_csv(deeplesion_root):
    _, rows = _rows(deeplesion_root)
    refs = plan_deeplesion(deeplesion_root)[0]
    assert len(refs) == 9
    n_rescaled = 0
    for ref in refs:
        rec = load_deeplesion(ref)
        row = next(r for r in rows if r["File_name"] == ref.source_key)
        series, k = ref.source_key[:-4].rsplit("_", 1)
        src = _pil_hu(deeplesion_root / "Images_png" / series / f"{k}.png")
        # plausible CT: air near -1000 HU is present, soft tissue above 0, nothing beyond 12-bit CT
        assert ((src >= -1100) & (src <= -900)).mean() > 0.005
        assert (src > 0).any() and src.max() <= 3071
        assert rec.prior_kind == "recist" and rec.image_hu.dtype == np.float32 and rec.image_hu.shape == (64, 64)
        assert rec.lesion_type == int(row["Coarse_lesion_type"])
        pts_src = _xy_cell(row["Measurement_coordinates"])
        origin = np.array(rec.origin_px)
        np.testing.assert_allclose(rec.prior.as_array(), (pts_src - origin) * rec.scale, atol=1e-9)
        x_mm, y_mm, _ = (float(v) for v in row["Spacing_mm_px_"].split(","))
        assert rec.spacing_mm == pytest.approx((y_mm / rec.scale, x_mm / rec.scale))
        # the long axis in mm does not change with the rescale
        long_src_mm = math.dist(pts_src[0] * (y_mm, x_mm), pts_src[1] * (y_mm, x_mm))
        long_crop_mm = math.dist(rec.prior.as_array()[0] * rec.spacing_mm, rec.prior.as_array()[1] * rec.spacing_mm)
        assert long_crop_mm == pytest.approx(long_src_mm, rel=1e-9)
        long_px = math.dist(pts_src[0], pts_src[1])
        if long_px <= 0.75 * 64:
            assert rec.scale == 1.0
            r0, c0 = int(origin[0]), int(origin[1])
            np.testing.assert_array_equal(rec.image_hu, src[r0:r0 + 64, c0:c0 + 64])
            # the HU at the RECIST centre (the endpoints' box centre) is the PNG value - 32768 there
            centre = (pts_src.min(0) + pts_src.max(0)) / 2
            cr, cc = np.round(centre).astype(int)
            assert rec.image_hu[cr - r0, cc - c0] == src[cr, cc]
        else:
            n_rescaled += 1
            assert rec.scale == pytest.approx(0.75 * 64 / long_px)
            assert rec.prior.long_px == pytest.approx(0.75 * 64)
            # area-like down-scale: the crop's mean HU is the source region's mean up to the blur
            src_region = src[int(origin[0]):int(origin[0] + 64 / rec.scale), int(origin[1]):int(origin[1] + 64 / rec.scale)]
            assert abs(float(rec.image_hu.mean()) - float(src_region.mean())) < 15.0
    assert n_rescaled >= 1  # 000001_02_01_017: 62.9 px long axis


@pytest.mark.realdata
def test_eight_bit_png_rejected(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    eight = (np.array(Image.open(png)) >> 8).astype(np.uint8)
    ok, buf = cv2.imencode(".png", eight)
    _write_root(tmp_path, header, [row], {"000001_01_01/109.png": buf.tobytes()})
    (ref,), _ = plan_deeplesion(tmp_path)
    with pytest.raises(SoftMaskError, match="8-bit PNG, expected 16-bit") as info:
        load_deeplesion(ref)
    assert info.value.sample_id == ref.sample_id and info.value.stage == "load"


@pytest.mark.realdata
def test_truncated_png_rejected(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    data = png.read_bytes()
    _write_root(tmp_path, header, [row], {"000001_01_01/109.png": data[: len(data) // 2]})
    (ref,), _ = plan_deeplesion(tmp_path)
    with pytest.raises(SoftMaskError, match="truncated or corrupt") as info:
        load_deeplesion(ref)
    assert info.value.sample_id == ref.sample_id and info.value.stage == "load"


@pytest.mark.realdata
def test_image_removed_after_plan_fails_at_load(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    _write_root(tmp_path, header, [row], {"000001_01_01/109.png": png})
    (ref,), _ = plan_deeplesion(tmp_path)
    (tmp_path / "Images_png/000001_01_01/109.png").unlink()
    with pytest.raises(SoftMaskError, match="image missing") as info:
        load_deeplesion(ref)
    assert info.value.stage == "load"


@pytest.mark.realdata
def test_recist_outside_image_rejected_at_load(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    row["Measurement_coordinates"] = "600, 95, 610, 107, 603, 101, 607, 101"  # x beyond 512 columns
    _write_root(tmp_path, header, [row], {"000001_01_01/109.png": png})
    (ref,), _ = plan_deeplesion(tmp_path)
    with pytest.raises(RecistError, match="outside") as info:
        load_deeplesion(ref)
    assert info.value.sample_id == ref.sample_id and info.value.stage == "load"


@pytest.mark.realdata
def test_lesion_at_the_border_is_edge_padded(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    # long axis along the left border (x = column 1), short axis crossing it from x = 0 to 4
    row["Measurement_coordinates"] = "1, 300, 1, 312, 0, 306, 4, 306"
    _write_root(tmp_path, header, [row], {"000001_01_01/109.png": png})
    (ref,), _ = plan_deeplesion(tmp_path)
    rec = load_deeplesion(ref)
    src = _pil_hu(png)
    r0, c0 = (int(v) for v in rec.origin_px)
    assert c0 < 0 and rec.scale == 1.0
    rows_idx = np.clip(np.arange(r0, r0 + 64), 0, src.shape[0] - 1)
    cols_idx = np.clip(np.arange(c0, c0 + 64), 0, src.shape[1] - 1)
    np.testing.assert_array_equal(rec.image_hu, src[np.ix_(rows_idx, cols_idx)])
    np.testing.assert_allclose(rec.prior.as_array(), _xy_cell(row["Measurement_coordinates"]) - (r0, c0))
    assert abs(rec.prior.center_rc[0] - 31.5) <= 1 and abs(rec.prior.center_rc[1] - 31.5) <= 3


@pytest.mark.realdata
def test_four_digit_slice_number(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    row["File_name"] = "000001_01_01_1109.png"
    row["Key_slice_index"] = "1109"
    _write_root(tmp_path, header, [row], {"000001_01_01/1109.png": png})
    (ref,), rejects = plan_deeplesion(tmp_path)
    assert not rejects
    assert ref.sample_id == "000001_01_01_1109"
    assert Path(ref.payload["image_path"]) == tmp_path / "Images_png/000001_01_01/1109.png"
    (orig,), _ = plan_deeplesion(deeplesion_root, limit=1)
    assert orig.source_key == "000001_01_01_109.png"
    np.testing.assert_array_equal(load_deeplesion(ref).image_hu, load_deeplesion(orig).image_hu)


@pytest.mark.realdata
def test_anisotropic_spacing_is_row_col(deeplesion_root, tmp_path):
    header, row, png = _one_row(deeplesion_root)
    row["Spacing_mm_px_"] = "0.5, 0.8, 5"  # x (column) 0.5 mm, y (row) 0.8 mm
    row["Measurement_coordinates"] = "200, 100, 210, 100, 205, 97, 205, 103"  # long axis along x: 10 px
    _write_root(tmp_path, header, [row], {"000001_01_01/109.png": png})
    (ref,), _ = plan_deeplesion(tmp_path)
    rec = load_deeplesion(ref)
    assert rec.spacing_mm == (0.8, 0.5)
    # 10 px along columns = 5 mm (it would be 8 mm if x and y were swapped)
    assert [r.sample_id for r in plan_deeplesion(tmp_path, long_axis_mm=(4.9, 5.1))[0]] == [ref.sample_id]
    assert plan_deeplesion(tmp_path, long_axis_mm=(7.9, 8.1))[0] == []
