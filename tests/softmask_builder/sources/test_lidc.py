"""LIDC-IDRI adapter on the real fixtures: plan (z matching, partial series, rejects) and load
(HU, reader masks, crop), checked against pydicom and the JSON contours filled with skimage."""

from __future__ import annotations

import dataclasses
import os
import shutil

import cv2
import numpy as np
import pytest

from softmask_builder.labelling.crop import crop_image, crop_plan
from softmask_builder.errors import InputError, SourceError
from softmask_builder.sources.lidc import load_lidc, load_lidc_slice, plan_lidc, plan_lidc_slices

from .lidc_oracle import central_z, dicom_files, dicom_hu, load_contours_json, reader_masks

CASE1, CASE2 = "LIDC-IDRI-0001", "LIDC-IDRI-0002"


@pytest.fixture(scope="module")
def contours(lidc_root):
    return load_contours_json(lidc_root)["scans"]


@pytest.fixture(scope="module")
def plan_central(lidc_root):
    return plan_lidc(lidc_root, min_readers=2)


def _only(items, case):
    return [r for r in items if r.sample_id.startswith(case)]


# ---------------------------------------------------------------- arguments (no data needed)

@pytest.mark.parametrize("kwargs, match", [
    ({"min_readers": 1}, "min_readers"),
    ({"min_readers": 4, "max_readers": 3}, "max_readers"),
    ({"slices": "middle"}, "slices"),
    ({"consensus": 0.0}, "consensus"),
    ({"crop_px": 2}, "crop_px"),
])
def test_bad_arguments_are_input_errors(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        plan_lidc(tmp_path, **kwargs)


def test_root_without_cases_is_source_error(tmp_path):
    with pytest.raises(SourceError, match="no LIDC-IDRI-XXXX"):
        plan_lidc(tmp_path)
    with pytest.raises(SourceError, match="not a folder"):
        plan_lidc(tmp_path / "absent")
    with pytest.raises(InputError, match="every_nth"):
        plan_lidc_slices(tmp_path, every_nth=0)


# ---------------------------------------------------------------- plan

@pytest.mark.realdata
def test_central_slice_of_0001_matched_by_z(plan_central, contours, lidc_root):
    refs, _ = plan_central
    ref, = _only(refs, CASE1)
    nodule, = contours[CASE1]["nodules"]
    z = central_z(nodule)
    assert ref.source_key == f"{CASE1}/nodule-1/z={z:.3f}"
    assert ref.patient == CASE1 and ref.split is None
    assert ref.payload["z_mm"] == z
    assert ref.payload["dicom_path"] == str(dicom_files(lidc_root, CASE1)[z])  # the file whose header says z
    assert ref.payload["annotation_ids"] == tuple(a["annotation_id"] for a in nodule["annotations"])


@pytest.mark.realdata
def test_partial_series_0002_central_slice_missing_is_rejected(plan_central, contours, lidc_root):
    refs, rejects = plan_central
    assert _only(refs, CASE2) == []
    nodule, = contours[CASE2]["nodules"]
    z = central_z(nodule)
    assert z not in dicom_files(lidc_root, CASE2)  # the fixture really lacks it
    rej, = _only(rejects, CASE2)
    assert rej.stage == "plan" and f"z={z:.3f}" in rej.reason and "partial series" in rej.reason


@pytest.mark.realdata
def test_all_slices_of_partial_series(lidc_root, contours):
    refs, rejects = plan_lidc(lidc_root, min_readers=2, slices="all")
    nodule, = contours[CASE2]["nodules"]
    on_disk = set(dicom_files(lidc_root, CASE2))
    two_readers = {z for z in {c["z"] for a in nodule["annotations"] for c in a["contours"]}
                   if sum(any(c["z"] == z for c in a["contours"]) for a in nodule["annotations"]) >= 2}
    got = {r.payload["z_mm"] for r in _only(refs, CASE2)}
    assert got == two_readers & on_disk and got
    assert {float(r.sample_id.split("_z")[1]) for r in _only(rejects, CASE2)} == two_readers - on_disk


@pytest.mark.realdata
def test_min_readers_filters(lidc_root):
    refs, rejects = plan_lidc(lidc_root)  # default: 4 readers -> 0002 (2 readers) is out
    assert [r.patient for r in refs] == [CASE1] and rejects == []
    refs, rejects = plan_lidc(lidc_root, min_readers=2, max_readers=3)
    assert refs == [] and [r.sample_id.split("_")[0] for r in rejects] == [CASE2]


@pytest.mark.realdata
def test_plan_is_deterministic(lidc_root, plan_central):
    again = plan_lidc(lidc_root, min_readers=2)
    assert [(r, r.payload) for r in again[0]] == [(r, r.payload) for r in plan_central[0]]
    assert again[1] == plan_central[1]


# ---------------------------------------------------------------- load

@pytest.fixture(scope="module")
def record_0001(plan_central):
    ref, = _only(plan_central[0], CASE1)
    return load_lidc(ref)


@pytest.mark.realdata
def test_load_crop_hu_and_reader_masks_match_independent_oracles(record_0001, contours):
    rec = record_0001
    nodule, = contours[CASE1]["nodules"]
    z = rec.ref.payload["z_mm"]
    hu, info = dicom_hu(rec.ref.payload["dicom_path"])
    assert info["z"] == z
    masks = reader_masks(nodule, z)  # (4, 512, 512) from the JSON, skimage fill + clear
    cons = masks.mean(axis=0) >= 0.5
    rr, cc = np.nonzero(cons)
    ur, uc = np.nonzero(masks.any(axis=0))
    extent = float(np.hypot(np.ptp(ur) + 1, np.ptp(uc) + 1))
    origin, scale = crop_plan((rr.mean(), cc.mean()), size_px=64, extent_px=extent)
    np.testing.assert_allclose(rec.origin_px, origin, rtol=0, atol=1e-9)
    assert rec.scale == pytest.approx(scale, abs=1e-12)
    assert rec.prior_kind == "readers" and rec.n_readers == 4 and rec.prior.shape == (4, 64, 64)
    assert rec.prior.dtype == bool and rec.image_hu.dtype == np.float32
    np.testing.assert_allclose(rec.image_hu, crop_image(hu, origin, scale, size_px=64), atol=1e-3)
    for i in range(4):
        expected = crop_image(masks[i].astype(np.uint8), origin, scale, size_px=64, interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(rec.prior[i], expected > 0)
    # DICOM PixelSpacing is [row spacing, column spacing]; the crop pixels are 1/scale larger.
    assert rec.spacing_mm == pytest.approx((info["spacing"][0] / scale, info["spacing"][1] / scale))


@pytest.mark.realdata
def test_trimap_lesion_is_exactly_the_readers_intersection(record_0001, contours):
    from softmask_builder.labelling.trimap import trimap_from_readers

    rec = record_0001
    nodule, = contours[CASE1]["nodules"]
    inter = reader_masks(nodule, rec.ref.payload["z_mm"]).all(axis=0)
    inter_crop = crop_image(inter.astype(np.uint8), rec.origin_px, rec.scale, size_px=64,
                            interpolation=cv2.INTER_NEAREST) > 0
    assert inter_crop.any()
    np.testing.assert_array_equal(rec.prior.all(axis=0), inter_crop)
    trimap = trimap_from_readers(rec.prior)
    np.testing.assert_array_equal(trimap == 255, inter_crop)
    np.testing.assert_array_equal(trimap == 0, ~rec.prior.any(axis=0))


@pytest.mark.realdata
def test_no_patient_identifying_dicom_field_in_records(record_0001):
    ds = dicom_hu(record_0001.ref.payload["dicom_path"])[1]["ds"]
    fields = ["PatientName", "PatientBirthDate", "AccessionNumber", "StudyDate", "StudyID", "OtherPatientIDs",
              "InstitutionName", "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    secrets = {str(ds.get(f, "")) for f in fields} - {""}
    assert str(ds.PatientID) in ("", CASE1)  # the only id allowed: the case id
    rec = record_0001
    written = [rec.ref.sample_id, rec.ref.source_key, rec.ref.patient]
    # the paths (the slice's and its z-neighbours') are TCIA's folder layout
    payload = {k: v for k, v in rec.ref.payload.items() if k not in ("dicom_path", "neighbour_paths")}
    for text in written + [repr(payload)]:
        for secret in secrets:
            assert secret not in text, secret


@pytest.mark.realdata
def test_z_matching_ignores_file_names(lidc_root, tmp_path, plan_central):
    # Same series with the file names rotated: plan and load must follow the headers' z.
    src = lidc_root / CASE1
    files = sorted(src.rglob("*.dcm"))
    series_dir = tmp_path / CASE1 / "study" / "series"
    series_dir.mkdir(parents=True)
    for path, name in zip(files, [f.name for f in files[3:] + files[:3]]):
        os.symlink(path, series_dir / name)
    refs, rejects = plan_lidc(tmp_path)
    ref, = refs
    orig, = _only(plan_central[0], CASE1)
    assert rejects == [] and ref.sample_id == orig.sample_id
    assert os.path.basename(ref.payload["dicom_path"]) != os.path.basename(orig.payload["dicom_path"])
    rec = load_lidc(ref)
    np.testing.assert_array_equal(rec.image_hu, load_lidc(orig).image_hu)


@pytest.mark.realdata
def test_unreadable_dicom_becomes_reject_and_load_error(lidc_root, tmp_path, plan_central):
    series = next(p for p in (lidc_root / CASE1).rglob("*") if p.is_dir() and any(p.glob("*.dcm")))
    dst = tmp_path / CASE1 / series.parent.name / series.name
    shutil.copytree(series, dst)
    (dst / "junk.dcm").write_bytes(b"\x00" * 64)
    refs, rejects = plan_lidc(tmp_path)
    assert len(refs) == 1
    rej, = rejects
    assert rej.sample_id == f"{CASE1}/{series.parent.name}/{series.name}/junk.dcm"
    assert rej.stage == "plan" and "unreadable DICOM" in rej.reason
    broken = dataclasses.replace(refs[0], payload={**refs[0].payload, "dicom_path": str(dst / "junk.dcm")})
    with pytest.raises(SourceError, match="unreadable DICOM") as err:
        load_lidc(broken)
    assert err.value.sample_id == refs[0].sample_id and err.value.stage == "load"
    # The planned slice itself becomes unreadable -> plan rejects the header and the sample.
    (dst / os.path.basename(refs[0].payload["dicom_path"])).write_bytes(b"garbage")
    refs2, rejects2 = plan_lidc(tmp_path)
    assert refs2 == [] and any(r.sample_id == refs[0].sample_id and "partial series" in r.reason for r in rejects2)


# ---------------------------------------------------------------- full slices (SR teacher)

@pytest.mark.realdata
def test_plan_and_load_full_slices(lidc_root):
    refs, rejects = plan_lidc_slices(lidc_root)
    on_disk = {case: dicom_files(lidc_root, case) for case in (CASE1, CASE2)}
    assert rejects == []
    assert sorted((r.patient, r.payload["z_mm"]) for r in refs) == sorted(
        (case, z) for case, zs in on_disk.items() for z in zs)
    assert [r.sample_id for r in refs] == sorted(r.sample_id for r in refs)
    half, _ = plan_lidc_slices(lidc_root, every_nth=2)
    assert len(half) == sum((len(zs) + 1) // 2 for zs in on_disk.values())
    for ref in refs[:: max(1, len(refs) // 3)]:
        rec = load_lidc_slice(ref)
        hu, info = dicom_hu(ref.payload["dicom_path"])
        np.testing.assert_allclose(rec.image_hu, hu, atol=1e-3)
        assert rec.spacing_mm == info["spacing"]
