"""Strategy 3: a RECIST mark (long and short axis) -> lesion mask (seeded GrabCut) -> trimap.

What a RECIST mark guarantees geometrically (used as a hard prior, :func:`recist_region`): the
long axis a-b is the lesion's longest chord, so every lesion point p has |p - a| <= L and
|p - b| <= L (L = |b - a|), and its projection on the long axis lies between a and b (otherwise
one of the two distances would exceed L). The lesion therefore lies in the *lens* of the two disks
of radius L about the endpoints, cut by the *slab* between the perpendiculars through them.
The short axis (the longest chord perpendicular to the long one) bounds the lesion's extent
across the long axis only for convex lesions, so it is used with a margin (see
:func:`mask_from_recist`). Where a chest wall or a vessel touching the lesion leaves these bounds
(typically past the long axis' ends), it is ruled out, so GrabCut (which cannot tell a nodule of
~30 HU from a wall of ~40 HU by intensity) and the matting cannot follow it there; a vessel that
runs along the lesion inside the bounds is not cut by them.

The mask then gives the matting trimap (:func:`trimap_from_recist_mask`: strategy 1's erode /
dilate band, the inner part of the drawn axes as lesion, background outside the region).
Coordinates are (row, col) pixels of the image, pixel centres at integers (pixel (r, c) covers
[r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from softmask_builder.core.validate import TRIMAP_BACKGROUND, TRIMAP_LESION, TRIMAP_UNKNOWN, as_image2d, as_mask2d
from softmask_builder.errors import InputError, RecistError
from softmask_builder.labelling.trimap import band_footprint, trimap_from_mask

__all__ = ["Recist", "validate_recist", "recist_ellipse", "recist_region", "mask_from_recist",
           "trimap_from_recist_mask", "trimap_from_recist", "uls23_seeds", "uls23_windows_hu",
           "mask_from_recist_uls23", "measure_axes_px"]

_POINTS = ("long_a", "long_b", "short_a", "short_b")

MIN_AXIS_PX = 0.5          # an axis shorter than this is zero-length at pixel precision
CROSS_TOL_PX = 1.0         # the axes may miss each other by this much (rounded endpoints)
REGION_TOL_PX = 1.0        # slack of the lens/slab region: pixel-centre quantisation of the mark
CONVEX_MARGIN_PX, CONVEX_MARGIN_REL = 1.0, 0.1   # slack of the short-axis bound: 1 px + 10 % of it
WORK_SIDE_PX = 48          # GrabCut's window is resampled so that its longer side is about this
MAX_UPSAMPLE = 8           # ... up by an integer factor of at most 8 (small lesions)
BG_MARGIN_PX, BG_MARGIN_REL = 3.0, 0.15   # background margin around the region: max(3 px, 0.15 L)
SEED_SHRINK = 0.2          # fraction of each half-axis near its endpoint left out of the seed line
MIN_GMM_SAMPLES = 16       # GrabCut's 5-component GMMs need a few samples on each side


def _point(value, name: str) -> tuple[float, float]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (2,):
        raise RecistError(f"RECIST point {name} must be (row, col), got {value!r}")
    return float(arr[0]), float(arr[1])


@dataclass(frozen=True)
class Recist:
    """A RECIST mark: the long axis ``long_a``-``long_b`` and the short axis ``short_a``-``short_b``.

    Every point is (row, col) in pixel coordinates of the image it was measured on (floats; pixel
    centres at integers). Construction does not check the geometry: call :func:`validate_recist`.
    """

    long_a: tuple[float, float]
    long_b: tuple[float, float]
    short_a: tuple[float, float]
    short_b: tuple[float, float]

    def __post_init__(self):
        for name in _POINTS:
            object.__setattr__(self, name, _point(getattr(self, name), name))

    @classmethod
    def from_deeplesion(cls, values) -> "Recist":
        """Build from DeepLesion's ``Measurement_coordinates``: 8 numbers or their CSV string.

        The order is ``x11, y11, x12, y12, x21, y21, x22, y22``: the first pair of points is the
        long axis, the second the short axis (``Lesion_diameters_Pixel_`` lists their lengths in
        that order; in ~0.5 % of rows the "long" one is slightly shorter: kept as given here, the
        DeepLesion plan swaps them by measured length).
        """
        if isinstance(values, str):
            try:
                values = [float(v) for v in values.split(",")]
            except ValueError as exc:
                raise RecistError(f"Measurement_coordinates is not 8 numbers: {values!r}") from exc
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.shape != (8,):
            raise RecistError(f"Measurement_coordinates must have 8 numbers, got {v.size}")
        # DeepLesion writes (x, y) = (column, row); we store (row, col).
        return cls((v[1], v[0]), (v[3], v[2]), (v[5], v[4]), (v[7], v[6]))

    @classmethod
    def from_array(cls, points) -> "Recist":
        """Inverse of :meth:`as_array`: (4, 2) rows long_a, long_b, short_a, short_b in (row, col)."""
        arr = np.asarray(points, dtype=np.float64)
        if arr.shape != (4, 2):
            raise RecistError(f"RECIST points must have shape (4, 2), got {arr.shape}")
        return cls(*arr)

    def as_array(self) -> np.ndarray:
        """float64 (4, 2): rows long_a, long_b, short_a, short_b; columns (row, col)."""
        return np.array([self.long_a, self.long_b, self.short_a, self.short_b], dtype=np.float64)

    @property
    def long_px(self) -> float:
        """Length of the long axis in pixels."""
        return math.dist(self.long_a, self.long_b)

    @property
    def short_px(self) -> float:
        """Length of the short axis in pixels."""
        return math.dist(self.short_a, self.short_b)

    @property
    def center_rc(self) -> tuple[float, float]:
        """(row, col) where the lines through the two axes cross.

        Raises :class:`RecistError` when they are parallel or degenerate.
        """
        t, _ = _crossing(self)
        a, b = np.array(self.long_a), np.array(self.long_b)
        p = a + t * (b - a)
        return float(p[0]), float(p[1])

    def shifted(self, d_row: float, d_col: float) -> "Recist":
        """Every point moved by (d_row, d_col); e.g. ``shifted(-origin_r, -origin_c)`` for a crop."""
        d = np.array([d_row, d_col], dtype=np.float64)
        return Recist.from_array(self.as_array() + d)

    def scaled(self, s: float) -> "Recist":
        """Every coordinate multiplied by ``s`` > 0 (about (0, 0)).

        With :mod:`softmask_builder.labelling.crop`'s mapping (crop pixel (r, c) samples source
        ``origin + (r, c) / scale``), source marks map to crop marks by
        ``recist.shifted(-origin_r, -origin_c).scaled(scale)``.
        """
        if not (isinstance(s, (int, float, np.integer, np.floating)) and math.isfinite(s) and s > 0):
            raise InputError(f"scale s must be a finite number > 0, got {s!r}")
        return Recist.from_array(self.as_array() * float(s))


def _crossing(rec: Recist) -> tuple[float, float]:
    """Parameters (t, u) of the crossing: long_a + t (long_b - long_a) = short_a + u (short_b - short_a)."""
    a, b, c, d = (np.array(p) for p in (rec.long_a, rec.long_b, rec.short_a, rec.short_b))
    r, s = b - a, d - c
    den = r[0] * s[1] - r[1] * s[0]
    norm = float(np.hypot(*r) * np.hypot(*s))
    if norm == 0 or not math.isfinite(den) or abs(den) <= 1e-9 * norm:
        raise RecistError("RECIST axes are parallel or degenerate: they do not cross")
    q = c - a
    t = (q[0] * s[1] - q[1] * s[0]) / den
    u = (q[0] * r[1] - q[1] * r[0]) / den
    return float(t), float(u)


def validate_recist(recist, shape, *, sample_id: str | None = None) -> Recist:
    """Check that a RECIST mark is usable on an image of ``shape`` = (rows, cols).

    Parameters
    ----------
    recist : Recist or array_like (4, 2)
        The mark, (row, col) pixel coordinates.
    shape : (int, int)
        Shape of the image the mark refers to.
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    Recist
        The mark (converted when an array was given).

    Raises
    ------
    RecistError
        Naming the faulty mark: a point with NaN/inf; an axis shorter than ``MIN_AXIS_PX``
        (0.5 px, i.e. zero length at pixel precision); a point outside the image (beyond the
        outer pixel edges, [-0.5, rows - 0.5] x [-0.5, cols - 0.5]); axes that do not cross (the
        crossing of their lines lies more than ``CROSS_TOL_PX`` = 1 px beyond an axis' end, or
        they are parallel).
    """
    try:
        rec = recist if isinstance(recist, Recist) else Recist.from_array(recist)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, RecistError):
            raise RecistError(exc.reason, sample_id=sample_id) from None
        raise RecistError(f"RECIST mark must be a Recist or (4, 2) points, got {recist!r}", sample_id=sample_id) from exc
    rows, cols = (int(n) for n in shape)
    for name in _POINTS:
        p = getattr(rec, name)
        if not all(math.isfinite(v) for v in p):
            raise RecistError(f"RECIST point {name} has NaN/inf coordinates {p}", sample_id=sample_id)
    for axis, length in (("long", rec.long_px), ("short", rec.short_px)):
        if length < MIN_AXIS_PX:
            raise RecistError(f"RECIST {axis} axis has zero length ({length:.3g} px < {MIN_AXIS_PX} px)",
                              sample_id=sample_id)
    for name in _POINTS:
        r, c = getattr(rec, name)
        if not (-0.5 <= r <= rows - 0.5 and -0.5 <= c <= cols - 0.5):
            raise RecistError(f"RECIST point {name} (row {r:.2f}, col {c:.2f}) is outside the "
                              f"{rows}x{cols} image", sample_id=sample_id)
    try:
        t, u = _crossing(rec)
    except RecistError as exc:
        raise RecistError(exc.reason, sample_id=sample_id) from None
    for axis, param, length in (("long", t, rec.long_px), ("short", u, rec.short_px)):
        beyond = max(-param, param - 1.0, 0.0) * length
        if beyond > CROSS_TOL_PX:
            raise RecistError(f"RECIST axes do not cross: their crossing lies {beyond:.2f} px beyond the "
                              f"end of the {axis} axis", sample_id=sample_id)
    return rec


class _Frame:
    """The oblique frame of a mark: p - c = s * e_long + t * e_short, with four half-axes."""

    def __init__(self, rec: Recist):
        a, b = np.array(rec.long_a), np.array(rec.long_b)
        c_, d = np.array(rec.short_a), np.array(rec.short_b)
        self.center = np.array(rec.center_rc)
        e_long = (b - a) / np.hypot(*(b - a))
        e_short = (d - c_) / np.hypot(*(d - c_))
        # the 2x2 inverse written out: LAPACK's (np.linalg.inv) rounds per CPU kernel, and these
        # coefficients decide pixels on the shape's edge
        det = float(e_long[0] * e_short[1] - e_short[0] * e_long[1])
        self.inv = np.array([[e_short[1], -e_short[0]], [-e_long[1], e_long[0]]]) / det
        # Half-axes from the crossing to each endpoint; a crossing at an endpoint (a "T" mark)
        # would give 0, which would make the shape degenerate on that side.
        self.half = tuple(max(float(np.hypot(*(p - self.center))), MIN_AXIS_PX / 2) for p in (a, b, c_, d))

    def level_at(self, rr, cc, *, scale: float = 1.0, margin: float = 0.0) -> np.ndarray:
        """The shape's "radius" at points (rr, cc) (arrays, image coordinates), <= 1 inside.

        The shape is four quarter-ellipses in the oblique frame, one per quadrant, with the
        half-axes (``scale * half + margin``) of that quadrant; it passes through the four
        endpoints when ``scale = 1, margin = 0``, and is convex.
        """
        dr, dc = rr - self.center[0], cc - self.center[1]
        s = self.inv[0, 0] * dr + self.inv[0, 1] * dc
        t = self.inv[1, 0] * dr + self.inv[1, 1] * dc
        ha, hb, hc, hd = (scale * h + margin for h in self.half)
        s_half = np.where(s >= 0, hb, ha)
        t_half = np.where(t >= 0, hd, hc)
        return np.sqrt((s / s_half) ** 2 + (t / t_half) ** 2)


class _Bounds:
    """What a mark says about where the lesion can be, in the long axis' frame.

    A point p has ``s = (p - a) . u`` along the long axis (0 at ``long_a``, L at ``long_b``) and
    ``w = (p - a) . v`` across it (v = u turned by +90 degrees).
    """

    def __init__(self, rec: Recist):
        self.a = np.array(rec.long_a)
        b = np.array(rec.long_b)
        self.length = float(np.hypot(*(b - self.a)))
        self.u = (b - self.a) / self.length
        self.v = np.array([-self.u[1], self.u[0]])
        # elementwise, not `@`: a BLAS dot rounds per CPU kernel (see phantom.recist_marks._short_axis)
        ws = [float((p[0] - self.a[0]) * self.v[0] + (p[1] - self.a[1]) * self.v[1])
              for p in (rec.short_a, rec.short_b)]
        self.w_plus = max(max(ws), 0.0)     # how far the short axis reaches on the +v side
        self.w_minus = max(-min(ws), 0.0)   # ... and on the -v side
        self.short = rec.short_px
        t, _ = _crossing(rec)
        self.s0 = min(max(t, 0.0), 1.0) * self.length   # where the short axis crosses

    def frame(self, rr, cc):
        dr, dc = rr - self.a[0], cc - self.a[1]
        return self.u[0] * dr + self.u[1] * dc, self.v[0] * dr + self.v[1] * dc

    def lens_excess(self, rr, cc) -> np.ndarray:
        """Distance-like excess (px) of points beyond the lens of the disks of radius L about the
        endpoints and the slab 0 <= s <= L; <= 0 inside both."""
        s, w = self.frame(rr, cc)
        L = self.length
        far = np.sqrt(np.maximum(s * s, (s - L) ** 2) + w * w)  # distance to the farther endpoint
        return np.maximum(far - L, np.maximum(-s, s - L))

    def convex_excess(self, rr, cc) -> np.ndarray:
        """Excess (px, across the long axis) of points beyond the bound a convex lesion obeys.

        For a convex lesion the long axis lies inside it and every perpendicular cross-section
        [bottom(s), top(s)] contains w = 0 and is at most ``short`` long (the short axis is the
        longest one). ``bottom`` is convex with bottom(0) = bottom(L) = 0 (the lens meets s = 0
        and s = L only at the endpoints) and bottom(s0) = -w_minus, so it lies below the "tent"
        through those three points, and ``top(s) <= short + bottom(s) <= short - w_minus *
        tent(s)``, tent(s) = min(s / s0, (L - s) / (L - s0)) in [0, 1]; likewise on the -v side.
        """
        s, w = self.frame(rr, cc)
        L = self.length
        tent = np.minimum(s / max(self.s0, 1e-6), (L - s) / max(L - self.s0, 1e-6))
        tent = np.clip(tent, 0.0, 1.0)
        return np.where(w >= 0, w - (self.short - self.w_minus * tent), -w - (self.short - self.w_plus * tent))

    def allowed(self, rr, cc, tol_px: float) -> np.ndarray:
        """Lens and slab (slack ``tol_px``), and the convex bound with its margin."""
        margin = CONVEX_MARGIN_PX + CONVEX_MARGIN_REL * self.short
        return (self.lens_excess(rr, cc) <= tol_px + 1e-9) & (self.convex_excess(rr, cc) <= margin)

    def region_box(self, tol_px: float) -> tuple[float, float, float, float]:
        """(row_min, row_max, col_min, col_max) of the lens and slab grown by ``tol_px``.

        The region is convex, so its extreme along each image axis is attained at one of: a
        disk's own extreme point (when it lies in the other constraints), the two points where
        the circles meet, or the points (s, w) = (-tol, 0), (L + tol, 0).
        """
        L, R = self.length, self.length + tol_px
        half = math.sqrt(max(R * R - (L / 2) ** 2, 0.0))
        b = self.a + L * self.u
        cand = [self.a + (L / 2) * self.u + sgn * half * self.v for sgn in (-1.0, 1.0)]
        cand += [self.a - tol_px * self.u, b + tol_px * self.u]
        for centre in (self.a, b):
            for e in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)):
                cand.append(centre + R * np.array(e))
        pts = np.array(cand)
        ok = self.lens_excess(pts[:, 0], pts[:, 1]) <= tol_px + 1e-6
        pts = pts[ok]
        return pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()


def recist_ellipse(recist, shape, *, scale: float = 1.0, margin_px: float = 0.0,
                   sample_id: str | None = None) -> np.ndarray:
    """The "ellipse the axes span": a bool (rows, cols) mask of pixel centres inside it.

    Four quarter-ellipses around the axes' crossing, each through the two endpoints of its
    quadrant (so off-centre crossings and slightly oblique axes are followed exactly); with
    ``scale`` / ``margin_px`` every half-axis becomes ``scale * half + margin_px``. This is
    :func:`mask_from_recist`'s probable-foreground prior and its fallback.
    """
    rec = validate_recist(recist, shape, sample_id=sample_id)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return _Frame(rec).level_at(rr, cc, scale=scale, margin=margin_px) <= 1.0


def _check_tol(tol_px, sample_id) -> float:
    if isinstance(tol_px, (bool, np.bool_)) or not isinstance(tol_px, (int, float, np.integer, np.floating)) \
            or not math.isfinite(tol_px) or tol_px < 0:
        raise InputError(f"tol_px must be a finite number >= 0, got {tol_px!r}", sample_id=sample_id)
    return float(tol_px)


def recist_region(recist, shape, *, tol_px: float = REGION_TOL_PX, sample_id: str | None = None) -> np.ndarray:
    """Pixels whose centre can belong to the lesion according to its RECIST long axis.

    A pixel centre p is in the region when ``|p - a| <= L + tol_px``, ``|p - b| <= L + tol_px``
    and ``-tol_px <= (p - a) . u <= L + tol_px`` (a, b the long axis' endpoints, L its length,
    u its direction): the lens of the two disks about the endpoints cut by the slab between the
    perpendiculars through them. With ``tol_px = 0`` it holds every point of any lesion whose
    longest chord is exactly a-b (the module docstring gives the argument); ``tol_px`` covers a
    mark measured between pixel centres of a resampled image or drawn slightly inside the edge.
    The region is convex, symmetric about the long axis and about its perpendicular bisector;
    it does not depend on the short axis.

    Parameters
    ----------
    recist : Recist or array_like (4, 2)
        The mark, (row, col) pixel coordinates.
    shape : (int, int)
        (rows, cols) of the image.
    tol_px : float, >= 0
        Slack in pixels (default ``REGION_TOL_PX`` = 1 px).
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    numpy.ndarray
        bool (rows, cols); never empty (the long axis' pixels are in it unless the mark lies in
        the outer half-pixel of the image).

    Raises
    ------
    RecistError
        Degenerate mark (see :func:`validate_recist`).
    InputError
        ``tol_px`` negative or not finite.
    """
    rec = validate_recist(recist, shape, sample_id=sample_id)
    tol = _check_tol(tol_px, sample_id)
    bounds = _Bounds(rec)
    out = np.zeros(tuple(int(n) for n in shape), dtype=bool)
    rmin, rmax, cmin, cmax = bounds.region_box(tol)
    r0, r1 = max(int(math.floor(rmin)), 0), min(int(math.ceil(rmax)) + 1, out.shape[0])
    c0, c1 = max(int(math.floor(cmin)), 0), min(int(math.ceil(cmax)) + 1, out.shape[1])
    if r0 < r1 and c0 < c1:
        rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        out[r0:r1, c0:c1] = bounds.lens_excess(rr, cc) <= tol + 1e-9
    return out


def _axis_points(rec: Recist) -> tuple[np.ndarray, list[np.ndarray]]:
    """The crossing and the four points at (1 - SEED_SHRINK) of each half-axis from it, in the
    order long_a, short_a, long_b, short_b (around the crossing)."""
    center = np.array(rec.center_rc)
    ends = [np.array(p) for p in (rec.long_a, rec.short_a, rec.long_b, rec.short_b)]
    return center, [center + (1.0 - SEED_SHRINK) * (p - center) for p in ends]


def _fixed(p) -> tuple[int, int]:
    # cv2 draws with sub-pixel precision in fixed point (shift=4: 1/16 px) and takes (x, y) = (col, row)
    return int(round(p[1] * 16)), int(round(p[0] * 16))


def _seed_lines(rec: Recist, shape) -> np.ndarray:
    """uint8 mask of the two axes from the crossing to (1 - SEED_SHRINK) of each half-axis."""
    out = np.zeros(shape, dtype=np.uint8)
    center, stops = _axis_points(rec)
    for stop in stops:
        cv2.line(out, _fixed(center), _fixed(stop), 1, thickness=1, lineType=cv2.LINE_8, shift=4)
    r, c = (int(round(v)) for v in center)
    if 0 <= r < shape[0] and 0 <= c < shape[1]:
        out[r, c] = 1
    return out


def _seed_kite(rec: Recist, shape) -> np.ndarray:
    """uint8 mask of the quadrilateral through the four seed lines' ends, and the lines.

    A convex lesion contains its four RECIST endpoints, hence their convex hull; the kite is that
    hull shrunk by SEED_SHRINK about the crossing, so it stays inside the lesion's edge.
    """
    out = _seed_lines(rec, shape)
    _, stops = _axis_points(rec)
    cv2.fillConvexPoly(out, np.array([_fixed(p) for p in stops], dtype=np.int32), 1, lineType=cv2.LINE_8, shift=4)
    return out


def _keep_component(mask: np.ndarray, center) -> np.ndarray:
    """The 8-connected component of ``mask`` containing ``center`` (else the one nearest to it)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    r = min(max(int(round(center[0])), 0), mask.shape[0] - 1)
    c = min(max(int(round(center[1])), 0), mask.shape[1] - 1)
    lab = labels[r, c]
    if lab == 0:
        rr, cc = np.nonzero(labels)
        k = int(np.argmin((rr - center[0]) ** 2 + (cc - center[1]) ** 2))
        lab = labels[rr[k], cc[k]]
    return labels == lab


def _check_image(image01, sample_id) -> np.ndarray:
    image = as_image2d(image01, "image01", sample_id=sample_id)
    if image.min() < 0.0 or image.max() > 1.0:
        raise InputError(f"image01 must be in [0, 1] (window it first), got range "
                         f"[{image.min():.4g}, {image.max():.4g}]", sample_id=sample_id)
    return image


def _check_iterations(iterations, sample_id) -> int:
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise InputError(f"iterations must be an integer >= 1, got {iterations!r}", sample_id=sample_id)
    return int(iterations)


def mask_from_recist(image01, recist, *, iterations: int = 5, sample_id: str | None = None) -> np.ndarray:
    """Binary lesion mask from a RECIST mark by OpenCV GrabCut, kept where the mark allows.

    Where the lesion can be (hard limits; see :class:`_Bounds`):

    * the region of :func:`recist_region` (lens and slab of the long axis, ``REGION_TOL_PX`` =
      1 px slack);
    * the short axis' bound across the long axis, which holds for convex lesions: at position s
      along the long axis, at most ``short - w_other * tent(s)`` px from it on each side, where
      ``w_other`` is how far the short axis reaches on the other side and ``tent`` rises
      linearly from 0 at an endpoint to 1 at the axes' crossing; lobulated and spiculated
      lesions can exceed it slightly, so it gets a margin of ``1 px + 10 %`` of the short axis.

    GrabCut seeds (``cv2.grabCut`` with ``GC_INIT_WITH_MASK``; ``image01`` quantized to uint8 and
    replicated to 3 channels):

    * definite foreground: the "kite" through the points at 80 % of each half-axis from the
      crossing, and the axes up to there (a convex lesion contains the hull of its four
      endpoints; the annotator's endpoints sit on the uncertain edge, so they are left out);
    * probable foreground: the ellipse the axes span (:func:`recist_ellipse`) within the limits;
    * probable background: the rest of the limits;
    * definite background: everything outside the limits (the GMMs learn the chest wall or a
      vessel there as background).

    Cost is bounded: GrabCut works on a window = the region's bounding box plus a background
    margin of ``max(3 px, 0.15 * long axis)``, resampled so that its longer side is about
    ``WORK_SIDE_PX`` = 48 px: small lesions are up-sampled (bilinear, integer factor up to 8, so
    a 2-px lesion gets a real segmentation rather than a drawn ellipse) and the result brought
    back by area averaging (a pixel is lesion when >= half of its sub-pixels are); large ones are
    down-sampled (area) and the result brought back bilinearly, thresholded at 0.5. Full slices
    cost no more than crops. Where the window leaves the image (a lesion at the border) it is
    padded by edge replication, as :mod:`softmask_builder.labelling.crop` does; padded pixels are never
    definite background (they may repeat lesion pixels) and are cut off afterwards.

    Post-processing at the image's resolution: keep the result within the limits; a
    morphological opening with a disk of radius ``floor(short_px / 8)`` (0 to 3 px) cuts thin
    attachments such as vessels (but keeps the kite: the mark says the lesion reaches that far);
    keep the 8-connected component containing the crossing (or the nearest one); fill holes
    (which stays inside the convex region of :func:`recist_region`). If nothing is left, or
    GrabCut cannot run (fewer than 16 pixels on either side), the result is the ellipse within
    the limits, and when even that holds no pixel centre, the crossing pixel: the mask is never
    empty.

    Determinism: GrabCut initialises its two 5-component colour GMMs by k-means, which draws
    from OpenCV's RNG; ``cv2.setRNGSeed(0)`` is called just before, so the same inputs give the
    same mask. (This resets the calling thread's OpenCV RNG.)

    Parameters
    ----------
    image01 : array_like, (rows, cols)
        The windowed image in [0, 1] (:func:`softmask_builder.labelling.window.window_hu`).
    recist : Recist or array_like (4, 2)
        The mark in the image's (row, col) pixel coordinates.
    iterations : int, >= 1
        GrabCut iterations (on the phantom benchmark 2, 3 and 5 give the same masks within
        0.001 Dice).
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    numpy.ndarray
        bool (rows, cols), never empty, one 8-connected component without holes, inside
        :func:`recist_region` (except, in the last fallback, the crossing pixel).

    Raises
    ------
    RecistError
        Degenerate mark (see :func:`validate_recist`).
    InputError
        ``image01`` not 2-D, not finite or outside [0, 1]; bad ``iterations``.
    """
    image = _check_image(image01, sample_id)
    iterations = _check_iterations(iterations, sample_id)
    rec = validate_recist(recist, image.shape, sample_id=sample_id)
    rows, cols = image.shape
    frame, bounds = _Frame(rec), _Bounds(rec)
    tol = REGION_TOL_PX

    # Window: the region's box (and the mark's, for marks whose short axis leaves the lens)
    # plus a background margin, in image pixels.
    pts = rec.as_array()
    rmin, rmax, cmin, cmax = bounds.region_box(tol)
    rmin, rmax = min(rmin, pts[:, 0].min()), max(rmax, pts[:, 0].max())
    cmin, cmax = min(cmin, pts[:, 1].min()), max(cmax, pts[:, 1].max())
    margin = max(BG_MARGIN_PX, BG_MARGIN_REL * rec.long_px)
    r0, r1 = int(math.floor(rmin - margin)), int(math.ceil(rmax + margin)) + 1
    c0, c1 = int(math.floor(cmin - margin)), int(math.ceil(cmax + margin)) + 1
    height, width = r1 - r0, c1 - c0
    rows_idx = np.clip(np.arange(r0, r1), 0, rows - 1)
    cols_idx = np.clip(np.arange(c0, c1), 0, cols - 1)
    window = image[np.ix_(rows_idx, cols_idx)]
    inside = np.outer((np.arange(r0, r1) >= 0) & (np.arange(r0, r1) < rows),
                      (np.arange(c0, c1) >= 0) & (np.arange(c0, c1) < cols))

    # Working grid: an integer up-sampling factor, or a down-sampling to WORK_SIDE_PX. Working
    # pixel (y, x) samples window position ((y + 0.5) / f_r - 0.5, (x + 0.5) / f_c - 0.5), as
    # cv2.resize does; all geometry is evaluated there, in image coordinates.
    f = WORK_SIDE_PX / max(height, width)
    f = float(min(MAX_UPSAMPLE, math.floor(f))) if f >= 1 else f
    work_h, work_w = max(int(round(height * f)), 1), max(int(round(width * f)), 1)
    if (work_h, work_w) == (height, width):
        work = window
    else:
        interp = cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA
        work = cv2.resize(window.astype(np.float32), (work_w, work_h), interpolation=interp)
    f_r, f_c = work_h / height, work_w / width
    ys = r0 + (np.arange(work_h) + 0.5) / f_r - 0.5
    xs = c0 + (np.arange(work_w) + 0.5) / f_c - 0.5
    wr, wc = np.meshgrid(ys, xs, indexing="ij")
    work_inside = np.outer((ys >= -0.5) & (ys <= rows - 0.5), (xs >= -0.5) & (xs <= cols - 0.5))
    work_allowed = bounds.allowed(wr, wc, tol)

    gc = np.full(work.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    gc[~work_allowed & work_inside] = cv2.GC_BGD
    gc[(frame.level_at(wr, wc) <= 1.0) & work_allowed] = cv2.GC_PR_FGD
    work_rec = Recist.from_array((pts - [r0, c0] + 0.5) * [f_r, f_c] - 0.5)
    gc[_seed_kite(work_rec, work.shape).astype(bool)] = cv2.GC_FGD

    n_fg = int(np.count_nonzero((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)))
    n_bg = gc.size - n_fg
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    allowed = bounds.allowed(rr, cc, tol) & inside
    ellipse = (frame.level_at(rr, cc) <= 1.0) & allowed
    if n_fg >= MIN_GMM_SAMPLES and n_bg >= MIN_GMM_SAMPLES:
        img8 = np.rint(np.clip(work, 0.0, 1.0) * 255.0).astype(np.uint8)
        img8 = np.ascontiguousarray(np.repeat(img8[:, :, None], 3, axis=2))
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        cv2.grabCut(img8, gc, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
        if f > 1:
            # Integer factor: INTER_AREA is the exact mean of each f x f block.
            fg = cv2.resize(fg, (width, height), interpolation=cv2.INTER_AREA)
        elif f < 1:
            fg = cv2.resize(fg, (width, height), interpolation=cv2.INTER_LINEAR)
        fg = (fg >= 0.5) & allowed
    else:
        fg = ellipse.copy()

    radius = min(3, int(math.floor(min(rec.long_px, rec.short_px) / 8.0)))
    if radius > 0 and fg.any():
        kernel = band_footprint(float(radius))
        opened = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
        # The opening is for thin attachments; it must not eat the tips of the kite (the mark
        # says the lesion reaches the axes' ends).
        fg = opened | (fg & _seed_kite(Recist.from_array(pts - [r0, c0]), fg.shape).astype(bool))
    if fg.any():
        from scipy import ndimage

        center_win = (frame.center[0] - r0, frame.center[1] - c0)
        # Filling adds only pixels enclosed by the mask, so the result stays in the (convex) region.
        fg = ndimage.binary_fill_holes(_keep_component(fg, center_win))
    out = np.zeros(image.shape, dtype=bool)
    sub = (slice(max(r0, 0), min(r1, rows)), slice(max(c0, 0), min(c1, cols)))
    win_sub = (slice(sub[0].start - r0, sub[0].stop - r0), slice(sub[1].start - c0, sub[1].stop - c0))
    out[sub] = fg[win_sub]
    if not out.any():
        out[sub] = ellipse[win_sub]
    if not out.any():
        r = min(max(int(round(frame.center[0])), 0), rows - 1)
        c = min(max(int(round(frame.center[1])), 0), cols - 1)
        out[r, c] = True
    return out


def trimap_from_recist_mask(mask, recist, *, band_px: float, sample_id: str | None = None) -> np.ndarray:
    """Trimap of a RECIST-derived lesion mask (e.g. :func:`mask_from_recist`'s) for matting.

    1. Strategy 1 (:func:`softmask_builder.labelling.trimap.trimap_from_mask`): lesion = the mask eroded
       by a disk of radius ``band_px``, background = outside the mask dilated by it, unknown =
       the band between.
    2. The inner part of the drawn axes (from their crossing to 80 % of each half-axis, the
       pixels GrabCut was given as definite foreground) is lesion where the mask has it. For a
       small lesion the eroded mask is a pixel or two and the matting, with a partial-volume
       boundary on every side, would otherwise pull its alpha below 0.5.
    3. Unknown pixels outside :func:`recist_region` (``REGION_TOL_PX`` slack) are background:
       the mark rules out lesion there, so the alpha cannot spread into a chest wall or vessel
       that touches the lesion, and neither can the binarized Soft Mask (alpha >= 0.5).

    Parameters
    ----------
    mask : array_like (rows, cols)
        Binary lesion mask, not empty.
    recist : Recist or array_like (4, 2)
        The mark the mask was made from, in the mask's (row, col) pixel coordinates.
    band_px : float, >= 0
        Radius of the band's disk in pixels (``LabelParams.band_px``).
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    numpy.ndarray
        uint8 (rows, cols): 0 background, 128 unknown, 255 lesion; at least one lesion and one
        background pixel; every lesion pixel is in ``mask``.

    Raises
    ------
    RecistError
        Degenerate mark.
    InputError
        Empty or non-binary mask; bad ``band_px``; no background pixel (see
        :func:`~softmask_builder.labelling.trimap.trimap_from_mask`).
    """
    m = as_mask2d(mask, "mask", sample_id=sample_id)
    rec = validate_recist(recist, m.shape, sample_id=sample_id)
    trimap = trimap_from_mask(m, band_px=band_px, sample_id=sample_id)
    trimap[_seed_lines(rec, m.shape).astype(bool) & m] = TRIMAP_LESION
    trimap[(trimap == TRIMAP_UNKNOWN) & ~recist_region(rec, m.shape, sample_id=sample_id)] = TRIMAP_BACKGROUND
    return trimap


def trimap_from_recist(image01, recist, *, band_px: float, iterations: int = 5,
                       sample_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Strategy 3's trimap: :func:`mask_from_recist`, then :func:`trimap_from_recist_mask`.

    Returns
    -------
    (trimap, mask)
        uint8 (rows, cols) trimap (0 / 128 / 255) and the bool GrabCut mask it came from.
    """
    mask = mask_from_recist(image01, recist, iterations=iterations, sample_id=sample_id)
    return trimap_from_recist_mask(mask, recist, band_px=band_px, sample_id=sample_id), mask


# --------------------------------------------------------------------------------------------
# The ULS23 challenge's GrabCut recipe (a named peer for strategy 3; LabelParams.recist_method
# "uls23"). The "region" method above is this project's own.
# --------------------------------------------------------------------------------------------

ULS23_ITERATIONS = 25                      # the recipe's GrabCut iterations
ULS23_FIXED_WINDOWS_HU = ((-600.0, 1500.0), (40.0, 400.0))   # (level, width): lung, mediastinal
ULS23_OWN_HALF_WIDTH_HU = 100.0            # the mark's own window: its HU +- 100
ULS23_MARGIN_REL = 0.2                     # bbox enlargement and ellipse erosion: short axis / 5


def uls23_seeds(recist, shape, *, sample_id: str | None = None) -> np.ndarray:
    """GrabCut labels of the ULS23 recipe for a mark on an image of ``shape``.

    With ``m = short_px / 5`` (the recipe's short-axis/5):

    * ``GC_FGD`` (sure lesion): the RECIST ellipse (:func:`recist_ellipse`) eroded by a disk of
      radius ``m`` px, i.e. the ellipse's pixels whose Euclidean distance to the nearest pixel
      outside it exceeds ``m``;
    * ``GC_PR_FGD`` (probable lesion): the rest of the ellipse;
    * ``GC_PR_BGD`` (probable background): the rest of the ellipse's bounding box (of its pixel
      centres) enlarged by ``m`` px on each side (pixel centres within it);
    * ``GC_BGD`` (sure background): everything else.

    Returns
    -------
    numpy.ndarray
        uint8 (rows, cols) with values in {cv2.GC_BGD, GC_FGD, GC_PR_BGD, GC_PR_FGD}. The sure
        lesion can be empty (short axis under ~5 px); the ellipse holds at least the crossing
        pixel when it lies in the image.

    Raises
    ------
    RecistError
        Degenerate mark (see :func:`validate_recist`).
    """
    from scipy import ndimage

    rec = validate_recist(recist, shape, sample_id=sample_id)
    shape = tuple(int(n) for n in shape)
    ellipse = recist_ellipse(rec, shape)
    if not ellipse.any():
        r = min(max(int(round(rec.center_rc[0])), 0), shape[0] - 1)
        c = min(max(int(round(rec.center_rc[1])), 0), shape[1] - 1)
        ellipse[r, c] = True
    m = ULS23_MARGIN_REL * rec.short_px
    rows, cols = np.nonzero(ellipse)
    rr = np.arange(shape[0])
    cc = np.arange(shape[1])
    box = np.outer((rr >= rows.min() - m) & (rr <= rows.max() + m), (cc >= cols.min() - m) & (cc <= cols.max() + m))
    # Erosion by a disk of radius m == distance to the nearest outside pixel centre > m.
    # (Padding by one outside pixel makes the image border count as outside.)
    dist = ndimage.distance_transform_edt(np.pad(ellipse, 1))[1:-1, 1:-1]
    out = np.full(shape, cv2.GC_BGD, dtype=np.uint8)
    out[box] = cv2.GC_PR_BGD
    out[ellipse] = cv2.GC_PR_FGD
    out[ellipse & (dist > m)] = cv2.GC_FGD
    return out


def uls23_windows_hu(image_hu, seeds) -> tuple[tuple[float, float], ...]:
    """The recipe's windows as (level, width) HU: lung (-600, 1500), mediastinal (40, 400), and
    the mark's own HU +- 100, i.e. (median HU of the sure lesion, 200); the median of the whole
    ellipse when the sure lesion is empty."""
    image = np.asarray(image_hu, dtype=np.float64)
    inner = seeds == cv2.GC_FGD
    if not inner.any():
        inner = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    own = float(np.median(image[inner]))
    return ULS23_FIXED_WINDOWS_HU + ((own, 2.0 * ULS23_OWN_HALF_WIDTH_HU),)


def measure_axes_px(mask) -> tuple[float, float]:
    """(long, short) axis lengths in pixels of a mask, measured between pixel centres as a
    reader draws them: long = the farthest pair of pixel centres; short = the widest extent
    perpendicular to it among 1-px bins along the long axis. (0, 0) for an empty mask.

    The phantom's truth marks use another longest-chord search on purpose
    (:func:`softmask_builder.phantom.recist_marks.long_axis`): the same length, but this one keeps
    the first farthest pair in ``cv2.convexHull`` order and bins along it, so among equal-length
    chords (common on the pixel grid) the two pick different pairs. Merging them would change
    either this function's short axis (the ULS23 candidate choice) or the phantom's marks
    (PHANTOM_VERSION); see :mod:`softmask_builder.phantom.recist_marks`.
    """
    pts = np.argwhere(np.asarray(mask, dtype=bool)).astype(np.float64)
    if len(pts) == 0:
        return 0.0, 0.0
    if len(pts) < 3:
        return float(np.hypot(*(pts.max(0) - pts.min(0)))), 0.0
    hull = cv2.convexHull(pts[:, ::-1].astype(np.float32)).reshape(-1, 2)[:, ::-1].astype(np.float64)
    d2 = ((hull[:, None] - hull[None]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    long_px = float(math.sqrt(d2[i, j]))
    if long_px == 0:
        return 0.0, 0.0
    u = (hull[j] - hull[i]) / long_px
    dr, dc = pts[:, 0] - hull[i][0], pts[:, 1] - hull[i][1]
    s = dr * u[0] + dc * u[1]  # elementwise, not `@` (BLAS rounds per CPU kernel)
    t = dc * u[0] - dr * u[1]
    bins = np.round(s).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    b_sorted, t_sorted = bins[order], t[order]
    starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    short_px = float((np.maximum.reduceat(t_sorted, starts) - np.minimum.reduceat(t_sorted, starts)).max())
    return long_px, short_px


def _uls23_candidates(image_hu, rec: Recist, seeds: np.ndarray, iterations: int):
    """[(window, mask)] for each of the recipe's windows: GrabCut on the enlarged box plus a
    ring of sure background, the 8-connected component at the crossing kept."""
    from softmask_builder.labelling.window import window_hu

    rows, cols = seeds.shape
    rr, cc = np.nonzero(seeds != cv2.GC_BGD)
    ring = max(int(math.ceil(ULS23_MARGIN_REL * rec.short_px)), 3)
    r0, r1 = max(rr.min() - ring, 0), min(rr.max() + ring + 1, rows)
    c0, c1 = max(cc.min() - ring, 0), min(cc.max() + ring + 1, cols)
    gc0 = seeds[r0:r1, c0:c1]
    n_fg = int(np.count_nonzero((gc0 == cv2.GC_FGD) | (gc0 == cv2.GC_PR_FGD)))
    n_bg = gc0.size - n_fg
    image = np.asarray(image_hu, dtype=np.float64)
    center = (rec.center_rc[0] - r0, rec.center_rc[1] - c0)
    out = []
    for level, width in uls23_windows_hu(image, seeds):
        if n_fg < MIN_GMM_SAMPLES or n_bg < MIN_GMM_SAMPLES:
            break
        img8 = np.rint(window_hu(image[r0:r1, c0:c1], level_hu=level, width_hu=width) * 255.0).astype(np.uint8)
        img8 = np.ascontiguousarray(np.repeat(img8[:, :, None], 3, axis=2))
        gc = gc0.copy()
        cv2.setRNGSeed(0)
        cv2.grabCut(img8, gc, None, np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64),
                    iterations, cv2.GC_INIT_WITH_MASK)
        fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        mask = np.zeros(seeds.shape, dtype=bool)
        if fg.any():
            mask[r0:r1, c0:c1] = _keep_component(fg, center)
        out.append(((level, width), mask))
    return out


def mask_from_recist_uls23(image_hu, recist, *, iterations: int = ULS23_ITERATIONS,
                           sample_id: str | None = None) -> np.ndarray:
    """Binary lesion mask from a RECIST mark by the ULS23 challenge's GrabCut recipe.

    The recipe used by the ULS23 challenge (Universal Lesion Segmentation '23) to turn DeepLesion's RECIST
    marks into pseudo-masks, written here from its description: seeds of
    :func:`uls23_seeds` (RECIST ellipse = probable lesion, its bounding box enlarged by
    short-axis/5 = probable background, the ellipse eroded by short-axis/5 = sure lesion),
    ``iterations`` = 25 GrabCut iterations (``cv2.grabCut``, ``GC_INIT_WITH_MASK``, the window
    quantized to uint8 and replicated to 3 channels) under each window of
    :func:`uls23_windows_hu` (lung, mediastinal, the mark's own HU +- 100), and the candidate
    whose axes (:func:`measure_axes_px`) best match the mark's kept:
    the smallest ``|long - long_mark| + |short - short_mark|`` (ties: the first window in that
    order). Unlike :func:`mask_from_recist` it uses no region bound, no up-sampling of small
    lesions and no opening. Choices of this implementation that the description leaves open:
    GrabCut runs on the enlarged box plus a ring of sure background ``max(ceil(m), 3)`` px
    wide (cut at the image border) so that the background model has samples; each candidate
    is the 8-connected component at the axes' crossing (or the nearest one); when GrabCut
    cannot run (fewer than 16 pixels on either side) or every candidate is empty the result is
    the ellipse (never empty). ``cv2.setRNGSeed(0)`` before each call makes it deterministic.

    Parameters
    ----------
    image_hu : array_like (rows, cols)
        The image in HU (the recipe windows it itself).
    recist : Recist or array_like (4, 2)
        The mark, (row, col) pixel coordinates.
    iterations : int, >= 1
        GrabCut iterations (the recipe's 25).
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    numpy.ndarray
        bool (rows, cols), never empty.

    Raises
    ------
    RecistError
        Degenerate mark.
    InputError
        ``image_hu`` not 2-D or not finite; bad ``iterations``.
    """
    image = as_image2d(image_hu, "image_hu", sample_id=sample_id)
    iterations = _check_iterations(iterations, sample_id)
    rec = validate_recist(recist, image.shape, sample_id=sample_id)
    seeds = uls23_seeds(rec, image.shape, sample_id=sample_id)
    target = np.array([rec.long_px, rec.short_px])
    best, best_score = None, math.inf
    for _, mask in _uls23_candidates(image, rec, seeds, iterations):
        if not mask.any():
            continue
        score = float(np.abs(np.array(measure_axes_px(mask)) - target).sum())
        if score < best_score:
            best, best_score = mask, score
    if best is None:
        best = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    return best
