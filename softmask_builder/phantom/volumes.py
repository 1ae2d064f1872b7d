"""3-D hybrid nodules with known 3-D truth: the hybrid phantom's real LIDC shapes rendered into a (Z, H, W)
CT crop, with each voxel's true partial-volume fraction and LIDC-style readers on every slice (issue 26).

API::

    bg = volume_background(seed, slice_thickness_mm=2.5, n_neighbors=12)   # a synthetic chest stack
    vol = render_volume(shape, bg, seed, placement="free")                  # -> HybridVolume
    vol.image_hu, vol.true_fraction, vol.reader_masks, vol.spacing_mm         # (Z, H, W), (R, Z, H, W), (z, row, col)
    vol.true_volume_mm3                                                       # sum of the truth x voxel volume
    masks = simulate_readers_volume(true_fraction, spacing_mm=0.7, rng=..., n_readers=4)
    n = neighbors_needed(shape, slice_thickness_mm=2.5)                      # slices each side a shape needs
    for vol in iter_hybrid_volumes(n, shapes=shapes, seed=0, slice_thicknesses_mm=(1.25, 2.5)): ...

Everything is the 2-D hybrid's (:mod:`softmask_builder.phantom.hybrid`), applied to every slice of a stack
rather than to a key slice only; nothing of its image model is re-implemented here:

* **Background** (a stack, not a 3-D re-render): :func:`softmask_builder.phantom.hybrid.synthetic_background`
  with ``n_neighbors`` slices each side of the key slice. Its slices are contiguous (spacing =
  thickness) cuts of one 3-D chest: the body, ribs and lungs are z-invariant, the vessel trees are 3-D tubes
  whose partial volume is taken over each slice's thickness, the parenchymal texture varies smoothly with z,
  the noise is drawn per slice (independent between contiguous thick slices, as in reconstructed CT).
* **Truth**: :func:`softmask_builder.phantom.hybrid.render_case` computes, for every slice of the stack, the
  shape's true fraction by :func:`softmask_builder.phantom.shapes.fraction_maps`: the occupancy averaged
  over the pixel (``supersample^2`` points) and over z with the slice sensitivity profile (SSP: box of the
  thickness convolved with a Gaussian of 0.2 x thickness, unit integral). Contiguous slices' SSPs sum to one,
  so ``sum(true_fraction) x voxel volume`` is the solid's volume. Slice ``k`` of a volume is exactly the
  2-D hybrid's ``true_fraction`` of the same shape, centre, rotation and ``z_offset_mm + (k - key) x
  thickness`` (tested).
* **Scanner** (3-D PSF = in-plane Gaussian x SSP along z): the in-plane Gaussian of the background's
  ``psf_sigma_mm`` (:data:`softmask_builder.phantom.hybrid.SYNTHETIC_PSF_SIGMA_PX`, 0.9-1.5 px), applied by
  ``render_case`` to the lesion on each slice; along z the image's response *is* the SSP, already inside the
  fraction (blurring again along z would count it twice). Noise: the background's
  (:data:`~softmask_builder.phantom.hybrid.SYNTHETIC_NOISE_HU` 20-35 HU, correlation
  :data:`~softmask_builder.phantom.hybrid.SYNTHETIC_NOISE_CORR_PX` 0.9-1.2 px). These ranges were calibrated
  against the real LIDC fixture slices by ``benchmarks/calibrate_real.py --hybrid`` (docs/ACCURACY.md,
  "Calibration against real data"); the lesion densities are :class:`~softmask_builder.phantom.hybrid.HybridParams`'.
* **Readers** (the prior a user has in 3-D, as LIDC's): :func:`simulate_readers_volume`, the 2-D hybrid's
  calibrated reader model (:data:`~softmask_builder.phantom.hybrid.READER_MODEL`) on every slice, with each
  reader's over/under-drawing ``b_i`` drawn **once per nodule** and kept on all its slices, and the wobble of
  the outline drawn anew per slice. Why this and not the LIDC readers' own contours: the shapes carry only
  the readers' 50 % consensus (as a signed distance), not the four outlines, and those outlines live on the
  source scan's grid, not on the rendered one (other spacing, thickness, rotation). Why not a per-reader
  threshold on the fraction: a threshold moves the outline by an amount that depends on the local blur and
  slope, while the model's ``b_i`` is a distance, the quantity calibrated against LIDC's pairwise Dice
  (docs/ACCURACY.md), and a reader in LIDC outlines each slice by hand, independently (hence the per-slice
  wobble) but with one habit (hence one ``b_i``).

A volume is a crop of the stack: the slices where the truth is > 0 plus ``margin_mm`` (at least 2 slices)
above and below, and the truth's in-plane box plus ``margin_mm`` and the PSF's radius; so its size follows
the nodule (it is not a fixed shard size). Deterministic for a seed; pure functions, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from softmask_builder.errors import InputError
from softmask_builder.phantom.cases import as_rng
from softmask_builder.phantom.hybrid import (PLACEMENTS, READER_MODEL, Background, HybridParams, choose_center,
                                             render_case, simulate_readers, synthetic_background)
from softmask_builder.phantom.shapes import LesionShape

__all__ = ["HybridVolume", "volume_background", "neighbors_needed", "render_volume", "simulate_readers_volume",
           "iter_hybrid_volumes", "MIN_MARGIN_SLICES"]

#: Slices of background a volume keeps at least above and below the truth (a 3x3x3 matting window
#: needs background on both sides of the nodule along z).
MIN_MARGIN_SLICES = 2


@dataclass(frozen=True, eq=False)
class HybridVolume:
    """One rendered 3-D nodule.

    image_hu : float32 (Z, H, W), integer-valued HU (the 2-D hybrid rounds each slice).
    true_fraction : float32 (Z, H, W) in [0, 1], each voxel's fraction of the solid (module doc).
    reader_masks : bool (R, Z, H, W), the simulated readers' outlines on every slice (a reader's slice
        is empty where the truth has no voxel >= 0.5, and may be empty on a tiny end section).
    spacing_mm : (z_mm, row_mm, col_mm); z_mm = the slice thickness (contiguous slices).
    key : the crop's slice whose centre lies ``z_offset_mm`` from the shape's centroid.
    center_rc_mm : (row, col) mm of the shape's centroid in the crop (pixel (r, c) centred at (r, c) x
        row/col spacing), so ``fraction_map(shape, center_rc_mm=..., z_mm=z_offset_mm + (k - key) x
        thickness, rotation_deg=...)`` gives slice ``k``'s truth on the crop's grid.
    crop_origin : (slice, row, col) of the crop's first voxel in the background stack.
    """

    image_hu: np.ndarray
    true_fraction: np.ndarray
    reader_masks: np.ndarray
    spacing_mm: tuple[float, float, float]
    shape_id: str
    lidc_patient_id: str
    texture_class: str
    placement: str
    background_id: str
    z_offset_mm: float
    rotation_deg: float
    psf_sigma_px: float
    noise_hu: float
    key: int
    crop_origin: tuple[int, int, int]
    center_rc_mm: tuple[float, float]
    diameter_mm: float

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    @property
    def true_volume_mm3(self) -> float:
        """``sum(true_fraction) x voxel volume`` (mm^3); the solid's volume up to the fraction's sampling
        (and the lung mask for ``pleura`` placements, where the wall takes the rest)."""
        return float(self.true_fraction.sum(dtype=np.float64)) * self.voxel_mm3


def volume_background(rng_or_seed, *, slice_thickness_mm: float, n_neighbors: int, spacing_mm: float | None = None,
                      shape: tuple[int, int] = (512, 512), background_id: str = "synthetic-volume") -> Background:
    """A synthetic chest stack of ``2 n_neighbors + 1`` contiguous slices:
    :func:`softmask_builder.phantom.hybrid.synthetic_background` with the thickness given (LIDC: 1.25-2.5 mm)
    and the pixel spacing drawn in [0.6, 0.8] mm when None; PSF and noise drawn in its calibrated ranges.

    Raises
    ------
    InputError
        ``slice_thickness_mm`` not > 0, ``n_neighbors`` < 1 (and the background's own checks).
    """
    t = float(slice_thickness_mm)
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"slice_thickness_mm must be > 0, got {slice_thickness_mm}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise InputError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}")
    return synthetic_background(rng_or_seed, shape=shape, spacing_mm=spacing_mm, slice_thickness_mm=t,
                                n_neighbors=int(n_neighbors), background_id=background_id)


def neighbors_needed(shape: LesionShape, *, slice_thickness_mm: float, margin_mm: float = 5.0) -> int:
    """Slices each side of the key slice that hold ``shape`` with any ``|z_offset_mm| <= thickness / 2``:
    its z extent, the SSP's reach (half the thickness plus its Gaussian's 3 sigma, 0.6 x thickness),
    ``margin_mm`` (at least :data:`MIN_MARGIN_SLICES` slices) and one slice to spare."""
    t = float(slice_thickness_mm)
    half = max(abs(shape.z_range_mm[0]), abs(shape.z_range_mm[1])) + 0.5 * t
    reach = half + 0.5 * t + 0.6 * t
    return int(math.ceil(reach / t)) + max(MIN_MARGIN_SLICES, int(math.ceil(margin_mm / t))) + 1


def simulate_readers_volume(true_fraction: np.ndarray, *, spacing_mm: float, rng, n_readers: int = 4,
                            bias_sd_mm: float | None = None, bias_rel: float | None = None,
                            wobble_mm: float | None = None, corr_mm: float | None = None) -> np.ndarray:
    """LIDC-style readers of a (Z, H, W) truth: each reader outlines every slice.

    Reader ``i`` draws ``b_i ~ N(0, bias_sd_mm + bias_rel * r)`` once (``r``: the equivalent radius, mm, of
    the largest section of ``true_fraction >= 0.5``), then on each slice the 2-D hybrid's outline
    :func:`softmask_builder.phantom.hybrid.simulate_readers` with that ``b_i`` and a fresh wobble field.
    Defaults: :data:`softmask_builder.phantom.hybrid.READER_MODEL`. Slices without a voxel of
    ``true_fraction >= 0.5`` are empty for every reader.

    Parameters
    ----------
    true_fraction : (Z, H, W) array in [0, 1]
    spacing_mm : the in-plane pixel spacing (mm, square pixels)
    rng : Generator, int or SeedSequence

    Returns
    -------
    numpy.ndarray
        bool (n_readers, Z, H, W).
    """
    f = np.asarray(true_fraction)
    if f.ndim != 3:
        raise InputError(f"true_fraction must be 3-D (slices, rows, cols), got shape {f.shape}")
    if isinstance(n_readers, bool) or not isinstance(n_readers, (int, np.integer)) or n_readers < 1:
        raise InputError(f"n_readers must be an integer >= 1, got {n_readers!r}")
    sp = float(spacing_mm)
    if not (math.isfinite(sp) and sp > 0):
        raise InputError(f"spacing_mm must be > 0, got {spacing_mm}")
    m = READER_MODEL
    b_sd = m["bias_sd_mm"] if bias_sd_mm is None else float(bias_sd_mm)
    b_rel = m["bias_rel"] if bias_rel is None else float(bias_rel)
    rng = as_rng(rng)
    truth = f >= 0.5
    out = np.zeros((n_readers,) + f.shape, dtype=bool)
    if not truth.any():
        return out
    r_eq = math.sqrt(float(truth.sum(axis=(1, 2)).max()) / math.pi) * sp
    bias = rng.normal(0.0, b_sd + b_rel * r_eq, size=n_readers)
    for z in range(f.shape[0]):
        if truth[z].any():
            out[:, z] = simulate_readers(f[z], spacing_mm=sp, rng=rng, n_readers=n_readers, bias_mm=bias,
                                         wobble_mm=wobble_mm, corr_mm=corr_mm)
    return out


def render_volume(shape: LesionShape, background: Background, rng_or_seed, *, placement: str = "free",
                  z_offset_mm: float | None = None, rotation_deg: float | None = None,
                  center_rc_mm: tuple[float, float] | None = None, params: HybridParams = HybridParams(),
                  margin_mm: float = 5.0) -> HybridVolume:
    """Render ``shape`` into every slice of ``background`` and crop the nodule's volume; deterministic for a seed.

    Parameters
    ----------
    shape : LesionShape (its texture class picks the density model, as in 2-D).
    background : Background, e.g. :func:`volume_background`, with enough slices
        (:func:`neighbors_needed`).
    rng_or_seed : Generator, int or SeedSequence.
    placement : one of :data:`softmask_builder.phantom.hybrid.PLACEMENTS` (chosen on the key slice, as in 2-D).
    z_offset_mm : the key slice's centre relative to the shape's centroid (mm); None: drawn uniformly in
        [-thickness/2, thickness/2), so the nodule's partial volume at its ends falls at any phase of the grid.
    rotation_deg : in-plane turn; None: drawn in [0, 360).
    center_rc_mm : (row, col) mm of the shape's centroid in the background's slices; None: chosen for the
        placement by the 2-D hybrid's rule on the key slice (``hybrid.choose_center``: free = away from
        vessels, pleura = crossing the lung wall, vessel = touching a vessel).
    params : HybridParams (``n_readers`` readers are simulated).
    margin_mm : background kept around the truth (mm; along z at least :data:`MIN_MARGIN_SLICES` slices).

    Returns
    -------
    HybridVolume

    Raises
    ------
    InputError
        The 2-D hybrid's (no room for the placement, the key slice shows < 3 pixels of f >= 0.5), or the
        background has too few slices for the shape and margin (the message names the shape).
    """
    rng = as_rng(rng_or_seed)
    if not (math.isfinite(float(margin_mm)) and margin_mm >= 0):
        raise InputError(f"margin_mm must be >= 0, got {margin_mm}")
    bg = background
    t, sp = float(bg.slice_thickness_mm), float(bg.spacing_mm)
    if placement not in PLACEMENTS:
        raise InputError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    z0 = float(rng.uniform(-0.5, 0.5)) * t if z_offset_mm is None else float(z_offset_mm)
    rot = float(rng.uniform(0.0, 360.0)) if rotation_deg is None else float(rotation_deg)
    # The centre is chosen here (by the 2-D rule) rather than inside render_case, so the volume can
    # say where it is.
    center = (choose_center(rng, bg, shape, placement) if center_rc_mm is None
              else (float(center_rc_mm[0]), float(center_rc_mm[1])))
    case = render_case(shape, bg, rng, placement=placement, z_offset_mm=z0, rotation_deg=rot,
                       center_rc_mm=center, params=params)
    S, rows, cols = bg.slices_hu.shape
    image = np.empty((S, rows, cols), np.float32)
    frac = np.empty((S, rows, cols), np.float32)
    image[bg.key], frac[bg.key] = case.image_hu, case.true_fraction
    for j, off in enumerate(case.neighbor_offsets):
        image[bg.key + off], frac[bg.key + off] = case.neighbor_hu[j], case.neighbor_fraction[j]
    nz_margin = max(MIN_MARGIN_SLICES, int(math.ceil(float(margin_mm) / t)))
    zs = np.flatnonzero(frac.any(axis=(1, 2)))
    k0, k1 = int(zs[0]) - nz_margin, int(zs[-1]) + nz_margin + 1
    if k0 < 0 or k1 > S:
        raise InputError(f"shape {shape.shape_id}: the background's {S} slices of {t:g} mm do not hold the nodule "
                         f"and {nz_margin} margin slices each side (make it with n_neighbors >= "
                         f"{neighbors_needed(shape, slice_thickness_mm=t, margin_mm=margin_mm)})")
    rr, cc = np.nonzero(frac.any(axis=0))
    pad = int(math.ceil(float(margin_mm) / sp)) + int(math.ceil(4.0 * case.psf_sigma_px)) + 1
    r0, r1 = max(int(rr.min()) - pad, 0), min(int(rr.max()) + pad + 1, rows)
    c0, c1 = max(int(cc.min()) - pad, 0), min(int(cc.max()) + pad + 1, cols)
    truth = np.ascontiguousarray(frac[k0:k1, r0:r1, c0:c1])
    readers = simulate_readers_volume(truth, spacing_mm=sp, rng=rng, n_readers=params.n_readers)
    return HybridVolume(
        image_hu=np.ascontiguousarray(image[k0:k1, r0:r1, c0:c1]), true_fraction=truth, reader_masks=readers,
        spacing_mm=(t, sp, sp), shape_id=shape.shape_id, lidc_patient_id=shape.patient_id,
        texture_class=shape.texture_class, placement=placement, background_id=bg.background_id,
        z_offset_mm=z0, rotation_deg=rot, psf_sigma_px=float(case.psf_sigma_px),
        noise_hu=float(bg.noise_hu), key=bg.key - k0, crop_origin=(k0, r0, c0),
        center_rc_mm=(center[0] - r0 * sp, center[1] - c0 * sp),
        diameter_mm=float(shape.max_axial_diameter_mm))


def iter_hybrid_volumes(n: int, *, shapes: Sequence[LesionShape], seed: int = 0,
                        slice_thicknesses_mm: Sequence[float] = (1.25, 2.5), placements: Sequence[str] = PLACEMENTS,
                        cases_per_background: int = 10, params: HybridParams = HybridParams(),
                        margin_mm: float = 5.0, background_shape: tuple[int, int] = (512, 512),
                        rejects: list | None = None) -> Iterator[HybridVolume]:
    """Yield up to ``n`` volumes, deterministic for ``seed`` (sequential; one background per
    ``cases_per_background`` volumes).

    Plan: the shapes in a seeded random order (each used once before any repeats); backgrounds take
    the thicknesses of ``slice_thicknesses_mm`` in turn (so the volumes split about evenly between them),
    pixel spacing drawn in [0.6, 0.8] mm, and as many slices as their largest shape needs
    (:func:`neighbors_needed`); placements round robin. A shape that cannot be placed
    (:class:`InputError`) is appended to ``rejects`` as ``{"shape_id", "background_id", "reason"}``
    and the next shape of the order takes its place; at most ``2 n`` shapes are tried.
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if not shapes:
        raise InputError("no shape to render")
    bad = [p for p in placements if p not in PLACEMENTS]
    if bad or not placements:
        raise InputError(f"placements must be a non-empty subset of {PLACEMENTS}, got {list(placements)}")
    if not slice_thicknesses_mm or any(not float(t) > 0 for t in slice_thicknesses_mm):
        raise InputError(f"slice_thicknesses_mm must be numbers > 0, got {list(slice_thicknesses_mm)}")
    if cases_per_background < 1:
        raise InputError(f"cases_per_background must be >= 1, got {cases_per_background}")
    # three independent streams of one seed: the shape order (0), backgrounds (1, b), cases (2, i)
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(len(shapes))
    made, tried, b = 0, 0, 0
    while made < n and tried < 2 * n:
        t = float(slice_thicknesses_mm[b % len(slice_thicknesses_mm)])
        group = [shapes[int(order[(tried + j) % len(shapes)])] for j in range(min(cases_per_background, n - made))]
        n_nb = max(neighbors_needed(s, slice_thickness_mm=t, margin_mm=margin_mm) for s in group)
        bg = volume_background(np.random.SeedSequence(seed, spawn_key=(1, b)), slice_thickness_mm=t,
                               n_neighbors=n_nb, shape=background_shape, background_id=f"synthetic-volume-{b:04d}")
        for j, s in enumerate(group):
            case_seed = np.random.SeedSequence(seed, spawn_key=(2, tried))
            tried += 1
            try:
                vol = render_volume(s, bg, case_seed, placement=placements[made % len(placements)],
                                    params=params, margin_mm=margin_mm)
            except InputError as exc:
                if rejects is not None:
                    rejects.append({"shape_id": s.shape_id, "background_id": bg.background_id, "reason": exc.reason})
                continue
            made += 1
            yield vol
        b += 1
