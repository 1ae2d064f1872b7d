"""Plausibility rules (softmask_builder/plausibility.py, docs/DATASETS.md "Plausibility rules"):
physically impossible images and headers become rejects with a reason; the other samples of
the build are still built; real data (DeepLesion with -3024 HU padding, LIDC with -2048 HU
padding) and the phantom pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from softmask_builder.sources.deeplesion import PHANTOM_TRUTH_FILE
from softmask_builder.exitcodes import EXIT_INPUT
from softmask_builder.sources.plausibility import ImplausibleError, check_image_hu
from softmask_builder.formats.recipes import load_recipe, recipe_from_dict
from softmask_builder.dataset.release import verify
from softmask_builder.formats.shards import open_shard
from tests.adversarial.kit import (assert_one_line_error, build, dl_recipe, dl_rows, invoke, key_png, masks_recipe,
                                   rejects_of, slices_recipe, write_dl_rows, write_png16)


def _built_ids(out: Path) -> set[str]:
    ids = set()
    for p in sorted(Path(out).glob("*.h5")):
        with open_shard(p) as s:
            ids.update(s.sample_ids)
    return ids


def _stem(row) -> str:
    return row["File_name"].removesuffix(".png")


# --- images --------------------------------------------------------------------------------------

def _flat(value):
    return lambda shape, rng: np.full(shape, value, dtype=np.uint16)


def _padding_only(shape, rng):
    img = np.full(shape, 32768 - 3024, dtype=np.uint16)
    img[: shape[0] // 2] = 32768 - 2048
    return img


def _no_contrast(shape, rng):
    return (32768 + 20 + rng.integers(-5, 6, size=shape)).astype(np.uint16)


def _shifted(shape, rng, *, png=None):
    return None  # replaced per case (needs the original)


IMAGE_CASES = {
    "all_zero": (_flat(0), "equal -32768 HU"),
    "all_65535": (_flat(65535), "equal 32767 HU"),
    "flat_air": (_flat(32768 - 1024), "equal -1024 HU"),
    "padding_only": (_padding_only, "padding"),
    "no_contrast": (_no_contrast, "no contrast"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_impossible_key_slice_is_a_load_reject_and_the_rest_builds(case, dl_source, tmp_path):
    rows = dl_rows(dl_source)
    bad = rows[1]
    png = key_png(dl_source, bad)
    shape = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape
    make, reason = IMAGE_CASES[case]
    write_png16(png, make(shape, np.random.default_rng(0)))
    out = tmp_path / "out"
    result = build(dl_recipe(), dl_source, out)
    rejects = rejects_of(out)
    assert list(rejects) == [_stem(bad)]
    assert rejects[_stem(bad)]["stage"] == "load" and "implausible image" in rejects[_stem(bad)]["reason"]
    assert reason in rejects[_stem(bad)]["reason"]
    assert _built_ids(out) == {_stem(r) for r in rows} - {_stem(bad)} and result.n_samples == 2
    assert verify(out).ok


def test_image_read_without_its_offset_is_rejected_by_the_median(dl_source, tmp_path):
    rows = dl_rows(dl_source)
    png = key_png(dl_source, rows[0])
    image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).astype(np.int64)
    write_png16(png, np.clip(image + 2000, 0, 65535))  # every pixel 2000 HU too high
    out = tmp_path / "out"
    build(dl_recipe(), dl_source, out)
    assert "median" in rejects_of(out)[_stem(rows[0])]["reason"]


def test_check_image_hu_oracle_cases():
    rng = np.random.default_rng(1)
    lung = rng.normal(-700, 150, (64, 64)).astype(np.float32)
    check_image_hu(lung)  # plausible: passes
    padded = lung.copy()
    padded[:, :40] = -3024  # 62 % padding: still passes (padding is not implausible)
    check_image_hu(padded)
    for bad, rule in [(np.zeros((64, 64)), "equal 0 HU"), (lung + 2500, "median"), (lung * 0.01, "no contrast"),
                      (np.full((64, 64), np.nan), "NaN")]:
        with pytest.raises(ImplausibleError, match=rule):
            check_image_hu(bad)


@pytest.mark.realdata
def test_every_real_fixture_slice_is_plausible(shared_data):
    pngs = sorted((shared_data / "deeplesion" / "Images_png").glob("*/*.png"))
    dicoms = sorted((shared_data / "lidc").glob("LIDC-IDRI-*/*/*/*.dcm"))
    assert len(pngs) >= 20 and len(dicoms) >= 20
    for p in pngs:
        check_image_hu(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) - 32768, sample_id=p.name)
    for p in dicoms:
        ds = pydicom.dcmread(p)
        check_image_hu(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), sample_id=p.name)


# --- DL_info rows --------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing, needle", [
    ("1e30, 1e30, 1.25", "implausible Spacing_mm_px_"),
    ("0.1, 0.1, 1.25", "implausible Spacing_mm_px_"),
    ("6, 6, 1.25", "implausible Spacing_mm_px_"),
    ("0.7, 0.7, 0", "must be positive (x, y and z)"),        # issue 23: a slice interval of 0 ...
    ("0.7, 0.7, -1.25", "must be positive (x, y and z)"),    # ... or negative built silently
    ("0, 0.7, 1.25", "must be positive (x, y and z)"),
])
def test_implausible_spacing_is_a_plan_reject(spacing, needle, dl_source, tmp_path):
    rows = dl_rows(dl_source)
    rows[2]["Spacing_mm_px_"] = spacing
    write_dl_rows(dl_source, rows)
    out = tmp_path / "out"
    result = build(dl_recipe(), dl_source, out)
    rej = rejects_of(out)[_stem(rows[2])]
    assert rej["stage"] == "plan" and needle in rej["reason"] and result.n_samples == 2


def test_a_row_whose_spacing_differs_from_its_series_is_rejected(dl_source, tmp_path):
    # The rows added below are slices the phantom never rendered: without its truth file the source
    # is a plain DeepLesion layout (with it, a row the truth does not cover is a load reject).
    (dl_source / PHANTOM_TRUTH_FILE).unlink()
    rows = dl_rows(dl_source)
    first = rows[0]
    series, key = first["File_name"].rsplit("_", 1)
    k = int(key[:-4])
    extra = []
    for j, spacing in ((k - 1, first["Spacing_mm_px_"]), (k + 1, "0.80, 0.80, 1.25")):
        row = dict(first)
        row["File_name"] = f"{series}_{j:03d}.png"
        row["Spacing_mm_px_"] = spacing
        extra.append(row)
    write_dl_rows(dl_source, rows + extra)
    out = tmp_path / "out"
    build(dl_recipe(), dl_source, out)
    rejects = rejects_of(out)
    assert list(rejects) == [_stem(extra[1])]
    assert "differs by more than 1 % from its series" in rejects[_stem(extra[1])]["reason"]
    assert {_stem(first), _stem(extra[0])} <= _built_ids(out)


@pytest.mark.parametrize("side", ["dl_info", "png"])
def test_image_size_must_match_the_png(side, dl_source, tmp_path):
    rows = dl_rows(dl_source)
    if side == "dl_info":
        rows[0]["Image_size"] = "600, 600"
        write_dl_rows(dl_source, rows)
    else:  # the case: a 600x600 PNG while DL_info says 512, 512
        png = key_png(dl_source, rows[0])
        image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        write_png16(png, cv2.copyMakeBorder(image, 0, 88, 0, 88, cv2.BORDER_REPLICATE))
    out = tmp_path / "out"
    result = build(dl_recipe(), dl_source, out)
    rej = rejects_of(out)[_stem(rows[0])]
    assert rej["stage"] == "load" and "Image_size" in rej["reason"] and result.n_samples == 2


def test_malformed_image_size_is_a_plan_reject(dl_source, tmp_path):
    rows = dl_rows(dl_source)
    rows[0]["Image_size"] = "512"
    write_dl_rows(dl_source, rows)
    out = tmp_path / "out"
    build(dl_recipe(), dl_source, out)
    rej = rejects_of(out)[_stem(rows[0])]
    assert rej["stage"] == "plan" and "Image_size" in rej["reason"]


def test_an_exact_duplicate_row_is_rejected_after_the_first(dl_source, tmp_path):
    rows = dl_rows(dl_source)
    write_dl_rows(dl_source, rows + [dict(rows[1])])
    out = tmp_path / "out"
    result = build(dl_recipe(), dl_source, out)
    stem = _stem(rows[1])
    assert rejects_of(out) == {f"{stem}-2": {"sample_id": f"{stem}-2", "stage": "plan",
                                             "reason": "duplicate of DL_info line 3 (every cell equal; the first "
                                                       "is kept)"}}
    assert f"{stem}-1" in _built_ids(out) and result.n_samples == 3


def test_slice_source_rejects_a_blank_slice(phantom3, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(phantom3, src)
    png = sorted((src / "Images_png").glob("*/*.png"))[0]
    write_png16(png, np.zeros((512, 512)))
    out = tmp_path / "out"
    result = build(slices_recipe(), src, out)
    sid = f"{png.parent.name}_{png.stem}"
    assert list(rejects_of(out)) == [sid] and "implausible image" in rejects_of(out)[sid]["reason"]
    assert result.n_samples == len(list((src / "Images_png").glob("*/*.png"))) - 1


# --- LIDC DICOM headers (real fixture copied, one slice edited) -----------------------------------

def _edit(ds, case):
    if case == "modality_mr":
        ds.Modality = "MR"
    elif case == "slope_zero":
        ds.RescaleSlope = 0
    elif case == "spacing_off_series":
        ds.PixelSpacing = [0.75, 0.75]
    elif case == "spacing_1e30":
        ds.PixelSpacing = [1e30, 1e30]


LIDC_CASES = {"modality_mr": "Modality is 'MR'", "slope_zero": "RescaleSlope", "spacing_off_series":
              "differs by more than 1 % from its series", "spacing_1e30": "implausible DICOM PixelSpacing"}


@pytest.fixture
def lidc_case1(lidc_root, tmp_path) -> Path:
    root = tmp_path / "lidc"
    shutil.copytree(lidc_root / "LIDC-IDRI-0001", root / "LIDC-IDRI-0001")
    return root


@pytest.mark.realdata
@pytest.mark.parametrize("case", sorted(LIDC_CASES))
def test_lidc_impossible_header_is_a_load_reject(case, lidc_case1, tmp_path):
    (central,) = lidc_case1.glob("LIDC-IDRI-0001/*/*/-115.000000.dcm")
    ds = pydicom.dcmread(central)
    _edit(ds, case)
    ds.save_as(central)
    out = tmp_path / "out"
    result = build(load_recipe("lidc"), lidc_case1, out)
    (rej,) = rejects_of(out).values()
    assert rej["sample_id"] == "LIDC-IDRI-0001_n01_z-115.000" and rej["stage"] == "load"
    assert LIDC_CASES[case] in rej["reason"] and result.n_samples == 0


@pytest.mark.realdata
def test_lidc_slices_reject_an_mr_slice_and_keep_the_series(lidc_case1, tmp_path):
    # not the folder's first file: which file decides a folder is series discovery (the scale-out corpus)
    (one,) = lidc_case1.glob("LIDC-IDRI-0001/*/*/-115.000000.dcm")
    ds = pydicom.dcmread(one)
    ds.Modality = "MR"
    ds.save_as(one)
    n_files = len(list(lidc_case1.glob("LIDC-IDRI-0001/*/*/*.dcm")))
    out = tmp_path / "out"
    rec = recipe_from_dict({"dataset": "ls", "source": "lidc_slices", "split": {"method": "patient",
                                                                               "fractions": {"train": 1.0}}})
    result = build(rec, lidc_case1, out)
    (rej,) = rejects_of(out).values()
    assert "Modality is 'MR'" in rej["reason"] and "z-115.000" in rej["sample_id"]
    assert result.n_samples == n_files - 1


# --- plain-mask sources -------------------------------------------------------------------------

def _dicom_pair(root: Path, name: str, edit=None):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if edit:
        edit(ds)
    ds.save_as(root / f"{name}.dcm")
    rr, cc = np.mgrid[:ds.Rows, :ds.Columns]
    mask = ((rr - 60) ** 2 + (cc - 70) ** 2 <= 64).astype(np.uint8) * 255
    assert cv2.imwrite(str(root / f"{name}_mask.png"), mask)


@pytest.mark.parametrize("edit, needle", [
    (lambda ds: setattr(ds, "Modality", "MR"), "Modality is 'MR'"),
    (lambda ds: setattr(ds, "RescaleSlope", 0), "RescaleSlope"),
    (lambda ds: setattr(ds, "PixelSpacing", [1e30, 1e30]), "implausible DICOM PixelSpacing"),
])
def test_masks_dicom_headers(edit, needle, masks_source, tmp_path):
    _dicom_pair(masks_source, "case3_a", edit)
    out = tmp_path / "out"
    result = build(masks_recipe(spacing_mm=None), masks_source, out)
    rejects = rejects_of(out)
    assert list(rejects) == ["case3_a"] and needle in rejects["case3_a"]["reason"]
    assert result.n_samples == 2


def test_masks_real_dicom_builds(masks_source, tmp_path):  # the oracle of the three cases above
    _dicom_pair(masks_source, "case3_a")
    assert build(masks_recipe(spacing_mm=None), masks_source, tmp_path / "out").n_samples == 3


def test_masks_spacing_option_out_of_range_fails_the_dry_run(masks_source, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("dataset: m\nsource: masks\nsource_options: {spacing_mm: 1.0e30}\n")
    assert_one_line_error(invoke("build", "masks", masks_source, "--recipe", path, "--dry-run"), EXIT_INPUT,
                          "spacing_mm")


def test_masks_flat_image_is_rejected(masks_source, tmp_path):
    np.save(masks_source / "case1_a.npy", np.full((96, 96), 40.0, dtype=np.float32))
    out = tmp_path / "out"
    build(masks_recipe(), masks_source, out)
    assert "implausible image" in rejects_of(out)["case1_a"]["reason"]


def test_histogram_percentiles_equal_numpys_on_integer_images():
    """check_image_hu reads its percentiles off the integer histogram (no sort); the oracle is
    np.percentile's default (linear) method, for odd/even counts, ties, one value, wide ranges."""
    from softmask_builder.sources.plausibility import percentiles_from_counts

    rng = np.random.default_rng(3)
    qs = (0, 1, 12.5, 50, 99, 100)
    cases = [np.array([7.0]), np.array([3.0, 3.0]), np.array([-5.0, 9.0])]
    cases += [rng.integers(-1024, rng.integers(-1000, 4000), rng.integers(1, 3000)).astype(np.float32)
              for _ in range(100)]
    for x in cases:
        low = float(x.min())
        counts = np.bincount((x - np.float32(low)).astype(np.int64))
        np.testing.assert_allclose(percentiles_from_counts(counts, low, qs), np.percentile(x.astype(np.float64), qs),
                                   rtol=0, atol=1e-9)
