"""Adversarial corpus, round 3 (issue 23): CT DICOM that lies about itself. Without rescale tags
(and without RescaleType "HU"), with a coronal or flipped orientation: a rejects row naming the
rule (before: built with every HU off by +1024, or as if axial). Two different LIDC slices at one
z: both become rows and neither is used (before: one was silently picked)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from softmask_builder.formats.recipes import load_recipe
from tests.adversarial.kit import build, masks_recipe, rejects_of


def _dicom_pair(root, name, edit=None):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if edit:
        edit(ds)
    ds.save_as(root / f"{name}.dcm")
    rr, cc = np.mgrid[:ds.Rows, :ds.Columns]
    assert cv2.imwrite(str(root / f"{name}_mask.png"), ((rr - 60) ** 2 + (cc - 70) ** 2 <= 64).astype(np.uint8) * 255)


def _drop_rescale(ds):
    del ds.RescaleIntercept
    del ds.RescaleSlope


def _hu_typed(ds):  # the header proves the stored values are HU: accepted
    _drop_rescale(ds)
    ds.PixelData = (ds.pixel_array.astype(np.int16) - 1024).astype(ds.pixel_array.dtype).tobytes()
    ds.RescaleType = "HU"


CASES = {
    "no-rescale": (_drop_rescale, "without RescaleIntercept and RescaleSlope"),
    "no-intercept": (lambda ds: delattr(ds, "RescaleIntercept"), "without RescaleIntercept"),
    "coronal": (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), "is not axial"),
    "flipped": (lambda ds: setattr(ds, "ImageOrientationPatient", [-1, 0, 0, 0, 1, 0]), "is not axial"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lying_ct_header_is_a_reject_naming_the_rule(case, masks_source, tmp_path):
    edit, needle = CASES[case]
    _dicom_pair(masks_source, "case3_a", edit)
    out = tmp_path / "out"
    result = build(masks_recipe(spacing_mm=None), masks_source, out)
    rejects = rejects_of(out)
    assert list(rejects) == ["case3_a"] and needle in rejects["case3_a"]["reason"]
    assert result.n_samples == 2  # the rest builds


def test_rescale_type_hu_proves_hu_and_builds_the_same_values(masks_source, tmp_path):
    from softmask_builder.formats.shards import open_shard

    def image_of(out, sid="case3_a"):
        (shard,) = sorted(out.glob("*.h5"))
        with open_shard(shard) as s:
            return s.sample(s.sample_ids.index(sid))["image_hu"]

    _dicom_pair(masks_source, "case3_a")  # oracle: stored + rescale (-1024)
    assert build(masks_recipe(spacing_mm=None), masks_source, tmp_path / "ref").n_samples == 3
    _dicom_pair(masks_source, "case3_a", _hu_typed)
    assert build(masks_recipe(spacing_mm=None), masks_source, tmp_path / "hu").n_samples == 3
    np.testing.assert_array_equal(image_of(tmp_path / "hu"), image_of(tmp_path / "ref"))


@pytest.mark.realdata
def test_two_different_lidc_slices_at_one_z_are_rows_and_neither_is_used(lidc_root, tmp_path):
    root = tmp_path / "lidc"
    shutil.copytree(lidc_root / "LIDC-IDRI-0001", root / "LIDC-IDRI-0001")
    (central,) = root.glob("LIDC-IDRI-0001/*/*/-115.000000.dcm")
    ds = pydicom.dcmread(central)
    ds.InstanceNumber = int(ds.InstanceNumber) + 1000  # the copy sorts after: pylidc's rule would drop it
    pixels = ds.pixel_array.copy()
    pixels[:64, :64] = pixels.max()
    ds.PixelData = pixels.tobytes()
    ds.save_as(central.with_name("zz-duplicate.dcm"))
    out = tmp_path / "out"
    build(load_recipe("lidc"), root, out)
    rows = rejects_of(out)
    dup = [r for r in rows.values() if "two different slices" in r["reason"]]
    assert len(dup) == 2 and all(r["stage"] == "plan" for r in dup)
    assert any("zz-duplicate.dcm" in r["sample_id"] for r in dup)
    # the same copy with equal pixels is a harmless duplicate: pylidc's rule keeps the first
    ds.PixelData = pydicom.dcmread(central).PixelData
    ds.save_as(central.with_name("zz-duplicate.dcm"))
    build(load_recipe("lidc"), root, tmp_path / "same")
    assert not [r for r in rejects_of(tmp_path / "same").values() if "two different slices" in r["reason"]]


@pytest.mark.realdata
def test_symlink_loop_in_a_lidc_case_is_a_row_and_the_rest_builds(lidc_root, tmp_path):
    root = tmp_path / "lidc"
    shutil.copytree(lidc_root / "LIDC-IDRI-0001", root / "LIDC-IDRI-0001")
    reference = build(load_recipe("lidc"), root, tmp_path / "ref")
    (series,) = {p.parent for p in root.glob("LIDC-IDRI-0001/*/*/*.dcm")}
    (series / "loop").symlink_to("..", target_is_directory=True)  # a folder that contains itself
    out = tmp_path / "out"
    result = build(load_recipe("lidc"), root, out)
    rows = [r for r in rejects_of(out).values() if "symlink loop" in r["reason"]]
    assert len(rows) == 1 and rows[0]["stage"] == "plan" and rows[0]["sample_id"].endswith("/loop")
    assert result.n_samples == reference.n_samples


@pytest.mark.realdata
def test_unreadable_lidc_subtree_is_a_row(lidc_root, tmp_path, monkeypatch):
    import os

    import softmask_builder.sources.lidc as lidc

    root = tmp_path / "lidc"
    shutil.copytree(lidc_root / "LIDC-IDRI-0001", root / "LIDC-IDRI-0001")
    (root / "LIDC-IDRI-0001" / "private").mkdir()
    real = os.scandir

    def scandir(path):  # root ignores file modes, so the refusal is simulated at the call
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(lidc.os, "scandir", scandir)
    out = tmp_path / "out"
    build(load_recipe("lidc"), root, out)
    (row,) = [r for r in rejects_of(out).values() if "unreadable folder" in r["reason"]]
    assert row["sample_id"] == "LIDC-IDRI-0001/private" and "Permission denied" in row["reason"]


# --- degenerate reader contours ------------------------------------------------------------------
SQUARE = [(0, 0), (0, 4), (4, 4), (4, 0)]


@pytest.mark.parametrize("points, needle", [
    ([(3, 3), (3, 7)], "fewer than 3 distinct points"),                 # two points: a segment
    ([(3, 3), (3, 7), (3, 3)], "fewer than 3 distinct points"),
    ([(0, 0), (4, 4), (0, 4), (4, 0)], "self-intersecting"),             # a bow tie
    (SQUARE, None),
    ([(0, 0), (0, 2), (0, 4), (4, 4), (4, 0), (0, 0)], None),         # collinear run, closed ring
])
def test_contour_problem_hand_cases(points, needle):
    from softmask_builder.sources.lidc_db import contour_problem

    problem = contour_problem(np.array(points))
    assert (problem is None) if needle is None else (needle in problem)


@pytest.mark.realdata
def test_degenerate_reader_contour_is_a_load_reject(lidc_root, tmp_path, monkeypatch):
    from dataclasses import replace

    from softmask_builder.errors import SourceError
    from softmask_builder.sources.lidc import load_lidc, plan_lidc

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    refs, _ = plan_lidc(lidc_root, crop_px=64)
    ref = refs[0]
    load_lidc(ref)  # the planned sample loads
    readers = list(ref.payload["readers"])
    (inclusion, pts), *rest = readers[0]
    readers[0] = ((inclusion, tuple(pts[:2])), *rest)  # the first contour cut to two points
    bad = replace(ref, payload={**ref.payload, "readers": tuple(readers)})
    with pytest.raises(SourceError, match="reader 1's inclusion contour is degenerate"):
        load_lidc(bad)
