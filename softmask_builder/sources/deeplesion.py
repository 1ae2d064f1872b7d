"""DeepLesion adapter: ``DL_info.csv`` rows + ``Images_png`` key slices -> RECIST samples.

Source layout (the official one; the bundled phantom sample uses it too)::

    root/DL_info.csv                        one row per lesion, 18 columns (:data:`DL_INFO_COLUMNS`)
    root/Images_png/<PPPPPP_SS_RR>/<KKK>.png  uint16 greyscale slices, HU = value - 32768
    root/Images_png_NN.zip                  or (any subset of) the official zips holding the
                                            same members, read in place (:mod:`.dlzip`);
                                            extracted slices win over zipped ones

Data contract of what this adapter returns (see :class:`~softmask_builder.sources.base.SampleRecord`):

* ``image_hu``: float32 (crop_px, crop_px) crop in HU around the lesion (see :func:`load_deeplesion`).
* ``prior``: a :class:`~softmask_builder.labelling.recist.Recist` in crop (row, col) pixels.
* ``spacing_mm``: (row_mm, col_mm) of the crop pixels, i.e. the source spacing divided by ``scale``.
* ``true_fraction``: only for a phantom source (``root/phantom_truth.npz`` beside ``DL_info.csv``,
  written by :mod:`softmask_builder.phantom`): the key slice's true partial-volume fraction,
  cropped and scaled exactly like ``image_hu``, clipped to [0, 1]; None for real DeepLesion.

DL_info quirks handled here, and nowhere else:

* ``Measurement_coordinates`` and ``Spacing_mm_px_`` are written in (x, y) = (column, row) order.
* The same ``File_name`` appears on several rows when one slice holds several lesions; those rows
  get ids ``<stem>-1``, ``<stem>-2``, ... in the CSV's row order (a ``File_name`` seen once keeps the
  bare ``<stem>``, e.g. ``000001_01_01_109``). Indices are counted on the whole CSV before any
  filter, so an id does not depend on the selection.
* ``File_name`` is ``PPPPPP_SS_RR_KKK.png``; slice numbers may have more than 3 digits, so it is
  split at its LAST underscore: folder ``PPPPPP_SS_RR``, file ``KKK.png``.
* ``Coarse_lesion_type`` (1 bone, 2 abdomen, 3 mediastinum, 4 liver, 5 lung, 6 kidney, 7 soft
  tissue, 8 pelvis) is labelled only on the official validation and test rows; every training row
  has -1. Consequences for a lung-only dataset such as LNSM:

  - ``lesion_types=(5,)`` keeps only labelled lung lesions, i.e. official val/test rows: with
    ``splits=("train",)`` it selects nothing, and a build using the official split gets no
    training set. The documented way to build LNSM from real labels is ``lesion_types=(5,)``
    with ``splits=None`` and the recipe's ``split: {method: patient, ...}``, which re-splits the
    labelled lung lesions by patient.
  - ``lesion_types=(5, -1)`` keeps the lung lesions *plus every unlabelled training row of any
    organ*. It is not a lung-only selection: use it only when some other step (e.g. a reviewed
    list of samples) removes the non-lung training lesions, and say so in the dataset card.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import cv2
import numpy as np

from softmask_builder.core.image_limits import check_png_size
from softmask_builder.labelling.crop import crop_image, crop_plan
from softmask_builder.errors import InputError, RecistError, SoftMaskError, SourceError
from softmask_builder.sources.plausibility import ImplausibleError, check_image_hu, check_spacing_mm, spacing_differs
from softmask_builder.labelling.recist import Recist, validate_recist
from softmask_builder.sources.base import Reject, SampleRecord, SampleRef, unselected_row

if TYPE_CHECKING:  # pandas is imported lazily: build workers only load samples, never the CSV
    import pandas as pd

__all__ = [
    "DL_INFO_COLUMNS", "PNG_HU_OFFSET", "SPLIT_CODES", "read_dl_info", "parse_file_name",
    "parse_spacing", "read_png_hu", "decode_png_hu", "read_key_slice_hu", "plan_deeplesion", "load_deeplesion",
]

#: The official 18 columns of ``DL_info.csv``, in the file's order.
DL_INFO_COLUMNS = (
    "File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
    "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
    "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
    "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age", "Train_Val_Test",
)

#: DeepLesion stores HU + 32768 in its uint16 PNGs.
PNG_HU_OFFSET = 32768

#: ``Train_Val_Test`` codes.
SPLIT_CODES = {1: "train", 2: "val", 3: "test"}

_STAGE_LOAD = "load"
#: The truth file a phantom source keeps beside ``DL_info.csv`` (not part of DeepLesion; written
#: by :func:`softmask_builder.phantom.deeplesion_writer.write_deeplesion`).
PHANTOM_TRUTH_FILE = "phantom_truth.npz"


# --- DL_info.csv ------------------------------------------------------------------------------

def read_dl_info(path, *, required: Sequence[str] = DL_INFO_COLUMNS) -> pd.DataFrame:
    """Read ``DL_info.csv`` with every cell as a string (cells are parsed per row later).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    required : sequence of str
        Columns that must be present (default: the official 18). Extra columns are kept.

    Returns
    -------
    pandas.DataFrame
        One row per lesion, in file order, every column of dtype str (empty cells are ``""``),
        so a malformed number in one row cannot change how the others are read.

    Raises
    ------
    SourceError
        The file is missing, unreadable, not CSV, or lacks required columns (all of them are
        listed in the message).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"DL_info.csv not found at {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except UnicodeDecodeError:
        raise SourceError(_decode_error(path)) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        # EmptyDataError is a ValueError subclass.
        raise SourceError(f"cannot read {path} as CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceError(f"{path} lacks column(s) {', '.join(missing)} "
                          f"(expected the official DeepLesion header: {', '.join(DL_INFO_COLUMNS)})")
    return table


def _decode_error(path: Path) -> str:
    """Where ``path`` stops being UTF-8: "<path> line L: byte 0xXX is not UTF-8 ..." (pandas's own
    error gives a position inside its read buffer, not the line)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return (f"{path} line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8 "
                "(save DL_info.csv as UTF-8)")
    return f"cannot read {path} as UTF-8 text"


#: RECIST axes are drawn perpendicular; two that cross at less than this angle (degrees) are
#: "nearly collinear": the mark does not describe a 2-D extent and the row is rejected.
MIN_RECIST_ANGLE_DEG = 45.0


def _measured_axes(recist: Recist, spacing_mm) -> Recist:
    """``recist`` with its long and short axes decided by their measured lengths in mm (a row
    whose "long" pair is the shorter one is swapped, so the long-axis filter and the crop see the
    long axis); raises :class:`RecistError` when the axes cross at less than
    :data:`MIN_RECIST_ANGLE_DEG` degrees (nearly collinear)."""
    def vec(a, b):
        return np.array([(b[0] - a[0]) * spacing_mm[0], (b[1] - a[1]) * spacing_mm[1]], dtype=np.float64)

    u, v = vec(recist.long_a, recist.long_b), vec(recist.short_a, recist.short_b)
    nu, nv = float(np.hypot(*u)), float(np.hypot(*v))
    if nu > 0 and nv > 0:
        angle = math.degrees(math.acos(min(1.0, abs(float(u @ v)) / (nu * nv))))
        if angle < MIN_RECIST_ANGLE_DEG:
            raise RecistError(f"RECIST axes cross at {angle:.1f} degrees (< {MIN_RECIST_ANGLE_DEG:g}: nearly "
                              "collinear, not a long and a short axis)")
    if nv > nu:
        return Recist(long_a=recist.short_a, long_b=recist.short_b, short_a=recist.long_a, short_b=recist.long_b)
    return recist


def parse_file_name(file_name: str) -> tuple[str, str]:
    """Split a ``File_name`` ``PPPPPP_SS_RR_KKK.png`` into (series folder, slice file name).

    The split is at the LAST underscore: slice numbers may have more than 3 digits.

    Raises
    ------
    ValueError
        Not ``<series>_<slice>.png`` (no ``.png`` suffix, no underscore, an empty part, or a path
        separator).
    """
    name = str(file_name).strip()
    if not name.endswith(".png") or "/" in name or "\\" in name:
        raise ValueError(f"File_name must be <series>_<slice>.png, got {file_name!r}")
    series, sep, slice_no = name[:-4].rpartition("_")
    if not sep or not series or not slice_no:
        raise ValueError(f"File_name must be <series>_<slice>.png, got {file_name!r}")
    return series, f"{slice_no}.png"


def _floats(cell: str, n: int, column: str) -> tuple[float, ...]:
    parts = [p.strip() for p in str(cell).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{column} is not {n} comma-separated numbers: {cell!r}") from None
    if len(values) != n:
        raise ValueError(f"{column} must have {n} numbers, got {len(values)}: {cell!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{column} has NaN/inf: {cell!r}")
    return values


def parse_spacing(cell: str) -> tuple[float, float]:
    """``Spacing_mm_px_`` "x, y, z" (mm) -> in-plane ``spacing_mm`` = (row_mm, col_mm).

    DeepLesion writes x (column spacing) first, then y (row spacing), then the slice interval z:
    so (row, col) = (y, x). Raises ValueError when the cell is not 3 positive finite numbers.
    """
    x_mm, y_mm, z_mm = _floats(cell, 3, "Spacing_mm_px_")
    if not (x_mm > 0 and y_mm > 0 and z_mm > 0):  # a zero or negative slice interval lies too
        raise ValueError(f"Spacing_mm_px_ must be positive (x, y and z), got {cell!r}")
    return (y_mm, x_mm)


def _int_cell(cell: str, column: str) -> int:
    try:
        value = float(str(cell).strip())
    except ValueError:
        raise ValueError(f"{column} is not an integer: {cell!r}") from None
    if not value.is_integer():
        raise ValueError(f"{column} is not an integer: {cell!r}")
    return int(value)


def _image_size_rc(cell: str) -> tuple[int, int]:
    """``Image_size`` "width, height" (x, y order like every DL_info pair) -> (rows, cols)."""
    width, height = _floats(cell, 2, "Image_size")
    if not (width.is_integer() and height.is_integer() and width >= 1 and height >= 1):
        raise ValueError(f"Image_size must be two positive integers, got {cell!r}")
    return int(height), int(width)


def _series_spacings(table, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Series folder -> the median (row_mm, col_mm) of its DL_info rows' in-plane spacing, over
    the whole CSV (malformed rows skipped), so a row can be checked against its series."""
    per_series: dict[str, list[tuple[float, float]]] = {}
    for name, cell in zip(names, table["Spacing_mm_px_"]):
        try:
            series, spacing = parse_file_name(name)[0], parse_spacing(cell)
        except ValueError:
            continue
        per_series.setdefault(series, []).append(spacing)
    return {series: (float(np.median([v[0] for v in values])), float(np.median([v[1] for v in values])))
            for series, values in per_series.items()}


def _sample_ids(file_names: Sequence[str]) -> list[str]:
    """``<stem>`` for a File_name seen once; ``<stem>-<k>`` (k = 1, 2, ... in row order) otherwise."""
    counts = Counter(file_names)
    seen: Counter = Counter()
    ids = []
    for name in file_names:
        stem = name[:-4] if name.endswith(".png") else name
        if counts[name] == 1:
            ids.append(stem)
        else:
            seen[name] += 1
            ids.append(f"{stem}-{seen[name]}")
    return ids


def _check_options(lesion_types, long_axis_mm, splits, crop_px, limit):
    if lesion_types is not None:
        if isinstance(lesion_types, (int, np.integer)) or not all(
                isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in lesion_types):
            raise InputError(f"lesion_types must be a sequence of ints (5 = lung, -1 = unlabelled) or None, "
                             f"got {lesion_types!r}")
    if long_axis_mm is not None:
        try:
            lo, hi = (float(v) for v in long_axis_mm)
        except (TypeError, ValueError):
            raise InputError(f"long_axis_mm must be (low, high) in mm or None, got {long_axis_mm!r}") from None
        if not (0 <= lo <= hi) or math.isnan(hi):
            raise InputError(f"long_axis_mm must satisfy 0 <= low <= high, got {long_axis_mm!r}")
    if splits is not None:
        if isinstance(splits, str):
            splits = (splits,)
        bad = [s for s in splits if s not in SPLIT_CODES.values()]
        if bad:
            raise InputError(f"splits must name official splits among {tuple(SPLIT_CODES.values())}, got {bad}")
    if not isinstance(crop_px, (int, np.integer)) or isinstance(crop_px, bool) or crop_px < 8:
        raise InputError(f"crop_px must be an int >= 8, got {crop_px!r}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be an int >= 1 or None, got {limit!r}")
    return splits


def plan_deeplesion(root, *, lesion_types: Iterable[int] | None = None, exclude_noisy: bool = True,
                    long_axis_mm: tuple[float, float] | None = None, splits: Iterable[str] | None = None,
                    crop_px: int = 64, limit: int | None = None, check_images: bool = True,
                    unselected: list | None = None) -> tuple[list[SampleRef], list[Reject]]:
    """Plan DeepLesion samples from ``root/DL_info.csv`` (no pixel is read).

    Order of the selection: the type / noisy / split filters (cheap, no parsing), then every
    remaining row is parsed (a malformed cell -> a :class:`Reject` naming the column), then the
    long-axis filter, then (``check_images``) one ``os.path.exists`` per row.

    Parameters
    ----------
    root : str or Path
        Folder with ``DL_info.csv`` and ``Images_png/``.
    lesion_types : iterable of int, optional
        ``Coarse_lesion_type`` values to keep (5 = lung, -1 = unlabelled); None keeps all. See the
        module docstring: training rows are all -1, so ``(5,)`` keeps only val/test rows and
        ``(5, -1)`` is not lung-only.
    exclude_noisy : bool
        Drop rows with ``Possibly_noisy`` = 1.
    long_axis_mm : (float, float), optional
        Inclusive range of the RECIST long axis in mm (its length from
        ``Measurement_coordinates`` with the row and column spacing); None keeps all.
    splits : iterable of {"train", "val", "test"}, optional
        Official ``Train_Val_Test`` splits to keep (1 train, 2 val, 3 test); None keeps all.
    crop_px : int
        Crop size of :func:`load_deeplesion` (stored in the payload).
    limit : int, optional
        Keep only the first ``limit`` refs by sample_id (after filtering).
    check_images : bool
        Reject rows whose key-slice PNG does not exist (reason "image missing: <path>"; when the
        root holds ``Images_png_NN.zip`` files, a slice neither extracted nor in any of them is
        "image missing (in none of the zips present): Images_png/<series>/<slice>.png").
    unselected : list, optional
        When given, a row left out by a filter is appended to it as
        :func:`~.base.unselected_row` (the filter's option name and why), for ``unselected.csv``.

    Returns
    -------
    refs : list of SampleRef
        Sorted by sample_id. ``source_key`` = ``File_name``, ``patient`` = ``Patient_index`` as
        6 digits (the folder prefix, e.g. "000001"), ``split`` = official split name. ``payload``:
        ``image_path`` (str), ``recist_rc`` (4 (row, col) source points: long a, long b, short a,
        short b), ``spacing_mm`` (row, col), ``lesion_type``, ``crop_px``, ``long_axis_mm``;
        for a slice read from a zip also ``image_zip`` (str) and ``image_member``; for a phantom
        source (``root/phantom_truth.npz`` exists) also ``truth_path`` (str) and ``truth_key``
        (the ``File_name``).
    rejects : list of Reject
        Stage "plan", sorted by sample_id: malformed cells ("<column> ...") and missing images.
        Rows left out by the filters are neither refs nor rejects.

    Raises
    ------
    SourceError
        ``DL_info.csv`` is missing, unreadable or lacks official columns.
    InputError
        An option is invalid (named in the message).
    """
    splits = _check_options(lesion_types, long_axis_mm, splits, crop_px, limit)
    root = Path(root)
    table = read_dl_info(root / "DL_info.csv")
    names = [str(n).strip() for n in table["File_name"]]
    ids = _sample_ids(names)
    types_keep = None if lesion_types is None else {int(t) for t in lesion_types}
    splits_keep = None if splits is None else set(splits)
    images_dir = root / "Images_png"
    series_spacing = _series_spacings(table, names)
    first_line: dict[tuple, int] = {}
    # A phantom source (softmask_builder.phantom) keeps its truth beside DL_info.csv: each ref then
    # names the file and its member, and load_deeplesion crops the true fraction with the image.
    truth_file = root / PHANTOM_TRUTH_FILE
    truth_path = str(truth_file) if truth_file.is_file() else None
    zips = None  # the zip index, built on the first row whose slice is not extracted

    refs: list[SampleRef] = []
    rejects: list[Reject] = []
    for line, row, name, sid in zip(range(2, len(names) + 2), table.itertuples(index=False), names, ids):
        cells = row._asdict()

        def reject(reason: str) -> None:
            rejects.append(Reject(sid, "plan", reason))

        # Cheap filters first; a malformed filter cell is a reject (the row cannot be classified).
        try:
            lesion_type = _int_cell(cells["Coarse_lesion_type"], "Coarse_lesion_type")
            noisy = _int_cell(cells["Possibly_noisy"], "Possibly_noisy")
            if noisy not in (0, 1):
                raise ValueError(f"Possibly_noisy must be 0 or 1, got {cells['Possibly_noisy']!r}")
            code = _int_cell(cells["Train_Val_Test"], "Train_Val_Test")
            if code not in SPLIT_CODES:
                raise ValueError(f"Train_Val_Test must be 1, 2 or 3, got {cells['Train_Val_Test']!r}")
        except ValueError as exc:
            reject(str(exc))
            continue
        split = SPLIT_CODES[code]
        left_out = unselected.append if unselected is not None else (lambda row: None)
        if types_keep is not None and lesion_type not in types_keep:
            left_out(unselected_row(sid, "lesion_types", f"Coarse_lesion_type {lesion_type} not in "
                                                         f"{sorted(types_keep)}"))
            continue
        if exclude_noisy and noisy == 1:
            left_out(unselected_row(sid, "exclude_noisy", "Possibly_noisy is 1"))
            continue
        if splits_keep is not None and split not in splits_keep:
            left_out(unselected_row(sid, "splits", f"official split {split} not in {sorted(splits_keep)}"))
            continue

        try:
            series, slice_file = parse_file_name(name)
            patient_index = _int_cell(cells["Patient_index"], "Patient_index")
            if patient_index < 0:
                raise ValueError(f"Patient_index must be >= 0, got {cells['Patient_index']!r}")
            folder_patient = series.split("_", 1)[0]
            if folder_patient.isdigit() and int(folder_patient) != patient_index:
                # The split is by Patient_index: a row that lies about it could put one patient's
                # images in two splits.
                raise ValueError(f"Patient_index {patient_index} disagrees with the patient of its File_name "
                                 f"{name} ({folder_patient})")
            spacing_mm = parse_spacing(cells["Spacing_mm_px_"])
            check_spacing_mm(spacing_mm, what="Spacing_mm_px_", stage="plan")
            reference = series_spacing.get(series)
            if reference is not None and spacing_differs(spacing_mm, reference):
                raise ImplausibleError(f"Spacing_mm_px_ {spacing_mm[1]:g}, {spacing_mm[0]:g} differs by more than "
                                       f"1 % from its series' ({reference[1]:g}, {reference[0]:g}, the median of "
                                       f"the series' rows)")
            image_size_rc = _image_size_rc(cells["Image_size"])
            coords = _floats(cells["Measurement_coordinates"], 8, "Measurement_coordinates")
            recist = _measured_axes(Recist.from_deeplesion(coords), spacing_mm)  # (x, y) -> (row, col)
        except (ValueError, RecistError) as exc:
            reject(str(exc.reason if isinstance(exc, RecistError) else exc))
            continue
        d_row = (recist.long_b[0] - recist.long_a[0]) * spacing_mm[0]
        d_col = (recist.long_b[1] - recist.long_a[1]) * spacing_mm[1]
        long_mm = math.hypot(d_row, d_col)
        if long_axis_mm is not None and not (long_axis_mm[0] <= long_mm <= long_axis_mm[1]):
            left_out(unselected_row(sid, "long_axis_mm", f"long axis {long_mm:.2f} mm outside "
                                                         f"[{long_axis_mm[0]:g}, {long_axis_mm[1]:g}]"))
            continue
        duplicate_of = first_line.setdefault(tuple(cells.values()), line)
        if duplicate_of != line:
            reject(f"duplicate of DL_info line {duplicate_of} (every cell equal; the first is kept)")
            continue
        image_path = images_dir / series / slice_file
        truth_fields = {} if truth_path is None else {"truth_path": truth_path, "truth_key": name}
        in_zip = None
        if not image_path.is_file():
            if zips is None:
                from softmask_builder.sources.dlzip import zip_member_index

                zips = zip_member_index(root)
            member = f"Images_png/{series}/{slice_file}"
            in_zip = zips.find(member) if zips else None
            if check_images and in_zip is None and zips:
                reject(f"image missing (in none of the zips present): {member}")
                continue
        if check_images and in_zip is None and not image_path.is_file():
            reject(f"image missing: {image_path}")
            continue
        zip_fields = {} if in_zip is None else {"image_zip": str(root / in_zip), "image_member": member}
        zip_fields.update(truth_fields)
        refs.append(SampleRef(
            sample_id=sid, source_key=name, patient=f"{patient_index:06d}", split=split,
            payload={
                "image_path": str(image_path),
                "recist_rc": tuple(tuple(p) for p in recist.as_array().tolist()),
                "spacing_mm": spacing_mm,
                "lesion_type": lesion_type,
                "crop_px": int(crop_px),
                "long_axis_mm": long_mm,
                "image_size_rc": image_size_rc,
                **zip_fields,
            }))
    refs.sort(key=lambda r: r.sample_id)
    rejects.sort(key=lambda r: (r.sample_id, r.reason))
    if limit is not None:
        refs = refs[:limit]
    return refs, rejects


# --- pixels -----------------------------------------------------------------------------------

def read_png_hu(path, *, hu_offset: int = PNG_HU_OFFSET, sample_id: str | None = None,
                stage: str = _STAGE_LOAD) -> np.ndarray:
    """Read a single-channel 16-bit PNG and return float32 (rows, cols) HU = value - ``hu_offset``.

    The file is decoded with ``cv2.IMREAD_UNCHANGED`` (the default flag silently converts to
    8 bits). float32 holds every uint16 - 32768 exactly.

    Raises
    ------
    SoftMaskError
        (stage ``stage``, with ``sample_id``) the file is missing or unreadable; it cannot be
        decoded (truncated/corrupt PNG); it is 8-bit ("8-bit PNG, expected 16-bit"); it has
        several channels.
    """
    try:
        # np.fromfile + imdecode instead of imread: a missing/unreadable file is an OSError that
        # names the cause, not a None with a warning on stderr.
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise SoftMaskError(f"cannot read {path}: {exc.strerror or exc}", sample_id=sample_id, stage=stage) from None
    return decode_png_hu(data, name=str(path), hu_offset=hu_offset, sample_id=sample_id, stage=stage)


def decode_png_hu(data, *, name: str, hu_offset: int = PNG_HU_OFFSET, sample_id: str | None = None,
                  stage: str = _STAGE_LOAD) -> np.ndarray:
    """Decode the bytes of a single-channel 16-bit PNG (``name`` says where they came from in
    messages) to float32 (rows, cols) HU = value - ``hu_offset``; errors as :func:`read_png_hu`."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    path = name
    check_png_size(data, name=path, sample_id=sample_id, stage=stage)  # before any allocation
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise SoftMaskError(f"cannot decode {path} (truncated or corrupt PNG)", sample_id=sample_id, stage=stage)
    if image.ndim != 2:
        raise SoftMaskError(f"{path} has {image.shape[2]} channels, expected one (greyscale)",
                            sample_id=sample_id, stage=stage)
    if image.dtype != np.uint16:
        bits = "8-bit" if image.dtype == np.uint8 else str(image.dtype)
        raise SoftMaskError(f"{bits} PNG, expected 16-bit: {path}", sample_id=sample_id, stage=stage)
    return (image.astype(np.float32) - np.float32(hu_offset)).astype(np.float32)


def read_key_slice_hu(payload, *, sample_id: str | None = None, stage: str = _STAGE_LOAD) -> np.ndarray:
    """The planned slice of a DeepLesion ref in HU: from its zip member when the plan found it in
    an ``Images_png_NN.zip`` (payload ``image_zip``, ``image_member``), else from the extracted
    ``image_path``. Errors name ``Images_png_NN.zip:Images_png/...`` for zip members."""
    zip_path = payload.get("image_zip")
    if zip_path is None:
        path = payload["image_path"]
        if not os.path.isfile(path):
            raise SoftMaskError(f"image missing: {path}", sample_id=sample_id, stage=stage)
        return read_png_hu(path, sample_id=sample_id, stage=stage)
    import zipfile

    from softmask_builder.sources.dlzip import read_member

    member = payload["image_member"]
    name = f"{os.path.basename(zip_path)}:{member}"
    try:
        data = read_member(zip_path, member)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError) as exc:
        # zlib.error (a corrupt deflate stream) is not an OSError: caught below by its base.
        raise SoftMaskError(f"cannot read {name}: {exc}", sample_id=sample_id, stage=stage) from None
    except Exception as exc:  # zlib.error and friends from a damaged member
        raise SoftMaskError(f"cannot read {name}: {type(exc).__name__}: {exc}", sample_id=sample_id,
                            stage=stage) from None
    return decode_png_hu(data, name=name, sample_id=sample_id, stage=stage)


def _endpoint_center(points_rc: np.ndarray) -> tuple[float, float]:
    # The centre of the endpoints' bounding box rather than the axes' crossing: annotators often
    # cross the long axis off its middle, and this keeps the whole mark centred in the crop.
    lo, hi = points_rc.min(axis=0), points_rc.max(axis=0)
    return float((lo[0] + hi[0]) / 2.0), float((lo[1] + hi[1]) / 2.0)


def load_deeplesion(ref: SampleRef) -> SampleRecord:
    """Load one planned DeepLesion lesion as a cropped :class:`SampleRecord` (prior_kind "recist").

    Steps: read the key slice (:func:`read_png_hu`: uint16 - 32768 -> float32 HU); validate the
    RECIST mark against the slice (:func:`softmask_builder.labelling.recist.validate_recist`: finite, both
    axes >= 0.5 px, every endpoint inside the image, axes crossing); crop ``crop_px`` x ``crop_px``
    around the centre of the endpoints' bounding box with :func:`softmask_builder.labelling.crop.crop_plan`
    (extent = long axis in px: a lesion longer than 0.75 * crop_px is down-scaled to fit, never
    up-scaled) and :func:`~softmask_builder.labelling.crop.crop_image` (pixels beyond the slice border are
    edge replicated, so lesions at the border work).

    Returns
    -------
    SampleRecord
        ``image_hu`` float32 (crop_px, crop_px); ``prior`` the mark in crop pixels
        (``recist.shifted(-origin).scaled(scale)``); ``spacing_mm`` = source spacing / scale;
        ``origin_px``, ``scale`` as in :mod:`softmask_builder.labelling.crop`; ``lesion_type`` from DL_info.

    Raises
    ------
    SoftMaskError
        With the sample id and stage "load": missing/unreadable/truncated/8-bit PNG.
    RecistError
        (an InputError) with the sample id and stage "load": the mark does not fit the slice.
    """
    sid = ref.sample_id
    p = ref.payload
    image_hu = read_key_slice_hu(p, sample_id=sid)
    size_rc = p.get("image_size_rc")
    if size_rc is not None and tuple(image_hu.shape) != tuple(size_rc):
        raise SourceError(f"PNG is {image_hu.shape[0]}x{image_hu.shape[1]} (rows x cols) but DL_info Image_size says "
                          f"{size_rc[1]}, {size_rc[0]} (width, height)", sample_id=sid, stage=_STAGE_LOAD)
    check_image_hu(image_hu, sample_id=sid, stage=_STAGE_LOAD)
    try:
        recist = validate_recist(Recist.from_array(p["recist_rc"]), image_hu.shape, sample_id=sid)
    except RecistError as exc:
        raise RecistError(exc.reason, sample_id=sid, stage=_STAGE_LOAD) from None
    crop_px = int(p["crop_px"])
    center = _endpoint_center(recist.as_array())
    origin, scale = crop_plan(center, size_px=crop_px, extent_px=recist.long_px)
    crop = crop_image(image_hu, origin, scale, size_px=crop_px)
    prior = recist.shifted(-origin[0], -origin[1]).scaled(scale)
    spacing = (float(p["spacing_mm"][0]) / scale, float(p["spacing_mm"][1]) / scale)
    truth = None
    if p.get("truth_path"):
        full = read_phantom_truth(p["truth_path"], p["truth_key"], image_hu.shape, sample_id=sid)
        # the same crop and scale as the image: a down-scaled fraction is the area-weighted mean
        truth = np.clip(crop_image(full, origin, scale, size_px=crop_px), 0.0, 1.0).astype(np.float32)
    return SampleRecord(ref=ref, image_hu=crop.astype(np.float32, copy=False), prior_kind="recist", prior=prior,
                        spacing_mm=spacing, origin_px=(float(origin[0]), float(origin[1])), scale=float(scale),
                        n_readers=-1, lesion_type=int(p["lesion_type"]), true_fraction=truth)


def read_phantom_truth(truth_path, file_name: str, shape_rc: tuple[int, int], *,
                       sample_id: str | None = None) -> np.ndarray:
    """The true partial-volume fraction of the key slice ``file_name`` from a phantom source's
    ``phantom_truth.npz`` (member ``<File_name>/true_fraction``): float32 (rows, cols) equal in
    shape to the slice ``shape_rc``.

    Raises
    ------
    SourceError
        (stage "load", with ``sample_id``) the file is unreadable, lacks the member, or the array
        is not a finite (rows, cols) array of the slice's shape.
    """
    import zipfile

    name = os.path.basename(str(truth_path))
    try:
        with np.load(truth_path, allow_pickle=False) as z:
            truth = np.asarray(z[f"{file_name}/true_fraction"], dtype=np.float32)
    except KeyError:
        raise SourceError(f"{name} has no true_fraction for {file_name}", sample_id=sample_id,
                          stage=_STAGE_LOAD) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"cannot read {name}: {exc}", sample_id=sample_id, stage=_STAGE_LOAD) from None
    if truth.shape != tuple(shape_rc) or not np.isfinite(truth).all():
        raise SourceError(f"{name}: true_fraction of {file_name} has shape {truth.shape} (slice {tuple(shape_rc)}) "
                          "or non-finite values", sample_id=sample_id, stage=_STAGE_LOAD)
    return truth
