"""Real CT backgrounds for the hybrid phantom: stacks of contiguous slices from a LIDC-IDRI
DICOM root or a DeepLesion root, with a lung mask and the area no inserted lesion may touch.

``load_backgrounds(root)`` returns a list of :class:`~softmask_builder.phantom.hybrid.Background`:

* the root is DeepLesion when it holds ``DL_info.csv`` (images read by
  :func:`.deeplesion.read_png_hu`, HU = PNG - 32768), else a LIDC DICOM root
  (:func:`.lidc.plan_lidc_slices` / :func:`.lidc.load_lidc_slice`);
* one background per slice that has both neighbours (``n_neighbors`` on each side) at equal
  spacing; the slice spacing is used as the slice thickness of the inserted lesion (contiguous
  slices);
* ``exclude``: DeepLesion: every ``Bounding_boxes`` of the series, enlarged by ``exclusion_mm``
  (DeepLesion marks a lesion on its key slice only; the box stands for its neighbours too);
  LIDC: the union of every reader contour of the scan (any z), filled, dilated by
  ``exclusion_mm``;
* slices whose lung mask (:func:`~softmask_builder.phantom.hybrid.lung_mask`) is smaller than
  ``min_lung_mm2`` (liver slices, apices) are skipped, listed in ``skipped`` with the reason;
* ``noise_hu``: :func:`~softmask_builder.phantom.hybrid.measure_noise_hu` in the lungs of the key slice.

Licences: LIDC-IDRI CC BY 3.0 (TCIA); DeepLesion: NIH Clinical Center terms (see the README of the
data folder and the dataset card).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from softmask_builder.errors import SoftMaskError, SourceError

__all__ = ["load_backgrounds", "LIDC_LICENSE", "DEEPLESION_LICENSE"]

LIDC_LICENSE = "LIDC-IDRI (TCIA), CC BY 3.0; Armato III SG et al., Med. Phys. 38:915-931 (2011)"
DEEPLESION_LICENSE = "DeepLesion (NIH Clinical Center) terms; Yan K. et al., J. Med. Imaging 5(3):036501 (2018)"


def _dilate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    if not mask.any():
        return mask
    r = max(int(math.ceil(radius_px)), 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), disk).astype(bool)


def _stacks(zs: list[float], n_neighbors: int, tol_mm: float = 0.02):
    """Indices (i - n .. i + n) of every slice with equally spaced neighbours on both sides."""
    out = []
    for i in range(n_neighbors, len(zs) - n_neighbors):
        idx = list(range(i - n_neighbors, i + n_neighbors + 1))
        steps = np.diff([zs[j] for j in idx])
        if n_neighbors == 0 or (np.all(steps > 0) and np.ptp(steps) <= tol_mm):
            out.append(idx)
    return out


def _make(background_id, images, spacing_mm, thickness_mm, key, exclude, min_lung_mm2, source, license_, skipped):
    from softmask_builder.phantom.hybrid import Background, lung_mask, measure_noise_hu

    stack = np.stack(images).astype(np.float32)
    lungs = np.stack([lung_mask(im, spacing_mm=spacing_mm) for im in stack])
    area = float(lungs[key].sum()) * spacing_mm ** 2
    if area < min_lung_mm2:
        skipped.append({"background_id": background_id, "reason": f"lung area {area:.0f} mm^2 < {min_lung_mm2:g}"})
        return None
    noise = measure_noise_hu(stack[key], lungs[key])
    return Background(background_id, stack, None, lungs, exclude, key, float(spacing_mm), float(thickness_mm), None,
                      float(noise), source, license_)


def _deeplesion(root: Path, n_neighbors, exclusion_mm, min_lung_mm2, skipped):
    from softmask_builder.sources.deeplesion import parse_file_name, parse_spacing, read_dl_info, read_png_hu

    info = read_dl_info(root / "DL_info.csv")
    boxes: dict[str, list] = {}
    spacing: dict[str, tuple[float, float]] = {}
    for line, (_, row) in enumerate(info.iterrows(), start=2):
        # A bad row is a skipped row naming its DL_info line; the other rows still give backgrounds.
        try:
            series, _ = parse_file_name(row["File_name"])
            x0, y0, x1, y1 = (float(v) for v in str(row["Bounding_boxes"]).split(","))
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                raise ValueError(f"Bounding_boxes is not finite: {row['Bounding_boxes']!r}")
            row_mm = parse_spacing(row["Spacing_mm_px_"])[0]  # x, y and z > 0 (raises otherwise)
            z_mm = float(str(row["Spacing_mm_px_"]).split(",")[2])
        except (ValueError, TypeError, KeyError) as exc:
            skipped.append({"background_id": f"deeplesion:DL_info line {line}",
                            "reason": f"bad DL_info row: {exc}"})
            continue
        boxes.setdefault(series, []).append((x0, y0, x1, y1))
        spacing[series] = (row_mm, z_mm)
    out = []
    images_root = root / "Images_png"
    for series in sorted(boxes):
        folder = images_root / series
        if not folder.is_dir():
            continue
        files = []
        for p in sorted(folder.glob("*.png")):
            if p.stem.isdigit():
                files.append(p)
            else:  # slices are <number>.png; any other name cannot be placed in z
                skipped.append({"background_id": f"deeplesion:{series}/{p.name}",
                                "reason": "PNG name is not a slice number: skipped"})
        files.sort(key=lambda p: int(p.stem))
        numbers = [int(p.stem) for p in files]
        sp, dz = spacing[series]
        # consecutive slice numbers are contiguous slices dz apart
        for idx in _stacks([float(k) * dz for k in numbers], n_neighbors, tol_mm=1e-6):
            if numbers[idx[-1]] - numbers[idx[0]] != len(idx) - 1:
                continue
            try:
                imgs = [read_png_hu(files[j]) for j in idx]
            except SoftMaskError as exc:  # one damaged PNG loses its stacks, not the whole run
                skipped.append({"background_id": f"deeplesion:{series}_{numbers[idx[n_neighbors]]:03d}",
                                "reason": f"unreadable slice: {exc.reason}"})
                continue
            rows, cols = imgs[0].shape
            excl = np.zeros((rows, cols), bool)
            pad = exclusion_mm / sp
            for x0, y0, x1, y1 in boxes[series]:
                r0, r1 = max(int(math.floor(y0 - pad)), 0), min(int(math.ceil(y1 + pad)) + 1, rows)
                c0, c1 = max(int(math.floor(x0 - pad)), 0), min(int(math.ceil(x1 + pad)) + 1, cols)
                excl[r0:r1, c0:c1] = True
            bid = f"deeplesion:{series}_{numbers[idx[n_neighbors]]:03d}"
            bg = _make(bid, imgs, sp, dz, n_neighbors, excl, min_lung_mm2, "deeplesion", DEEPLESION_LICENSE, skipped)
            if bg is not None:
                out.append(bg)
    return out


def _lidc(root: Path, n_neighbors, exclusion_mm, min_lung_mm2, skipped):
    from softmask_builder.sources.lidc_db import contours_mask, read_lidc_db
    from softmask_builder.sources.lidc import load_lidc_slice, plan_lidc_slices

    refs, rejects = plan_lidc_slices(root)
    skipped += [{"background_id": r.sample_id, "reason": r.reason} for r in rejects]
    by_series: dict[tuple[str, str], list] = {}
    for ref in refs:
        case, series = ref.sample_id.split("_")[0], ref.sample_id.split("_")[1]
        by_series.setdefault((case, series), []).append(ref)
    scans: dict[str, list] = {}
    out = []
    for (case, series), rs in sorted(by_series.items()):
        rs = sorted(rs, key=lambda r: r.payload["z_mm"])
        zs = [float(r.payload["z_mm"]) for r in rs]
        if case not in scans:
            scans[case] = read_lidc_db(patients=[case])
        # the scan whose slice positions contain this series' z values
        scan = next((s for s in scans[case] if all(np.min(np.abs(s.slice_z_mm - z)) < 0.05 for z in zs)), None)
        cache: dict[int, object] = {}
        for idx in _stacks(zs, n_neighbors):
            recs = [cache.setdefault(j, load_lidc_slice(rs[j])) for j in idx]
            imgs = [r.image_hu for r in recs]
            sp = float(recs[0].spacing_mm[0])
            rows, cols = imgs[0].shape
            excl = np.zeros((rows, cols), bool)
            if scan is not None:
                for ann in scan.annotations:
                    excl |= contours_mask([(True, c.points_rc) for c in ann.contours if c.inclusion],
                                          origin_rc=(0, 0), shape=(rows, cols))
                    for c in ann.contours:  # the outline itself (pylidc's mask leaves it out)
                        pts = c.points_rc
                        ok = (pts[:, 0] >= 0) & (pts[:, 0] < rows) & (pts[:, 1] >= 0) & (pts[:, 1] < cols)
                        excl[pts[ok, 0], pts[ok, 1]] = True
            excl = _dilate(excl, exclusion_mm / sp)
            dz = float(zs[idx[1]] - zs[idx[0]]) if len(idx) > 1 else (scan.slice_thickness_mm if scan else 1.0)
            bid = f"lidc:{case}_{series}_z{zs[idx[n_neighbors]]:.3f}"
            bg = _make(bid, imgs, sp, dz, n_neighbors, excl, min_lung_mm2, "lidc", LIDC_LICENSE, skipped)
            if bg is not None:
                out.append(bg)
    return out


def load_backgrounds(root, *, n_neighbors: int = 1, exclusion_mm: float = 10.0, min_lung_mm2: float = 2000.0,
                     skipped: list | None = None) -> list:
    """Real background stacks under ``root`` (a DeepLesion root or a LIDC DICOM root).

    Returns
    -------
    list of Background
        Sorted by ``background_id``. ``skipped`` (if given) gets a row per slice left out.

    Raises
    ------
    SourceError
        ``root`` missing, neither layout, or no usable slice.
    """
    path = Path(root)
    if not path.is_dir():
        raise SourceError(f"backgrounds folder {str(path)!r} does not exist")
    skipped = [] if skipped is None else skipped
    if (path / "DL_info.csv").is_file():
        out = _deeplesion(path, n_neighbors, exclusion_mm, min_lung_mm2, skipped)
    elif any(p.name.startswith("LIDC-IDRI-") for p in path.iterdir() if p.is_dir()):
        out = _lidc(path, n_neighbors, exclusion_mm, min_lung_mm2, skipped)
    elif (path / "lidc").is_dir() or (path / "deeplesion").is_dir():
        out = []
        for sub in ("lidc", "deeplesion"):
            if (path / sub).is_dir():
                out += load_backgrounds(path / sub, n_neighbors=n_neighbors, exclusion_mm=exclusion_mm,
                                        min_lung_mm2=min_lung_mm2, skipped=skipped)
    else:
        raise SourceError(f"backgrounds folder {str(path)!r} is neither a DeepLesion root (DL_info.csv) nor a "
                          "LIDC DICOM root (LIDC-IDRI-XXXX folders)")
    if not out:
        raise SourceError(f"no usable background slice (lungs, neighbours) under {str(path)!r}")
    return sorted(out, key=lambda b: b.background_id)
