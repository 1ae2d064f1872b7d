"""Synthetic chest-CT cases with known truth: the analytic phantom's case generation.

Each case is a short stack of axial slices (the key slice and ``n_neighbors`` slices on each side)
of a chest with one lung nodule whose true partial-volume fraction is known. It serves two
purposes: the bundled sample dataset that ``make lnsm`` builds on a fresh machine (no real data
needed), and the accuracy benchmark (``benchmarks/bench_accuracy.py``), which compares Soft Masks
with the true fraction. :func:`generate_case` renders one case, :func:`iter_cases` /
:func:`generate_cases` a planned set; :mod:`.deeplesion_writer` writes them in the DeepLesion layout.

Image model (all geometry in mm; ``x`` = column direction, ``y`` = row direction, ``z`` = along
the table, 0 at the key slice; pixel ``(r, c)`` has its centre at ``(y, x) = (r, c) * spacing``)::

    image = blur_psf(background * (1 - f) + nodule_hu * f) + noise,   rounded to integer HU

* background (:mod:`.anatomy`): air (-1000 HU) outside the body, subcutaneous fat (~-100), soft
  tissue (~40), ribs and a vertebra (bone ~+700 cortex), trachea (air), two lungs (~-850 HU) with a
  low-frequency parenchymal texture that varies smoothly with z, and 3-D vessel trees (tubes of
  ~40 HU, partial-volume rendered over the slice thickness); the lung wall (pleura) is the
  partial-volume edge between lung and chest wall. Pixels outside the scanner's circular field
  of view are -1024 HU, as in real scans.
* ``f`` (the truth, :attr:`PhantomCase.true_fraction`; :mod:`.analytic_shapes`): the fraction of
  each pixel's voxel (the pixel footprint times the slice thickness, a box slice profile) inside
  the nodule's 3-D shape, by supersampling ``supersample**3`` points per boundary voxel; voxels
  whose bounding box lies wholly inside/outside the shape's radial bounds are exactly 1/0. The
  true mask is ``f >= 0.5``.
* nodule kinds (:data:`KINDS`): ``solid`` (~+30 HU, near-ellipsoidal), ``lobulated``,
  ``spiculated`` (thin radial spikes), ``ground_glass`` (~-550 HU), ``juxta_pleural`` (the shape
  is cut by the lung wall, so part of its edge is the invisible nodule/chest-wall interface) and
  ``vessel_attached`` (a vessel tube touches it). The nominal diameter ``diameter_mm`` is that of
  the sphere the shape is built on (before ellipsoidal stretch, lobes and spikes).
* scanner: Gaussian PSF (sigma 0.5-1 px), then mildly correlated Gaussian noise (10-25 HU),
  clip to [-1024, 3071] HU. The PSF makes the image softer than ``f``; the PSF applied to ``f``
  is kept as :attr:`PhantomCase.apparent_fraction` (the fraction as the image shows it).

RECIST marks are measured on the true mask as a radiologist would
(:func:`softmask_builder.phantom.recist_marks.recist_from_mask`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from softmask_builder.errors import InputError
from softmask_builder.labelling.recist import Recist
from softmask_builder.phantom.analytic_shapes import nodule_fraction, nodule_shape
from softmask_builder.phantom.anatomy import (HU_LUNG, HU_MAX, HU_MIN, HU_OUTSIDE_FOV, HU_VESSEL, blur, draw_anatomy,
                                              lung_depth, segment_distance, smooth_field, static_background, unit,
                                              vessel_fraction)
from softmask_builder.phantom.recist_marks import recist_from_mask
from softmask_builder.sources.deeplesion import SPLIT_CODES as _DL_SPLIT_NAMES

__all__ = ["PHANTOM_VERSION", "KINDS", "SPLIT_CODES", "PhantomCase", "as_rng", "generate_case", "iter_cases",
           "generate_cases"]

#: Bumped whenever the same seed would render different images or truth (cache keys may use it).
PHANTOM_VERSION = 5

KINDS: tuple[str, ...] = ("solid", "lobulated", "spiculated", "ground_glass", "juxta_pleural", "vessel_attached")

# The DeepLesion format's facts (the official 18-column header, split codes, PNG offset) live with its reader (sources/deeplesion.py); the phantom writes them.
#: split name -> DL_info ``Train_Val_Test`` code.
SPLIT_CODES = {name: code for code, name in _DL_SPLIT_NAMES.items()}


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


def as_rng(rng_or_seed) -> np.random.Generator:
    """``rng_or_seed`` itself when it is a ``numpy.random.Generator``, else a new one seeded by it
    (an int or a ``SeedSequence``)."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


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
    rng = as_rng(rng_or_seed)
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
    anat = draw_anatomy(rng, rows, cols, px, z_span_mm=max(20.0, 4 * R))
    x = (np.arange(cols) * px)[None, :]
    y = (np.arange(rows) * px)[:, None]
    static, lung_cov = static_background(anat, rows, cols, px, x, y)
    vessels = vessel_fraction(anat.segments, rows, cols, px, z_centres, t)

    # --- nodule placement --------------------------------------------------------------------
    side = int(rng.integers(0, 2))
    lung = anat.lungs[side]
    lcx, lcy, la, lb, lth = lung
    cz = float(rng.uniform(-0.3, 0.3) * t)
    shape3d = nodule_shape(rng, kind, (0.0, 0.0, cz), R)
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
            if lung_depth(cxy, lung) < rmax + 3.0:
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
                if sg[2] >= 1.5 or segment_distance(centre3, sg[0], sg[1]) > rmax + sg[2] + 1.0]
        if len(kept) != len(anat.segments):
            anat.segments = kept
            vessels = vessel_fraction(kept, rows, cols, px, z_centres, t)
    if kind == "vessel_attached":
        # a tube grazing the nodule (touching it in the key slice), mostly in-plane
        ang = rng.uniform(0, math.pi)
        d = unit(np.array([math.cos(ang), math.sin(ang), rng.uniform(-0.3, 0.3)]))
        perp = unit(np.array([-d[1], d[0], 0.0]))
        rv = float(np.clip(0.25 * R, 0.8, 2.5))
        centre_line = np.array([cxy[0], cxy[1], cz]) + perp * (R * rng.uniform(0.85, 1.0) + 0.3 * rv)
        half = R + 20.0
        extra = [(centre_line - d * half, centre_line + d * half, rv)]
        vessels = np.maximum(vessels, vessel_fraction(extra, rows, cols, px, z_centres, t))
    clip = lung if kind == "juxta_pleural" else None
    hu = float(rng.uniform(-650.0, -450.0)) if kind == "ground_glass" else float(
        rng.uniform(0.0, 40.0) if kind == "spiculated" else rng.uniform(10.0, 50.0))
    fractions = np.stack([nodule_fraction(shape3d, rows=rows, cols=cols, spacing_mm=px, z_mm=z, slice_thickness_mm=t,
                                          supersample=supersample, clip_ellipse=clip) for z in z_centres])

    # --- compose, blur, noise --------------------------------------------------------------
    tex_a, tex_b = smooth_field(rng, rows, cols, 16), smooth_field(rng, rows, cols, 16)
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
    noise_gain = float(np.sqrt((blur(impulse, 0.6) ** 2).sum()))
    fov = (x - cols * px / 2 + px / 2) ** 2 + (y - rows * px / 2 + px / 2) ** 2 > (min(rows, cols) * px / 2) ** 2
    slices = []
    for k, z in enumerate(z_centres):
        tex = tex_amp * (math.cos(omega * z) * tex_a + math.sin(omega * z) * tex_b)
        img = static * (1 - lung_cov) + (HU_LUNG + tex) * lung_cov
        fv = vessels[k] * lung_cov
        img = img * (1 - fv) + HU_VESSEL * fv
        f = fractions[k]
        img = img * (1 - f) + hu * f
        img = blur(img, psf)
        img += blur(rng.standard_normal((rows, cols), dtype=np.float32), 0.6) * np.float32(noise / noise_gain)
        img = np.clip(img, HU_MIN, HU_MAX)
        img[fov] = HU_OUTSIDE_FOV
        slices.append(np.round(img).astype(np.int16))

    true_fraction = fractions[key]
    true_mask = true_fraction >= 0.5
    apparent = np.clip(blur(true_fraction, psf), 0.0, 1.0).astype(np.float32)
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
