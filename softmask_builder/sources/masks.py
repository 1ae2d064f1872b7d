"""Binary-mask adapter: a folder of image / mask pairs (ISBI- or PROMISE-style exports) -> samples.

Pairing rule (checked in this order):

1. **Two folders** — when ``<folder>/images/`` and ``<folder>/masks/`` both exist:
   ``images/<name>.<ext>`` pairs with ``masks/<name>.<ext2>`` (same ``<name>``, extensions may
   differ, e.g. a DICOM image with a PNG mask).
2. **Side by side** — otherwise, in ``<folder>`` itself: ``<name>.<ext>`` pairs with
   ``<name>_mask.<ext2>``.

Only the top level of those folders is listed (no recursion); hidden files and files with other
extensions are ignored. Supported extensions (case-insensitive): ``.png``, ``.tif``, ``.tiff``,
``.npy``, ``.dcm``. An image without a mask, a mask without an image, or a name with several
candidate files (``a.png`` and ``a.tif``) becomes a plan-stage :class:`Reject`.

Pixel values -> ``image_hu`` (float32):

* DICOM: ``pixel_array * RescaleSlope + RescaleIntercept``; a slice without both tags is
  rejected unless ``RescaleType`` is "HU" (then 1 and 0), and a non-axial or flipped
  ``ImageOrientationPatient`` is rejected (``plausibility.check_ct_geometry``). Only the pixel
  data, the rescale, the orientation and ``PixelSpacing`` are read; no identifying field is
  copied anywhere.
* unsigned 16-bit PNG / TIFF / ``.npy``: ``value - hu_offset``. With ``hu_offset=None`` (the
  default) the offset is detected: an image whose minimum is >= 30000 is DeepLesion-style
  (offset 32768); any other 16-bit image is refused with a message naming the fix (set
  ``hu_offset``: 32768 DeepLesion-style, 1024 for raw CT values with intercept -1024, 0 when the
  values are HU).
* 8-bit: a display window, not HU. Refused unless ``window_hu=(level, width)`` says how it was
  windowed; then ``HU = level - width / 2 + value / 255 * width``.
* anything else (signed, float): the values as they are (assumed to be HU already).
* every image then passes :func:`softmask_builder.sources.plausibility.check_image_hu` (a blank,
  saturated or offset-less image is a reject with the reason); DICOM must be ``Modality`` CT
  with a non-zero ``RescaleSlope``.
* colour PNG / TIFF whose colour channels are equal are read as greyscale (an alpha channel is
  dropped); real colour images are rejected.

Masks are read the same way (without rescale or offset) and must be binary: {0, 1} or {0, 255}
(:func:`softmask_builder.core.validate.as_mask2d`), non-empty, and of the image's shape. One pair is
one sample: a mask with several blobs gives one sample around all of them.

Spacing: ``spacing_mm`` (a float, or (row_mm, col_mm)) when given, for every sample; otherwise
DICOM ``PixelSpacing`` (already (row, col)) when present, else 1.0 mm (record the true spacing if
you know it: ``spacing_mm`` is stored per sample and used by the metrics in mm).

Patient: the part of ``<name>`` before the first ``patient_sep`` (default ``"_"``, so
``case07_slice12`` -> ``case07``); the whole name when it has no separator or
``patient_sep=None``. The build splits by patient, so slices of one case never straddle splits.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from softmask_builder.core.validate import as_mask2d
from softmask_builder.core.image_limits import check_png_size
from softmask_builder.labelling.crop import crop_image, crop_plan
from softmask_builder.errors import InputError, SoftMaskError, SourceError
from softmask_builder.sources.plausibility import check_ct_geometry, check_ct_header, check_image_hu, check_spacing_mm
from softmask_builder.sources.base import Reject, SampleRecord, SampleRef

__all__ = ["SUPPORTED_EXTS", "MASK_SUFFIX", "pair_files", "read_pixels", "plan_masks", "load_mask_sample"]

SUPPORTED_EXTS = (".png", ".tif", ".tiff", ".npy", ".dcm")
MASK_SUFFIX = "_mask"
DEFAULT_SPACING_MM = 1.0
#: A 16-bit image whose minimum is at least this is taken as HU + 32768 (DeepLesion-style).
AUTO_OFFSET_MIN = 30000
AUTO_OFFSET = 32768
_STAGE_LOAD = "load"


def _listing(folder: Path) -> dict[str, list[Path]]:
    """name (stem) -> files with a supported extension, top level only, sorted."""
    out: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in SUPPORTED_EXTS:
            out.setdefault(path.name[: -len(path.suffix)], []).append(path)
    return out


def pair_files(folder) -> tuple[list[tuple[str, Path, Path]], list[Reject]]:
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
    return pair_listing(folder, _listing, what="mask folder", ext="<ext>")


def pair_listing(folder, listing, *, what: str, ext: str, ignore=None) -> tuple[list[tuple[str, Path, Path]], list[Reject]]:
    """The pairing rule shared by the 2-D masks source and the NIfTI volume source
    (:mod:`softmask_builder.sources.nifti`): ``images/<name>`` with ``masks/<name>`` when both folders
    exist, else ``<name>`` beside ``<name>_mask``. ``listing(folder) -> {name: [paths]}`` lists one
    folder's candidate files by name (each source's own extensions); ``ignore(name, images)`` (flat
    layout only) drops image names that are not images (e.g. a NIfTI truth file); ``what`` names the
    folder in the error, ``ext`` the extension in the reject reasons.

    Returns (pairs sorted by name, plan-stage rejects: unpaired or ambiguous names). Raises
    SourceError when ``folder`` is not a directory."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{what} not found: {folder}")
    images_dir, masks_dir = folder / "images", folder / "masks"
    if images_dir.is_dir() and masks_dir.is_dir():
        images, masks = listing(images_dir), listing(masks_dir)
        where = f"{masks_dir.name}/<name>.{ext}"
    else:
        images, masks = {}, {}
        for name, paths in listing(folder).items():
            if name.endswith(MASK_SUFFIX) and len(name) > len(MASK_SUFFIX):
                masks[name[: -len(MASK_SUFFIX)]] = paths
            else:
                images[name] = paths
        where = f"<name>{MASK_SUFFIX}.{ext}"
        if ignore is not None:
            for name in [n for n in images if ignore(n, images)]:
                del images[name]
    pairs, rejects = [], []
    for name in sorted(set(images) | set(masks)):
        imgs, msks = images.get(name, []), masks.get(name, [])
        if not imgs:
            rejects.append(Reject(name, "plan", f"mask without image: {msks[0].name}"))
        elif not msks:
            rejects.append(Reject(name, "plan", f"image without mask (expected {where}): {imgs[0].name}"))
        elif len(imgs) > 1 or len(msks) > 1:
            files = ", ".join(p.name for p in imgs + msks)
            rejects.append(Reject(name, "plan", f"ambiguous: several files share the name ({files})"))
        else:
            pairs.append((name, imgs[0], msks[0]))
    return pairs, rejects


def _check_spacing(spacing_mm) -> tuple[float, float] | None:
    if spacing_mm is None:
        return None
    try:
        values = (float(spacing_mm),) * 2 if np.ndim(spacing_mm) == 0 else tuple(float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing_mm must be a positive number or (row_mm, col_mm), got {spacing_mm!r}")
    return check_spacing_mm(values, what="spacing_mm", stage="plan")


def _check_window(window_hu) -> tuple[float, float] | None:
    if window_hu is None:
        return None
    try:
        level, width = (float(v) for v in window_hu)
    except (TypeError, ValueError):
        raise InputError(f"window_hu must be (level_hu, width_hu) or None, got {window_hu!r}") from None
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise InputError(f"window_hu must be finite with width > 0, got {window_hu!r}")
    return level, width


def plan_masks(folder, *, spacing_mm=None, hu_offset: int | None = None, window_hu=None,
               patient_sep: str | None = "_", crop_px: int | None = 64,
               limit: int | None = None) -> tuple[list[SampleRef], list[Reject]]:
    """Plan one sample per image / mask pair of ``folder`` (lists files, reads no pixel).

    Parameters
    ----------
    folder : str or Path
        See the module docstring for the pairing rule.
    spacing_mm : float or (float, float), optional
        Pixel spacing (row_mm, col_mm) for every sample; None: DICOM ``PixelSpacing`` if present,
        else 1.0 mm.
    hu_offset : int, optional
        Subtracted from unsigned 16-bit PNG / TIFF / npy pixels (32768 for DeepLesion-style PNGs);
        None detects it per image (see the module docstring) or refuses the image.
    window_hu : (float, float), optional
        (level, width) in HU with which 8-bit images were windowed; None refuses 8-bit images.
    patient_sep : str or None
        Patient = name up to the first ``patient_sep``; None: the whole name.
    crop_px : int or None
        Crop size around the mask (see :func:`load_mask_sample`); None keeps the whole image.
    limit : int, optional
        Keep the first ``limit`` refs by sample_id.

    Returns
    -------
    refs : list of SampleRef
        Sorted by sample_id = ``<name>``; ``source_key`` = the image's path relative to
        ``folder``; ``split`` = None; ``payload``: ``image_path``, ``mask_path`` (str),
        ``spacing_mm`` (tuple or None), ``hu_offset``, ``crop_px``.
    rejects : list of Reject
        Unpaired or ambiguous names (stage "plan").

    Raises
    ------
    SourceError
        ``folder`` does not exist.
    InputError
        An option is invalid.
    """
    spacing = _check_spacing(spacing_mm)
    if hu_offset is not None and (not isinstance(hu_offset, (int, np.integer)) or isinstance(hu_offset, bool)
                                  or not 0 <= hu_offset <= 65535):
        raise InputError(f"hu_offset must be an int in [0, 65535] or None (detect), got {hu_offset!r}")
    window = _check_window(window_hu)
    if patient_sep is not None and (not isinstance(patient_sep, str) or not patient_sep):
        raise InputError(f"patient_sep must be a non-empty string or None, got {patient_sep!r}")
    if crop_px is not None and (not isinstance(crop_px, (int, np.integer)) or isinstance(crop_px, bool)
                                or crop_px < 8):
        raise InputError(f"crop_px must be an int >= 8 or None, got {crop_px!r}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be an int >= 1 or None, got {limit!r}")
    folder = Path(folder)
    pairs, rejects = pair_files(folder)
    refs = []
    for name, image_path, mask_path in pairs:
        patient = name.split(patient_sep, 1)[0] if patient_sep and patient_sep in name else name
        refs.append(SampleRef(
            sample_id=name, source_key=image_path.relative_to(folder).as_posix(), patient=patient or name,
            split=None,
            payload={"image_path": str(image_path), "mask_path": str(mask_path), "spacing_mm": spacing,
                     "hu_offset": None if hu_offset is None else int(hu_offset), "window_hu": window,
                     "crop_px": None if crop_px is None else int(crop_px)}))
    if limit is not None:
        refs = refs[:limit]
    return refs, rejects


# --- pixels -----------------------------------------------------------------------------------

def _read_dicom(path: Path, *, rescale: bool, sample_id):
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        pixels = np.asarray(ds.pixel_array)
        modality, slope_tag = ds.get("Modality"), ds.get("RescaleSlope", 1.0)
        slope = float(slope_tag) if rescale and slope_tag not in (None, "") else 1.0
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0) if rescale else 0.0
        spacing = ds.get("PixelSpacing")
        spacing = (float(spacing[0]), float(spacing[1])) if spacing is not None and len(spacing) == 2 else None
    # pydicom raises many types on a bad file (InvalidDicomError, AttributeError for missing pixel
    # data, RuntimeError/NotImplementedError for an unsupported transfer syntax, ...); all mean
    # "this sample's file is unreadable".
    except Exception as exc:  # noqa: BLE001
        raise SoftMaskError(f"cannot read DICOM {path.name}: {type(exc).__name__}: {exc}",
                            sample_id=sample_id, stage=_STAGE_LOAD) from None
    if pixels.ndim != 2:
        raise SoftMaskError(f"DICOM {path.name} has pixel data of shape {pixels.shape}, expected one 2-D frame",
                            sample_id=sample_id, stage=_STAGE_LOAD)
    if rescale:
        check_ct_header(modality, 1.0 if slope_tag in (None, "") else slope_tag, sample_id=sample_id,
                        stage=_STAGE_LOAD)
        check_ct_geometry(ds, sample_id=sample_id, stage=_STAGE_LOAD)  # rescale tags present, axial
        # DICOM PixelSpacing is (row spacing, column spacing): already our (row, col) order.
        return pixels.astype(np.float64) * slope + intercept, spacing
    return pixels, spacing


def _read_raster(path: Path, *, sample_id):
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise SoftMaskError(f"cannot read {path.name}: {exc.strerror or exc}", sample_id=sample_id,
                            stage=_STAGE_LOAD) from None
    check_png_size(data, name=path.name, sample_id=sample_id, stage=_STAGE_LOAD)  # before any allocation
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise SoftMaskError(f"cannot decode {path.name} (truncated, corrupt or unsupported)", sample_id=sample_id,
                            stage=_STAGE_LOAD)
    if image.ndim == 3:
        colour = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
        if not all(np.array_equal(colour[..., 0], colour[..., k]) for k in range(1, colour.shape[2])):
            raise SoftMaskError(f"{path.name} is a colour image; expected greyscale", sample_id=sample_id,
                                stage=_STAGE_LOAD)
        image = np.ascontiguousarray(colour[..., 0])
    return image


def read_pixels(path, *, role: str = "image", hu_offset: int | None = None, window_hu=None,
                sample_id: str | None = None):
    """Read one image or mask file of a supported format.

    Parameters
    ----------
    path : str or Path
    role : {"image", "mask"}
        Images get the DICOM rescale / ``hu_offset`` and come back as float32 HU; masks come back
        with their stored values and dtype.
    hu_offset : int or None
        See the module docstring (None: detected, or the image is refused).
    window_hu : (level_hu, width_hu) or None
        How 8-bit images were windowed (None: 8-bit images are refused).
    sample_id : str, optional
        Put in error messages.

    Returns
    -------
    pixels : ndarray (rows, cols)
    dicom_spacing_mm : (row_mm, col_mm) or None
        ``PixelSpacing`` of a DICOM file, else None.

    Raises
    ------
    SoftMaskError
        Stage "load", naming the file: unreadable, undecodable, not 2-D, colour.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    spacing = None
    if suffix == ".dcm":
        pixels, spacing = _read_dicom(path, rescale=(role == "image"), sample_id=sample_id)
    elif suffix == ".npy":
        try:
            pixels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SoftMaskError(f"cannot read {path.name}: {exc}", sample_id=sample_id, stage=_STAGE_LOAD) from None
        if pixels.ndim != 2 or not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool):
            raise SoftMaskError(f"{path.name} must hold a 2-D numeric array, got {pixels.dtype} {pixels.shape}",
                                sample_id=sample_id, stage=_STAGE_LOAD)
    elif suffix in SUPPORTED_EXTS:
        pixels = _read_raster(path, sample_id=sample_id)
    else:
        raise SoftMaskError(f"unsupported file type {path.name} (supported: {', '.join(SUPPORTED_EXTS)})",
                            sample_id=sample_id, stage=_STAGE_LOAD)
    if role == "mask":
        return pixels, spacing
    if pixels.dtype == np.uint16 and suffix != ".dcm":
        pixels = pixels.astype(np.float32) - np.float32(_uint16_offset(pixels, hu_offset, path.name, sample_id))
    elif pixels.dtype == np.uint8 and suffix != ".dcm":
        if window_hu is None:
            raise SoftMaskError(f"{path.name} is 8-bit: its values are a display window, not HU; if it is a "
                                "windowed CT export, set source_options.window_hu: [level_hu, width_hu]",
                                sample_id=sample_id, stage=_STAGE_LOAD)
        level, width = (float(v) for v in window_hu)
        pixels = level - width / 2 + pixels.astype(np.float64) * (width / 255.0)
    image = np.asarray(pixels, dtype=np.float32)
    if pixels.dtype == bool or not np.all(np.isfinite(image)):
        raise SoftMaskError(f"{path.name} has non-finite or non-numeric pixels", sample_id=sample_id,
                            stage=_STAGE_LOAD)
    return image, spacing


def _uint16_offset(pixels: np.ndarray, hu_offset: int | None, name: str, sample_id) -> int:
    """The offset to subtract from an unsigned 16-bit image (see the module docstring)."""
    if hu_offset is not None:
        return int(hu_offset)
    low = int(pixels.min())
    if low >= AUTO_OFFSET_MIN:
        return AUTO_OFFSET
    raise SoftMaskError(f"{name} is unsigned 16-bit with minimum {low} < {AUTO_OFFSET_MIN}: its HU offset cannot "
                        "be detected; set source_options.hu_offset (32768 for DeepLesion-style PNGs, 1024 for raw "
                        "CT values with intercept -1024, 0 if the values are HU)", sample_id=sample_id,
                        stage=_STAGE_LOAD)


def _bbox(mask: np.ndarray) -> tuple[tuple[float, float], float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    center = ((r0 + r1) / 2.0, (c0 + c1) / 2.0)
    # Diagonal of the pixel-edge box: a single pixel has extent sqrt(2).
    return (float(center[0]), float(center[1])), float(math.hypot(r1 - r0 + 1, c1 - c0 + 1))


def load_mask_sample(ref: SampleRef) -> SampleRecord:
    """Load one image / mask pair as a :class:`SampleRecord` (prior_kind "mask").

    With an int ``crop_px`` the crop is centred on the centre of the mask's bounding box, with
    extent = the box's diagonal (pixel edges, so one pixel has extent sqrt(2)); a mask whose
    diagonal exceeds 0.75 * crop_px is down-scaled to fit (:func:`softmask_builder.labelling.crop.crop_plan`;
    image by area-like interpolation, mask by nearest neighbour); pixels beyond the border are
    edge replicated. With ``crop_px=None`` the whole image is kept (origin (0, 0), scale 1).

    Returns
    -------
    SampleRecord
        ``image_hu`` float32; ``prior`` bool mask of the same shape; ``spacing_mm`` (row, col)
        per the module docstring, divided by ``scale``.

    Raises
    ------
    SoftMaskError / InputError
        With the sample id and stage "load": an unreadable file, a mask that is not binary or is
        empty, a mask whose shape differs from the image's.
    """
    sid = ref.sample_id
    p = ref.payload
    image_hu, dicom_spacing = read_pixels(p["image_path"], role="image", hu_offset=p["hu_offset"],
                                          window_hu=p.get("window_hu"), sample_id=sid)
    mask_raw, _ = read_pixels(p["mask_path"], role="mask", sample_id=sid)
    if mask_raw.shape != image_hu.shape:
        raise InputError(f"mask shape {mask_raw.shape} does not match image shape {image_hu.shape}",
                         sample_id=sid, stage=_STAGE_LOAD)
    try:
        mask = as_mask2d(mask_raw, "mask", sample_id=sid)
    except InputError as exc:
        raise InputError(exc.reason, sample_id=sid, stage=_STAGE_LOAD) from None
    check_image_hu(image_hu, sample_id=sid, stage=_STAGE_LOAD)
    if p["spacing_mm"] is None and dicom_spacing is not None:
        check_spacing_mm(dicom_spacing, what="DICOM PixelSpacing", sample_id=sid, stage=_STAGE_LOAD)
    spacing = p["spacing_mm"] or dicom_spacing or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    crop_px = p["crop_px"]
    if crop_px is None:
        origin, scale = (0.0, 0.0), 1.0
        crop, prior = image_hu, mask
    else:
        center, extent = _bbox(mask)
        origin, scale = crop_plan(center, size_px=int(crop_px), extent_px=extent)
        crop = crop_image(image_hu, origin, scale, size_px=int(crop_px))
        prior = crop_image(mask.astype(np.uint8), origin, scale, size_px=int(crop_px),
                           interpolation=cv2.INTER_NEAREST, outside="zero") != 0
    return SampleRecord(ref=ref, image_hu=np.asarray(crop, dtype=np.float32), prior_kind="mask", prior=prior,
                        spacing_mm=(float(spacing[0]) / scale, float(spacing[1]) / scale),
                        origin_px=(float(origin[0]), float(origin[1])), scale=float(scale))
