"""The records every source adapter produces, and the contract between adapters and the build.

A build runs in two phases:

1. **plan** (cheap, in the parent process): an adapter's ``plan_*`` function reads only indexes
   (``DL_info.csv``, the LIDC annotation database, a folder listing) and returns a list of
   :class:`SampleRef` — small, picklable, sorted deterministically by ``sample_id``. Rows that are
   already known to be bad at plan time come back as :class:`Reject` rows.
2. **load** (in workers): the adapter's ``load_*`` function turns one ``SampleRef`` into a
   :class:`SampleRecord` (reads pixels, crops; a 3-D adapter a :class:`VolumeRecord`), or raises a
   :class:`~softmask_builder.errors.SoftMaskError` carrying the sample id and the stage; the build
   turns that into a rejects row and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

PriorKind = Literal["recist", "readers", "mask"]


@dataclass(frozen=True)
class SampleRef:
    """A planned sample: everything needed to load it later, nothing heavy.

    sample_id : unique id inside the dataset (also the sort key).
    source_key : the source's own key (DeepLesion ``File_name``; LIDC
        ``LIDC-IDRI-0001/nodule-1/z=-115.000``; a mask file name).
    patient : the patient id (splits are made by patient).
    split : the source's official split ("train"/"val"/"test") or None.
    payload : adapter-specific, picklable fields (paths as str, numbers, tuples).
    """

    sample_id: str
    source_key: str
    patient: str
    split: str | None = None
    payload: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SampleRecord:
    """One loaded sample, cropped and ready for labelling.

    image_hu : (rows, cols) float32 crop in Hounsfield units.
    prior_kind : "recist" (prior = :class:`~softmask_builder.labelling.recist.Recist` in crop (row, col)
        pixels), "readers" (prior = (R, rows, cols) bool array, one mask per reader, R >= 2), or
        "mask" (prior = (rows, cols) bool array).
    spacing_mm : (row_mm, col_mm) of the crop pixels (after any rescale).
    origin_px : (row, col) of the crop's top-left corner in source pixels (may be negative when
        the crop was padded at the image border).
    scale : crop pixels per source pixel (1.0 unless the lesion was rescaled to fit the crop).
    true_fraction : (rows, cols) float32 in [0, 1] or None: the known true partial-volume fraction
        of the crop (a phantom source's truth, before the scanner's blur), cropped and scaled like
        ``image_hu``; None for real sources. Shards store it as ``true_fraction`` (schema 3).
    """

    ref: SampleRef
    image_hu: np.ndarray
    prior_kind: PriorKind
    prior: Any
    spacing_mm: tuple[float, float]
    origin_px: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    n_readers: int = -1
    lesion_type: int = -1
    true_fraction: np.ndarray | None = None


VolumePriorKind = Literal["readers", "mask"]


@dataclass(frozen=True)
class VolumeRecord:
    """One loaded 3-D sample: a fixed-size volume crop around a nodule, ready for 3-D labelling.

    What a 3-D source adapter's ``load_*`` returns (issue 26), and what a volume shard
    (``kind = "volumes"``, docs/FORMAT.md) stores per sample. Every array and triple is in
    **(z, row, col)** order: z is the slice index of the series sorted by increasing
    ImagePositionPatient z (an adapter of another format states its own mapping), row and col the
    image's. The crop is at the source's native voxel spacing (no resampling:
    :func:`softmask_builder.labelling.crop.volume_crop_plan` / ``crop_volume``).

    ref : the planned sample (:class:`SampleRef`).
    image_hu : (Z, H, W) float32 crop in Hounsfield units; voxels beyond the source series are
        edge-replicated (``crop_volume(..., outside="edge")``).
    prior_kind : "readers" (prior = (R, Z, H, W) bool, one mask volume per reader, R >= 2, a
        reader with no voxel in the crop kept as an empty volume) or "mask" (prior = (Z, H, W)
        bool). RECIST is 2-D only: there is no "recist" volume prior.
    prior : the array described by ``prior_kind``; 0 beyond the source (``outside="zero"``).
    spacing_mm : (z_mm, row_mm, col_mm) of the crop's voxels, each finite and > 0: z is the slice
        spacing (distance between slice centres), not the nominal SliceThickness.
    origin_px : (z, row, col) source voxel of crop voxel (0, 0, 0); whole numbers (native spacing),
        negative or beyond the source where the crop was padded.
    scale : crop voxels per source voxel per axis, (1.0, 1.0, 1.0) (volume crops are never
        rescaled; kept per axis in the shard so that a later resampling need not change the schema).
    n_readers : number of readers (R for "readers"), -1 when not applicable.
    lesion_type : DeepLesion ``Coarse_lesion_type``, -1 otherwise.
    true_fraction : (Z, H, W) float32 in [0, 1] or None: a phantom's true partial-volume fraction
        in the crop's geometry (None for real sources); shards store it as ``true_fraction``.

    Construction checks nothing (as :class:`SampleRecord`); the 3-D labelling stages and the shard
    writer validate what they use.
    """

    ref: SampleRef
    image_hu: np.ndarray
    prior_kind: VolumePriorKind
    prior: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_px: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n_readers: int = -1
    lesion_type: int = -1
    true_fraction: np.ndarray | None = None


@dataclass(frozen=True)
class Reject:
    """A sample that could not be built: written as a row of ``rejects.csv``."""

    sample_id: str
    stage: str  # "plan", "load", "label", "write"
    reason: str


#: Stage of the rows a plan function appends to its ``unselected`` list: refs left out by a
#: selection filter, the split targets or ``--limit`` (``reason`` = "<filter>: <detail>"); they are
#: written to ``unselected.csv``, never to ``rejects.csv``.
UNSELECTED = "unselected"


def unselected_row(sample_id: str, filter_name: str, detail: str) -> Reject:
    """A row of ``unselected.csv``: ``sample_id`` left out by ``filter_name`` (a recipe option)."""
    return Reject(sample_id, UNSELECTED, f"{filter_name}: {detail}")


@dataclass(frozen=True)
class SliceRecord:
    """A full CT slice for the SR teacher: (rows, cols) HU, spacing (row_mm, col_mm)."""

    ref: SampleRef
    image_hu: np.ndarray
    spacing_mm: tuple[float, float]
