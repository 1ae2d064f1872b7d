"""The phantom's chest: synthetic anatomy drawn from a random generator and rendered in HU.

Contract: :func:`draw_anatomy` draws one chest (:class:`Anatomy`: ellipses in mm, ``(cx, cy, a, b,
theta)`` with x = column and y = row direction, and 3-D vessel tube segments) from ``rng``;
:func:`static_background` renders its z-invariant part (air -1000 HU outside the body, subcutaneous
fat ~-100, soft tissue ~40, ribs and a vertebra with a ~+700 HU cortex, the trachea) and the lungs'
anti-aliased coverage; :func:`vessel_fraction` renders the vessel trees (tubes of ~40 HU) as
partial-volume fractions over each slice's thickness (a box slice profile). The lung wall (pleura)
is the partial-volume edge between lung and chest wall. :func:`blur` is the scanner PSF and the
noise-correlation filter, :func:`smooth_field` the low-frequency parenchymal texture. The HU
constants are the tissue values of both phantoms (:mod:`.cases`, :mod:`.hybrid`); pixels outside
the scanner's circular field of view are :data:`HU_OUTSIDE_FOV` (-1024 HU, as in real scans).

All geometry in mm; pixel ``(r, c)`` has its centre at ``(y, x) = (r, c) * spacing``. The number and
order of draws from ``rng`` are part of the phantom's output (PHANTOM_VERSION).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from numba import njit
from scipy import ndimage

__all__ = ["HU_AIR", "HU_FAT", "HU_SOFT", "HU_LUNG", "HU_VESSEL", "HU_OUTSIDE_FOV", "HU_MIN", "HU_MAX", "Anatomy",
           "draw_anatomy", "static_background", "vessel_fraction", "blur", "smooth_field", "unit", "lung_depth",
           "segment_distance"]

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LUNG = -850.0
HU_VESSEL = 40.0
HU_OUTSIDE_FOV = -1024.0
HU_MIN, HU_MAX = -1024.0, 3071.0


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
class Anatomy:
    """One drawn chest: ellipses ``(cx, cy, a, b, theta)`` in mm (x = column, y = row direction;
    ``theta`` in radians) for the body outline, the muscle wall, the two lungs, the ribs and the
    vertebra, an optional trachea, and the vessel tubes ``segments`` ``(p0, p1, radius_mm)`` with
    ``p0``, ``p1`` (3,) (x, y, z) mm (z = 0 at the key slice). Mutable: a nodule drops the thin
    vessels it would touch (:func:`softmask_builder.phantom.cases.generate_case`)."""

    body: tuple
    muscle: tuple
    lungs: list
    ribs: list
    spine: list
    trachea: tuple | None
    segments: list = field(default_factory=list)  # (p0 (3,), p1 (3,), radius_mm)


def unit(v):
    """``v`` scaled to unit length."""
    return v / np.linalg.norm(v)


def _rotate_towards(rng, d, angle):
    """Direction at ``angle`` radians from unit ``d``, around a random perpendicular axis."""
    w = rng.standard_normal(3)
    w -= w.dot(d) * d
    w = unit(w)
    return unit(math.cos(angle) * d + math.sin(angle) * w)


def lung_depth(p, lung) -> float:
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


def segment_distance(p, a, b) -> float:
    """Distance (mm) from point p to the segment a-b (3-D)."""
    v = b - a
    s = float(np.clip((p - a).dot(v) / max(float(v.dot(v)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - a - s * v))


def _grow(rng, segs, lung, p, d, length, radius, depth) -> None:
    q = p + d * length
    steps = 0
    while lung_depth(q, lung) < 1.0 and steps < 8:  # stop at the lung wall
        length *= 0.7
        q = p + d * length
        steps += 1
    if lung_depth(q, lung) < 1.0 or length < 2.0:
        return
    segs.append((p, q, radius))
    if depth >= 4 or radius < 0.6:
        return
    for _ in range(2):
        child = _rotate_towards(rng, d, rng.uniform(0.3, 0.7))
        _grow(rng, segs, lung, q, child, length * rng.uniform(0.65, 0.85), radius * rng.uniform(0.6, 0.8),
              depth + 1)


def draw_anatomy(rng, rows: int, cols: int, px: float, z_span_mm: float) -> Anatomy:
    """Draw one chest for ``rows`` x ``cols`` slices of pixel spacing ``px`` (mm) from ``rng``:
    body, lungs, ribs, spine, trachea (60 %), and vessel trees grown from each hilum (placed within
    +-0.3 ``z_span_mm`` of the key slice) plus short tubes crossing the slices."""
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
    anatomy = Anatomy(body, muscle, lungs, ribs, spine, trachea)

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
                if lung_depth(p, lung) > 3.0:
                    break
            else:
                continue
            d = rng.standard_normal(3)
            d[2] += 1.5 * np.sign(d[2] if d[2] != 0 else 1.0)
            d = unit(d)
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


def vessel_fraction(segments, rows, cols, px, z_centres, t, n_z: int = 4) -> np.ndarray:
    """(n_slices, rows, cols) float32 union of tube coverages, each averaged over ``n_z`` z
    samples across the slice thickness (a box slice profile)."""
    z_off = ((np.arange(n_z) + 0.5) / n_z - 0.5) * t
    zs = (np.asarray(z_centres, dtype=np.float64)[:, None] + z_off[None, :]).ravel()  # (n_slices * n_z,)
    out = np.zeros((len(z_centres), rows, cols), dtype=np.float64)
    seg = np.array([[*p0, *p1, r] for p0, p1, r in segments], dtype=np.float64).reshape(-1, 7)
    _tubes_kernel(seg, rows, cols, float(px), zs, len(z_centres), n_z, out)
    return out.astype(np.float32)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (kernel truncated at 4 sigma, edges replicated); sigma 0 is a copy."""
    if sigma_px <= 0:
        return img.copy()
    half = int(math.ceil(4.0 * sigma_px))
    return cv2.GaussianBlur(img, (2 * half + 1, 2 * half + 1), sigmaX=sigma_px, sigmaY=sigma_px,
                            borderType=cv2.BORDER_REPLICATE)


def smooth_field(rng, rows, cols, cell_px: int) -> np.ndarray:
    """Zero-mean unit-std low-frequency field (white noise on a coarse grid, blurred, upsampled)."""
    gr, gc = rows // cell_px + 3, cols // cell_px + 3
    coarse = ndimage.gaussian_filter(rng.standard_normal((gr, gc)), 1.0, mode="wrap").astype(np.float32)
    fine = cv2.resize(coarse, (gc * cell_px, gr * cell_px), interpolation=cv2.INTER_LINEAR)[:rows, :cols]
    fine = fine - fine.mean()
    return fine / max(float(fine.std()), 1e-12)


def static_background(anat: Anatomy, rows, cols, px, x, y) -> tuple[np.ndarray, np.ndarray]:
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
