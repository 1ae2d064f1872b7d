"""Real nodule shapes (softmask_builder.phantom.shapes): exact fractions, the DB reader, splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.phantom.shapes import (assign_splits, contour_problem, fraction_map, fraction_maps,
                                             load_shapes, sphere_shape, ssp_samples, texture_class)

# A few real clusters (3-4 readers) spread over the database.
PATIENTS = ["LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0011"]


@pytest.fixture(scope="module")
def db_shapes():
    from softmask_builder.sources.lidc_db import read_lidc_db

    report = load_shapes(patients=PATIENTS)
    scans = {s.patient_id: s for s in read_lidc_db(patients=PATIENTS)}
    return report, scans


@pytest.mark.parametrize("thickness_mm, spacing_mm, rotation_deg, z0_mm", [
    (0.6, 0.5, 0.0, 0.1), (1.25, 0.7, 30.0, 0.37), (2.5, 0.8, 77.0, -0.9), (5.0, 1.0, 0.0, 1.3)])
def test_sphere_fractions_over_a_contiguous_stack_give_its_volume(thickness_mm, spacing_mm, rotation_deg, z0_mm):
    # Oracle: 4/3 pi R^3. Contiguous slices (spacing = thickness) whose SSPs form a partition of
    # unity must add up to the solid's volume, whatever the slice offset, pixel size or turn.
    R = 4.0
    shape = sphere_shape(R)
    n_side = int(math.ceil(2 * (R + 2) / spacing_mm)) + 4
    centre = (n_side * spacing_mm / 2 + 0.13, n_side * spacing_mm / 2 - 0.21)
    total = 0.0
    for k in range(-int(math.ceil((R + 3) / thickness_mm)) - 2, int(math.ceil((R + 3) / thickness_mm)) + 3):
        f = fraction_map(shape, rows=n_side, cols=n_side, spacing_mm=spacing_mm, center_rc_mm=centre,
                         z_mm=z0_mm + k * thickness_mm, slice_thickness_mm=thickness_mm, rotation_deg=rotation_deg)
        assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
        total += float(f.sum()) * spacing_mm ** 2 * thickness_mm
    assert total == pytest.approx(4 / 3 * math.pi * R ** 3, rel=0.01)


def test_sphere_plane_section_is_a_disc_of_the_right_area():
    # An ideal plane at height z cuts the ball in a disc of radius sqrt(R^2 - z^2).
    R, z, sp = 5.0, 3.0, 0.5
    f = fraction_map(sphere_shape(R), rows=40, cols=40, spacing_mm=sp, center_rc_mm=(10.0, 10.0), z_mm=z,
                     slice_thickness_mm=0.0)
    assert float(f.sum()) * sp * sp == pytest.approx(math.pi * (R * R - z * z), rel=0.02)


def test_ssp_is_a_partition_of_unity_and_wider_than_the_box():
    u, w = ssp_samples(2.0)
    assert w.sum() == pytest.approx(1.0)
    assert u.min() < -1.0 and u.max() > 1.0  # Gaussian tails beyond the box
    # weights of slices at k * t summed at each shared sample position are constant
    step = u[1] - u[0]
    grid = {}
    for k in range(-5, 6):
        for uu, ww in zip(u + k * 2.0, w):
            key = int(np.floor(uu / step))  # samples sit at (j + 1/2) step
            grid[key] = grid.get(key, 0.0) + ww
    inner = [v for key, v in grid.items() if abs((key + 0.5) * step) < 3.0]
    assert np.ptp(inner) < 1e-3


def test_core_fraction_is_the_deeper_part():
    R, depth = 5.0, 2.0
    f, core = fraction_maps(sphere_shape(R), rows=40, cols=40, spacing_mm=0.5, center_rc_mm=(10.0, 10.0), z_mm=0.0,
                            slice_thickness_mm=0.0, core_depth_mm=depth)
    assert np.all(core <= f + 1e-6)
    # the core of a ball is the ball of radius R - depth
    assert float(core.sum()) * 0.25 == pytest.approx(math.pi * (R - depth) ** 2, rel=0.03)


def test_fraction_map_rejects_bad_geometry():
    s = sphere_shape(3.0)
    with pytest.raises(InputError, match="spacing_mm"):
        fraction_map(s, rows=10, cols=10, spacing_mm=0.0, center_rc_mm=(1, 1), z_mm=0, slice_thickness_mm=1)
    with pytest.raises(InputError, match="slice_thickness_mm"):
        fraction_map(s, rows=10, cols=10, spacing_mm=1.0, center_rc_mm=(1, 1), z_mm=0, slice_thickness_mm=-1)


def test_contour_problems_are_named():
    assert contour_problem([[0, 0], [0, 5]]) == "fewer than 3 points"
    assert contour_problem([[0, 0], [0, 1], [1, 1]]).startswith("area")
    bowtie = [[0, 0], [10, 10], [0, 10], [10, 0]]
    assert contour_problem(bowtie) == "self-intersecting"
    assert contour_problem([[0, 0], [0, 10], [10, 10], [10, 0]]) is None


def test_texture_class_is_the_rounded_median():
    assert texture_class([1, 2, 2]) == (2.0, "ground_glass")
    assert texture_class([2, 3, 3, 2]) == (2.5, "part_solid")  # 2.5 rounds up to 3
    assert texture_class([5, 5, 4, None]) == (5.0, "solid")


def test_db_shapes_section_on_a_contour_plane_matches_the_polygon_fill(db_shapes):
    # Oracle: the readers' polygons filled by _lidc_db (pylidc's boolean_mask rule), 50 % vote,
    # on the scan's own grid; the shape's ideal-plane section there must be the same region.
    from softmask_builder.sources.lidc_db import annotation_slice_mask

    report, scans = db_shapes
    assert len(report.shapes) >= 6
    checked = 0
    for shape in report.shapes:
        assert 3 <= shape.n_readers <= 4 and shape.patient_id in PATIENTS
        scan = scans[shape.patient_id]
        anns = [a for a in scan.annotations if a.id in shape.source["annotation_ids"]]
        sp = shape.source["pixel_spacing_mm"]
        cr, cc = shape.source["centroid_rc_px"]
        for z in shape.source["plane_z_mm"][::2]:
            k = int(np.argmin(np.abs(scan.slice_z_mm - z)))
            cons = np.stack([annotation_slice_mask(a, k, origin_rc=(0, 0), shape=(512, 512)) for a in anns])
            cons = cons.mean(axis=0) >= 0.5
            if cons.sum() < 20:
                continue
            f = fraction_map(shape, rows=512, cols=512, spacing_mm=sp, center_rc_mm=(cr * sp, cc * sp),
                             z_mm=z - shape.source["centroid_z_mm"], slice_thickness_mm=0.0)
            mask = f >= 0.5
            dice = 2 * (mask & cons).sum() / (mask.sum() + cons.sum())
            assert dice > 0.97, (shape.shape_id, z, dice)
            # the 0.5 px smoothing of phi moves a convex edge inwards by ~0.1 px: allow
            # 0.15 px times the perimeter (that of a disc of the same area)
            n = float(cons.sum())
            assert abs(float(f.sum()) - n) <= 0.15 * 2 * math.sqrt(math.pi * n), (shape.shape_id, z)
            assert np.abs(np.argwhere(mask).mean(0) - np.argwhere(cons).mean(0)).max() < 0.3
            checked += 1
    assert checked >= 8


def test_db_shapes_volume_is_near_the_consensus_voxel_count(db_shapes):
    # Interpolated between planes with caps shorter than a full half-plane, the solid holds
    # less than the prism stack of its consensus voxels, but not much less for nodules > 10 mm.
    report, _ = db_shapes
    for shape in report.shapes:
        if shape.max_axial_diameter_mm < 10:
            continue
        z = np.asarray(shape.source["plane_z_mm"])
        sp = shape.source["pixel_spacing_mm"]
        f_sum = 0.0
        for zz in z:
            f = fraction_map(shape, rows=512, cols=512, spacing_mm=sp,
                             center_rc_mm=tuple(v * sp for v in shape.source["centroid_rc_px"]),
                             z_mm=zz - shape.source["centroid_z_mm"], slice_thickness_mm=0.0)
            f_sum += float(f.sum())
        prism = f_sum * sp * sp * float(np.mean(np.diff(z)))
        assert 0.8 * prism < shape.volume_mm3 < 1.02 * prism


def test_clusters_over_four_and_degenerate_contours_are_reported():
    from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

    # find a patient with a > 4 cluster among the first scans (the database has 14)
    over = None
    for scan in read_lidc_db(patients=[f"LIDC-IDRI-{i:04d}" for i in range(1, 200)]):
        if any(len(g) > 4 for g in cluster_annotations(scan)):
            over = scan.patient_id
            break
    assert over is not None
    report = load_shapes(patients=[over])
    kinds = {row["kind"] for row in report.skipped}
    assert "cluster_over_4" in kinds
    assert all(row["reason"] for row in report.skipped)
    assert all(s.n_readers <= 4 for s in report.shapes)


def test_splits_are_by_patient_and_stable(db_shapes):
    report, _ = db_shapes
    shapes = report.shapes
    splits = assign_splits(shapes)
    per_patient: dict[str, set] = {}
    for s in shapes:
        per_patient.setdefault(s.patient_id, set()).add(splits[s.shape_id])
    assert all(len(v) == 1 for v in per_patient.values())
    # a patient's split does not depend on the other shapes loaded
    assert assign_splits(shapes[:2]) == {s.shape_id: splits[s.shape_id] for s in shapes[:2]}
    with pytest.raises(InputError, match="fractions"):
        assign_splits(shapes, fractions=(0.5, 0.5, 0.5))
