"""The phantoms' DeepLesion-layout writer and the reader of their truth file.

Layout written by :func:`write_deeplesion` (the real dataset's quirks are kept):
``Images_png/<PPPPPP_SS_RR>/<KKK>.png`` (16-bit PNG, value = HU + 32768), ``DL_info.csv`` with
the official 18 columns (x = column everywhere, numbers in ``%g`` format), and beside them the
truth ``phantom_truth.npz`` (not part of DeepLesion; :func:`read_truth` reads it back). As in the
real file, ``Coarse_lesion_type`` is -1 (unlabelled) on every training-split row and 5 (lung) on
validation/test rows, unless ``label_train_rows=True``.

Contract: the bytes of every file depend only on the cases (a fixed zip timestamp, sorted rows);
each file appears under its final name whole (:mod:`softmask_builder.core.atomic`). The cases are
:class:`~softmask_builder.phantom.cases.PhantomCase` (analytic) or
:class:`~softmask_builder.phantom.hybrid.HybridCase` (whose ``truth_extra()`` adds columns), consumed
one at a time. :func:`write_sample` and :func:`write_replicated_sample` write the analytic sample.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from softmask_builder.core import atomic
from softmask_builder.errors import InputError
from softmask_builder.phantom.cases import SPLIT_CODES, PhantomCase, iter_cases
from softmask_builder.sources.deeplesion import DL_INFO_COLUMNS, PHANTOM_TRUTH_FILE, PNG_HU_OFFSET

__all__ = ["TRUTH_FILE", "dl_info_row", "encode_png_hu", "write_deeplesion", "read_truth", "write_sample",
           "write_replicated_sample"]

LUNG_LESION_TYPE = 5
#: DeepLesion's lung window (its lung rows carry "-1500, 500").
LUNG_WINDOW_HU = (-1500.0, 500.0)
#: Padding DeepLesion adds around the RECIST extent to make ``Bounding_boxes``.
BBOX_PAD_PX = 5.0
PNG_OFFSET = PNG_HU_OFFSET
#: The DeepLesion adapter picks this file up and the build writes each crop's ``true_fraction``.
TRUTH_FILE = PHANTOM_TRUTH_FILE
# A fixed zip timestamp keeps the truth file byte-identical between runs.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _g(v: float) -> str:
    """DeepLesion's number format (C ``%g``: 6 significant digits, no trailing zeros)."""
    return "%g" % float(v)


def _join(values) -> str:
    return ", ".join(_g(v) for v in values)


def dl_info_row(case: PhantomCase, *, label_train_rows: bool = False) -> list[str]:
    """The DL_info.csv cells of one case, in :data:`DL_INFO_COLUMNS` order."""
    pts = case.recist.as_array()  # (row, col)
    xy = pts[:, ::-1]  # DeepLesion writes x (column) first
    long_px = float(np.hypot(*(pts[0] - pts[1])))
    short_px = float(np.hypot(*(pts[2] - pts[3])))
    bbox = (xy[:, 0].min() - BBOX_PAD_PX, xy[:, 1].min() - BBOX_PAD_PX,
            xy[:, 0].max() + BBOX_PAD_PX, xy[:, 1].max() + BBOX_PAD_PX)
    lesion_type = LUNG_LESION_TYPE if (case.split != "train" or label_train_rows) else -1
    rows, cols = case.image_hu.shape
    lo = case.key_slice_index + min((0,) + case.neighbor_offsets)
    hi = case.key_slice_index + max((0,) + case.neighbor_offsets)
    return [
        case.file_name, str(case.patient_index), str(case.study_index), str(case.series_index),
        str(case.key_slice_index), _join(xy.ravel()), _join(bbox), _join((long_px, short_px)),
        _join(case.normalized_location), str(lesion_type), "0", f"{lo}, {hi}",
        _join((case.spacing_mm[1], case.spacing_mm[0], case.slice_thickness_mm)), f"{cols}, {rows}",
        _join(LUNG_WINDOW_HU), case.patient_gender, str(case.patient_age), str(SPLIT_CODES[case.split]),
    ]


def encode_png_hu(image_hu: np.ndarray) -> bytes:
    """16-bit PNG bytes of an HU slice, value = HU + 32768 (DeepLesion's encoding)."""

    arr = np.asarray(image_hu)
    if arr.ndim != 2:
        raise InputError(f"image_hu must be 2-D, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):  # int16 slices: no rounding needed (same bytes, faster)
        vals = arr.astype(np.int32) + PNG_OFFSET
    else:
        vals = np.round(arr.astype(np.float64)) + PNG_OFFSET
    if vals.min() < 0 or vals.max() > 65535:
        raise InputError("image_hu is outside the 16-bit PNG range [-32768, 32767] HU")
    ok, buf = cv2.imencode(".png", vals.astype(np.uint16))
    if not ok:  # pragma: no cover - cv2 fails only on unsupported arrays
        raise InputError("cv2 could not encode the slice as PNG")
    return buf.tobytes()


def _npy_bytes(arr) -> bytes:
    bio = io.BytesIO()
    np.lib.format.write_array(bio, np.asarray(arr), allow_pickle=False)
    return bio.getvalue()


def write_deeplesion(root, cases: Iterable[PhantomCase], *, label_train_rows: bool = False) -> Path:
    """Write ``cases`` in the exact DeepLesion layout under ``root`` and the truth beside it.

    Layout::

        root/Images_png/<PPPPPP_SS_RR>/<KKK>.png   key slice and neighbours, uint16 = HU + 32768
        root/DL_info.csv                           official 18 columns, one row per case, sorted
        root/phantom_truth.npz                     the truth (not part of DeepLesion)

    ``phantom_truth.npz`` holds ``file_name`` (N,) str, ``kind`` (N,) str, ``diameter_mm`` (N,),
    ``recist_px`` (N, 4, 2) (row, col: long a, long b, short a, short b), ``spacing_mm`` (N, 2)
    (row, col), ``slice_thickness_mm`` (N,), ``nodule_hu`` (N,), and per case
    ``<File_name>/true_fraction`` (float32 rows x cols), ``<File_name>/true_mask`` (bool) and
    ``<File_name>/apparent_fraction`` (float32, the PSF-blurred fraction). Cases that have a
    ``truth_extra()`` method (:class:`softmask_builder.phantom.hybrid.HybridCase`) add its scalars as (N,) columns and its
    arrays as ``<File_name>/<key>`` (when every case has one).
    Every file is written to a temporary name and renamed; the bytes depend only on the cases.
    Existing files of the same names are replaced, other files are left alone.

    Returns
    -------
    Path
        The truth file (its parent is ``root``).

    Raises
    ------
    InputError
        No case, or two cases with the same series folder (each case owns its series).
    """
    root = Path(root)
    images = root / "Images_png"
    images.mkdir(parents=True, exist_ok=True)
    truth_path = root / TRUTH_FILE
    # The truth is streamed into a temporary zip (one case's arrays at a time, so a sample of
    # thousands of 512 x 512 cases never sits in memory), the per-sample columns last; renamed
    # into place at the end.
    with atomic.replacing(truth_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            _write_cases(zf, images, cases, root, label_train_rows)
    return truth_path


def _zip_add(zf: zipfile.ZipFile, key: str, arr) -> None:
    info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, _npy_bytes(arr))


def _write_cases(zf: zipfile.ZipFile, images: Path, cases, root: Path, label_train_rows: bool) -> None:
    rows_out, meta, extras = [], [], []
    seen_series = set()
    for case in cases:
        if case.series_dir in seen_series:
            raise InputError(f"two cases share the series folder {case.series_dir}", sample_id=case.file_name)
        seen_series.add(case.series_dir)
        series = images / case.series_dir
        series.mkdir(exist_ok=True)
        for off, img in [(0, case.image_hu)] + list(zip(case.neighbor_offsets, case.neighbor_hu)):
            atomic.write_bytes(series / f"{case.key_slice_index + off:03d}.png", encode_png_hu(img))
        rows_out.append(dl_info_row(case, label_train_rows=label_train_rows))
        name = case.file_name
        _zip_add(zf, f"{name}/true_fraction", case.true_fraction.astype(np.float32))
        _zip_add(zf, f"{name}/true_mask", case.true_mask.astype(bool))
        _zip_add(zf, f"{name}/apparent_fraction", case.apparent_fraction.astype(np.float32))
        meta.append((name, case.kind, case.diameter_mm, case.recist.as_array(), case.spacing_mm,
                     case.slice_thickness_mm, case.nodule_hu))
        # Hybrid cases (softmask_builder.phantom.hybrid) carry more truth: per-case scalars become (N,)
        # columns, arrays <File_name>/<key>.
        extra = case.truth_extra() if hasattr(case, "truth_extra") else None
        if extra is not None:
            for key, arr in extra["arrays"].items():
                _zip_add(zf, f"{name}/{key}", np.asarray(arr))
        extras.append((name, extra["scalars"] if extra is not None else None))
    if not rows_out:
        raise InputError("no case to write")
    rows_out.sort(key=lambda r: r[0])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(DL_INFO_COLUMNS)
    writer.writerows(rows_out)
    atomic.write_bytes(root / "DL_info.csv", text.getvalue().encode("utf-8"))

    meta.sort(key=lambda m: m[0])
    entries = {
        "file_name": np.array([m[0] for m in meta]),
        "kind": np.array([m[1] for m in meta]),
        "diameter_mm": np.array([m[2] for m in meta], dtype=np.float64),
        "recist_px": np.stack([m[3] for m in meta]),
        "spacing_mm": np.array([m[4] for m in meta], dtype=np.float64),
        "slice_thickness_mm": np.array([m[5] for m in meta], dtype=np.float64),
        "nodule_hu": np.array([m[6] for m in meta], dtype=np.float64),
    }
    extras.sort(key=lambda e: e[0])
    if extras and all(e[1] is not None for e in extras):
        for key in extras[0][1]:
            entries[key] = np.array([e[1][key] for e in extras])
    for key, arr in entries.items():
        _zip_add(zf, key, arr)


def read_truth(path) -> dict[str, dict]:
    """Read ``phantom_truth.npz`` into ``{File_name: {kind, diameter_mm, recist_px, spacing_mm,
    slice_thickness_mm, nodule_hu, true_fraction, true_mask, apparent_fraction}}``, plus for a
    hybrid sample shape_id, lidc_patient_id, placement, background_id, z_offset_mm,
    rotation_deg, psf_sigma_px, noise_hu, reader_masks and core_fraction."""
    out = {}
    with np.load(Path(path), allow_pickle=False) as z:
        members = set(z.files)
        for i, name in enumerate(z["file_name"].tolist()):
            out[name] = {
                "kind": str(z["kind"][i]), "diameter_mm": float(z["diameter_mm"][i]),
                "recist_px": z["recist_px"][i], "spacing_mm": tuple(z["spacing_mm"][i].tolist()),
                "slice_thickness_mm": float(z["slice_thickness_mm"][i]), "nodule_hu": float(z["nodule_hu"][i]),
                "true_fraction": z[f"{name}/true_fraction"], "true_mask": z[f"{name}/true_mask"],
                "apparent_fraction": z[f"{name}/apparent_fraction"],
            }
            # hybrid extras (see write_deeplesion)
            for key in ("shape_id", "lidc_patient_id", "placement", "background_id"):
                if key in z.files:
                    out[name][key] = str(z[key][i])
            for key in ("z_offset_mm", "rotation_deg", "psf_sigma_px", "noise_hu"):
                if key in z.files:
                    out[name][key] = float(z[key][i])
            for key in ("reader_masks", "core_fraction"):
                if f"{name}/{key}" in members:
                    out[name][key] = z[f"{name}/{key}"]
    return out


def write_sample(root, *, n: int = 60, seed: int = 0, label_train_rows: bool = False, **case_kwargs) -> Path:
    """Write the bundled sample dataset: ``n`` phantom cases (every kind, 3-30 mm, splits by
    patient; see :func:`generate_cases`, which gets ``case_kwargs``) in the DeepLesion layout
    under ``root``, streaming one case at a time. Returns the truth file's path.

    60 cases take ~10 s on one core (rendering ~0.15 s and PNG encoding ~0.02 s per case).
    """
    return write_deeplesion(root, iter_cases(n, seed=seed, **case_kwargs), label_train_rows=label_train_rows)


def write_replicated_sample(root, *, n: int, unique: int, seed: int = 0) -> Path:
    """A DeepLesion-layout source with ``n`` lesions (key slices only) made from ``unique``
    phantom cases, each copy a new patient/series: cheap many-lesion sources for build benchmarks
    and process tests. ``root/cases`` holds the phantom cases, ``root/source`` (returned) the source;
    its DL_info rows keep the cases' marks. Deterministic for (n, unique, seed)."""
    import shutil

    root = Path(root)
    cases = root / "cases"
    write_sample(cases, n=min(unique, n), seed=seed, n_neighbors=0)
    with open(cases / "DL_info.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    source = root / "source"
    out_rows = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        series, key = row["File_name"].rsplit("_", 1)
        new_series = f"{i + 1:06d}_01_01"
        folder = source / "Images_png" / new_series
        folder.mkdir(parents=True)
        shutil.copyfile(cases / "Images_png" / series / key, folder / key)
        row.update(File_name=f"{new_series}_{key}", Patient_index=str(i + 1), Study_index="1", Series_ID="1")
        out_rows.append(row)
    with open(source / "DL_info.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(out_rows)
    return source
