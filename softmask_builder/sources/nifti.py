"""NIfTI image / mask volume adapter: a folder of CT volumes with binary lesion masks -> 3-D samples.

Pairing rule (as :mod:`softmask_builder.sources.masks`, with NIfTI files):

1. **Two folders** -- when ``<folder>/images/`` and ``<folder>/masks/`` both exist:
   ``images/<name>.nii.gz`` pairs with ``masks/<name>.nii.gz``;
2. **Side by side** -- otherwise, in ``<folder>`` itself: ``<name>.nii.gz`` pairs with
   ``<name>_mask.nii.gz``.

**Truth (optional)**: ``truth/<name>.nii.gz`` (two folders) or ``<name>_truth.nii.gz`` (side by
side) holds a phantom's true partial-volume fraction (float in [0, 1], on the image's grid, e.g. the
bundled 3-D sample of ``make lnsm3d``); it is read only when present, cropped like the image
(0 beyond the volume) and stored in the shards as ``true_fraction``. When a folder has truth files,
a pair without one is a plan-stage reject (a build carries the truth for every sample or none); a
truth outside [0, 1] or on another grid is a reject of its sample.

``.nii`` and ``.nii.gz`` are both read (case-insensitive; the two members of a pair may differ).
Only the top level is listed; hidden files and other extensions are ignored. An image without a
mask, a mask without an image, or a name with two files (``a.nii`` and ``a.nii.gz``) is a
plan-stage :class:`~softmask_builder.sources.base.Reject`.

Axes (the data contract). NIfTI stores voxels on axes (i, j, k) with an affine to RAS+ world
millimetres (nibabel picks the sform, else the qform). Both volumes are reoriented -- by axis
permutation and flips only, never by interpolation -- so that the arrays are **(z, row, col)**
as the LIDC adapter produces them from axial DICOM (ImageOrientationPatient [1, 0, 0, 0, 1, 0],
slices sorted by increasing ImagePositionPatient z):

* z (slice) increases towards the patient's head (Superior),
* row increases towards the patient's back (Posterior; row 0 is anterior),
* col increases towards the patient's left (Left; col 0 is the patient's right, the radiological
  display convention),

i.e. nibabel axis codes ``("S", "P", "L")`` (:data:`ZRC_AXCODES`): ``out[z, r, c] ==
ras[n_i - 1 - c, n_j - 1 - r, z]`` for a volume stored in RAS+ order. ``spacing_mm`` (z, row,
col) is the norm of the affine's matching columns. A volume stored sagittally or coronally is
therefore restacked axially (exact: no resampling).

Rules, each failure a rejects row naming the file and the reason:

* both files must be readable NIfTI (nibabel) with 3 spatial axes (trailing axes of size 1, e.g.
  ``(X, Y, Z, 1)``, are dropped; a 4-D series is rejected);
* the orientation must be stated: a file whose ``sform_code`` and ``qform_code`` are both 0 is
  rejected (nibabel would guess one);
* **oblique** affines are rejected, not resampled: every voxel axis must lie within
  arccos(:data:`~softmask_builder.sources.plausibility.AXIAL_MIN_COSINE`) (about 8 degrees) of a
  world axis -- the tolerance the DICOM adapters give ImageOrientationPatient, so a gantry tilt
  passes; a singular or non-finite affine is rejected too;
* image and mask must have the same shape and the same grid: the two affines may place each
  corner voxel of the volume at most :data:`GRID_TOL_VOXELS` (1 %) of the smallest voxel size
  apart (float32 headers written by different tools agree far better than that);
* spacing: in-plane (row, col) within the plausibility range (0.2 to 5 mm), z within
  :data:`Z_SPACING_RANGE_MM` (0.2 to 10 mm);
* the mask must be binary, {0, 1} or {0, 255} (:func:`softmask_builder.core.validate.as_mask3d`):
  a non-binary mask (a label map, a resampled float mask) is **rejected, not thresholded**: which
  labels mean "lesion" is the user's decision, and a silent threshold would hide a resampled
  mask's shifted edge; an empty mask is rejected;
* the image is read in HU as stored: nibabel applies ``scl_slope`` / ``scl_inter``; the crop's
  slices must be finite and the full axial slice through each component's centre must pass the CT
  slice rules of :func:`softmask_builder.sources.plausibility.check_image_hu` (load stage).

Samples: **one per connected 3-D component of the mask** ("one sample per nodule"), 26-connected
(voxels touching by a face, an edge or a corner belong to one lesion: a nodule outlined on thick
slices often touches its next slice only diagonally). Components are numbered 1, 2, ... in the
order of their first voxel in (z, row, col) raster order (:func:`scipy.ndimage.label`), giving
sample ids ``<name>_nKK``. A component of fewer than ``min_voxels`` voxels is not a sample: it is
an ``unselected`` row (filter ``min_voxels``) when the caller passes an ``unselected`` list. Each
sample is a fixed ``crop_zrc`` window at native spacing centred on its component's bounding box
(:func:`softmask_builder.labelling.crop.volume_crop_plan`); a component that does not fit is a
plan-stage reject (volume crops are never rescaled). The crop's prior is the **whole mask** inside
the window (every component, not only the centred one): a second lesion that enters the crop stays
a lesion in the labels rather than being taught as background.

Planning reads the headers of both files and the mask's voxels (to find the components, inside the
mask's bounding box), not the image's voxels; loading reads only the crop's slices of both files
(a file changed since the plan is a load-stage reject). On a 512 x 512 x 300 int16 ``.nii.gz``
(``benchmarks/bench_nifti_source.py``, one shared core): plan 0.6-0.9 s and 157 MiB, load 0.9-1.5 s
and 72 MiB per nodule (a whole-volume read took 12.6 s and 18 s).

Patient: the whole ``<name>`` by default (``patient_sep=None``): one NIfTI volume is usually one
scan of one patient (``lung_001``, ``LIDC-IDRI-0001``); with ``patient_sep`` the part of the name
before the first separator (several scans of one patient: ``p07_baseline``, ``p07_followup``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from softmask_builder.core.validate import as_mask3d
from softmask_builder.errors import InputError, SoftMaskError, SourceError
from softmask_builder.labelling.crop import VOLUME_CROP_ZRC, VolumeFitError, crop_volume, volume_crop_plan
from softmask_builder.sources.base import Reject, SampleRef, VolumeRecord, unselected_row
from softmask_builder.sources.masks import pair_listing
from softmask_builder.sources.plausibility import AXIAL_MIN_COSINE, check_image_hu, check_spacing_mm

__all__ = ["NIFTI_EXTS", "MASK_SUFFIX", "TRUTH_SUFFIX", "truth_files", "ZRC_AXCODES", "DEFAULT_MIN_VOXELS", "GRID_TOL_VOXELS",
           "Z_SPACING_RANGE_MM", "pair_nifti_files", "reorient_zrc", "read_nifti_zrc", "zrc_to_nifti", "zrc_affine",
           "plan_nifti_volumes", "load_nifti_volume"]

NIFTI_EXTS = (".nii.gz", ".nii")
MASK_SUFFIX = "_mask"
#: ``<name>_truth.nii.gz`` (or ``truth/<name>.nii.gz``): a phantom's true fraction (optional).
TRUTH_SUFFIX = "_truth"
#: nibabel axis codes of the arrays this adapter returns: (z, row, col) = towards Superior,
#: Posterior, Left (axial DICOM / LIDC order).
ZRC_AXCODES = ("S", "P", "L")
#: Smallest connected component (voxels) that is a sample.
DEFAULT_MIN_VOXELS = 10
#: Largest distance between the image's and the mask's placement of a volume corner, as a
#: fraction of the smallest voxel size.
GRID_TOL_VOXELS = 0.01
#: Inclusive range of the slice spacing (z), in mm.
Z_SPACING_RANGE_MM = (0.2, 10.0)
_STAGE_LOAD = "load"
_STAGE_PLAN = "plan"
# 26-connectivity: face, edge and corner neighbours are one lesion.
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _nifti_name(path: Path) -> str | None:
    """``<name>`` of ``<name>.nii.gz`` / ``<name>.nii`` (case-insensitive), else None."""
    lower = path.name.lower()
    for ext in NIFTI_EXTS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return path.name[: -len(ext)]
    return None


def _listing(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        name = _nifti_name(path)
        if name is not None:
            out.setdefault(name, []).append(path)
    return out


def pair_nifti_files(folder) -> tuple[list[tuple[str, Path, Path]], list[Reject]]:
    """Apply the pairing rule (module docstring) to ``folder``.

    Returns
    -------
    pairs : list of (name, image_path, mask_path), sorted by name.
    rejects : plan-stage rejects (unpaired or ambiguous names), sorted by name.

    Raises
    ------
    SourceError
        ``folder`` is not a directory.
    """
    return pair_listing(folder, _listing, what="NIfTI folder", ext="nii.gz",
                        # <name>_truth next to an image <name> is that image's optional truth file (truth_files)
                        ignore=lambda n, images: n.endswith(TRUTH_SUFFIX) and n[: -len(TRUTH_SUFFIX)] in images)


def truth_files(folder) -> dict[str, list[Path]]:
    """The optional truth files of ``folder`` by name: ``truth/<name>.nii.gz`` in the two-folder
    layout, ``<name>_truth.nii.gz`` beside ``<name>.nii.gz`` otherwise (``.nii`` too). A truth file
    holds a phantom's true partial-volume fraction (float, [0, 1]) on the image's grid; a real
    dataset has none. Names with several files are listed with all of them (a reject)."""
    folder = Path(folder)
    images_dir, masks_dir, truth_dir = folder / "images", folder / "masks", folder / "truth"
    if images_dir.is_dir() and masks_dir.is_dir():
        return _listing(truth_dir) if truth_dir.is_dir() else {}
    listing = _listing(folder)
    return {name[: -len(TRUTH_SUFFIX)]: paths for name, paths in listing.items()
            if name.endswith(TRUTH_SUFFIX) and name[: -len(TRUTH_SUFFIX)] in listing}


# --- geometry ----------------------------------------------------------------------------------

def _orientation(affine: np.ndarray, *, what: str, sample_id, stage: str):
    """nibabel's (axis, flip) table of a non-oblique affine; raises on an oblique or singular one."""
    from nibabel.orientations import io_orientation

    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise SoftMaskError(f"{what} has a non-finite or malformed affine", sample_id=sample_id, stage=stage)
    rot = aff[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if not (norms > 0).all() or abs(np.linalg.det(rot)) <= 1e-12 * float(np.prod(norms)):
        raise SoftMaskError(f"{what} has a singular affine (voxel axes {np.round(rot, 4).tolist()})",
                            sample_id=sample_id, stage=stage)
    cosines = np.abs(rot / norms)
    # Each voxel axis must point along one world axis (within the DICOM adapters' tolerance).
    worst = float(cosines.max(axis=0).min())
    if worst < AXIAL_MIN_COSINE:
        degrees = math.degrees(math.acos(min(1.0, worst)))
        raise SoftMaskError(
            f"{what} is oblique: a voxel axis lies {degrees:.1f} degrees from the nearest world axis (at most "
            f"{math.degrees(math.acos(AXIAL_MIN_COSINE)):.1f} accepted); oblique volumes are rejected, not "
            "resampled: resample it to an axis-aligned grid first", sample_id=sample_id, stage=stage)
    ornt = io_orientation(aff)
    if np.isnan(ornt).any() or len(set(ornt[:, 0].astype(int))) != 3:
        raise SoftMaskError(f"{what} has two voxel axes along one world axis", sample_id=sample_id, stage=stage)
    return ornt


def reorient_zrc(data: np.ndarray, affine, *, what: str = "volume", sample_id: str | None = None,
                 stage: str = _STAGE_LOAD) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient a 3-D array stored on NIfTI axes (i, j, k) to (z, row, col) = :data:`ZRC_AXCODES`.

    Parameters
    ----------
    data : (n_i, n_j, n_k) array
        Voxels as stored (any dtype; kept).
    affine : (4, 4) array
        Voxel (i, j, k) -> RAS+ world mm, as nibabel reads it.
    what, sample_id, stage : put in error messages.

    Returns
    -------
    out : (Z, H, W) array
        A permuted and flipped view of ``data`` (no interpolation): axis 0 towards Superior, axis 1
        towards Posterior, axis 2 towards the patient's Left.
    spacing_mm : (z_mm, row_mm, col_mm)
        Norms of the affine's columns in the same order.

    Raises
    ------
    SoftMaskError
        The affine is oblique (a voxel axis more than about 8 degrees from every world axis),
        singular or non-finite, or ``data`` is not 3-D.
    """
    from nibabel.orientations import apply_orientation

    arr = np.asanyarray(data)
    if arr.ndim != 3:
        raise SoftMaskError(f"{what} must be 3-D, got shape {arr.shape}", sample_id=sample_id, stage=stage)
    transform, order = _zrc_transform(affine, what=what, sample_id=sample_id, stage=stage)
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return apply_orientation(arr, transform), tuple(float(norms[i]) for i in order)  # type: ignore[return-value]


def _zrc_transform(affine, *, what: str, sample_id, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(transform, order): ``transform[m]`` = (output axis of stored axis m, -1 where it is
    flipped), nibabel's ``apply_orientation`` table (it flips, then transposes); output axis n
    comes from stored axis ``order[n]``."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    ornt = _orientation(affine, what=what, sample_id=sample_id, stage=stage)
    transform = ornt_transform(ornt, axcodes2ornt(ZRC_AXCODES))
    return transform, np.argsort(transform[:, 0].astype(int))


def zrc_to_nifti(volume_zrc, spacing_mm, *, origin_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of the reading convention: a (z, row, col) array -> (stored array, RAS+ affine)
    for writing NIfTI, so that this adapter (and any viewer) reads it back as the same array.

    The array is stored (i, j, k) = (col, row, z), as dcm2niix stores axial DICOM, with the affine
    ``diag(-col_mm, -row_mm, z_mm)`` (i towards the patient's Left, j Posterior, k Superior: nibabel
    axis codes ("L", "P", "S")) and translation ``origin_mm`` (the RAS+ position of voxel 0).

    Parameters
    ----------
    volume_zrc : (Z, H, W) array
    spacing_mm : (z_mm, row_mm, col_mm), each finite and > 0
    origin_mm : three floats, keyword-only

    Returns
    -------
    data : (W, H, Z) C-contiguous array, ``volume_zrc.transpose(2, 1, 0)``
    affine : (4, 4) float64

    Raises
    ------
    InputError
        ``volume_zrc`` not 3-D, or a bad spacing / origin.
    """
    vol = np.asarray(volume_zrc)
    if vol.ndim != 3:
        raise InputError(f"volume_zrc must be 3-D (z, row, col), got shape {vol.shape}")
    try:
        z_mm, row_mm, col_mm = (float(v) for v in spacing_mm)
        origin = [float(v) for v in origin_mm]
    except (TypeError, ValueError):
        raise InputError(f"spacing_mm and origin_mm must be three numbers, got {spacing_mm!r}, {origin_mm!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in (z_mm, row_mm, col_mm)) or len(origin) != 3 \
            or not all(math.isfinite(v) for v in origin):
        raise InputError(f"spacing_mm must be three finite numbers > 0 and origin_mm three finite numbers, got "
                         f"{spacing_mm!r}, {origin_mm!r}")
    return np.ascontiguousarray(vol.transpose(2, 1, 0)), zrc_affine((z_mm, row_mm, col_mm), origin_mm=origin)


def zrc_affine(spacing_mm, *, origin_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The RAS+ affine of a (z, row, col) volume stored (col, row, z) (:func:`zrc_to_nifti`):
    ``diag(-col_mm, -row_mm, z_mm, 1)`` with translation ``origin_mm``, i.e. nibabel axis codes
    ("L", "P", "S"). ``spacing_mm`` is (z_mm, row_mm, col_mm); no check (callers validate)."""
    z_mm, row_mm, col_mm = (float(v) for v in spacing_mm)
    affine = np.diag([-col_mm, -row_mm, z_mm, 1.0])
    affine[:3, 3] = [float(v) for v in origin_mm]
    return affine


def _spatial_shape(shape: tuple[int, ...], *, what: str, sample_id, stage: str) -> tuple[int, int, int]:
    if len(shape) < 3 or any(int(n) != 1 for n in shape[3:]) or min(shape[:3]) < 1:
        raise SoftMaskError(f"{what} must be a 3-D volume, got shape {tuple(int(n) for n in shape)}",
                            sample_id=sample_id, stage=stage)
    return tuple(int(n) for n in shape[:3])  # type: ignore[return-value]


def _load_header(path: Path, *, sample_id, stage: str):
    """nibabel image (lazy: header only) of ``path``; a one-line error on anything unreadable."""
    import nibabel

    try:
        img = nibabel.load(str(path))
        affine = np.asarray(img.affine, dtype=np.float64)
        shape = tuple(img.shape)
    # nibabel raises many types on a bad file (ImageFileError, HeaderDataError, OSError / EOFError /
    # zlib.error from a broken gzip, ValueError ...): all mean "this file is not readable NIfTI".
    except Exception as exc:  # noqa: BLE001
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise SoftMaskError(f"cannot read {path.name} as NIfTI: {type(exc).__name__}: {detail}".rstrip(": "),
                            sample_id=sample_id, stage=stage) from None
    if not isinstance(img, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise SoftMaskError(f"{path.name} is not a NIfTI image ({type(img).__name__})", sample_id=sample_id,
                            stage=stage)
    # Without either code nibabel falls back on an Analyze-style guess (x flipped): not an orientation
    # the file states, so it is not honoured but refused.
    if int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
        raise SoftMaskError(f"{path.name} states no orientation (sform_code and qform_code are both 0): set its "
                            "sform or qform to the scanner geometry", sample_id=sample_id, stage=stage)
    return img, affine, shape


def _voxels(img, path: Path, shape3, slicer=None, *, sample_id, stage: str) -> np.ndarray:
    """The stored voxels (scl_slope / scl_inter applied by nibabel), trailing size-1 axes dropped;
    ``slicer`` (three slices of the stored axes) reads only that block."""
    index = tuple(slicer or (slice(None),) * 3) + (0,) * (len(img.shape) - 3)
    try:
        data = np.asanyarray(img.dataobj[index])
    except Exception as exc:  # noqa: BLE001  (truncated or corrupt data: see _load_header)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise SoftMaskError(f"cannot read the voxels of {path.name}: {type(exc).__name__}: {detail}".rstrip(": "),
                            sample_id=sample_id, stage=stage) from None
    return data


def _corners_world(affine: np.ndarray, shape3) -> np.ndarray:
    ijk = np.array([[a, b, c, 1.0] for a in (0, shape3[0] - 1) for b in (0, shape3[1] - 1)
                    for c in (0, shape3[2] - 1)])
    return ijk @ affine.T


def _check_pair_headers(image_path: Path, mask_path: Path, *, sample_id, stage: str):
    """Headers of a pair checked (module docstring): (image, mask, shape3, spacing_zrc)."""
    image, img_aff, img_shape = _load_header(image_path, sample_id=sample_id, stage=stage)
    mask, msk_aff, msk_shape = _load_header(mask_path, sample_id=sample_id, stage=stage)
    shape3 = _spatial_shape(img_shape, what=f"image {image_path.name}", sample_id=sample_id, stage=stage)
    mshape3 = _spatial_shape(msk_shape, what=f"mask {mask_path.name}", sample_id=sample_id, stage=stage)
    if shape3 != mshape3:
        raise SoftMaskError(f"mask {mask_path.name} has shape {mshape3}, image {image_path.name} {shape3}",
                            sample_id=sample_id, stage=stage)
    _orientation(img_aff, what=f"image {image_path.name}", sample_id=sample_id, stage=stage)
    spacing = np.linalg.norm(img_aff[:3, :3], axis=0)
    gap = float(np.abs(_corners_world(img_aff, shape3) - _corners_world(msk_aff, shape3)).max())
    if not math.isfinite(gap) or gap > GRID_TOL_VOXELS * float(spacing.min()):
        raise SoftMaskError(f"mask {mask_path.name} and image {image_path.name} are not on the same grid: their "
                            f"affines place a corner voxel {gap:.3g} mm apart (at most "
                            f"{GRID_TOL_VOXELS:g} voxel accepted)", sample_id=sample_id, stage=stage)
    return image, mask, shape3


def _check_spacing_zrc(spacing_zrc, *, sample_id, stage: str) -> None:
    check_spacing_mm(spacing_zrc[1:], what="NIfTI in-plane voxel spacing (row, col)", sample_id=sample_id,
                     stage=stage)
    lo, hi = Z_SPACING_RANGE_MM
    if not (math.isfinite(spacing_zrc[0]) and lo <= spacing_zrc[0] <= hi):
        raise SoftMaskError(f"implausible NIfTI slice spacing {spacing_zrc[0]:g} mm (must lie in [{lo:g}, {hi:g}] "
                            "mm)", sample_id=sample_id, stage=stage)


def read_nifti_zrc(path, *, role: str = "image", z_range: tuple[int, int] | None = None, sample_id: str | None = None,
                   stage: str = _STAGE_LOAD) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read one NIfTI volume (or some of its slices) reoriented to (z, row, col) (module docstring).

    Parameters
    ----------
    path : str or Path
    role : {"image", "mask"}
        "image": float32 values as stored with ``scl_slope`` / ``scl_inter`` applied (HU for CT);
        "mask": bool (binary check of :func:`~softmask_builder.core.validate.as_mask3d`, empty
        allowed).
    z_range : (z0, z1), optional
        Only slices ``z0 <= z < z1`` of the reoriented volume (0 <= z0 < z1 <= Z): only that block
        is read and converted (a compressed file is still decompressed up to it).

    Returns
    -------
    volume : (Z, H, W) float32 or bool, C-contiguous (Z = z1 - z0 with ``z_range``)
    spacing_mm : (z_mm, row_mm, col_mm)

    Raises
    ------
    SoftMaskError
        Naming the file: unreadable, not 3-D, oblique affine, non-finite image, non-binary mask.
    InputError
        A bad ``role`` or ``z_range``.
    """
    if role not in ("image", "mask"):
        raise InputError(f'role must be "image" or "mask", got {role!r}')
    path = Path(path)
    img, affine, shape = _load_header(path, sample_id=sample_id, stage=stage)
    shape3 = _spatial_shape(shape, what=path.name, sample_id=sample_id, stage=stage)
    transform, order = _zrc_transform(affine, what=path.name, sample_id=sample_id, stage=stage)
    slicer = None
    if z_range is not None:
        z0, z1 = (int(v) for v in z_range)
        n_z = shape3[order[0]]
        if not 0 <= z0 < z1 <= n_z:
            raise InputError(f"z_range must satisfy 0 <= z0 < z1 <= {n_z}, got {z_range!r}", sample_id=sample_id)
        # Output z = stored axis order[0], read reversed when that axis is flipped.
        m = int(order[0])
        slicer = [slice(None)] * 3
        slicer[m] = slice(n_z - z1, n_z - z0) if transform[m, 1] < 0 else slice(z0, z1)
    data = _voxels(img, path, shape3, slicer, sample_id=sample_id, stage=stage)
    if role == "mask":
        data = _binary(data, path, sample_id=sample_id, stage=stage)
    else:
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            raise SoftMaskError(f"image {path.name} has non-numeric voxels ({data.dtype})", sample_id=sample_id,
                                stage=stage)
        data = np.asarray(data, dtype=np.float32)
        if not np.isfinite(data).all():
            raise SoftMaskError(f"image {path.name} has non-finite voxels", sample_id=sample_id, stage=stage)
    out, spacing = reorient_zrc(data, affine, what=path.name, sample_id=sample_id, stage=stage)
    return np.ascontiguousarray(out), spacing


def _nonzero_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of the True voxels of a 3-D bool array (empty slices when there is none)."""
    box = []
    for k in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(box)  # type: ignore[return-value]


def _binary(data: np.ndarray, path: Path, *, sample_id, stage: str) -> np.ndarray:
    """``data != 0``, after :func:`as_mask3d`'s value rule checked on the box of the non-zero
    voxels (outside it every voxel is 0: a mask volume is mostly empty, so this is much cheaper)."""
    nonzero = data != 0
    box = _nonzero_box(nonzero)
    try:
        if nonzero.any():
            as_mask3d(data[box], f"mask {path.name}", sample_id=sample_id)
        elif not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            raise InputError(f"mask {path.name} must be boolean or integer, got dtype {data.dtype}")
    except InputError as exc:
        raise SoftMaskError(exc.reason + " (label maps and resampled masks are rejected, not thresholded)",
                            sample_id=sample_id, stage=stage) from None
    return nonzero


# --- plan / load ----------------------------------------------------------------------------------

def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def plan_nifti_volumes(folder, *, min_voxels: int = DEFAULT_MIN_VOXELS, crop_zrc=VOLUME_CROP_ZRC,
                       patient_sep: str | None = None, limit: int | None = None,
                       unselected: list | None = None) -> tuple[list[SampleRef], list[Reject]]:
    """Plan one sample per connected mask component of each image / mask pair of ``folder``.

    Reads both headers and the mask's voxels (not the image's): see the module docstring for the
    pairing rule, the axes, the components and every reject.

    Parameters
    ----------
    folder : str or Path
    min_voxels : int >= 1
        Smallest component (26-connected voxels) that is a sample.
    crop_zrc : three ints
        The volume crop (Z, H, W) in voxels at native spacing (default
        :data:`~softmask_builder.labelling.crop.VOLUME_CROP_ZRC`, the volume shards' size).
    patient_sep : str or None
        Patient = ``<name>`` up to the first ``patient_sep``; None (default): the whole name.
    limit : int, optional
        Keep the first ``limit`` refs by sample_id.
    unselected : list, optional
        Components below ``min_voxels`` are appended as :func:`~.base.unselected_row` rows (id
        ``<name>_nKK``, filter ``min_voxels``).

    Returns
    -------
    refs : list of SampleRef
        Sorted by ``sample_id = <name>_nKK``; ``source_key`` = the image's path relative to
        ``folder`` + ``#nKK``; ``split`` None; ``payload``: ``image_path``, ``mask_path`` (str),
        ``component`` (int), ``n_voxels``, ``shape_zrc``, ``bbox_zrc`` ((lo, hi) inclusive per
        axis), ``origin_zrc``, ``crop_zrc``, ``spacing_mm`` (z, row, col), and ``truth_path`` (str)
        when the folder has truth files.
    rejects : list of Reject
        Stage "plan", sorted by id: unpaired / ambiguous names, unreadable files, 4-D, oblique or
        mismatched grids, implausible spacing, non-binary or empty masks, a missing or mismatched
        truth file where the folder has truth files (id ``<name>``), a
        component too large for the crop (id ``<name>_nKK``).

    Raises
    ------
    SourceError
        ``folder`` does not exist.
    InputError
        An option is invalid.
    """
    min_voxels = _check_int(min_voxels, "min_voxels", 1)
    if patient_sep is not None and (not isinstance(patient_sep, str) or not patient_sep):
        raise InputError(f"patient_sep must be a non-empty string or None, got {patient_sep!r}")
    if limit is not None:
        limit = _check_int(limit, "limit", 1)
    # Validates crop_zrc (three whole numbers) with a message naming it, before any file is read.
    try:
        volume_crop_plan((0, 0, 0), (0, 0, 0), size_zrc=crop_zrc, margin_px=0)
    except InputError as exc:
        raise InputError(f"crop_zrc: {exc.reason}") from None
    crop = tuple(int(v) for v in crop_zrc)
    folder = Path(folder)
    pairs, rejects = pair_nifti_files(folder)
    truths = truth_files(folder)
    refs: list[SampleRef] = []
    for name, image_path, mask_path in pairs:
        try:
            truth_path = _truth_of(name, image_path, truths)
            refs_n, rejects_n, left_n = _plan_pair(folder, name, image_path, mask_path, min_voxels=min_voxels,
                                                   crop=crop, patient_sep=patient_sep, truth_path=truth_path)
        except SoftMaskError as exc:
            rejects.append(Reject(name, _STAGE_PLAN, exc.reason))
            continue
        refs += refs_n
        rejects += rejects_n
        if unselected is not None:
            unselected.extend(left_n)
    refs.sort(key=lambda r: r.sample_id)
    rejects.sort(key=lambda r: r.sample_id)
    if limit is not None:
        refs = refs[:limit]
    return refs, rejects


def _truth_of(name: str, image_path: Path, truths: dict[str, list[Path]]) -> Path | None:
    """The truth file of pair ``name``, None when the folder has none at all; a pair without one in
    a folder that has some is a reject (a build's shards carry ``true_fraction`` for every sample
    or for none)."""
    if not truths:
        return None
    paths = truths.get(name, [])
    if len(paths) > 1:
        raise SoftMaskError(f"ambiguous truth: several files share the name ({', '.join(p.name for p in paths)})",
                            sample_id=name, stage=_STAGE_PLAN)
    if not paths:
        raise SoftMaskError(f"no truth file for {image_path.name} while other pairs have one (expected "
                            f"{name}{TRUTH_SUFFIX}.nii.gz or truth/{name}.nii.gz): true_fraction travels for "
                            "every sample or none", sample_id=name, stage=_STAGE_PLAN)
    return paths[0]


def _check_truth_header(image_path: Path, truth_path: Path, *, sample_id, stage: str) -> None:
    try:
        _check_pair_headers(image_path, truth_path, sample_id=sample_id, stage=stage)
    except SoftMaskError as exc:
        raise SoftMaskError(f"truth file: {exc.reason}", sample_id=sample_id, stage=stage) from None


def _plan_pair(folder: Path, name: str, image_path: Path, mask_path: Path, *, min_voxels: int, crop,
               patient_sep, truth_path: Path | None = None):
    _check_pair_headers(image_path, mask_path, sample_id=name, stage=_STAGE_PLAN)
    if truth_path is not None:
        _check_truth_header(image_path, truth_path, sample_id=name, stage=_STAGE_PLAN)
    mask, spacing = read_nifti_zrc(mask_path, role="mask", sample_id=name, stage=_STAGE_PLAN)
    _check_spacing_zrc(spacing, sample_id=name, stage=_STAGE_PLAN)
    if not mask.any():
        raise SoftMaskError(f"mask {mask_path.name} is empty (no lesion voxel)", sample_id=name, stage=_STAGE_PLAN)
    # Components are found inside the mask's bounding box (the rest is 0): same labels and
    # order as on the whole volume, a fraction of the work.
    box = _nonzero_box(mask)
    shift = np.array([b.start for b in box])
    labels, n = ndimage.label(mask[box], structure=_CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(labels)
    patient = name.split(patient_sep, 1)[0] if patient_sep and patient_sep in name else name
    source_key = image_path.relative_to(folder).as_posix()
    refs, rejects, left = [], [], []
    for k in range(1, n + 1):
        sid = f"{name}_n{k:02d}"
        if sizes[k] < min_voxels:
            left.append(unselected_row(sid, "min_voxels", f"{int(sizes[k])} voxels < {min_voxels}"))
            continue
        lo = tuple(int(b.start + o) for b, o in zip(boxes[k - 1], shift))
        hi = tuple(int(b.stop - 1 + o) for b, o in zip(boxes[k - 1], shift))
        center = tuple((a + b) / 2.0 for a, b in zip(lo, hi))
        extent = tuple(b - a + 1 for a, b in zip(lo, hi))
        try:
            origin = volume_crop_plan(center, extent, size_zrc=crop, sample_id=sid)
        except VolumeFitError as exc:
            rejects.append(Reject(sid, _STAGE_PLAN, exc.reason))
            continue
        refs.append(SampleRef(
            sample_id=sid, source_key=f"{source_key}#n{k:02d}", patient=patient or name, split=None,
            payload={"image_path": str(image_path), "mask_path": str(mask_path), "component": k,
                     "n_voxels": int(sizes[k]), "shape_zrc": tuple(int(v) for v in mask.shape),
                     "bbox_zrc": (lo, hi), "origin_zrc": tuple(origin), "crop_zrc": crop,
                     "spacing_mm": tuple(spacing),
                     **({"truth_path": str(truth_path)} if truth_path is not None else {})}))
    return refs, rejects, left


def load_nifti_volume(ref: SampleRef) -> VolumeRecord:
    """Load one planned component as a :class:`~softmask_builder.sources.base.VolumeRecord`.

    Returns
    -------
    VolumeRecord
        ``image_hu`` (Z, H, W) float32 HU crop (edge-replicated beyond the volume); ``prior_kind``
        "mask", ``prior`` (Z, H, W) bool: the whole mask inside the crop (0 beyond the volume);
        ``spacing_mm`` (z, row, col) from the affine; ``origin_px`` the crop's origin in the
        reoriented (z, row, col) source voxels; ``scale`` (1, 1, 1); ``n_readers`` -1;
        ``true_fraction`` (Z, H, W) float32 from the truth file (0 beyond the volume), else None.

    Raises
    ------
    SoftMaskError
        Stage "load", with the sample id: a file unreadable or changed since the plan (shape, grid,
        component no longer there), an implausible image (``check_image_hu``).
    """
    sid = ref.sample_id
    p = ref.payload
    image_path, mask_path = Path(p["image_path"]), Path(p["mask_path"])
    _check_pair_headers(image_path, mask_path, sample_id=sid, stage=_STAGE_LOAD)
    (lo, hi), shape = p["bbox_zrc"], tuple(p["shape_zrc"])
    origin, crop = tuple(p["origin_zrc"]), tuple(p["crop_zrc"])
    # Only the crop's slices are read (clipped to the volume: the crop's edge replication in z
    # then repeats the volume's first / last slice, as on the whole volume).
    z0, z1 = max(0, origin[0]), min(shape[0], origin[0] + crop[0])
    try:
        image_hu, spacing = read_nifti_zrc(image_path, role="image", z_range=(z0, z1), sample_id=sid,
                                           stage=_STAGE_LOAD)
        mask, _ = read_nifti_zrc(mask_path, role="mask", z_range=(z0, z1), sample_id=sid, stage=_STAGE_LOAD)
    except InputError as exc:  # a z_range beyond a file that shrank since the plan
        raise SoftMaskError(f"{image_path.name} changed since the build was planned ({exc.reason})", sample_id=sid,
                            stage=_STAGE_LOAD) from None
    box = (slice(lo[0] - z0, hi[0] + 1 - z0),) + tuple(slice(a, b + 1) for a, b in zip(lo[1:], hi[1:]))
    if mask.shape[1:] != shape[1:] or int(mask[box].sum()) < int(p["n_voxels"]):
        raise SoftMaskError(f"{mask_path.name} changed since the build was planned (component {p['component']} is "
                            "no longer where the plan found it)", sample_id=sid, stage=_STAGE_LOAD)
    # The plausibility rules of a CT slice, on the full axial slice through the component's centre.
    check_image_hu(image_hu[(lo[0] + hi[0]) // 2 - z0], sample_id=sid, stage=_STAGE_LOAD)
    origin_block = (origin[0] - z0, origin[1], origin[2])
    true_fraction = None
    if "truth_path" in p:
        truth_path = Path(p["truth_path"])
        _check_truth_header(image_path, truth_path, sample_id=sid, stage=_STAGE_LOAD)
        truth, _ = read_nifti_zrc(truth_path, role="image", z_range=(z0, z1), sample_id=sid, stage=_STAGE_LOAD)
        if truth.shape != image_hu.shape or float(truth.min()) < 0.0 or float(truth.max()) > 1.0:
            raise SoftMaskError(f"truth file {truth_path.name} must hold fractions in [0, 1] on the image's grid, "
                                f"got range [{float(truth.min()):g}, {float(truth.max()):g}]", sample_id=sid,
                                stage=_STAGE_LOAD)
        true_fraction = crop_volume(truth, origin_block, size_zrc=crop, outside="zero").astype(np.float32)
    return VolumeRecord(
        ref=ref, image_hu=crop_volume(image_hu, origin_block, size_zrc=crop, outside="edge").astype(np.float32),
        prior_kind="mask", prior=crop_volume(mask, origin_block, size_zrc=crop, outside="zero"),
        spacing_mm=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin_px=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        scale=(1.0, 1.0, 1.0), n_readers=-1, lesion_type=-1, true_fraction=true_fraction)
