"""Full-slice adapter for the SR teacher: every PNG under ``<root>/Images_png`` as one slice in HU.

Reads the DeepLesion layout (``Images_png/<PPPPPP_SS_RR>/<KKK>.png``, uint16 = HU + 32768), so it
serves the real DeepLesion download and the bundled phantom sample alike (both are written in that
layout). Key slices and their neighbours are all taken. DICOM-folder slices (LIDC) are read by
:func:`softmask_builder.sources.lidc.plan_lidc_slices`.

Per slice:

* ``sample_id`` = ``<PPPPPP_SS_RR>_<KKK>`` (the DeepLesion ``File_name`` stem), ``source_key`` =
  that plus ``.png``;
* ``patient`` = the series folder name up to its first ``_`` (``PPPPPP``, the same 6-digit id
  :func:`~softmask_builder.sources.deeplesion.plan_deeplesion` uses), or the whole folder name;
* ``spacing_mm`` = (row, col) from ``Spacing_mm_px_`` of the series' rows in ``DL_info.csv``
  (DeepLesion writes x, y, z; spacing is per series, so neighbour slices share it). When the root
  has no ``DL_info.csv`` or the series has no row, the spacing is (NaN, NaN): unknown, stored as
  NaN in the slice shard (an SR teacher that needs mm must skip such slices). A series whose rows
  disagree on the spacing or hold a malformed one is rejected (stage "plan").
* ``split`` = the patient's official ``Train_Val_Test`` split when all of that patient's rows agree
  (DeepLesion splits by patient), else None.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from softmask_builder.errors import InputError, SourceError
from softmask_builder.sources.plausibility import check_image_hu, check_spacing_mm
from softmask_builder.sources.base import Reject, SampleRef, SliceRecord
from softmask_builder.sources.deeplesion import SPLIT_CODES, parse_file_name, parse_spacing, read_dl_info, read_key_slice_hu

__all__ = ["plan_deeplesion_slices", "load_slice"]

_NAN_SPACING = (math.nan, math.nan)


def _dl_info_lookup(path: Path):
    """(series -> spacing or error string, patient -> set of split names) from DL_info.csv."""
    table = read_dl_info(path, required=("File_name", "Patient_index", "Spacing_mm_px_", "Train_Val_Test"))
    spacings: dict[str, set] = defaultdict(set)
    errors: dict[str, str] = {}
    splits: dict[str, set] = defaultdict(set)
    for name, patient, spacing, code in zip(table["File_name"], table["Patient_index"], table["Spacing_mm_px_"],
                                            table["Train_Val_Test"]):
        try:
            series, _ = parse_file_name(name)
        except ValueError:
            continue  # a row that names no slice cannot describe a series
        try:
            spacings[series].add(parse_spacing(spacing))
        except ValueError as exc:
            errors[series] = f"DL_info row {name}: {exc}"
        try:
            splits[f"{int(patient.strip()):06d}"].add(SPLIT_CODES[int(code.strip())])
        except (ValueError, KeyError):
            pass  # an unreadable split leaves the patient's split to its other rows (or None)
    return spacings, errors, splits


def _slice_files(root: Path, images_dir: Path) -> dict[str, dict[str, dict]]:
    """series -> slice file name -> payload fields, from extracted ``Images_png/`` folders and the
    official ``Images_png_NN.zip`` files under ``root`` (extracted slices win)."""
    from softmask_builder.sources.dlzip import zip_member_index

    zips = zip_member_index(root)
    if not images_dir.is_dir() and not zips:
        raise SourceError(f"Images_png folder not found under {root} (nor any Images_png_NN.zip)")
    files: dict[str, dict[str, dict]] = defaultdict(dict)
    if images_dir.is_dir():
        for series_dir in (p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for png in series_dir.glob("*.png"):
                files[series_dir.name][png.name] = {"image_path": str(png)}
    for member, zip_name in zips.members().items():
        parts = member.split("/")
        if len(parts) != 3 or parts[1].startswith(".") or parts[2] in files.get(parts[1], {}):
            continue
        files[parts[1]][parts[2]] = {"image_path": str(images_dir / parts[1] / parts[2]),
                                     "image_zip": str(root / zip_name), "image_member": member}
    return files


def plan_deeplesion_slices(root, *, limit: int | None = None) -> tuple[list[SampleRef], list[Reject]]:
    """Plan every ``Images_png/<series>/<slice>.png`` under ``root`` as a full slice (no pixel read).

    Parameters
    ----------
    root : str or Path
        Folder with ``Images_png/`` and/or the official ``Images_png_NN.zip`` files (read in
        place, :mod:`.dlzip`), and optionally ``DL_info.csv``.
    limit : int, optional
        Keep the first ``limit`` refs by sample_id.

    Returns
    -------
    refs : list of SampleRef
        Sorted by sample_id (see the module docstring for the fields); ``payload``:
        ``image_path`` (str), ``spacing_mm`` ((row, col) floats, NaN when unknown).
    rejects : list of Reject
        Stage "plan": slices of a series with conflicting or malformed spacing in DL_info.

    Raises
    ------
    SourceError
        ``root/Images_png`` is missing, or ``DL_info.csv`` exists but is unreadable or lacks
        ``File_name``, ``Patient_index``, ``Spacing_mm_px_`` or ``Train_Val_Test``.
    """
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be an int >= 1 or None, got {limit!r}")
    root = Path(root)
    images_dir = root / "Images_png"
    files = _slice_files(root, images_dir)
    dl_info = root / "DL_info.csv"
    if dl_info.exists():
        spacings, errors, patient_splits = _dl_info_lookup(dl_info)
    else:
        spacings, errors, patient_splits = {}, {}, {}

    refs, rejects = [], []
    for series in sorted(files):
        patient = series.split("_", 1)[0] or series
        known = spacings.get(series, set())
        reason = errors.get(series)
        if reason is None and len(known) > 1:
            reason = f"DL_info rows of series {series} disagree on Spacing_mm_px_: {sorted(known)}"
        spacing = next(iter(known)) if len(known) == 1 else _NAN_SPACING
        split_set = patient_splits.get(patient, set())
        split = next(iter(split_set)) if len(split_set) == 1 else None
        for name in sorted(files[series]):
            sid = f"{series}_{name[:-4]}"
            if reason is not None:
                rejects.append(Reject(sid, "plan", reason))
                continue
            refs.append(SampleRef(sample_id=sid, source_key=f"{sid}.png", patient=patient, split=split,
                                  payload={**files[series][name], "spacing_mm": spacing}))
    refs.sort(key=lambda r: r.sample_id)
    rejects.sort(key=lambda r: r.sample_id)
    if limit is not None:
        refs = refs[:limit]
    return refs, rejects


def load_slice(ref: SampleRef) -> SliceRecord:
    """Read one planned slice: float32 (rows, cols) HU = PNG value - 32768.

    Raises
    ------
    SoftMaskError
        With the sample id and stage "load": the PNG is missing, unreadable, truncated, 8-bit or
        colour (see :func:`softmask_builder.sources.deeplesion.read_png_hu`).
    """
    image_hu = read_key_slice_hu(ref.payload, sample_id=ref.sample_id)
    check_image_hu(image_hu, sample_id=ref.sample_id, stage="load")
    row_mm, col_mm = ref.payload["spacing_mm"]
    if math.isfinite(row_mm) and math.isfinite(col_mm):  # NaN: unknown (no DL_info row), kept
        check_spacing_mm((row_mm, col_mm), what="Spacing_mm_px_", sample_id=ref.sample_id, stage="load")
    return SliceRecord(ref=ref, image_hu=image_hu, spacing_mm=(float(row_mm), float(col_mm)))
