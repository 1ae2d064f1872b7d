"""Tests of the synthetic chest-CT phantom and its DeepLesion writer.

Independent references: closed-form slab areas of a sphere / cylinder, brute-force chords over
every pair of mask pixels, the numpy form of the shape (NoduleShape.contains) against the compiled
sampler, a re-read of the written PNGs with OpenCV, and the real DL_info.csv fixture.
"""

from __future__ import annotations

import csv
import itertools
import math
import re

import cv2
import numpy as np
import pytest

from softmask_builder.phantom import cases as P
from softmask_builder.errors import InputError
from softmask_builder.labelling.recist import Recist

from tests.softmask_builder._cpu_kernels import needs_x86, random_ellipses, stdout_under_each_kernel

SMALL = dict(shape=(256, 256))


@pytest.fixture(scope="module")
def small_cases():
    # one case of every kind, small slices and nodules so the module stays fast
    return P.generate_cases(6, seed=7, diameter_range_mm=(3.0, 12.0), **SMALL)


@pytest.fixture(scope="module")
def written(tmp_path_factory, small_cases):
    root = tmp_path_factory.mktemp("dl")
    truth = P.write_deeplesion(root, small_cases)
    return root, truth


# --- partial-volume fraction -----------------------------------------------------------------

@pytest.mark.parametrize("z0_mm, t_mm", [(0.0, 2.0), (1.3, 1.25), (-2.0, 2.5)])
def test_sphere_slab_area_matches_closed_form(z0_mm, t_mm):
    R, sp = 6.0, 0.7
    shape = P.NoduleShape.sphere((90.0, 80.0, 0.0), R)
    frac = P.nodule_fraction(shape, rows=256, cols=256, spacing_mm=sp, z_mm=z0_mm, slice_thickness_mm=t_mm)
    assert frac.dtype == np.float32 and frac.min() >= 0.0 and frac.max() <= 1.0
    # mean cross-section of a sphere over the slab [z0 - t/2, z0 + t/2] (inside the sphere)
    area_mm2 = math.pi * (R * R - z0_mm * z0_mm - t_mm * t_mm / 12.0)
    assert frac.sum() == pytest.approx(area_mm2 / sp ** 2, rel=0.01)


def test_long_cylinder_section_is_a_disc_of_area_pi_r2():
    R, sp = 4.3, 0.65
    # an ellipsoid 100x longer along z is a cylinder over one slice
    shape = P.NoduleShape(center_mm=(60.0, 61.0, 0.0), radius_mm=R, stretch=(1.0, 1.0, 100.0))
    frac = P.nodule_fraction(shape, rows=200, cols=200, spacing_mm=sp, z_mm=0.4, slice_thickness_mm=2.0)
    assert frac.sum() == pytest.approx(math.pi * R * R / sp ** 2, rel=0.01)


def _brute_fraction(shape, rows, cols, sp, z, t, s, clip=None):
    o = (np.arange(s) + 0.5) / s - 0.5
    ox, oy, oz = np.meshgrid(o * sp, o * sp, o * t, indexing="ij")
    out = np.zeros((rows, cols))
    for r in range(rows):
        pts = np.stack([np.arange(cols)[:, None] * sp + ox.ravel(), np.full((cols, 1), r * sp) + oy.ravel(),
                        z + np.broadcast_to(oz.ravel(), (cols, oz.size))], axis=-1)
        inside = shape.contains(pts)
        if clip is not None:
            inside &= P._ellipse_inside(pts[..., 0], pts[..., 1], clip)
        out[r] = inside.mean(axis=1)
    return out


@pytest.mark.parametrize("kind", ["lobulated", "spiculated", "juxta_pleural"])
def test_compiled_sampler_equals_numpy_shape_everywhere(kind):
    rng = np.random.default_rng(3)
    R = 5.0
    shape = P._nodule_shape(rng, kind, (22.0, 21.0, 0.3), R)
    clip = (40.0, 21.0, 20.0, 30.0, 0.2) if kind == "juxta_pleural" else None
    rows = cols = 64
    sp, t, s = 0.7, 1.5, 4
    fast = P.nodule_fraction(shape, rows=rows, cols=cols, spacing_mm=sp, z_mm=0.0, slice_thickness_mm=t,
                             supersample=s, clip_ellipse=clip)
    # every voxel sampled with the numpy form: checks the kernel and the radial-bound shortcuts
    slow = _brute_fraction(shape, rows, cols, sp, 0.0, t, s, clip)
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    assert (fast > 0).sum() > 50


@pytest.mark.parametrize("kind", P.KINDS)
def test_radial_bounds_hold_in_every_direction(kind):
    rng = np.random.default_rng(11)
    shape = P._nodule_shape(rng, kind, (0.0, 0.0, 0.0), 7.0)
    rmin, rmax = shape.r_bounds_mm
    u = rng.standard_normal((20_000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    # the extremes sit near the bump and spike axes: include those directions and their surroundings
    axes = np.array(list(shape.bump_dirs) + list(shape.spike_dirs)).reshape(-1, 3)
    near = (axes[:, None, :] + 0.05 * rng.standard_normal((len(axes), 50, 3))).reshape(-1, 3)
    u = np.concatenate([u, axes, near / np.linalg.norm(near, axis=1, keepdims=True)])
    # bisection of the boundary along each direction with the numpy form
    lo, hi = np.zeros(len(u)), np.full(len(u), 4 * rmax)
    for _ in range(30):
        mid = (lo + hi) / 2
        inside = shape.contains(u * mid[:, None])
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    assert lo.min() >= rmin - 1e-9 and hi.max() <= rmax + 1e-9


# --- RECIST ----------------------------------------------------------------------------------

def _brute_recist_lengths(mask, tol_deg):
    """Longest pixel-pair chord, and the longest chord within ``tol_deg`` of perpendicular that
    crosses it; the tolerance widens (5, 10, 20, 45 degrees) while no chord qualifies."""
    for tol in (tol_deg, 5.0, 10.0, 20.0, 45.0):
        long_px, short_px = _brute_at(mask, tol)
        if short_px > 0:
            return long_px, short_px
    return long_px, short_px


def _brute_at(mask, tol_deg):
    pts = [tuple(map(float, p)) for p in np.argwhere(mask)]
    best_long, pair = -1.0, None
    for p, q in itertools.combinations(pts, 2):
        d = math.dist(p, q)
        if d > best_long:
            best_long, pair = d, (p, q)
    a, b = np.array(pair[0]), np.array(pair[1])
    u = (b - a) / np.linalg.norm(b - a)
    best_short = -1.0
    for p, q in itertools.combinations(pts, 2):
        v = np.array(q) - np.array(p)
        n = np.linalg.norm(v)
        if n == 0:
            continue
        if abs(v @ u) / n > math.sin(math.radians(tol_deg)) + 1e-12:
            continue
        # segments p-q and a-b must cross (closed segments)
        m = np.array([[b[0] - a[0], p[0] - q[0]], [b[1] - a[1], p[1] - q[1]]])
        s, w = np.linalg.solve(m, np.array(p) - a)
        if -1e-9 <= s <= 1 + 1e-9 and -1e-9 <= w <= 1 + 1e-9:
            best_short = max(best_short, n)
    return best_long, best_short


def _disc(rows, cols, cy, cx, ry, rx, angle=0.0):
    y, x = np.mgrid[:rows, :cols]
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


@pytest.mark.parametrize("mask", [
    _disc(24, 24, 11.3, 12.1, 5.2, 8.7, 0.4),
    _disc(20, 20, 9.5, 9.5, 6.0, 6.0),
    np.pad(np.ones((5, 9), bool), 3),
    np.pad(np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], bool), 2),
])
def test_recist_chords_match_brute_force(mask):
    rec = P.recist_from_mask(mask)
    long_px, short_px = _brute_recist_lengths(mask, 3.0)
    assert rec.long_px == pytest.approx(long_px, abs=1e-9)
    assert rec.short_px == pytest.approx(short_px, abs=1e-9)
    for p in rec.as_array():  # endpoints are lesion pixel centres
        assert mask[int(p[0]), int(p[1])]


def test_recist_of_phantom_masks_match_brute_force(small_cases):
    for case in small_cases[:3]:
        long_px, short_px = _brute_recist_lengths(case.true_mask, 3.0)
        assert case.recist.long_px == pytest.approx(long_px, abs=1e-9)
        assert case.recist.short_px == pytest.approx(short_px, abs=1e-9)
        assert case.recist.short_px <= case.recist.long_px


def _orient(o, p, q):
    return (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])


def _exact_recist(mask, tol0=3.0):
    """Integer oracle of recist_from_mask with its tie rule spelled out: among the longest
    qualifying chords, the first ordered pair (i, j) of pixels in row-major order."""
    pts = [tuple(int(x) for x in p) for p in np.argwhere(mask)]
    n = len(pts)
    best, (i0, j0) = -1, (None, None)
    for i in range(n):
        for j in range(n):
            d2 = (pts[i][0] - pts[j][0]) ** 2 + (pts[i][1] - pts[j][1]) ** 2
            if d2 > best:
                best, i0, j0 = d2, i, j
    i0, j0 = sorted((i0, j0))
    a, b = pts[i0], pts[j0]
    for tol in (tol0, 5.0, 10.0, 20.0, 45.0):
        best_s, pair = 0, None
        for i in range(n):
            for j in range(n):
                p, q = pts[i], pts[j]
                dr, dc = q[0] - p[0], q[1] - p[1]
                dot = dr * (b[0] - a[0]) + dc * (b[1] - a[1])
                crs = _orient((0, 0), (dr, dc), (b[0] - a[0], b[1] - a[1]))
                if crs == 0:
                    continue
                # deviation from perpendicular, by atan2 (the engine uses a tangent product)
                if math.degrees(math.atan2(abs(dot), abs(crs))) > tol + 1e-9:
                    continue
                # closed segments p-q and a-b intersect (orientation signs; not parallel here)
                if _orient(a, b, p) * _orient(a, b, q) > 0 or _orient(p, q, a) * _orient(p, q, b) > 0:
                    continue
                if dr * dr + dc * dc > best_s:
                    best_s, pair = dr * dr + dc * dc, (i, j)
        if pair is not None:
            i, j = sorted(pair)
            return np.array([a, b, pts[i], pts[j]], dtype=np.float64)
    raise AssertionError("no short axis")


def test_recist_endpoints_match_an_exact_integer_oracle():
    # endpoints, not only lengths: equal-length chords are common on the pixel grid (here in
    # about one mask in six), and the chosen one moves the GrabCut label downstream
    masks = random_ellipses(120, seed=3)
    for k, m in enumerate(masks):
        got = P.recist_from_mask(m).as_array()
        np.testing.assert_array_equal(got, _exact_recist(m), err_msg=f"mask {k}")


@needs_x86
def test_recist_does_not_depend_on_the_cpus_blas_kernel(tmp_path):
    # numpy's OpenBLAS picks a kernel per CPU (SkylakeX on an AVX-512 Xeon, Haswell/Zen on an
    # EPYC); the same masks must give the same endpoints under each (PHANTOM_VERSION 4 did not)
    masks = np.stack(random_ellipses(300, seed=0, radius_px=(1.5, 12.0), size=40))
    np.save(tmp_path / "masks.npy", masks)
    code = ("import sys, hashlib, numpy as np; from softmask_builder.phantom.cases import recist_from_mask; "
            "m = np.load(sys.argv[1]); "
            "print(hashlib.sha256(np.stack([recist_from_mask(x).as_array() for x in m]).tobytes()).hexdigest())")
    assert len(set(stdout_under_each_kernel(code, str(tmp_path / "masks.npy")))) == 1


def test_recist_rejects_degenerate_masks():
    with pytest.raises(InputError, match="at least 3"):
        P.recist_from_mask(np.eye(8, dtype=bool)[:2, :2])
    with pytest.raises(InputError, match="2-D"):
        P.recist_from_mask(np.ones((2, 3, 3), bool))


# --- cases -----------------------------------------------------------------------------------

def test_cases_cover_every_kind_and_split_by_patient():
    plan = P._case_plan(60, 0, P.KINDS, (3.0, 30.0), (0.7, 0.15, 0.15))
    kinds = [p[1] for p in plan]
    assert set(kinds) == set(P.KINDS)
    for k in P.KINDS:  # each kind spans the size range (log-stratified)
        d = [p[2] for p in plan if p[1] == k]
        assert min(d) < 5.0 and max(d) > 18.0 and all(3.0 <= v <= 30.0 for v in d)
    split_of = {}
    for p in plan:
        assert split_of.setdefault(p[3], p[5]) == p[5]  # a patient is in one split only
    assert set(split_of.values()) == {"train", "val", "test"}


def test_case_truth_is_consistent(small_cases):
    assert {c.kind for c in small_cases} == set(P.KINDS)
    for c in small_cases:
        f = c.true_fraction
        assert f.dtype == np.float32 and f.min() >= 0.0 and f.max() <= 1.0
        np.testing.assert_array_equal(c.true_mask, f >= 0.5)
        assert c.image_hu.dtype == np.int16 and c.image_hu.shape == f.shape
        assert c.neighbor_hu.shape == (2,) + f.shape and c.neighbor_offsets == (-1, 1)
        # the nodule is 3-D: the neighbour fractions are renders of the same solid at z +- t
        assert c.neighbor_fraction.shape == (2,) + f.shape
        assert 0.6 <= c.spacing_mm[0] <= 0.8 and c.spacing_mm[0] == c.spacing_mm[1]


def test_image_model_inside_nodule_is_nodule_hu():
    c = P.generate_case(5, kind="solid", diameter_mm=14.0, **SMALL)
    core = c.true_fraction == 1.0
    from scipy import ndimage

    core = ndimage.binary_erosion(core, iterations=3)
    assert core.sum() > 30
    mean = c.image_hu[core].astype(float).mean()
    # noise (<= 25 HU) averages out over the core; blur does not reach 3 px inside
    assert abs(mean - c.nodule_hu) < 4 * 25 / math.sqrt(core.sum()) + 1.0
    # big nodules show in the neighbour slices (3-D shape)
    assert (c.neighbor_fraction >= 0.5).sum(axis=(1, 2)).min() > 0


def test_noise_free_sharp_case_shows_the_mixing_model():
    from scipy import ndimage

    c = P.generate_case(9, kind="ground_glass", diameter_mm=10.0, psf_sigma_px=0.0, noise_hu=0.0, **SMALL)
    full = c.true_fraction == 1.0
    assert full.sum() > 20
    np.testing.assert_array_equal(c.image_hu[full], np.round(c.nodule_hu))
    np.testing.assert_array_equal(c.apparent_fraction, c.true_fraction)
    b = P.generate_case(9, kind="ground_glass", diameter_mm=10.0, psf_sigma_px=0.8, noise_hu=0.0, **SMALL)
    np.testing.assert_array_equal(b.true_fraction, c.true_fraction)  # same draws, only the PSF differs
    ref = ndimage.gaussian_filter(b.true_fraction.astype(np.float64), 0.8, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(b.apparent_fraction, ref, atol=2e-3)


def test_generate_case_is_deterministic_and_seed_dependent():
    a = P.generate_case(123, kind="spiculated", diameter_mm=8.0, **SMALL)
    b = P.generate_case(np.random.default_rng(123), kind="spiculated", diameter_mm=8.0, **SMALL)
    c = P.generate_case(124, kind="spiculated", diameter_mm=8.0, **SMALL)
    np.testing.assert_array_equal(a.image_hu, b.image_hu)
    np.testing.assert_array_equal(a.true_fraction, b.true_fraction)
    assert not np.array_equal(a.image_hu, c.image_hu)


def test_generate_case_rejects_bad_arguments():
    with pytest.raises(InputError, match="kind"):
        P.generate_case(0, kind="cystic", diameter_mm=5.0)
    with pytest.raises(InputError, match="diameter_mm"):
        P.generate_case(0, kind="solid", diameter_mm=80.0)
    with pytest.raises(InputError, match="shape"):
        P.generate_case(0, kind="solid", diameter_mm=5.0, shape=(64, 64))


# --- DeepLesion layout -----------------------------------------------------------------------

def test_png_round_trip(written, small_cases):
    root, _ = written
    for c in small_cases:
        folder = root / "Images_png" / c.series_dir
        for off, img in [(0, c.image_hu)] + list(zip(c.neighbor_offsets, c.neighbor_hu)):
            raw = cv2.imread(str(folder / f"{c.key_slice_index + off:03d}.png"), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint16 and raw.shape == img.shape
            np.testing.assert_array_equal(raw.astype(np.int32) - 32768, img.astype(np.int32))


def test_csv_rows_parse_back_to_the_cases(written, small_cases):
    root, _ = written
    with open(root / "DL_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {c.file_name: c for c in small_cases}
    assert [r["File_name"] for r in rows] == sorted(by_name)
    for r in rows:
        c = by_name[r["File_name"]]
        rec = Recist.from_deeplesion(r["Measurement_coordinates"])  # x = column, y = row
        np.testing.assert_allclose(rec.as_array(), c.recist.as_array(), atol=1e-3)
        long_px, short_px = (float(v) for v in r["Lesion_diameters_Pixel_"].split(","))
        assert long_px == pytest.approx(c.recist.long_px, rel=1e-5)
        assert short_px == pytest.approx(c.recist.short_px, rel=1e-5)
        pts = c.recist.as_array()
        x0, y0, x1, y1 = (float(v) for v in r["Bounding_boxes"].split(","))
        assert (x0, y0) == pytest.approx((pts[:, 1].min() - 5, pts[:, 0].min() - 5), abs=1e-3)
        assert (x1, y1) == pytest.approx((pts[:, 1].max() + 5, pts[:, 0].max() + 5), abs=1e-3)
        sx, sy, sz = (float(v) for v in r["Spacing_mm_px_"].split(","))
        assert (sy, sx, sz) == (c.spacing_mm[0], c.spacing_mm[1], c.slice_thickness_mm)
        lo, hi = (int(v) for v in r["Slice_range"].split(","))
        assert (lo, hi) == (c.key_slice_index - 1, c.key_slice_index + 1)
        assert int(r["Train_Val_Test"]) == {"train": 1, "val": 2, "test": 3}[c.split]
        assert int(r["Coarse_lesion_type"]) == (-1 if c.split == "train" else 5)


def test_truth_file_matches_cases(written, small_cases):
    _, truth_path = written
    truth = P.read_truth(truth_path)
    assert set(truth) == {c.file_name for c in small_cases}
    for c in small_cases:
        t = truth[c.file_name]
        np.testing.assert_array_equal(t["true_fraction"], c.true_fraction)
        np.testing.assert_array_equal(t["true_mask"], c.true_mask)
        np.testing.assert_array_equal(t["apparent_fraction"], c.apparent_fraction)
        np.testing.assert_array_equal(t["recist_px"], c.recist.as_array())
        assert (t["kind"], t["diameter_mm"]) == (c.kind, c.diameter_mm)


def _shape_of(line: str) -> str:
    """A CSV line with every number replaced by N (keeps quoting, separators, layout)."""
    return re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", line.rstrip("\n"))


@pytest.mark.realdata
def test_csv_header_and_cell_formats_match_the_real_file(written, deeplesion_root):
    root, _ = written
    real = (deeplesion_root / "DL_info.csv").read_text().splitlines(keepends=True)
    ours = (root / "DL_info.csv").read_text().splitlines(keepends=True)
    assert ours[0] == real[0]
    assert tuple(ours[0].rstrip("\n").split(",")) == P.DL_INFO_COLUMNS
    real_shapes = {_shape_of(line) for line in real[1:]}
    for line in ours[1:]:
        assert line.endswith("\n") and not line.endswith("\r\n")
        assert _shape_of(line) in real_shapes, line


def test_write_is_byte_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    P.write_sample(a, n=3, seed=5, shape=(192, 192), diameter_range_mm=(3.0, 8.0))
    P.write_sample(b, n=3, seed=5, shape=(192, 192), diameter_range_mm=(3.0, 8.0))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 * 3 + 2
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert not [p for p in a.rglob(".*")]  # no temporary file left behind


def test_write_rejects_two_cases_in_one_series(tmp_path, small_cases):
    with pytest.raises(InputError, match="series"):
        P.write_deeplesion(tmp_path, [small_cases[0], small_cases[0]])


def test_replicated_sample_copies_key_slices_to_new_patients(tmp_path):
    source = P.write_replicated_sample(tmp_path, n=5, unique=2, seed=3)
    with open(source / "DL_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp_path / "cases" / "DL_info.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    assert len(cases) == 2 and len(rows) == 5
    assert [r["Patient_index"] for r in rows] == ["1", "2", "3", "4", "5"]
    for i, row in enumerate(rows):
        case = cases[i % 2]
        assert row["Measurement_coordinates"] == case["Measurement_coordinates"]
        new_series, key = row["File_name"].rsplit("_", 1)
        old_series, old_key = case["File_name"].rsplit("_", 1)
        assert key == old_key
        assert ((source / "Images_png" / new_series / key).read_bytes()
                == (tmp_path / "cases" / "Images_png" / old_series / key).read_bytes())
