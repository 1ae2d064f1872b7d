"""LIDC-IDRI 3-D source (issue 26) on the real fixtures: one volume per nodule, every reader voxel
kept (pylidc's own voxel counts), the reader masks equal to the 2-D adapter's on every slice both
cover, the HU equal to pydicom's, spacing from the slices' positions, partial series rejected."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from softmask_builder.errors import InputError, SourceError
from softmask_builder.sources.lidc import load_lidc, load_lidc_volume, plan_lidc, plan_lidc_volumes

from .lidc_oracle import dicom_files, dicom_hu

CASE1, CASE2 = "LIDC-IDRI-0001", "LIDC-IDRI-0002"


@pytest.fixture(scope="module")
def planned(lidc_root):
    return plan_lidc_volumes(lidc_root, min_readers=2)


@pytest.fixture(scope="module")
def volume_0001(planned):
    refs, _ = planned
    (ref,) = [r for r in refs if r.patient == CASE1]
    return load_lidc_volume(ref)


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="min_readers"):
        plan_lidc_volumes(tmp_path, min_readers=1)
    with pytest.raises(InputError, match="crop_zrc"):
        plan_lidc_volumes(tmp_path, crop_zrc=(48, 96))
    with pytest.raises(SourceError, match="no LIDC-IDRI-XXXX"):
        plan_lidc_volumes(tmp_path)


def test_one_volume_per_nodule_and_partial_series_rejected(planned):
    refs, rejects = planned
    assert [(r.sample_id, r.source_key, r.patient) for r in refs] == [
        ("LIDC-IDRI-0001_n01", "LIDC-IDRI-0001/nodule-1", CASE1)]
    # 0002: 7 of its 28 contour slices on disk (fixture README): the core is incomplete.
    (rej,) = [r for r in rejects if r.sample_id.startswith(CASE2)]
    assert rej.stage == "plan" and "not on disk" in rej.reason and "partial series" in rej.reason


def test_every_reader_voxel_kept_against_pylidc(volume_0001, lidc_root):
    """Each reader's voxel count equals pylidc's Annotation.boolean_mask() count (reference file
    made by pylidc itself): nothing lost to the crop or the z padding."""
    ref = json.loads(gzip.open(lidc_root / "pylidc_reference.json.gz").read())
    (scan,) = ref["scans"][CASE1]
    ids = volume_0001.ref.payload["annotation_ids"]
    assert len(ids) == 4 and volume_0001.prior.shape == (4, 48, 96, 96)
    expected = [scan["annotations"][str(i)]["voxels"] for i in ids]
    assert volume_0001.prior.sum(axis=(1, 2, 3)).tolist() == expected


def test_reader_masks_equal_the_2d_adapter_on_every_slice(lidc_root, volume_0001):
    """The 2-D adapter (an independent path: its own plan, slice matching and crop) gives the same
    reader masks, in full-image coordinates, on every slice both cover."""
    refs2d, _ = plan_lidc(lidc_root, min_readers=2, slices="all", crop_px=128)
    refs2d = [r for r in refs2d if r.patient == CASE1]
    assert len(refs2d) >= 8  # slices outlined by >= 2 readers
    k0, r0, c0 = (int(v) for v in volume_0001.origin_px)
    for ref in refs2d:
        rec = load_lidc(ref)
        assert rec.scale == 1.0
        s = ref.payload["k"] - k0
        assert 0 <= s < 48
        rr, cc = int(rec.origin_px[0]) - r0, int(rec.origin_px[1]) - c0
        # the overlap of the two windows, in 3-D crop coordinates
        a0, a1 = max(rr, 0), min(rr + 128, 96)
        b0, b1 = max(cc, 0), min(cc + 128, 96)
        mine = volume_0001.prior[:, s, a0:a1, b0:b1]
        theirs = rec.prior[:, a0 - rr:a1 - rr, b0 - cc:b1 - cc]
        assert np.array_equal(mine, theirs), ref.sample_id
        assert rec.prior.sum() == mine.sum()  # nothing of the 2-D masks lies outside the 3-D crop


def test_hu_spacing_and_z_padding_against_pydicom(lidc_root, volume_0001):
    files = dicom_files(lidc_root, CASE1)  # z -> path, read by pydicom
    zs = sorted(files)
    assert len(zs) == 16
    gaps = np.diff(zs)
    assert np.allclose(gaps, 2.5)
    hu0, header = dicom_hu(files[zs[0]])
    assert volume_0001.spacing_mm == pytest.approx((2.5, 0.703125, 0.703125))
    k0, r0, c0 = (int(v) for v in volume_0001.origin_px)
    k_first = volume_0001.ref.payload["k_first"]
    s_first = k_first - k0  # crop slice of the first slice on disk
    assert 0 <= s_first and s_first + 16 <= 48
    for j, z in enumerate(zs):
        hu, _ = dicom_hu(files[z])
        assert np.array_equal(volume_0001.image_hu[s_first + j], hu[r0:r0 + 96, c0:c0 + 96].astype(np.float32))
    # beyond the 16 slices on disk: the end slices repeated (edge padding), masks empty there
    assert np.array_equal(volume_0001.image_hu[0], volume_0001.image_hu[s_first])
    assert np.array_equal(volume_0001.image_hu[47], volume_0001.image_hu[s_first + 15])
    outside = np.ones(48, bool)
    outside[s_first:s_first + 16] = False
    assert not volume_0001.prior[:, outside].any()


def test_missing_core_slice_is_rejected(lidc_root, tmp_path):
    root = tmp_path / "lidc"
    shutil.copytree(lidc_root / CASE1, root / CASE1)
    files = dicom_files(root, CASE1)
    files[-115.0].unlink()  # the nodule's central slice
    refs, rejects = plan_lidc_volumes(root, min_readers=2)
    assert refs == []
    (rej,) = rejects
    assert rej.sample_id == "LIDC-IDRI-0001_n01" and "z=-115.000" in rej.reason


def test_nodule_larger_than_crop_is_rejected(lidc_root):
    refs, rejects = plan_lidc_volumes(lidc_root, min_readers=2, crop_zrc=(48, 40, 40))
    assert refs == []
    rej = [r for r in rejects if r.sample_id == "LIDC-IDRI-0001_n01"][0]
    assert "does not fit" in rej.reason and "row" in rej.reason


def _scan_and_nodule():
    from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

    (scan,) = read_lidc_db(None, patients=[CASE1])
    (group,) = [g for g in cluster_annotations(scan) if len(g) == 4]
    return scan, group


def test_full_series_fills_the_crop_and_uneven_spacing_is_rejected():
    """The planner on the database's own series geometry with every slice "on disk": the crop's 48
    slices all come from disk; one wider gap inside the crop (z shifted beyond the nodule) is a
    reject naming the gaps; the same gap outside the crop is not."""
    import dataclasses
    from pathlib import Path

    from softmask_builder.sources.lidc import _plan_nodule_volume, _SliceFile

    scan, group = _scan_and_nodule()

    def plan(zs):
        files = [_SliceFile(float(z), i, Path(f"/series/{i}.dcm")) for i, z in enumerate(zs)]
        return _plan_nodule_volume(Path("/series"), CASE1, 1, dataclasses.replace(scan, slice_z_mm=zs), group,
                                   files, (48, 96, 96))

    ref, rej = plan(scan.slice_z_mm)
    assert rej is None and len(ref.payload["dicom_paths"]) == 48
    crop_end = ref.payload["origin_zrc"][0] + 48  # first slice after the crop
    assert ref.payload["k_first"] == ref.payload["origin_zrc"][0] and ref.payload["spacing_z_mm"] == pytest.approx(2.5)
    k_last_contour = max(c.k for a in group for c in a.contours)
    zs = np.array(scan.slice_z_mm, dtype=np.float64)
    zs[k_last_contour + 5:] += 0.5  # one 3.0 mm gap among 2.5 mm ones, inside the crop
    ref, rej = plan(zs)
    assert ref is None and "uneven slice spacing" in rej.reason and "2.500 and 3.000 mm" in rej.reason
    zs = np.array(scan.slice_z_mm, dtype=np.float64)
    assert crop_end + 1 < len(zs)
    zs[crop_end + 1:] += 0.5  # the wider gap just after the crop's end: not looked at
    assert plan(zs)[1] is None
