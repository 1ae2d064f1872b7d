"""The analytic phantom's nodules: a 3-D star-shaped solid per kind and its exact partial-volume fraction.

Contract: :class:`NoduleShape` is a solid in mm, coordinates (x, y, z) = (col, row, table)
directions; :func:`nodule_fraction` renders the true fraction ``f`` of one slice, float32
(rows, cols) in [0, 1]: the fraction of each pixel's voxel (the pixel footprint times the slice
thickness, a box slice profile) inside the solid, by supersampling ``supersample**3`` points per
boundary voxel; voxels whose bounding box lies wholly inside/outside the shape's radial bounds are
exactly 1/0. Pixel ``(r, c)`` has its centre at ``(y, x) = (r, c) * spacing``.

:func:`nodule_shape` draws the solid of one nodule kind (:data:`softmask_builder.phantom.cases.KINDS`):
``solid`` / ``ground_glass`` / ``juxta_pleural`` / ``vessel_attached`` near-ellipsoidal with mild
lobes, ``lobulated`` broad lobes, ``spiculated`` thin radial spikes. The nominal radius is that of
the sphere the shape is built on (before ellipsoidal stretch, lobes and spikes). The compiled
sampler (``_fraction_kernel``) is tested point for point against :meth:`NoduleShape.contains`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from softmask_builder.errors import InputError
from softmask_builder.phantom.anatomy import unit

__all__ = ["NoduleShape", "nodule_fraction", "nodule_shape"]


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


def nodule_shape(rng, kind: str, center, R: float) -> NoduleShape:
    """Draw the solid of one nodule ``kind`` around ``center`` (x, y, z mm) from ``rng``.

    ``R`` is the radius (mm) of the sphere it is built on. An unknown kind gets the
    near-ellipsoidal shape (:func:`softmask_builder.phantom.cases.generate_case` checks the kind).
    The number and order of draws from ``rng`` are part of the phantom's output (PHANTOM_VERSION).
    """
    def rand_dirs(k, z_scale=1.0):
        # z_scale < 1 favours directions near the axial plane (where a slice shows them)
        return [tuple(unit(rng.standard_normal(3) * (1.0, 1.0, z_scale))) for _ in range(k)]

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
