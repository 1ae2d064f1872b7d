"""Synthetic chest-CT phantom with known truth, written in the exact DeepLesion layout.

Each case is a short stack of axial slices (the key slice and ``n_neighbors`` slices on each side)
of a chest with one lung nodule whose true partial-volume fraction is known. It serves two
purposes: the bundled sample dataset that ``make lnsm`` builds on a fresh machine (no real data
needed), and the accuracy benchmark (``benchmarks/bench_accuracy.py``), which compares Soft Masks
with the true fraction.

Image model (all geometry in mm; ``x`` = column direction, ``y`` = row direction, ``z`` = along
the table, 0 at the key slice; pixel ``(r, c)`` has its centre at ``(y, x) = (r, c) * spacing``)::

    image = blur_psf(background * (1 - f) + nodule_hu * f) + noise,   rounded to integer HU

* background: air (-1000 HU) outside the body, subcutaneous fat (~-100), soft tissue (~40),
  ribs and a vertebra (bone ~+700 cortex), trachea (air), two lungs (~-850 HU) with a
  low-frequency parenchymal texture that varies smoothly with z, and 3-D vessel trees (tubes of
  ~40 HU, partial-volume rendered over the slice thickness); the lung wall (pleura) is the
  partial-volume edge between lung and chest wall. Pixels outside the scanner's circular field
  of view are -1024 HU, as in real scans.
* ``f`` (the truth, :attr:`PhantomCase.true_fraction`): the fraction of each pixel's voxel (the
  pixel footprint times the slice thickness, a box slice profile) inside the nodule's 3-D shape,
  by supersampling ``supersample**3`` points per boundary voxel; voxels whose bounding box lies
  wholly inside/outside the shape's radial bounds are exactly 1/0. The true mask is ``f >= 0.5``.
* nodule kinds (:data:`KINDS`): ``solid`` (~+30 HU, near-ellipsoidal), ``lobulated``,
  ``spiculated`` (thin radial spikes), ``ground_glass`` (~-550 HU), ``juxta_pleural`` (the shape
  is cut by the lung wall, so part of its edge is the invisible nodule/chest-wall interface) and
  ``vessel_attached`` (a vessel tube touches it). The nominal diameter ``diameter_mm`` is that of
  the sphere the shape is built on (before ellipsoidal stretch, lobes and spikes).
* scanner: Gaussian PSF (sigma 0.5-1 px), then mildly correlated Gaussian noise (10-25 HU),
  clip to [-1024, 3071] HU. The PSF makes the image softer than ``f``; the PSF applied to ``f``
  is kept as :attr:`PhantomCase.apparent_fraction` (the fraction as the image shows it).

RECIST marks are measured on the true mask as a radiologist would (:func:`recist_from_mask`).

DeepLesion layout written by :func:`write_deeplesion` (the real dataset's quirks are kept):
``Images_png/<PPPPPP_SS_RR>/<KKK>.png`` (16-bit PNG, value = HU + 32768), ``DL_info.csv`` with
the official 18 columns (x = column everywhere, numbers in ``%g`` format), and beside them the
truth ``phantom_truth.npz`` (not part of DeepLesion). As in the real file, ``Coarse_lesion_type``
is -1 (unlabelled) on every training-split row and 5 (lung) on validation/test rows, unless
``label_train_rows=True``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from numba import njit
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.labelling.recist import Recist
from softmask_builder.sources.deeplesion import DL_INFO_COLUMNS, PNG_HU_OFFSET
from softmask_builder.sources.deeplesion import SPLIT_CODES as _DL_SPLIT_NAMES

#: Bumped whenever the same seed would render different images or truth (cache keys may use it).
PHANTOM_VERSION = 5

KINDS: tuple[str, ...] = ("solid", "lobulated", "spiculated", "ground_glass", "juxta_pleural", "vessel_attached")

# The DeepLesion format's facts (the official 18-column header, split codes, PNG offset) live with its reader (sources/deeplesion.py); the phantom writes them.
#: split name -> DL_info ``Train_Val_Test`` code.
SPLIT_CODES = {name: code for code, name in _DL_SPLIT_NAMES.items()}
LUNG_LESION_TYPE = 5
#: DeepLesion's lung window (its lung rows carry "-1500, 500").
LUNG_WINDOW_HU = (-1500.0, 500.0)
#: Padding DeepLesion adds around the RECIST extent to make ``Bounding_boxes``.
BBOX_PAD_PX = 5.0
PNG_OFFSET = PNG_HU_OFFSET
TRUTH_FILE = "phantom_truth.npz"

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LUNG = -850.0
HU_VESSEL = 40.0
HU_OUTSIDE_FOV = -1024.0
HU_MIN, HU_MAX = -1024.0, 3071.0
# A fixed zip timestamp keeps the truth file byte-identical between runs.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# RECIST from a mask
# --------------------------------------------------------------------------------------------

def _long_axis(pts: np.ndarray) -> tuple[int, int]:
    """Indices of the farthest pair among ``pts`` (n, 2); the pair lies on the convex hull."""
    cand = np.arange(len(pts))
    if len(pts) >= 4:
        from scipy.spatial import ConvexHull, QhullError

        try:
            cand = np.sort(ConvexHull(pts).vertices)
        except QhullError:  # collinear pixels: every pixel is a candidate
            pass
    sub = pts[cand]
    d2 = ((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    i, j = sorted((int(cand[i]), int(cand[j])))
    return i, j


def _short_axis(pts: np.ndarray, a: np.ndarray, b: np.ndarray, tol_deg: float) -> tuple[int, int] | None:
    """Longest pair whose direction is within ``tol_deg`` of perpendicular to a->b and whose
    segment crosses the segment a-b (both closed). None when no pair qualifies.

    Exact: pixel centres are integers, so every test is done on integer dot and cross products
    (|coordinates| < 2**15 keeps them far inside int64) and the one float comparison,
    |d.L| <= tan(tol) |d x L|, is a single IEEE multiply. Ties in length go to the first pair in
    index order. The tangent gets a 1e-12 slack (tan(45 degrees) rounds below 1). Before
    PHANTOM_VERSION 5 the projections were float matrix-vector products, whose rounding depends
    on the CPU's BLAS kernel, so equal-length chords were resolved differently on an AVX-512 Xeon
    and an AVX2 EPYC.
    """
    p = np.asarray(pts).astype(np.int64)
    if not np.array_equal(p, pts):
        raise InputError("RECIST points must be integer pixel centres")
    a_i, b_i = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    lr, lc = int(b_i[0] - a_i[0]), int(b_i[1] - a_i[1])
    len2 = lr * lr + lc * lc
    rel = p - a_i
    along = rel[:, 0] * lr + rel[:, 1] * lc  # (p - a) . L
    side = rel[:, 0] * lc - rel[:, 1] * lr  # (p - a) x L: signed side of the long-axis line
    # + 1e-12: math.tan(math.radians(45.0)) is 0.9999999999999999, and a 45-degree chord must pass
    tan_tol = math.tan(math.radians(tol_deg)) + 1e-12
    best, best_pair = 0, None
    chunk = 256
    for start in range(0, len(p), chunk):
        s_al, s_sd = along[start:start + chunk, None], side[start:start + chunk, None]
        dot = along[None, :] - s_al  # d . L for d = q - p
        crs = side[None, :] - s_sd  # d x L
        ok = np.abs(dot).astype(np.float64) <= tan_tol * np.abs(crs).astype(np.float64)
        ok &= (np.sign(s_sd) * np.sign(side[None, :])) <= 0  # opposite sides of (or on) the line
        ok &= crs != 0
        # the crossing point's position along a->b, times |L|^2 * crs: in [0, |L|^2] after dividing
        num = s_al * crs - s_sd * dot
        sgn = np.sign(crs)
        ok &= (num * sgn >= 0) & (num * sgn <= len2 * np.abs(crs))
        if not ok.any():
            continue
        dr = p[None, :, 0] - p[start:start + chunk, None, 0]
        dc = p[None, :, 1] - p[start:start + chunk, None, 1]
        d2 = np.where(ok, dr * dr + dc * dc, -1)
        k = int(np.argmax(d2))
        i, j = divmod(k, len(p))
        if d2[i, j] > best:
            best, best_pair = int(d2[i, j]), (start + i, j)
    if best_pair is None:
        return None
    return tuple(sorted(best_pair))


def recist_from_mask(mask, *, perpendicular_tol_deg: float = 3.0, sample_id: str | None = None):
    """RECIST diameters of a lesion mask, measured as a radiologist does.

    Long axis: the longest chord, i.e. the farthest pair of mask pixel centres. Short axis: the
    longest chord whose direction is within ``perpendicular_tol_deg`` of perpendicular to the
    long axis and which crosses it (DeepLesion's axes always cross). For tiny or thin masks with
    no such pair the tolerance is widened step by step (5, 10, 20, 45 degrees); a mask a single
    pixel wide in every direction (no crossing pair at all) raises.

    Parameters
    ----------
    mask : (rows, cols) bool array with at least 3 lesion pixels.
    perpendicular_tol_deg : angular tolerance of the short axis, in degrees.

    Returns
    -------
    Recist
        Endpoints as (row, col) pixel centres (floats; integers here): long_a, long_b, short_a,
        short_b, each pair ordered by pixel index (row-major).

    Raises
    ------
    InputError
        ``mask`` not 2-D, fewer than 3 pixels, or no crossing perpendicular chord.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"mask must be 2-D (rows, cols), got shape {arr.shape}", sample_id=sample_id)
    pts = np.argwhere(arr.astype(bool)).astype(np.float64)
    if len(pts) < 3:
        raise InputError(f"mask has {len(pts)} lesion pixels; RECIST needs at least 3", sample_id=sample_id)
    i, j = _long_axis(pts)
    a, b = pts[i], pts[j]
    pair = None
    for tol in (perpendicular_tol_deg, 5.0, 10.0, 20.0, 45.0):
        if tol < perpendicular_tol_deg:
            continue
        pair = _short_axis(pts, a, b, tol)
        if pair is not None:
            break
    if pair is None:
        raise InputError("mask has no chord crossing its long axis (a line of pixels?)", sample_id=sample_id)
    return Recist.from_array(np.stack([a, b, pts[pair[0]], pts[pair[1]]]))


# --------------------------------------------------------------------------------------------
# 3-D nodule shape and its partial-volume fraction
# --------------------------------------------------------------------------------------------

def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors (n, 3) (the Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rxy = np.sqrt(1.0 - z * z)
    return np.stack([rxy * np.cos(phi), rxy * np.sin(phi), z], axis=-1)


@dataclass(frozen=True)
class NoduleShape:
    """A star-shaped 3-D solid: ``|p - c| <= r(u)`` with ``u`` the unit direction from ``c``,

    ``r(u) = R / sqrt(sum_i ((rot.T u)_i / s_i)^2) * (1 + sum_j a_j g_j(u) + max_k b_k h_k(u))``

    with von Mises bumps ``g_j(u) = exp(kappa_j (u . d_j - 1))`` (``h_k`` likewise): an
    ellipsoid (semi-axes ``R * s_i`` along the columns of ``rotation``) with broad bumps that
    make lobes (signed amplitudes ``a_j``) and narrow spikes (``b_k`` >= 0) that make spicules.
    Taking the max over spikes (not their sum) keeps tight radial bounds.
    Coordinates in mm, order (x, y, z) = (col, row, table) directions.
    """

    center_mm: tuple[float, float, float]
    radius_mm: float
    stretch: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    bump_dirs: tuple[tuple[float, float, float], ...] = ()
    bump_amps: tuple[float, ...] = ()
    bump_kappas: tuple[float, ...] = ()
    spike_dirs: tuple[tuple[float, float, float], ...] = ()
    spike_amps: tuple[float, ...] = ()
    spike_kappas: tuple[float, ...] = ()

    @classmethod
    def sphere(cls, center_mm, radius_mm: float) -> "NoduleShape":
        """A ball of ``radius_mm`` around ``center_mm`` (x, y, z) in mm."""
        return cls(tuple(float(v) for v in center_mm), float(radius_mm))

    @property
    def r_bounds_mm(self) -> tuple[float, float]:
        """(rmin, rmax): every boundary point is at a distance in [rmin, rmax] from the centre.

        The ellipsoid and spike factors are bounded exactly; the lobe factor ``1 + sum a_j g_j``
        by its extremes over 4000 near-uniform directions widened by 5 % of the lobe amplitude
        (the bumps are broad, kappa <= 16, so the lattice, ~0.056 rad apart, misses their extremes
        by well under 1 %).
        """
        rmin, rmax_body = self._body_bounds
        spike = max(self.spike_amps, default=0.0)
        return rmin, rmax_body + self.radius_mm * max(self.stretch) * spike

    @functools.cached_property
    def _body_bounds(self) -> tuple[float, float]:
        """(rmin, rmax) of the shape without its spikes."""
        s = np.asarray(self.stretch)
        if self.bump_amps:
            u = _fibonacci_sphere(4000)
            g = np.exp(np.asarray(self.bump_kappas) * (u @ np.asarray(self.bump_dirs).T - 1.0))
            lobe = 1.0 + g @ np.asarray(self.bump_amps)
            slack = 0.05 * float(np.abs(self.bump_amps).sum())
            lo, hi = float(lobe.min()) - slack, float(lobe.max()) + slack
        else:
            lo = hi = 1.0
        return self.radius_mm * s.min() * max(lo, 0.0), self.radius_mm * s.max() * hi

    def contains(self, p: np.ndarray) -> np.ndarray:
        """Boolean ``p`` (..., 3) in mm inside the solid (the centre counts as inside)."""
        v = p - np.asarray(self.center_mm)
        rho = np.sqrt((v * v).sum(-1))
        safe = np.where(rho > 0, rho, 1.0)
        u = v / safe[..., None]
        q = u @ np.asarray(self.rotation)
        e = ((q / np.asarray(self.stretch)) ** 2).sum(-1)
        r = self.radius_mm / np.sqrt(e)
        if self.bump_amps:
            cosang = u @ np.asarray(self.bump_dirs).T
            g = np.exp(np.asarray(self.bump_kappas) * (cosang - 1.0))
            factor = 1.0 + g @ np.asarray(self.bump_amps)
        else:
            factor = np.ones_like(r)
        if self.spike_amps:
            cosang = u @ np.asarray(self.spike_dirs).T
            h = np.exp(np.asarray(self.spike_kappas) * (cosang - 1.0)) * np.asarray(self.spike_amps)
            factor = factor + h.max(-1)
        return rho <= r * factor


def _ellipse_inside(x, y, ellipse) -> np.ndarray:
    cx, cy, a, b, theta = ellipse
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


@njit(cache=True, nogil=True)
def _fraction_kernel(centres, offsets, c, R, stretch, rot, bdirs, bamps, bkap, sdirs, samps, skap, rmin, rmax,
                     clip, use_clip):  # pragma: no cover - compiled; checked against NoduleShape.contains
    """Mean of ``NoduleShape.contains`` (and the clip ellipse) over ``centres[i] + offsets``."""
    out = np.empty(centres.shape[0])
    rmin2, rmax2 = rmin * rmin, rmax * rmax
    cc, ss = np.cos(clip[4]), np.sin(clip[4])
    for i in range(centres.shape[0]):
        hits = 0
        for j in range(offsets.shape[0]):
            px = centres[i, 0] + offsets[j, 0]
            py = centres[i, 1] + offsets[j, 1]
            pz = centres[i, 2] + offsets[j, 2]
            if use_clip:
                dx, dy = px - clip[0], py - clip[1]
                cu, cv = (cc * dx + ss * dy) / clip[2], (-ss * dx + cc * dy) / clip[3]
                if cu * cu + cv * cv > 1.0:
                    continue
            vx, vy, vz = px - c[0], py - c[1], pz - c[2]
            rho2 = vx * vx + vy * vy + vz * vz
            if rho2 <= rmin2:
                hits += 1
                continue
            if rho2 > rmax2:
                continue
            rho = np.sqrt(rho2)
            ux, uy, uz = vx / rho, vy / rho, vz / rho
            e = 0.0
            for k in range(3):
                q = (ux * rot[0, k] + uy * rot[1, k] + uz * rot[2, k]) / stretch[k]
                e += q * q
            # bumps whose exponent is below -30 (exp < 1e-13) are skipped: most spikes, here
            factor = 1.0
            for k in range(bamps.shape[0]):
                arg = bkap[k] * (ux * bdirs[k, 0] + uy * bdirs[k, 1] + uz * bdirs[k, 2] - 1.0)
                if arg > -30.0:
                    factor += bamps[k] * np.exp(arg)
            spike = 0.0
            for k in range(samps.shape[0]):
                arg = skap[k] * (ux * sdirs[k, 0] + uy * sdirs[k, 1] + uz * sdirs[k, 2] - 1.0)
                if arg > -30.0:
                    h = samps[k] * np.exp(arg)
                    if h > spike:
                        spike = h
            if rho <= R / np.sqrt(e) * (factor + spike):
                hits += 1
        out[i] = hits / offsets.shape[0]
    return out


def _kernel_args(shape: NoduleShape):
    def arr(v, width):
        return np.asarray(v, dtype=np.float64).reshape(-1, width) if len(v) else np.zeros((0, width))

    return (np.asarray(shape.center_mm, dtype=np.float64), float(shape.radius_mm),
            np.asarray(shape.stretch, dtype=np.float64), np.asarray(shape.rotation, dtype=np.float64),
            arr(shape.bump_dirs, 3), np.asarray(shape.bump_amps, dtype=np.float64),
            np.asarray(shape.bump_kappas, dtype=np.float64), arr(shape.spike_dirs, 3),
            np.asarray(shape.spike_amps, dtype=np.float64), np.asarray(shape.spike_kappas, dtype=np.float64))


def nodule_fraction(shape: NoduleShape, *, rows: int, cols: int, spacing_mm: float, z_mm: float,
                    slice_thickness_mm: float, supersample: int = 8, clip_ellipse=None) -> np.ndarray:
    """True partial-volume fraction of ``shape`` in one slice, float32 (rows, cols) in [0, 1].

    The voxel of pixel (r, c) is the box ``[c*sp +- sp/2] x [r*sp +- sp/2] x [z_mm +- t/2]`` (a
    box slice profile). Voxels whose box lies within ``rmin`` of the centre are 1, those wholly
    beyond ``rmax`` are 0, the others are the mean of ``supersample**3`` midpoint samples.
    ``clip_ellipse`` = (cx, cy, a, b, theta) in mm restricts the solid to that ellipse's
    in-plane cylinder (a juxta-pleural nodule is cut by the lung wall).
    """
    if supersample < 1:
        raise InputError(f"supersample must be >= 1, got {supersample}")
    sp, t = float(spacing_mm), float(slice_thickness_mm)
    cx, cy, cz = shape.center_mm
    rmin, rmax = shape.r_bounds_mm
    frac = np.zeros((rows, cols), dtype=np.float32)
    if abs(z_mm - cz) - t / 2 >= rmax:
        return frac
    c0, c1 = max(int(math.floor((cx - rmax) / sp)) - 1, 0), min(int(math.ceil((cx + rmax) / sp)) + 2, cols)
    r0, r1 = max(int(math.floor((cy - rmax) / sp)) - 1, 0), min(int(math.ceil((cy + rmax) / sp)) + 2, rows)
    if c0 >= c1 or r0 >= r1:
        return frac
    yy, xx = np.meshgrid(np.arange(r0, r1) * sp, np.arange(c0, c1) * sp, indexing="ij")
    half = np.array([sp / 2, sp / 2, t / 2])
    delta = np.abs(np.stack([xx - cx, yy - cy, np.full_like(xx, z_mm - cz)], axis=-1))
    dmin = np.sqrt((np.maximum(delta - half, 0.0) ** 2).sum(-1))
    dmax = np.sqrt(((delta + half) ** 2).sum(-1))
    sub = np.zeros(xx.shape, dtype=np.float64)
    inner = dmax <= rmin
    sub[inner] = 1.0
    todo = ~inner & (dmin < rmax)
    rmax_body = shape._body_bounds[1]
    if shape.spike_amps:
        # Voxels beyond the spikeless body reach a spike only if it points into them: the voxel
        # lies within asin(h / D) of its centre's direction (h = half-diagonal, D = distance),
        # and spike k is negligible (exponent < -30, as in the kernel) beyond acos(1 - 30/kappa_k).
        far = todo & (dmin >= rmax_body)
        if far.any():
            h = float(np.linalg.norm(half))
            v = np.stack([xx[far] - cx, yy[far] - cy, np.full(int(far.sum()), z_mm - cz)], axis=-1)
            dist = np.linalg.norm(v, axis=-1)
            cone = np.arcsin(np.clip(h / np.maximum(dist, 1e-12), 0.0, 1.0))
            cone[dist <= h] = math.pi
            ang = np.arccos(np.clip((v / np.maximum(dist, 1e-12)[:, None]) @ np.asarray(shape.spike_dirs).T, -1, 1))
            reach = np.arccos(np.clip(1.0 - 30.0 / np.asarray(shape.spike_kappas), -1.0, 1.0))
            hit = (ang <= cone[:, None] + reach[None, :] + 1e-9).any(axis=1)
            todo[far] = hit
    if clip_ellipse is not None:
        todo |= inner
    idx = np.argwhere(todo)
    if len(idx):
        s = supersample
        o = (np.arange(s) + 0.5) / s - 0.5
        ox, oy, oz = np.meshgrid(o * sp, o * sp, o * t, indexing="ij")
        offsets = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=-1)  # (s^3, 3)
        centres = np.stack([xx[todo], yy[todo], np.full(len(idx), float(z_mm))], axis=-1)
        clip = np.asarray(clip_ellipse if clip_ellipse is not None else (0.0, 0.0, 1.0, 1.0, 0.0), dtype=np.float64)
        vals = _fraction_kernel(centres, offsets, *_kernel_args(shape), float(rmin), float(rmax), clip,
                                clip_ellipse is not None)
        sub[todo] = vals
    frac[r0:r1, c0:c1] = sub
    return frac


# --------------------------------------------------------------------------------------------
# Background anatomy
# --------------------------------------------------------------------------------------------

def _ellipse_fraction(x, y, ellipse, px_mm: float) -> np.ndarray:
    """Anti-aliased coverage of an ellipse: 0.5 - signed distance / pixel, clipped (first-order
    distance (rho - 1) / |grad rho|)."""
    cx, cy, a, b, theta = ellipse
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(rho > 1e-9, (rho - 1.0) * rho / np.maximum(grad, 1e-12), -min(a, b))
    return np.clip(0.5 - dist / px_mm, 0.0, 1.0)


def _paint_ellipse(img, ellipse, hu, px_mm: float, x, y) -> None:
    """img <- img * (1 - f) + hu * f within the ellipse's bounding box (in place)."""
    cx, cy, a, b, _ = ellipse
    ext = max(a, b) + 2 * px_mm
    rows, cols = img.shape
    c0, c1 = max(int((cx - ext) / px_mm), 0), min(int((cx + ext) / px_mm) + 2, cols)
    r0, r1 = max(int((cy - ext) / px_mm), 0), min(int((cy + ext) / px_mm) + 2, rows)
    if c0 >= c1 or r0 >= r1:
        return
    f = _ellipse_fraction(x[:, c0:c1], y[r0:r1, :], ellipse, px_mm)
    img[r0:r1, c0:c1] = img[r0:r1, c0:c1] * (1 - f) + hu * f


@dataclass
class _Anatomy:
    body: tuple
    muscle: tuple
    lungs: list
    ribs: list
    spine: list
    trachea: tuple | None
    segments: list = field(default_factory=list)  # (p0 (3,), p1 (3,), radius_mm)


def _unit(v):
    return v / np.linalg.norm(v)


def _rotate_towards(rng, d, angle):
    """Direction at ``angle`` radians from unit ``d``, around a random perpendicular axis."""
    w = rng.standard_normal(3)
    w -= w.dot(d) * d
    w = _unit(w)
    return _unit(math.cos(angle) * d + math.sin(angle) * w)


def _lung_depth(p, lung) -> float:
    """Approximate signed distance (mm) of the in-plane point p into the lung (>0 inside)."""
    cx, cy, a, b, theta = lung
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = p[0] - cx, p[1] - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    rho = math.hypot(u / a, v / b)
    grad = math.hypot(u / a ** 2, v / b ** 2)
    if rho < 1e-9:
        return min(a, b)
    return -(rho - 1.0) * rho / grad


def _segment_distance(p, a, b) -> float:
    """Distance (mm) from point p to the segment a-b (3-D)."""
    v = b - a
    s = float(np.clip((p - a).dot(v) / max(float(v.dot(v)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - a - s * v))


def _grow(rng, segs, lung, p, d, length, radius, depth) -> None:
    q = p + d * length
    steps = 0
    while _lung_depth(q, lung) < 1.0 and steps < 8:  # stop at the lung wall
        length *= 0.7
        q = p + d * length
        steps += 1
    if _lung_depth(q, lung) < 1.0 or length < 2.0:
        return
    segs.append((p, q, radius))
    if depth >= 4 or radius < 0.6:
        return
    for _ in range(2):
        child = _rotate_towards(rng, d, rng.uniform(0.3, 0.7))
        _grow(rng, segs, lung, q, child, length * rng.uniform(0.65, 0.85), radius * rng.uniform(0.6, 0.8),
              depth + 1)


def _draw_anatomy(rng, rows: int, cols: int, px: float, z_span_mm: float) -> _Anatomy:
    w_mm, h_mm = cols * px, rows * px
    cx, cy = w_mm / 2 + rng.uniform(-0.02, 0.02) * w_mm, h_mm / 2 + rng.uniform(-0.02, 0.02) * h_mm
    A, B = rng.uniform(0.42, 0.46) * w_mm, rng.uniform(0.30, 0.34) * h_mm
    body = (cx, cy, A, B, 0.0)
    fat = rng.uniform(6.0, 18.0)
    Ai, Bi = A - fat, B - fat
    muscle = (cx, cy, Ai, Bi, 0.0)
    lungs = []
    for side in (-1.0, 1.0):
        la, lb = rng.uniform(0.34, 0.38) * Ai, rng.uniform(0.70, 0.76) * Bi
        lcx = cx + side * rng.uniform(0.50, 0.54) * Ai
        lcy = cy + rng.uniform(-0.04, 0.04) * Bi
        lungs.append((lcx, lcy, la, lb, side * rng.uniform(-0.12, 0.12)))
    ribs = []
    for alpha in np.linspace(0.0, 2 * math.pi, 18, endpoint=False) + rng.uniform(-0.1, 0.1):
        if abs(math.cos(alpha)) < 0.3:  # no rib at the sternum or the spine
            continue
        # on a ring just inside the chest wall, outside the lungs, long axis along the ring
        rx, ry = cx + 0.95 * Ai * math.cos(alpha), cy + 0.95 * Bi * math.sin(alpha)
        tangent = math.atan2(Bi * math.cos(alpha), -Ai * math.sin(alpha))
        ribs.append((rx, ry, rng.uniform(3.5, 5.0), rng.uniform(2.0, 3.0), tangent))
    vb_r = rng.uniform(13.0, 17.0)
    spine = [(cx, cy + 0.80 * Bi - vb_r, vb_r, vb_r * 0.9, 0.0)]
    trachea = (cx, cy - 0.35 * Bi, rng.uniform(7.0, 9.0), rng.uniform(6.0, 8.0), 0.0) if rng.random() < 0.6 else None
    anatomy = _Anatomy(body, muscle, lungs, ribs, spine, trachea)

    segs = []
    for side, lung in zip((-1.0, 1.0), lungs):
        lcx, lcy, la, lb, _ = lung
        hilum = np.array([lcx - side * 0.55 * la, lcy + rng.uniform(-0.1, 0.1) * lb,
                          rng.uniform(-0.3, 0.3) * z_span_mm])
        for _ in range(int(rng.integers(6, 9))):
            theta = rng.uniform(-1.3, 1.3) + (0.0 if side > 0 else math.pi)
            phi = rng.uniform(-0.5, 0.5)
            d = np.array([math.cos(theta) * math.cos(phi), math.sin(theta) * math.cos(phi), math.sin(phi)])
            _grow(rng, segs, lung, hilum, d, rng.uniform(15.0, 25.0), rng.uniform(2.5, 4.0), 0)
        # vessels crossing the slice from above/below: short tubes scattered through the lung
        for _ in range(int(rng.integers(120, 180))):
            for _try in range(10):
                p = np.array([lcx + rng.uniform(-la, la), lcy + rng.uniform(-lb, lb), rng.uniform(-1, 1) * 10.0])
                if _lung_depth(p, lung) > 3.0:
                    break
            else:
                continue
            d = rng.standard_normal(3)
            d[2] += 1.5 * np.sign(d[2] if d[2] != 0 else 1.0)
            d = _unit(d)
            half = rng.uniform(3.0, 8.0)
            segs.append((p - d * half, p + d * half, float(0.4 + 1.4 * rng.random() ** 2)))
    anatomy.segments = segs
    return anatomy


@njit(cache=True, nogil=True)
def _tubes_kernel(seg, rows, cols, px, zs, n_slices, n_z, out):  # pragma: no cover - compiled
    """Union (max) over tubes ``seg[i] = (x0, y0, z0, x1, y1, z1, r)`` of the coverage
    ``clip((r - d) / px + 0.5, 0, 1)`` (d = distance to the segment) averaged over the ``n_z``
    z samples of each slice, within each tube's bounding box."""
    for i in range(seg.shape[0]):
        x0, y0, z0, x1, y1, z1, r = seg[i, 0], seg[i, 1], seg[i, 2], seg[i, 3], seg[i, 4], seg[i, 5], seg[i, 6]
        zlo, zhi = min(z0, z1) - r, max(z0, z1) + r
        ext = r + 2 * px
        c0 = max(int(np.floor((min(x0, x1) - ext) / px)), 0)
        c1 = min(int(np.ceil((max(x0, x1) + ext) / px)) + 1, cols)
        r0 = max(int(np.floor((min(y0, y1) - ext) / px)), 0)
        r1 = min(int(np.ceil((max(y0, y1) + ext) / px)) + 1, rows)
        vx, vy, vz = x1 - x0, y1 - y0, z1 - z0
        vv = vx * vx + vy * vy + vz * vz
        for k in range(n_slices):
            if zs[k * n_z + n_z - 1] < zlo or zs[k * n_z] > zhi:
                continue
            for rr in range(r0, r1):
                y = rr * px
                for cc in range(c0, c1):
                    x = cc * px
                    acc = 0.0
                    for j in range(n_z):
                        z = zs[k * n_z + j]
                        s = ((x - x0) * vx + (y - y0) * vy + (z - z0) * vz) / vv
                        s = min(max(s, 0.0), 1.0)
                        dx, dy, dz = x - x0 - s * vx, y - y0 - s * vy, z - z0 - s * vz
                        cov = (r - np.sqrt(dx * dx + dy * dy + dz * dz)) / px + 0.5
                        acc += min(max(cov, 0.0), 1.0)
                    acc /= n_z
                    if acc > out[k, rr, cc]:
                        out[k, rr, cc] = acc


def _vessel_fraction(segments, rows, cols, px, z_centres, t, n_z: int = 4) -> np.ndarray:
    """(n_slices, rows, cols) float32 union of tube coverages, each averaged over ``n_z`` z
    samples across the slice thickness (a box slice profile)."""
    z_off = ((np.arange(n_z) + 0.5) / n_z - 0.5) * t
    zs = (np.asarray(z_centres, dtype=np.float64)[:, None] + z_off[None, :]).ravel()  # (n_slices * n_z,)
    out = np.zeros((len(z_centres), rows, cols), dtype=np.float64)
    seg = np.array([[*p0, *p1, r] for p0, p1, r in segments], dtype=np.float64).reshape(-1, 7)
    _tubes_kernel(seg, rows, cols, float(px), zs, len(z_centres), n_z, out)
    return out.astype(np.float32)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (kernel truncated at 4 sigma, edges replicated); sigma 0 is a copy."""
    if sigma_px <= 0:
        return img.copy()
    half = int(math.ceil(4.0 * sigma_px))
    return cv2.GaussianBlur(img, (2 * half + 1, 2 * half + 1), sigmaX=sigma_px, sigmaY=sigma_px,
                            borderType=cv2.BORDER_REPLICATE)


def _smooth_field(rng, rows, cols, cell_px: int) -> np.ndarray:
    """Zero-mean unit-std low-frequency field (white noise on a coarse grid, blurred, upsampled)."""
    gr, gc = rows // cell_px + 3, cols // cell_px + 3
    coarse = ndimage.gaussian_filter(rng.standard_normal((gr, gc)), 1.0, mode="wrap").astype(np.float32)
    fine = cv2.resize(coarse, (gc * cell_px, gr * cell_px), interpolation=cv2.INTER_LINEAR)[:rows, :cols]
    fine = fine - fine.mean()
    return fine / max(float(fine.std()), 1e-12)


def _static_background(anat: _Anatomy, rows, cols, px, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Body, fat, muscle, bones, trachea (z-invariant) and the lung coverage (rows, cols)."""
    img = np.full((rows, cols), HU_AIR, dtype=np.float32)
    fb = _ellipse_fraction(x, y, anat.body, px).astype(np.float32)
    img = img * (1 - fb) + HU_FAT * fb
    fm = _ellipse_fraction(x, y, anat.muscle, px).astype(np.float32)
    img = img * (1 - fm) + HU_SOFT * fm
    for rib in anat.ribs:
        _paint_ellipse(img, rib, 700.0, px, x, y)
        inner = (rib[0], rib[1], rib[2] * 0.6, rib[3] * 0.5, rib[4])
        _paint_ellipse(img, inner, 250.0, px, x, y)
    for vb in anat.spine:
        _paint_ellipse(img, vb, 700.0, px, x, y)
        _paint_ellipse(img, (vb[0], vb[1], vb[2] - 2.0, vb[3] - 2.0, vb[4]), 250.0, px, x, y)
    if anat.trachea is not None:
        _paint_ellipse(img, anat.trachea, HU_AIR, px, x, y)
    lung = np.zeros((rows, cols), dtype=np.float32)
    for ell in anat.lungs:
        lung_part = np.zeros_like(lung)
        _paint_ellipse(lung_part, ell, 1.0, px, x, y)
        np.maximum(lung, lung_part, out=lung)
    return img, lung


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic key slice with its neighbours and the truth of its one nodule.

    Arrays are (rows, cols); ``image_hu`` and ``neighbor_hu`` are int16 HU exactly as stored in
    the PNGs; ``true_fraction`` float32 in [0, 1]; ``true_mask = true_fraction >= 0.5``;
    ``apparent_fraction`` = the scanner PSF applied to ``true_fraction`` (float32 in [0, 1]): the
    fraction as the image shows it, what an ideal unmixing of the noise-free key slice would give
    over a uniform background (the PSF is applied after mixing, so
    ``blur(bg (1 - f) + hu f) = bg + (hu - bg) blur(f)`` for constant ``bg``).
    ``neighbor_hu[i]`` is slice ``key_slice_index + neighbor_offsets[i]`` (z = offset *
    slice_thickness_mm; slices are contiguous). ``recist`` is measured on ``true_mask``
    (:func:`recist_from_mask`), in (row, col) pixel centres.
    """

    image_hu: np.ndarray
    neighbor_hu: np.ndarray
    neighbor_offsets: tuple[int, ...]
    true_fraction: np.ndarray
    neighbor_fraction: np.ndarray
    true_mask: np.ndarray
    apparent_fraction: np.ndarray
    recist: Recist
    spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    kind: str
    diameter_mm: float
    nodule_hu: float
    center_px: tuple[float, float]
    noise_hu: float
    psf_sigma_px: float
    patient_index: int
    study_index: int
    series_index: int
    key_slice_index: int
    split: str
    patient_gender: str
    patient_age: int
    normalized_location: tuple[float, float, float]

    @property
    def series_dir(self) -> str:
        return f"{self.patient_index:06d}_{self.study_index:02d}_{self.series_index:02d}"

    @property
    def file_name(self) -> str:
        return f"{self.series_dir}_{self.key_slice_index:03d}.png"


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _nodule_shape(rng, kind: str, center, R: float) -> NoduleShape:
    def rand_dirs(k, z_scale=1.0):
        # z_scale < 1 favours directions near the axial plane (where a slice shows them)
        return [tuple(_unit(rng.standard_normal(3) * (1.0, 1.0, z_scale))) for _ in range(k)]

    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    spikes = ((), (), ())
    if kind == "lobulated":
        stretch = tuple(rng.uniform(0.85, 1.15, 3))
        k = int(rng.integers(5, 10))
        dirs, amps = rand_dirs(k, 0.5), list(rng.uniform(0.12, 0.25, k) * rng.choice([-1.0, 1.0], k))
        kappas = list(rng.uniform(8.0, 16.0, k))  # broad lobes (r_bounds_mm assumes <= 16)
    elif kind == "spiculated":
        stretch = tuple(rng.uniform(0.85, 1.15, 3))
        k_spike = int(rng.integers(8, 21))
        dirs, amps, kappas = rand_dirs(3), list(rng.uniform(-0.08, 0.08, 3)), list(rng.uniform(3.0, 5.0, 3))
        # spikes 1.5-6 mm long (at most one radius), ~0.6-1 mm wide at their base
        lengths = np.minimum(rng.uniform(1.5, 6.0, k_spike), R)
        widths = rng.uniform(0.6, 1.0, k_spike)
        spikes = (rand_dirs(k_spike, 0.35), list(lengths / R), list(np.minimum((R / widths) ** 2, 400.0)))
    else:  # solid, ground_glass, juxta_pleural, vessel_attached: near-ellipsoidal, mild lobes
        stretch = tuple(rng.uniform(0.9, 1.1, 3))
        k = 3
        dirs, amps, kappas = rand_dirs(k), list(rng.uniform(-0.06, 0.06, k)), list(rng.uniform(2.0, 4.0, k))
    return NoduleShape(
        center_mm=tuple(float(v) for v in center), radius_mm=float(R), stretch=tuple(float(s) for s in stretch),
        rotation=tuple(tuple(float(v) for v in row) for row in q), bump_dirs=tuple(dirs),
        bump_amps=tuple(float(a) for a in amps), bump_kappas=tuple(float(k) for k in kappas),
        spike_dirs=tuple(spikes[0]), spike_amps=tuple(float(a) for a in spikes[1]),
        spike_kappas=tuple(float(k) for k in spikes[2]))


def generate_case(rng_or_seed, *, kind: str, diameter_mm: float, shape: tuple[int, int] = (512, 512),
                  spacing_mm: float | None = None, slice_thickness_mm: float | None = None,
                  n_neighbors: int = 1, supersample: int = 8, psf_sigma_px: float | None = None,
                  noise_hu: float | None = None, patient_index: int = 1, study_index: int = 1,
                  series_index: int = 1, key_slice_index: int | None = None, split: str = "train",
                  patient_gender: str | None = None, patient_age: int | None = None) -> PhantomCase:
    """Render one synthetic case (key slice, neighbours, truth). Deterministic for a seed.

    Parameters
    ----------
    rng_or_seed : ``numpy.random.Generator``, int or ``SeedSequence``.
    kind : one of :data:`KINDS`.
    diameter_mm : nominal nodule diameter in mm, in [2, 40] (the 3-30 mm range of lung nodules
        is what :func:`generate_cases` draws).
    shape : (rows, cols) of the slices, each >= 128.
    spacing_mm : square pixel spacing in mm; drawn in [0.6, 0.8] (4 decimals) when None.
    slice_thickness_mm : slice thickness = spacing in mm; drawn from {1, 1.25, 1.5, 2, 2.5} when None.
    n_neighbors : slices on each side of the key slice (0 for the key slice alone).
    supersample : sub-samples per voxel edge for the true fraction (``supersample**3`` per voxel).
    psf_sigma_px, noise_hu : scanner blur (Gaussian sigma, px, >= 0) and noise std (HU, >= 0);
        drawn in [0.5, 1] px and [10, 25] HU when None (the other draws do not change).
    patient_index, study_index, series_index, key_slice_index, split, patient_gender,
    patient_age : DeepLesion identifiers and demographics (``key_slice_index`` drawn when None).

    Returns
    -------
    PhantomCase

    Raises
    ------
    InputError
        Unknown kind, diameter, shape, PSF or noise out of range, bad ids; or a nodule section
        with fewer than 3 pixels >= 0.5 (possible only near the 2 mm minimum; never seen at 3 mm
        in 240 trials), which has no RECIST mark.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (2.0 <= float(diameter_mm) <= 40.0):
        raise InputError(f"diameter_mm must be in [2, 40], got {diameter_mm}")
    rows, cols = (int(v) for v in shape)
    if rows < 128 or cols < 128:
        raise InputError(f"shape must be at least (128, 128), got {shape}")
    if n_neighbors < 0:
        raise InputError(f"n_neighbors must be >= 0, got {n_neighbors}")
    if split not in SPLIT_CODES:
        raise InputError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
    for name, value in (("psf_sigma_px", psf_sigma_px), ("noise_hu", noise_hu)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {value}")
    rng = _as_rng(rng_or_seed)
    px = float(spacing_mm) if spacing_mm is not None else round(float(rng.uniform(0.6, 0.8)), 4)
    t = float(slice_thickness_mm) if slice_thickness_mm is not None else float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5]))
    if not (px > 0 and t > 0):
        raise InputError(f"spacing_mm and slice_thickness_mm must be > 0, got {px}, {t}")
    if key_slice_index is None:
        key_slice_index = int(rng.integers(20, 200)) + n_neighbors
    if key_slice_index - n_neighbors < 0:
        raise InputError(f"key_slice_index {key_slice_index} leaves no room for {n_neighbors} neighbours")
    gender = patient_gender if patient_gender is not None else str(rng.choice(["M", "F"]))
    age = int(patient_age) if patient_age is not None else int(rng.integers(40, 86))
    z_location = float(rng.uniform(0.35, 0.55))
    R = float(diameter_mm) / 2.0

    offsets = list(range(-n_neighbors, n_neighbors + 1))
    z_centres = [k * t for k in offsets]
    anat = _draw_anatomy(rng, rows, cols, px, z_span_mm=max(20.0, 4 * R))
    x = (np.arange(cols) * px)[None, :]
    y = (np.arange(rows) * px)[:, None]
    static, lung_cov = _static_background(anat, rows, cols, px, x, y)
    vessels = _vessel_fraction(anat.segments, rows, cols, px, z_centres, t)

    # --- nodule placement --------------------------------------------------------------------
    side = int(rng.integers(0, 2))
    lung = anat.lungs[side]
    lcx, lcy, la, lb, lth = lung
    cz = float(rng.uniform(-0.3, 0.3) * t)
    shape3d = _nodule_shape(rng, kind, (0.0, 0.0, cz), R)
    rmin, rmax = shape3d.r_bounds_mm
    key = offsets.index(0)
    best = None
    for _try in range(30):
        if kind == "juxta_pleural":
            ang = rng.uniform(-math.pi, math.pi)
            # a point on the wall (lateral/anterior/posterior), moved inwards along the normal
            ux, uy = math.cos(ang), math.sin(ang)
            if ux * (1 if side else -1) < -0.3:  # avoid the mediastinal side
                continue
            c, s = math.cos(lth), math.sin(lth)
            bx, by = la * ux, lb * uy
            wx, wy = lcx + c * bx - s * by, lcy + s * bx + c * by
            nx, ny = ux / la, uy / lb
            nx, ny = c * nx - s * ny, s * nx + c * ny
            nn = math.hypot(nx, ny)
            inset = R * rng.uniform(0.35, 0.7)
            cxy = (wx - nx / nn * inset, wy - ny / nn * inset)
        else:
            cxy = (lcx + rng.uniform(-la, la), lcy + rng.uniform(-lb, lb))
            if _lung_depth(cxy, lung) < rmax + 3.0:
                continue
        if kind == "vessel_attached":
            score = 0.0
        else:
            # prefer a spot with few vessels around (mean vessel fraction over the disc of
            # radius rmax + 2 px, all slices); thin vessels crossing it are removed below
            rr, cc = int(round(cxy[1] / px)), int(round(cxy[0] / px))
            h = int(math.ceil((rmax + 2 * px) / px))
            ra, rb = max(rr - h, 0), min(rr + h + 1, rows)
            ca, cb = max(cc - h, 0), min(cc + h + 1, cols)
            win = vessels[:, ra:rb, ca:cb]
            gy, gx = np.ogrid[ra - rr:rb - rr, ca - cc:cb - cc]
            disc = gy * gy + gx * gx <= h * h
            score = float(win[:, disc].mean()) if disc.any() else 0.0
        if best is None or score < best[0]:
            best = (score, cxy)
        if score < 0.005:
            break
    if best is None:  # no valid spot (tiny lung); centre of the lung
        best = (0.0, (lcx, lcy))
    cxy = best[1]
    shape3d = dataclasses.replace(shape3d, center_mm=(float(cxy[0]), float(cxy[1]), cz))
    if kind != "vessel_attached":
        # a nodule pushes thin vessels aside: drop those (radius < 1.5 mm) that would touch it
        centre3 = np.array([cxy[0], cxy[1], cz])
        kept = [sg for sg in anat.segments
                if sg[2] >= 1.5 or _segment_distance(centre3, sg[0], sg[1]) > rmax + sg[2] + 1.0]
        if len(kept) != len(anat.segments):
            anat.segments = kept
            vessels = _vessel_fraction(kept, rows, cols, px, z_centres, t)
    if kind == "vessel_attached":
        # a tube grazing the nodule (touching it in the key slice), mostly in-plane
        ang = rng.uniform(0, math.pi)
        d = _unit(np.array([math.cos(ang), math.sin(ang), rng.uniform(-0.3, 0.3)]))
        perp = _unit(np.array([-d[1], d[0], 0.0]))
        rv = float(np.clip(0.25 * R, 0.8, 2.5))
        centre_line = np.array([cxy[0], cxy[1], cz]) + perp * (R * rng.uniform(0.85, 1.0) + 0.3 * rv)
        half = R + 20.0
        extra = [(centre_line - d * half, centre_line + d * half, rv)]
        vessels = np.maximum(vessels, _vessel_fraction(extra, rows, cols, px, z_centres, t))
    clip = lung if kind == "juxta_pleural" else None
    hu = float(rng.uniform(-650.0, -450.0)) if kind == "ground_glass" else float(
        rng.uniform(0.0, 40.0) if kind == "spiculated" else rng.uniform(10.0, 50.0))
    fractions = np.stack([nodule_fraction(shape3d, rows=rows, cols=cols, spacing_mm=px, z_mm=z, slice_thickness_mm=t,
                                          supersample=supersample, clip_ellipse=clip) for z in z_centres])

    # --- compose, blur, noise --------------------------------------------------------------
    tex_a, tex_b = _smooth_field(rng, rows, cols, 16), _smooth_field(rng, rows, cols, 16)
    tex_amp = float(rng.uniform(15.0, 30.0))
    omega = 2 * math.pi / float(rng.uniform(15.0, 30.0))
    psf = float(rng.uniform(0.5, 1.0))
    noise = float(rng.uniform(10.0, 25.0))
    if psf_sigma_px is not None:
        psf = float(psf_sigma_px)
    if noise_hu is not None:
        noise = float(noise_hu)
    impulse = np.zeros((31, 31))
    impulse[15, 15] = 1.0
    noise_gain = float(np.sqrt((_blur(impulse, 0.6) ** 2).sum()))
    fov = (x - cols * px / 2 + px / 2) ** 2 + (y - rows * px / 2 + px / 2) ** 2 > (min(rows, cols) * px / 2) ** 2
    slices = []
    for k, z in enumerate(z_centres):
        tex = tex_amp * (math.cos(omega * z) * tex_a + math.sin(omega * z) * tex_b)
        img = static * (1 - lung_cov) + (HU_LUNG + tex) * lung_cov
        fv = vessels[k] * lung_cov
        img = img * (1 - fv) + HU_VESSEL * fv
        f = fractions[k]
        img = img * (1 - f) + hu * f
        img = _blur(img, psf)
        img += _blur(rng.standard_normal((rows, cols), dtype=np.float32), 0.6) * np.float32(noise / noise_gain)
        img = np.clip(img, HU_MIN, HU_MAX)
        img[fov] = HU_OUTSIDE_FOV
        slices.append(np.round(img).astype(np.int16))

    true_fraction = fractions[key]
    true_mask = true_fraction >= 0.5
    apparent = np.clip(_blur(true_fraction, psf), 0.0, 1.0).astype(np.float32)
    recist = recist_from_mask(true_mask)
    rows_px, cols_px = np.nonzero(true_mask)
    centre = (float(rows_px.mean()), float(cols_px.mean()))
    bx0, bx1 = anat.body[0] - anat.body[2], anat.body[0] + anat.body[2]
    by0, by1 = anat.body[1] - anat.body[3], anat.body[1] + anat.body[3]
    loc = (float(np.clip((centre[1] * px - bx0) / (bx1 - bx0), 0, 1)),
           float(np.clip((centre[0] * px - by0) / (by1 - by0), 0, 1)), z_location)
    nb = [i for i in range(len(offsets)) if i != key]
    return PhantomCase(
        image_hu=slices[key],
        neighbor_hu=np.stack([slices[i] for i in nb]) if nb else np.zeros((0, rows, cols), np.int16),
        neighbor_offsets=tuple(offsets[i] for i in nb), true_fraction=true_fraction,
        neighbor_fraction=fractions[nb] if nb else np.zeros((0, rows, cols), np.float32), true_mask=true_mask,
        apparent_fraction=apparent,
        recist=recist, spacing_mm=(px, px), slice_thickness_mm=t, kind=kind, diameter_mm=float(diameter_mm),
        nodule_hu=hu, center_px=centre, noise_hu=noise, psf_sigma_px=psf, patient_index=int(patient_index),
        study_index=int(study_index), series_index=int(series_index), key_slice_index=int(key_slice_index),
        split=split, patient_gender=gender, patient_age=age, normalized_location=loc)


def _case_plan(n: int, seed, kinds: Sequence[str], diameter_range_mm: tuple[float, float],
               split_fractions: tuple[float, float, float]):
    """Per case: (child seed, kind, diameter, patient, study, split, gender, age)."""
    ss = np.random.SeedSequence(seed)
    meta_ss, *child = ss.spawn(n + 1)
    rng = np.random.default_rng(meta_ss)
    kinds = list(kinds)
    kind_of = [kinds[i % len(kinds)] for i in range(n)]
    lo, hi = (float(v) for v in diameter_range_mm)
    diam = np.empty(n)
    for k in kinds:  # stratified log-uniform sizes within each kind, so each kind covers lo..hi
        idx = [i for i in range(n) if kind_of[i] == k]
        q = (rng.permutation(len(idx)) + rng.uniform(0, 1, len(idx))) / max(len(idx), 1)
        diam[idx] = np.round(lo * (hi / lo) ** q, 2)
    patients, p = [], 0
    while len(patients) < n:
        p += 1
        patients += [p] * int(rng.integers(1, 3))
    patients = patients[:n]
    n_pat = patients[-1]
    order = rng.permutation(n_pat) + 1
    n_val = max(1, int(round(split_fractions[1] * n_pat))) if n_pat >= 3 else 0
    n_test = max(1, int(round(split_fractions[2] * n_pat))) if n_pat >= 3 else 0
    split_of = {}
    for rank, pid in enumerate(order):
        split_of[int(pid)] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    demo = {pid: (str(rng.choice(["M", "F"])), int(rng.integers(40, 86))) for pid in range(1, n_pat + 1)}
    plan, study = [], {}
    for i in range(n):
        pid = patients[i]
        study[pid] = study.get(pid, 0) + 1
        plan.append((child[i], kind_of[i], float(diam[i]), pid, study[pid], split_of[pid], *demo[pid]))
    return plan


def iter_cases(n: int, *, seed: int = 0, kinds: Sequence[str] = KINDS,
               diameter_range_mm: tuple[float, float] = (3.0, 30.0),
               split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), **case_kwargs) -> Iterator[PhantomCase]:
    """Yield ``n`` cases one by one (see :func:`generate_cases`); keeps one case in memory."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    for child, kind, diam, pid, study, split, gender, age in _case_plan(n, seed, kinds, diameter_range_mm,
                                                                       split_fractions):
        yield generate_case(child, kind=kind, diameter_mm=diam, patient_index=pid, study_index=study,
                            series_index=1, split=split, patient_gender=gender, patient_age=age, **case_kwargs)


def generate_cases(n: int, *, seed: int = 0, kinds: Sequence[str] = KINDS,
                   diameter_range_mm: tuple[float, float] = (3.0, 30.0),
                   split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), **case_kwargs) -> list[PhantomCase]:
    """``n`` cases covering every kind (round robin) and, within each kind, log-uniform
    stratified diameters over ``diameter_range_mm``. Patients hold 1-2 cases (one study each);
    splits are drawn by patient (every split non-empty from 3 patients on). Case ``i`` depends
    only on ``(seed, i, n)``. Extra keywords go to :func:`generate_case`."""
    return list(iter_cases(n, seed=seed, kinds=kinds, diameter_range_mm=diameter_range_mm,
                           split_fractions=split_fractions, **case_kwargs))


# --------------------------------------------------------------------------------------------
# DeepLesion writer
# --------------------------------------------------------------------------------------------

def _g(v: float) -> str:
    """DeepLesion's number format (C ``%g``: 6 significant digits, no trailing zeros)."""
    return "%g" % float(v)


def _join(values) -> str:
    return ", ".join(_g(v) for v in values)


def dl_info_row(case: PhantomCase, *, label_train_rows: bool = False) -> list[str]:
    """The DL_info.csv cells of one case, in :data:`DL_INFO_COLUMNS` order."""
    pts = case.recist.as_array()  # (row, col)
    xy = pts[:, ::-1]  # DeepLesion writes x (column) first
    long_px = float(np.hypot(*(pts[0] - pts[1])))
    short_px = float(np.hypot(*(pts[2] - pts[3])))
    bbox = (xy[:, 0].min() - BBOX_PAD_PX, xy[:, 1].min() - BBOX_PAD_PX,
            xy[:, 0].max() + BBOX_PAD_PX, xy[:, 1].max() + BBOX_PAD_PX)
    lesion_type = LUNG_LESION_TYPE if (case.split != "train" or label_train_rows) else -1
    rows, cols = case.image_hu.shape
    lo = case.key_slice_index + min((0,) + case.neighbor_offsets)
    hi = case.key_slice_index + max((0,) + case.neighbor_offsets)
    return [
        case.file_name, str(case.patient_index), str(case.study_index), str(case.series_index),
        str(case.key_slice_index), _join(xy.ravel()), _join(bbox), _join((long_px, short_px)),
        _join(case.normalized_location), str(lesion_type), "0", f"{lo}, {hi}",
        _join((case.spacing_mm[1], case.spacing_mm[0], case.slice_thickness_mm)), f"{cols}, {rows}",
        _join(LUNG_WINDOW_HU), case.patient_gender, str(case.patient_age), str(SPLIT_CODES[case.split]),
    ]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def encode_png_hu(image_hu: np.ndarray) -> bytes:
    """16-bit PNG bytes of an HU slice, value = HU + 32768 (DeepLesion's encoding)."""

    arr = np.asarray(image_hu)
    if arr.ndim != 2:
        raise InputError(f"image_hu must be 2-D, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):  # int16 slices: no rounding needed (same bytes, faster)
        vals = arr.astype(np.int32) + PNG_OFFSET
    else:
        vals = np.round(arr.astype(np.float64)) + PNG_OFFSET
    if vals.min() < 0 or vals.max() > 65535:
        raise InputError("image_hu is outside the 16-bit PNG range [-32768, 32767] HU")
    ok, buf = cv2.imencode(".png", vals.astype(np.uint16))
    if not ok:  # pragma: no cover - cv2 fails only on unsupported arrays
        raise InputError("cv2 could not encode the slice as PNG")
    return buf.tobytes()


def _npy_bytes(arr) -> bytes:
    bio = io.BytesIO()
    np.lib.format.write_array(bio, np.asarray(arr), allow_pickle=False)
    return bio.getvalue()


def write_deeplesion(root, cases: Iterable[PhantomCase], *, label_train_rows: bool = False) -> Path:
    """Write ``cases`` in the exact DeepLesion layout under ``root`` and the truth beside it.

    Layout::

        root/Images_png/<PPPPPP_SS_RR>/<KKK>.png   key slice and neighbours, uint16 = HU + 32768
        root/DL_info.csv                           official 18 columns, one row per case, sorted
        root/phantom_truth.npz                     the truth (not part of DeepLesion)

    ``phantom_truth.npz`` holds ``file_name`` (N,) str, ``kind`` (N,) str, ``diameter_mm`` (N,),
    ``recist_px`` (N, 4, 2) (row, col: long a, long b, short a, short b), ``spacing_mm`` (N, 2)
    (row, col), ``slice_thickness_mm`` (N,), ``nodule_hu`` (N,), and per case
    ``<File_name>/true_fraction`` (float32 rows x cols), ``<File_name>/true_mask`` (bool) and
    ``<File_name>/apparent_fraction`` (float32, the PSF-blurred fraction). Cases that have a
    ``truth_extra()`` method (:class:`softmask_builder.phantom.hybrid.HybridCase`) add its scalars as (N,) columns and its
    arrays as ``<File_name>/<key>`` (when every case has one).
    Every file is written to a temporary name and renamed; the bytes depend only on the cases.
    Existing files of the same names are replaced, other files are left alone.

    Returns
    -------
    Path
        The truth file (its parent is ``root``).

    Raises
    ------
    InputError
        No case, or two cases with the same series folder (each case owns its series).
    """
    root = Path(root)
    images = root / "Images_png"
    images.mkdir(parents=True, exist_ok=True)
    truth_path = root / TRUTH_FILE
    # The truth is streamed into a temporary zip (one case's arrays at a time, so a sample of
    # thousands of 512 x 512 cases never sits in memory), the per-sample columns last; renamed
    # into place at the end.
    tmp = truth_path.with_name(f".{truth_path.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            _write_cases(zf, images, cases, root, label_train_rows)
        os.replace(tmp, truth_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return truth_path


def _zip_add(zf: zipfile.ZipFile, key: str, arr) -> None:
    info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, _npy_bytes(arr))


def _write_cases(zf: zipfile.ZipFile, images: Path, cases, root: Path, label_train_rows: bool) -> None:
    rows_out, meta, extras = [], [], []
    seen_series = set()
    for case in cases:
        if case.series_dir in seen_series:
            raise InputError(f"two cases share the series folder {case.series_dir}", sample_id=case.file_name)
        seen_series.add(case.series_dir)
        series = images / case.series_dir
        series.mkdir(exist_ok=True)
        for off, img in [(0, case.image_hu)] + list(zip(case.neighbor_offsets, case.neighbor_hu)):
            _atomic_write_bytes(series / f"{case.key_slice_index + off:03d}.png", encode_png_hu(img))
        rows_out.append(dl_info_row(case, label_train_rows=label_train_rows))
        name = case.file_name
        _zip_add(zf, f"{name}/true_fraction", case.true_fraction.astype(np.float32))
        _zip_add(zf, f"{name}/true_mask", case.true_mask.astype(bool))
        _zip_add(zf, f"{name}/apparent_fraction", case.apparent_fraction.astype(np.float32))
        meta.append((name, case.kind, case.diameter_mm, case.recist.as_array(), case.spacing_mm,
                     case.slice_thickness_mm, case.nodule_hu))
        # Hybrid cases (softmask_builder.phantom.hybrid) carry more truth: per-case scalars become (N,)
        # columns, arrays <File_name>/<key>.
        extra = case.truth_extra() if hasattr(case, "truth_extra") else None
        if extra is not None:
            for key, arr in extra["arrays"].items():
                _zip_add(zf, f"{name}/{key}", np.asarray(arr))
        extras.append((name, extra["scalars"] if extra is not None else None))
    if not rows_out:
        raise InputError("no case to write")
    rows_out.sort(key=lambda r: r[0])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(DL_INFO_COLUMNS)
    writer.writerows(rows_out)
    _atomic_write_bytes(root / "DL_info.csv", text.getvalue().encode("utf-8"))

    meta.sort(key=lambda m: m[0])
    entries = {
        "file_name": np.array([m[0] for m in meta]),
        "kind": np.array([m[1] for m in meta]),
        "diameter_mm": np.array([m[2] for m in meta], dtype=np.float64),
        "recist_px": np.stack([m[3] for m in meta]),
        "spacing_mm": np.array([m[4] for m in meta], dtype=np.float64),
        "slice_thickness_mm": np.array([m[5] for m in meta], dtype=np.float64),
        "nodule_hu": np.array([m[6] for m in meta], dtype=np.float64),
    }
    extras.sort(key=lambda e: e[0])
    if extras and all(e[1] is not None for e in extras):
        for key in extras[0][1]:
            entries[key] = np.array([e[1][key] for e in extras])
    for key, arr in entries.items():
        _zip_add(zf, key, arr)


def read_truth(path) -> dict[str, dict]:
    """Read ``phantom_truth.npz`` into ``{File_name: {kind, diameter_mm, recist_px, spacing_mm,
    slice_thickness_mm, nodule_hu, true_fraction, true_mask, apparent_fraction}}``, plus for a
    hybrid sample shape_id, lidc_patient_id, placement, background_id, z_offset_mm,
    rotation_deg, psf_sigma_px, noise_hu, reader_masks and core_fraction."""
    out = {}
    with np.load(Path(path), allow_pickle=False) as z:
        members = set(z.files)
        for i, name in enumerate(z["file_name"].tolist()):
            out[name] = {
                "kind": str(z["kind"][i]), "diameter_mm": float(z["diameter_mm"][i]),
                "recist_px": z["recist_px"][i], "spacing_mm": tuple(z["spacing_mm"][i].tolist()),
                "slice_thickness_mm": float(z["slice_thickness_mm"][i]), "nodule_hu": float(z["nodule_hu"][i]),
                "true_fraction": z[f"{name}/true_fraction"], "true_mask": z[f"{name}/true_mask"],
                "apparent_fraction": z[f"{name}/apparent_fraction"],
            }
            # hybrid extras (see write_deeplesion)
            for key in ("shape_id", "lidc_patient_id", "placement", "background_id"):
                if key in z.files:
                    out[name][key] = str(z[key][i])
            for key in ("z_offset_mm", "rotation_deg", "psf_sigma_px", "noise_hu"):
                if key in z.files:
                    out[name][key] = float(z[key][i])
            for key in ("reader_masks", "core_fraction"):
                if f"{name}/{key}" in members:
                    out[name][key] = z[f"{name}/{key}"]
    return out


def write_sample(root, *, n: int = 60, seed: int = 0, label_train_rows: bool = False, **case_kwargs) -> Path:
    """Write the bundled sample dataset: ``n`` phantom cases (every kind, 3-30 mm, splits by
    patient; see :func:`generate_cases`, which gets ``case_kwargs``) in the DeepLesion layout
    under ``root``, streaming one case at a time. Returns the truth file's path.

    60 cases take ~10 s on one core (rendering ~0.15 s and PNG encoding ~0.02 s per case).
    """
    return write_deeplesion(root, iter_cases(n, seed=seed, **case_kwargs), label_train_rows=label_train_rows)


def write_replicated_sample(root, *, n: int, unique: int, seed: int = 0) -> Path:
    """A DeepLesion-layout source with ``n`` lesions (key slices only) made from ``unique``
    phantom cases, each copy a new patient/series: cheap many-lesion sources for build benchmarks
    and process tests. ``root/cases`` holds the phantom cases, ``root/source`` (returned) the source;
    its DL_info rows keep the cases' marks. Deterministic for (n, unique, seed)."""
    import shutil

    root = Path(root)
    cases = root / "cases"
    write_sample(cases, n=min(unique, n), seed=seed, n_neighbors=0)
    with open(cases / "DL_info.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    source = root / "source"
    out_rows = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        series, key = row["File_name"].rsplit("_", 1)
        new_series = f"{i + 1:06d}_01_01"
        folder = source / "Images_png" / new_series
        folder.mkdir(parents=True)
        shutil.copyfile(cases / "Images_png" / series / key, folder / key)
        row.update(File_name=f"{new_series}_{key}", Patient_index=str(i + 1), Study_index="1", Series_ID="1")
        out_rows.append(row)
    with open(source / "DL_info.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(out_rows)
    return source
