"""LIDC series discovery and the header scan: every file that parses as DICOM is grouped by its
SeriesInstanceUID whatever its name, extension or neighbours; non-DICOM files are skipped with a
row; the scan runs on the joblib workers and is cached outside the source, keyed by each file's
path, size and mtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import joblib
import pytest

from softmask_builder.sources import lidc as lidc_mod
from softmask_builder.sources.lidc import plan_lidc, plan_lidc_slices

CASE1 = "LIDC-IDRI-0001"


def _series_dir(lidc_root: Path) -> Path:
    return next(p for p in (lidc_root / CASE1).rglob("*") if p.is_dir() and any(p.glob("*.dcm")))


def _copy_case(lidc_root: Path, dest: Path) -> Path:
    series = _series_dir(lidc_root)
    dst = dest / CASE1 / series.parent.name / series.name
    shutil.copytree(series, dst)
    return dst


def _key(refs):
    return [(r.sample_id, r.source_key, r.payload["z_mm"]) for r in refs]


@pytest.fixture(scope="module")
def reference(lidc_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("lidcref")
    _copy_case(lidc_root, root)
    return plan_lidc(root, min_readers=2)


@pytest.mark.realdata
def test_files_without_dcm_extension_are_found(lidc_root, tmp_path, reference):
    dst = _copy_case(lidc_root, tmp_path)
    for i, f in enumerate(sorted(dst.iterdir())):
        f.rename(dst / f"IM{i:05d}")  # no extension at all, as some PACS exports name them
    refs, rejects = plan_lidc(tmp_path, min_readers=2)
    assert _key(refs) == _key(reference[0]) and len(refs) == 1 and rejects == []
    assert Path(refs[0].payload["dicom_path"]).name.startswith("IM")


@pytest.mark.realdata
def test_foreign_dicom_sorted_first_does_not_hide_the_series(lidc_root, tmp_path, reference):
    import pydicom

    dst = _copy_case(lidc_root, tmp_path)
    first = sorted(dst.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SeriesInstanceUID = "1.2.3.4.5.999"  # a radiograph of the same patient, say
    ds.Modality = "CR"
    ds.save_as(dst / "!foreign.dcm")
    assert sorted(p.name for p in dst.iterdir())[0] == "!foreign.dcm"
    refs, rejects = plan_lidc(tmp_path, min_readers=2)
    assert _key(refs) == _key(reference[0]) and rejects == []
    # The full-slice plan (CT only) leaves the radiograph out as well.
    slices, _ = plan_lidc_slices(tmp_path)
    assert len(slices) == len(list(dst.iterdir())) - 1


@pytest.mark.realdata
def test_non_dicom_files_are_skipped_with_a_row(lidc_root, tmp_path, reference):
    dst = _copy_case(lidc_root, tmp_path)
    (dst / "README.txt").write_text("downloaded with the NBIA Data Retriever\n")
    (dst.parent / "thumbs.db").write_bytes(b"\x00\x01binary")
    refs, rejects = plan_lidc(tmp_path, min_readers=2)
    assert _key(refs) == _key(reference[0])
    assert sorted(r.sample_id.rsplit("/", 1)[1] for r in rejects) == ["README.txt", "thumbs.db"]
    assert all(r.stage == "plan" and r.reason.startswith("not a DICOM file (skipped)") for r in rejects)


@pytest.mark.realdata
def test_header_scan_is_cached_outside_the_source_and_reread_when_a_file_changes(lidc_root, tmp_path,
                                                                                  monkeypatch, reference):
    monkeypatch.setenv("SOFTMASK_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    dst = _copy_case(lidc_root, src)
    before = sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    refs, _ = plan_lidc(src, min_readers=2)
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*")) == before  # nothing written there
    caches = list((tmp_path / "cache" / "lidc-headers").glob("*.json"))
    assert len(caches) == 1 and len(json.loads(caches[0].read_text())) == len(list(dst.iterdir()))

    reads = []
    real = lidc_mod._read_header
    monkeypatch.setattr(lidc_mod, "_read_header", lambda p: reads.append(Path(p).name) or real(p))
    again, _ = plan_lidc(src, min_readers=2, crop_px=48)  # other options: not the plan cache
    assert _key(again) == _key(refs) and reads == []  # every header from the cache
    # One file changes (its mtime): only that one is read again.
    victim = sorted(dst.iterdir())[3]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    plan_lidc(src, min_readers=2)
    assert reads == [victim.name]


@pytest.mark.realdata
def test_parallel_header_scan_plans_the_same(lidc_root, tmp_path, monkeypatch):
    monkeypatch.setattr(lidc_mod, "SCAN_CHUNK_FILES", 3)  # several chunks per case
    serial = plan_lidc(lidc_root, min_readers=2)
    monkeypatch.setenv("SOFTMASK_CACHE_DIR", str(tmp_path / "fresh"))  # no cache: really scan
    with joblib.parallel_config(backend="loky", n_jobs=2):
        parallel = plan_lidc(lidc_root, min_readers=2)
    assert _key(parallel[0]) == _key(serial[0]) and parallel[1] == serial[1]
    assert len(list((tmp_path / "fresh" / "lidc-headers").glob("*.json"))) == 1


@pytest.mark.realdata
def test_case_plans_are_cached_with_identical_payloads_and_redone_when_a_file_changes(lidc_root, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("SOFTMASK_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    dst = _copy_case(lidc_root, src)
    first = plan_lidc(src, min_readers=2)
    calls = []
    real_db = lidc_mod.read_lidc_db
    monkeypatch.setattr(lidc_mod, "read_lidc_db", lambda *a, **k: calls.append(k) or real_db(*a, **k))
    again = plan_lidc(src, min_readers=2)
    assert calls == []  # neither the database nor any header was read
    assert [(r, r.payload) for r in again[0]] == [(r, r.payload) for r in first[0]] and again[1] == first[1]
    # Other options are another cache entry.
    assert plan_lidc(src, min_readers=2, crop_px=32)[0][0].payload["crop_px"] == 32 and len(calls) == 1
    victim = sorted(dst.iterdir())[0]
    victim.unlink()  # a file disappears: the case is planned again
    plan_lidc(src, min_readers=2)
    assert len(calls) == 2


@pytest.mark.realdata
def test_parallel_case_planning_gives_the_same_payloads(lidc_root, tmp_path, monkeypatch):
    serial = plan_lidc(lidc_root, min_readers=2)
    monkeypatch.setenv("SOFTMASK_CACHE_DIR", str(tmp_path / "fresh"))
    with joblib.parallel_config(backend="loky", n_jobs=2):
        parallel = plan_lidc(lidc_root, min_readers=2)
    assert [(r, r.payload) for r in parallel[0]] == [(r, r.payload) for r in serial[0]]
    assert parallel[1] == serial[1]
