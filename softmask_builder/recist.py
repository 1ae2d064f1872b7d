"""Strategy 3: a RECIST mark (long and short axis) -> binary lesion mask by seeded GrabCut.

The mask then goes through strategy 1 (:func:`softmask_builder.trimap.trimap_from_mask`) and
closed-form matting. Coordinates are (row, col) pixels of the image, pixel centres at integers
(pixel (r, c) covers [r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ._validate import as_image2d
from .errors import InputError, RecistError
from .trimap import band_footprint

__all__ = ["Recist", "validate_recist", "mask_from_recist", "recist_ellipse"]

_POINTS = ("long_a", "long_b", "short_a", "short_b")

MIN_AXIS_PX = 0.5          # an axis shorter than this is zero-length at pixel precision
CROSS_TOL_PX = 1.0         # the axes may miss each other by this much (rounded endpoints)
WORK_LONG_PX = 16.0        # lesions with a shorter long axis are up-sampled to about this size
MAX_UPSAMPLE = 8
SEED_SHRINK = 0.2          # fraction of each half-axis near its endpoint left out of the seed line
PR_BGD_LEVEL = 2.0         # probable background up to the ellipse scaled by 2, definite beyond
LIMIT_SCALE, LIMIT_MARGIN_PX = 1.5, 1.0   # the output never leaves this enlarged ellipse
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
        that order; in ~0.5 % of rows the "long" one is slightly shorter and is kept as given).
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

        With :mod:`softmask_builder.crop`'s mapping (crop pixel (r, c) samples source
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
        self.inv = np.linalg.inv(np.column_stack([e_long, e_short]))
        # Half-axes from the crossing to each endpoint; a crossing at an endpoint (a "T" mark)
        # would give 0, which would make the shape degenerate on that side.
        self.half = tuple(max(float(np.hypot(*(p - self.center))), MIN_AXIS_PX / 2) for p in (a, b, c_, d))

    def level(self, shape, *, scale: float = 1.0, margin: float = 0.0) -> np.ndarray:
        """Per pixel of a (rows, cols) grid: the shape's "radius", <= 1 inside.

        The shape is four quarter-ellipses in the oblique frame, one per quadrant, with the
        half-axes (``scale * half + margin``) of that quadrant; it passes through the four
        endpoints when ``scale = 1, margin = 0``, and is convex.
        """
        rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
        dr, dc = rr - self.center[0], cc - self.center[1]
        s = self.inv[0, 0] * dr + self.inv[0, 1] * dc
        t = self.inv[1, 0] * dr + self.inv[1, 1] * dc
        ha, hb, hc, hd = (scale * h + margin for h in self.half)
        s_half = np.where(s >= 0, hb, ha)
        t_half = np.where(t >= 0, hd, hc)
        return np.sqrt((s / s_half) ** 2 + (t / t_half) ** 2)


def recist_ellipse(recist, shape, *, scale: float = 1.0, margin_px: float = 0.0,
                   sample_id: str | None = None) -> np.ndarray:
    """The "ellipse the axes span": a bool (rows, cols) mask of pixel centres inside it.

    Four quarter-ellipses around the axes' crossing, each through the two endpoints of its
    quadrant (so off-centre crossings and slightly oblique axes are followed exactly); with
    ``scale`` / ``margin_px`` every half-axis becomes ``scale * half + margin_px``. This is
    :func:`mask_from_recist`'s prior and its fallback.
    """
    rec = validate_recist(recist, shape, sample_id=sample_id)
    return _Frame(rec).level(shape, scale=scale, margin=margin_px) <= 1.0


def _seed_lines(rec: Recist, shape) -> np.ndarray:
    """uint8 mask of the two axes from the crossing to (1 - SEED_SHRINK) of each half-axis."""
    out = np.zeros(shape, dtype=np.uint8)
    center = np.array(rec.center_rc)
    shift = 4  # cv2 draws with sub-pixel precision in fixed point, 1/16 px
    for end in (rec.long_a, rec.long_b, rec.short_a, rec.short_b):
        vec = np.array(end) - center
        length = float(np.hypot(*vec))
        keep = length * (1.0 - SEED_SHRINK)
        stop = center + vec * (keep / length if length > 0 else 0.0)
        # cv2 takes (x, y) = (col, row)
        p0 = (int(round(center[1] * 16)), int(round(center[0] * 16)))
        p1 = (int(round(stop[1] * 16)), int(round(stop[0] * 16)))
        cv2.line(out, p0, p1, 1, thickness=1, lineType=cv2.LINE_8, shift=shift)
    r, c = (int(round(v)) for v in center)
    if 0 <= r < shape[0] and 0 <= c < shape[1]:
        out[r, c] = 1
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


def mask_from_recist(image01, recist, *, iterations: int = 5, sample_id: str | None = None) -> np.ndarray:
    """Binary lesion mask from a RECIST mark by OpenCV GrabCut seeded with the mark.

    Seeds (``cv2.grabCut`` with ``GC_INIT_WITH_MASK``; ``image01`` quantized to uint8 and
    replicated to 3 channels):

    * definite foreground: the two axes as 1-px lines from their crossing to 80 % of each
      half-axis (the annotator's endpoints sit on the uncertain edge, so they are left out);
    * probable foreground: the ellipse the axes span (:func:`recist_ellipse`);
    * probable background: the ring out to that ellipse scaled by 2 about the crossing;
    * definite background: beyond it (whose long diameter is ~2x the long axis).

    GrabCut works on a window around the mark (the scaled-by-2 ellipse plus a 3 px margin), so
    full slices cost no more than crops. Where that window leaves the image (a lesion at the
    border) it is padded by edge replication, as :mod:`softmask_builder.crop` does; padded pixels
    are never definite background (they may repeat lesion pixels) and are cut off afterwards.
    Lesions with a long axis under ``WORK_LONG_PX`` (16 px) are up-sampled (bilinear, integer
    factor up to 8) so GrabCut sees ~16 px across; the result is brought back by area averaging
    (a pixel is lesion when >= half of its sub-pixels are). A 2-px lesion thus gets a real
    segmentation rather than a drawn ellipse.

    Post-processing at the image's resolution: keep the result inside the ellipse enlarged to
    ``1.5 * half-axis + 1 px`` (a lesion touching a vessel or the pleura does not leak along it);
    a morphological opening with a disk of radius ``floor(short_px / 8)`` (0 to 3 px) cuts thin
    attachments such as vessels; keep the 8-connected component containing the crossing (or the
    nearest one); fill holes. If nothing is left, or GrabCut cannot run (fewer than 16 pixels on
    either side), the result is the ellipse itself, and when even that holds no pixel centre, the
    crossing pixel: the mask is never empty.

    Determinism: GrabCut initialises its two 5-component colour GMMs by k-means, which draws
    from OpenCV's RNG; ``cv2.setRNGSeed(0)`` is called just before, so the same inputs give the
    same mask. (This resets the calling thread's OpenCV RNG.)

    Parameters
    ----------
    image01 : array_like, (rows, cols)
        The windowed image in [0, 1] (:func:`softmask_builder.window.window_hu`).
    recist : Recist or array_like (4, 2)
        The mark in the image's (row, col) pixel coordinates.
    iterations : int, >= 1
        GrabCut iterations.
    sample_id : str, optional
        Put in the message of any error.

    Returns
    -------
    numpy.ndarray
        bool (rows, cols), never empty, one 8-connected component without holes.

    Raises
    ------
    RecistError
        Degenerate mark (see :func:`validate_recist`).
    InputError
        ``image01`` not 2-D, not finite or outside [0, 1]; bad ``iterations``.
    """
    image = as_image2d(image01, "image01", sample_id=sample_id)
    if image.min() < 0.0 or image.max() > 1.0:
        raise InputError(f"image01 must be in [0, 1] (window it first), got range "
                         f"[{image.min():.4g}, {image.max():.4g}]", sample_id=sample_id)
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise InputError(f"iterations must be an integer >= 1, got {iterations!r}", sample_id=sample_id)
    rec = validate_recist(recist, image.shape, sample_id=sample_id)
    rows, cols = image.shape
    frame = _Frame(rec)

    # Window: bounding box of the scaled-by-2 shape (its extent is bounded by the largest
    # half-axis along each of the two axis directions) plus a margin, in image pixels.
    reach = PR_BGD_LEVEL * max(frame.half) + 3.0
    cr, cc = frame.center
    r0, r1 = int(math.floor(cr - reach)), int(math.ceil(cr + reach)) + 1
    c0, c1 = int(math.floor(cc - reach)), int(math.ceil(cc + reach)) + 1
    rows_idx = np.clip(np.arange(r0, r1), 0, rows - 1)
    cols_idx = np.clip(np.arange(c0, c1), 0, cols - 1)
    window = image[np.ix_(rows_idx, cols_idx)]
    inside_r = (np.arange(r0, r1) >= 0) & (np.arange(r0, r1) < rows)
    inside_c = (np.arange(c0, c1) >= 0) & (np.arange(c0, c1) < cols)

    factor = int(min(MAX_UPSAMPLE, max(1, math.ceil(WORK_LONG_PX / max(rec.long_px, rec.short_px)))))
    win_rec = rec.shifted(-r0, -c0)
    if factor > 1:
        # Pixel-centre aligned (as cv2.resize): window coordinate q -> working (q + 0.5) f - 0.5.
        work = cv2.resize(window.astype(np.float32), None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        work_rec = win_rec.shifted(0.5, 0.5).scaled(factor).shifted(-0.5, -0.5)
        work_inside = np.outer(np.repeat(inside_r, factor), np.repeat(inside_c, factor))
    else:
        work, work_rec = window, win_rec
        work_inside = np.outer(inside_r, inside_c)

    work_frame = _Frame(work_rec)
    level = work_frame.level(work.shape)
    gc = np.full(work.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    gc[(level > PR_BGD_LEVEL) & work_inside] = cv2.GC_BGD
    gc[level <= 1.0] = cv2.GC_PR_FGD
    gc[_seed_lines(work_rec, work.shape).astype(bool)] = cv2.GC_FGD

    n_fg = int(np.count_nonzero((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)))
    n_bg = gc.size - n_fg
    win_frame = _Frame(win_rec)
    ellipse = win_frame.level(window.shape) <= 1.0
    if n_fg >= MIN_GMM_SAMPLES and n_bg >= MIN_GMM_SAMPLES:
        img8 = np.rint(np.clip(work, 0.0, 1.0) * 255.0).astype(np.uint8)
        img8 = np.ascontiguousarray(np.repeat(img8[:, :, None], 3, axis=2))
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        cv2.grabCut(img8, gc, None, bgd_model, fgd_model, int(iterations), cv2.GC_INIT_WITH_MASK)
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
        if factor > 1:
            # Integer factor: INTER_AREA is the exact mean of each factor x factor block.
            fg = cv2.resize(fg, (window.shape[1], window.shape[0]), interpolation=cv2.INTER_AREA)
        fg = fg >= 0.5
    else:
        fg = ellipse.copy()

    fg &= win_frame.level(window.shape, scale=LIMIT_SCALE, margin=LIMIT_MARGIN_PX) <= 1.0
    fg &= np.outer(inside_r, inside_c)
    radius = min(3, int(math.floor(min(rec.long_px, rec.short_px) / 8.0)))
    if radius > 0 and fg.any():
        kernel = band_footprint(float(radius))
        fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    if fg.any():
        from scipy import ndimage

        fg = ndimage.binary_fill_holes(_keep_component(fg, win_frame.center))
    out = np.zeros(image.shape, dtype=bool)
    sub = (slice(max(r0, 0), min(r1, rows)), slice(max(c0, 0), min(c1, cols)))
    win_sub = (slice(sub[0].start - r0, sub[0].stop - r0), slice(sub[1].start - c0, sub[1].stop - c0))
    out[sub] = fg[win_sub]
    if not out.any():
        out[sub] = (ellipse & np.outer(inside_r, inside_c))[win_sub]
    if not out.any():
        r = min(max(int(round(cr)), 0), rows - 1)
        c = min(max(int(round(cc)), 0), cols - 1)
        out[r, c] = True
    return out
