"""The 3-D labelling stage: (Z, H, W) CT crop + mask or readers' volumes -> 3-D trimap -> 3-D Soft Mask.

What a 3-D build calls per nodule (issue 26). It composes the stages like
:mod:`softmask_builder.labelling.pipeline` does in 2-D, with the same :class:`LabelParams` (so the
label_params hash a build records already covers every tunable used here) and the same
:class:`Labels` result, whose arrays are (Z, H, W) here:

1. window the HU (``params.window_level_hu`` / ``window_width_hu``), as in 2-D;
2. 3-D trimap: strategy 1 erodes / dilates the mask by a ball of :func:`band_mm_from_params` mm
   (``band_px`` times the finer in-plane spacing); strategy 2 takes the readers' intersection /
   union / disagreement voxel by voxel;
3. optionally (``isotropic``) resample along z to near-isotropic voxels
   (:mod:`softmask_builder.labelling.resample`), matte there, and average each voxel's sub-slices
   back;
4. closed-form matting in 3-D with ``params.eps`` / ``params.radius`` (a single slice, Z = 1, is
   matted in 2-D: no 3-D window fits it);
5. the scanner blur taken out in-plane, slice by slice (``params.deblur_iterations``, see
   :func:`deblur_soft_mask_volume`), clipped to [0, 1].

A separate module rather than more of ``pipeline.py``: the 2-D paths stay as they are, byte for
byte, and the 3-D one adds resampling and volume checks the 2-D one has no use for (as
``matting3d`` beside ``matting``).

``binary_mask`` follows the 2-D rule of each prior (the dataset's binary ground truth): the given
mask (strategy 1), the readers' consensus at ``params.consensus`` (strategy 2). It is not the
binarized Soft Mask: that is the RECIST rule, and RECIST stays 2-D.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from softmask_builder.core.validate import as_mask3d
from softmask_builder.errors import InputError
from softmask_builder.labelling.pipeline import LabelParams, Labels
from softmask_builder.labelling.resample import (check_spacing_mm, downsample_fraction_z, downsample_trimap_z,
                                                 fine_spacing_mm, upsample_image_z, upsample_mask_z,
                                                 z_upsampling_factor)

__all__ = ["ISOTROPIC_DEFAULT", "band_mm_from_params", "label_volume_from_mask", "label_volume_from_readers",
           "deblur_soft_mask_volume"]

#: What ``isotropic=None`` means, set by the written rule of issue 26's 3-D truth table (docs/RESULTS.md,
#: "3-D Soft Masks against the phantom's 3-D truth"; record docs/results/truth3d, 240 phantom nodules):
#: off. Near-isotropic matting raised the mean SAD slightly (+0.3 points, 95 % interval [0.0, 0.6]) and
#: lowered Dice (-0.005 [-0.008, -0.002]) against the original grid; the rule asks for a 5 % gain.
#: tests/benchmarks/test_bench_truth3d.py checks that this value is the rule's decision on the record.
ISOTROPIC_DEFAULT = False


def band_mm_from_params(params: LabelParams, spacing_mm, *, sample_id: str | None = None) -> float:
    """Radius (mm) of the 3-D trimap's ball: ``params.band_px * min(row_mm, col_mm)``.

    Derived from the 2-D ``band_px`` rather than a new field, so existing recipes and the
    label_params hash of 2-D builds do not change, and so that with square pixels the ball's
    in-plane section is the 2-D disk of ``band_px`` pixels (the Z = 1 equivalence). The slice
    spacing does not enter: with slices thicker than the band the ball has no z extent and the
    trimap is the 2-D band slice by slice (unless ``isotropic``, where the fine slices are about a
    pixel thick).
    """
    _, row_mm, col_mm = check_spacing_mm(spacing_mm, sample_id=sample_id)
    return float(params.band_px) * min(row_mm, col_mm)


def _check_inputs(image_hu, spacing_mm, params, isotropic, sample_id):
    from softmask_builder.labelling.window import window_hu

    if not isinstance(params, LabelParams):
        raise InputError(f"params must be a LabelParams, got {type(params).__name__}", sample_id=sample_id)
    if isotropic is None:
        isotropic = ISOTROPIC_DEFAULT
    if not isinstance(isotropic, (bool, np.bool_)):
        raise InputError(f"isotropic must be True, False or None, got {isotropic!r}", sample_id=sample_id)
    spacing = check_spacing_mm(spacing_mm, sample_id=sample_id)
    arr = np.asarray(image_hu)
    if arr.ndim != 3:
        raise InputError(f"image_hu must be 3-D (slices, rows, cols), got shape {arr.shape}", sample_id=sample_id)
    try:
        image01 = window_hu(arr, level_hu=params.window_level_hu, width_hu=params.window_width_hu)
    except InputError as exc:
        raise InputError(exc.reason, sample_id=sample_id) from None
    # Z = 1: no z resampling (it would only copy the slice) and 2-D matting.
    k = z_upsampling_factor(spacing, sample_id=sample_id) if isotropic and arr.shape[0] > 1 else 1
    return np.asarray(arr, dtype=np.float64), image01, spacing, k


def _soft_mask(image_hu, image01, trimap_fine, k, params, sample_id) -> np.ndarray:
    """Matting on the (fine) grid, back to the original grid, deblurred, clipped."""
    from softmask_builder.labelling.matting import closed_form_alpha

    fine01 = _window_fine(image_hu, k, params, sample_id) if k > 1 else image01
    try:
        if image01.shape[0] == 1:
            alpha_fine = closed_form_alpha(fine01[0], trimap_fine[0], eps=params.eps, radius=params.radius)[None]
        else:
            alpha_fine = closed_form_alpha(fine01, trimap_fine, eps=params.eps, radius=params.radius)
    except InputError as exc:  # the matting's messages name image / trimap but carry no sample id
        raise InputError(exc.reason, sample_id=sample_id) from None
    alpha = downsample_fraction_z(alpha_fine, factor=k, sample_id=sample_id)
    soft = deblur_soft_mask_volume(image_hu, alpha, params, sample_id=sample_id)
    return np.clip(soft, 0.0, 1.0).astype(np.float32, copy=False)


def _window_fine(image_hu, k, params, sample_id):
    from softmask_builder.labelling.window import window_hu

    # HU interpolated, then windowed: partial volume is linear in HU, and the window's clip then
    # acts on the fine image as it does on the coarse one.
    return window_hu(upsample_image_z(image_hu, factor=k, sample_id=sample_id),
                     level_hu=params.window_level_hu, width_hu=params.window_width_hu)


def deblur_soft_mask_volume(image_hu, alpha, params: LabelParams, *, sample_id: str | None = None) -> np.ndarray:
    """The 3-D analogue of :func:`softmask_builder.labelling.pipeline.deblur_soft_mask`: in-plane only.

    One sigma for the whole crop (the scanner's in-plane PSF does not change from slice to slice):
    ``params.psf_sigma_px`` if > 0, else measured as in 2-D on the slice with the most voxels of
    ``alpha >= 0.5`` (the lowest such slice on ties; ``params.psf_sigma_fallback_px`` when nothing
    can be measured). Then the 2-D projected Van Cittert steps on each slice with that sigma. Not
    along z: a thick slice's z "blur" is its slice profile, about a box over the slice, and the
    mean over that box is the voxel's partial-volume fraction, which is what the 3-D Soft Mask is
    meant to hold. With Z = 1 this is exactly the 2-D step.

    Parameters
    ----------
    image_hu : (Z, H, W) float array in HU (the crop the sigma is measured on)
    alpha : (Z, H, W) float array in [0, 1]

    Returns
    -------
    numpy.ndarray
        float32 (Z, H, W) in [0, 1]; ``alpha`` itself (as float32) when ``params.deblur_iterations`` is 0.
    """
    from softmask_builder.labelling.blur import deblur_alpha, psf_sigma_for_deblur

    a = np.asarray(alpha)
    if params.deblur_iterations == 0:
        return a.astype(np.float32)
    image_hu = np.asarray(image_hu, dtype=np.float64)
    centre = int(np.argmax(np.count_nonzero(a >= 0.5, axis=(1, 2))))
    # The 2-D rule (pipeline.deblur_soft_mask): psf_sigma_px if > 0, else measured, else the fallback.
    sigma = psf_sigma_for_deblur(image_hu[centre], a[centre], psf_sigma_px=params.psf_sigma_px,
                                 fallback_sigma_px=params.psf_sigma_fallback_px, sample_id=sample_id)
    out = np.empty(a.shape, np.float32)
    for z in range(a.shape[0]):
        out[z] = deblur_alpha(a[z], psf_sigma_px=sigma, iterations=params.deblur_iterations, sample_id=sample_id)
    return out


def label_volume_from_mask(image_hu, mask, spacing_mm, params: LabelParams = LabelParams(), *,
                           isotropic: bool | None = None, sample_id: str | None = None) -> Labels:
    """Strategy 1 in 3-D: trimap by a ball of :func:`band_mm_from_params` mm around ``mask``, then 3-D matting.

    Parameters
    ----------
    image_hu : (Z, H, W) real array in HU, finite
    mask : (Z, H, W) binary array (bool, {0, 1} or {0, 255}), not empty
    spacing_mm : (z_mm, row_mm, col_mm), each finite and > 0
    params : LabelParams
        ``band_px`` (through :func:`band_mm_from_params`), ``eps``, ``radius``, the window and the
        deblur fields are used; the RECIST and reader fields are not.
    isotropic : bool or None, keyword-only
        True: split each voxel into ``k`` = :func:`~softmask_builder.labelling.resample.z_upsampling_factor`
        sub-slices (image linearly interpolated, mask repeated), make the trimap with the ball on that
        fine grid, matte there, average each voxel's sub-slices back. False: everything on the
        original grid. None: :data:`ISOTROPIC_DEFAULT` (off, by issue 26's truth table). Ignored for
        Z = 1.

    Returns
    -------
    Labels
        ``trimap`` uint8 (Z, H, W) in {0, 128, 255} on the original grid (with ``isotropic``: a voxel
        is known when all its sub-slices are, :func:`~softmask_builder.labelling.resample.downsample_trimap_z`);
        ``soft_mask`` float32 (Z, H, W) in [0, 1]; ``binary_mask`` = ``mask`` as bool.

    Raises
    ------
    InputError (with ``sample_id``)
        ``image_hu`` not 3-D / not finite; ``mask`` not 3-D, not binary, empty or of another shape;
        bad ``spacing_mm`` or ``isotropic``; the dilated mask fills the crop (no background); a
        crop with unknown voxels and fewer slices than one matting window (2r+1) on the grid
        being matted (use ``isotropic`` or a taller crop).

    Notes
    -----
    Edge cases: ``band_px = 0`` gives no unknown voxel and ``soft_mask`` = ``mask`` before
    deblurring; a nodule touching the crop's faces stays lesion up to the face (the faces are not
    an edge, as in 2-D); Z = 1 gives, for square pixels, exactly :func:`label_from_mask` on that
    slice (same trimap, 2-D matting, same deblur).
    """
    from softmask_builder.labelling.trimap import trimap_from_mask_volume

    image_hu, image01, spacing, k = _check_inputs(image_hu, spacing_mm, params, isotropic, sample_id)
    m = as_mask3d(mask, "mask", sample_id=sample_id)
    if m.shape != image01.shape:
        raise InputError(f"mask shape {m.shape} does not match image_hu shape {image01.shape}", sample_id=sample_id)
    band_mm = band_mm_from_params(params, spacing, sample_id=sample_id)
    trimap_fine = trimap_from_mask_volume(upsample_mask_z(m, factor=k, sample_id=sample_id), band_mm=band_mm,
                                          spacing_mm=fine_spacing_mm(spacing, factor=k), sample_id=sample_id)
    soft = _soft_mask(image_hu, image01, trimap_fine, k, params, sample_id)
    return Labels(downsample_trimap_z(trimap_fine, factor=k, sample_id=sample_id), soft, m)


def label_volume_from_readers(image_hu, reader_masks: Sequence[np.ndarray] | np.ndarray, spacing_mm,
                              params: LabelParams = LabelParams(), *, isotropic: bool | None = None,
                              sample_id: str | None = None) -> Labels:
    """Strategy 2 in 3-D (Eqs. 2-4 on voxels): lesion = readers' intersection, background = outside their
    union, then 3-D matting; binary mask = their consensus at ``params.consensus``.

    Parameters
    ----------
    image_hu : (Z, H, W) real array in HU, finite
    reader_masks : list of (Z, H, W) binary masks, or (R, Z, H, W) array
        Empty volumes are readers who did not mark the nodule: left out of the trimap, counted as
        "no" votes in the consensus (the 2-D rules, :func:`~softmask_builder.labelling.trimap.trimap_from_readers`).
    spacing_mm, params, isotropic, sample_id
        As in :func:`label_volume_from_mask` (``params.band_px`` is not used).

    Returns
    -------
    Labels
        ``trimap`` uint8 (Z, H, W) on the original grid (the readers' rules are voxel by voxel, so
        with ``isotropic`` the fine trimap is this one with each slice repeated); ``soft_mask`` float32
        (Z, H, W) in [0, 1]; ``binary_mask`` bool, the consensus on the original grid.

    Raises
    ------
    InputError (with ``sample_id``)
        As :func:`label_volume_from_mask`, and the readers' errors (fewer than 2 marking readers,
        no two overlapping, no background voxel, shapes that differ, naming ``reader_masks[i]``).
    """
    from softmask_builder.labelling.trimap import consensus_mask_volume, trimap_from_readers_volume

    image_hu, image01, _, k = _check_inputs(image_hu, spacing_mm, params, isotropic, sample_id)
    trimap = trimap_from_readers_volume(reader_masks, sample_id=sample_id)
    if trimap.shape != image01.shape:
        raise InputError(f"reader masks shape {trimap.shape} does not match image_hu shape {image01.shape}",
                         sample_id=sample_id)
    binary = consensus_mask_volume(reader_masks, level=params.consensus, sample_id=sample_id)
    soft = _soft_mask(image_hu, image01, np.repeat(trimap, k, axis=0), k, params, sample_id)
    return Labels(trimap, soft, binary)
