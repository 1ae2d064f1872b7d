"""Tests of the RECIST marks measured on a truth mask.

Independent references: brute-force chords over every pair of mask pixels, an exact integer
oracle with the tie rule spelled out, and the same masks under each OpenBLAS kernel.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.labelling.recist import measure_axes_px
from softmask_builder.phantom.recist_marks import long_axis, recist_from_mask

from tests.softmask_builder._cpu_kernels import needs_x86, random_ellipses, stdout_under_each_kernel


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
    rec = recist_from_mask(mask)
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
        got = recist_from_mask(m).as_array()
        np.testing.assert_array_equal(got, _exact_recist(m), err_msg=f"mask {k}")


@needs_x86
def test_recist_does_not_depend_on_the_cpus_blas_kernel(tmp_path):
    # numpy's OpenBLAS picks a kernel per CPU (SkylakeX on an AVX-512 Xeon, Haswell/Zen on an
    # EPYC); the same masks must give the same endpoints under each (PHANTOM_VERSION 4 did not)
    masks = np.stack(random_ellipses(300, seed=0, radius_px=(1.5, 12.0), size=40))
    np.save(tmp_path / "masks.npy", masks)
    code = ("import sys, hashlib, numpy as np; from softmask_builder.phantom.recist_marks import recist_from_mask; "
            "m = np.load(sys.argv[1]); "
            "print(hashlib.sha256(np.stack([recist_from_mask(x).as_array() for x in m]).tobytes()).hexdigest())")
    assert len(set(stdout_under_each_kernel(code, str(tmp_path / "masks.npy")))) == 1


def test_recist_rejects_degenerate_masks():
    with pytest.raises(InputError, match="at least 3"):
        recist_from_mask(np.eye(8, dtype=bool)[:2, :2])
    with pytest.raises(InputError, match="2-D"):
        recist_from_mask(np.ones((2, 3, 3), bool))


def test_long_axis_length_is_measure_axes_pxs_bit_for_bit():
    # two longest-chord searches on purpose (see the module docstring): the same length, ties apart
    for k, m in enumerate(random_ellipses(200, seed=1, radius_px=(1.5, 12.0), size=40)):
        pts = np.argwhere(m).astype(np.float64)
        i, j = long_axis(pts)
        assert math.sqrt(float(((pts[i] - pts[j]) ** 2).sum())) == measure_axes_px(m)[0], f"mask {k}"
