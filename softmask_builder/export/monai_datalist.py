"""Export a verified sample build as per-sample NIfTI files plus a MONAI datalist.

Layout::

    OUT/
      datalist.json        {"training": [...], "validation": [...], "test": [...]}, each entry
                           {"image", "label", "soft_label", "sample_id", "patient"} with paths
                           relative to OUT (``monai.data.load_decathlon_datalist`` resolves them)
      images/<case>.nii.gz       int16 HU, exactly the shard's image_hu
      labels/<case>.nii.gz       uint8 {0, 1}: binary_mask
      soft_labels/<case>.nii.gz  float32 [0, 1]: soft_mask (the Soft Mask, for DiceLoss(soft_label=True))
      export.json, SHA256SUMS

Data contract: the same as the nnU-Net export -- (col, row, 1) arrays, pixdim (col_mm, row_mm,
1). ``LoadImaged`` + ``EnsureChannelFirstd`` give (1, col, row, 1) tensors; squeeze the last axis
for 2-D networks (``docs/MONAI.md`` trains one step). Training = our train split, validation =
val, test = test (with labels, for scoring). Case ids are ``{dataset}_{k:05d}`` in the same order
as the nnU-Net export.

Volume builds (issue 26): the same files and keys, each a volume (col, row, z) with pixdim
(col_mm, row_mm, z_mm), the crop's native spacing: ``LoadImaged`` + ``EnsureChannelFirstd`` give
(1, col, row, z) tensors whose ``pixdim`` is that spacing (``Spacingd`` can resample from it).
Each datalist entry also carries ``pixdim_mm`` [col_mm, row_mm, z_mm] (the NIfTI order MONAI
reports; the shortest decimals of the header's float32 values), so a pipeline can choose a
target spacing without opening the files; sample builds' entries are unchanged (no
``pixdim_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softmask_builder.export._common import (SPLITS, AtomicFolder, export_affine, load_verified_build, nifti_bytes,
                                             pixdim_of, provenance, to_nifti_axes)

DATALIST = "datalist.json"
LIST_KEYS = {"train": "training", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class MonaiExport:
    folder: Path
    counts: dict[str, int]

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "datalist": str(self.folder / DATALIST), **self.counts}


def export_monai(build: str | Path, out: str | Path, *, overwrite: bool = False) -> MonaiExport:
    """Write ``out`` (see the module docstring) from the verified build ``build``, a sample build
    (2-D crops) or a volume build (3-D crops with their spacing).

    Raises
    ------
    BuildNotVerified
        The build fails ``softmask verify``.
    ExportError
        ``out`` exists and ``overwrite`` is False; a slice or empty build; nibabel missing.
    """
    verified = load_verified_build(build)
    out = Path(out)
    datalist: dict[str, list[dict[str, str]]] = {key: [] for key in LIST_KEYS.values()}
    prefix = verified.dataset
    volumes = verified.kind == "volumes"
    with AtomicFolder(out, overwrite=overwrite) as folder:
        k = 0
        for split in SPLITS:
            for sample in verified.samples(split):
                case = f"{prefix}_{k:05d}"
                k += 1
                pixdim = pixdim_of(sample.spacing_mm)
                affine = export_affine(sample.spacing_mm)
                entry = {"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz",
                         "soft_label": f"soft_labels/{case}.nii.gz", "sample_id": sample.sample_id,
                         "patient": sample.patient}
                if volumes:  # the header's float32 voxel sizes, as their shortest decimals (0.8, not 0.800000011920929)
                    entry["pixdim_mm"] = [float(str(np.float32(v))) for v in pixdim]
                folder.write_bytes(entry["image"], nifti_bytes(to_nifti_axes(sample.image_hu), pixdim=pixdim,
                                                               dtype=np.dtype("<i2"), affine=affine))
                folder.write_bytes(entry["label"], nifti_bytes(to_nifti_axes((sample.binary_mask != 0)), pixdim=pixdim,
                                                               dtype=np.dtype("u1"), affine=affine))
                folder.write_bytes(entry["soft_label"], nifti_bytes(to_nifti_axes(sample.soft_mask), pixdim=pixdim,
                                                                    dtype=np.dtype("<f4"), affine=affine))
                datalist[LIST_KEYS[split]].append(entry)
        what = ("3-D nodule crops (HU, NIfTI (col, row, z) at their native spacing, pixdim_mm per entry)"
                if volumes else "2-D lesion crops (HU)")
        folder.write_json(DATALIST, {"name": verified.dataset, "description": (
            f"Soft Mask toolkit export: {what}, binary masks and Soft Masks (alpha in [0, 1])"),
            "labels": {"0": "background", "1": "nodule"}, **datalist})
        folder.write_json("export.json", provenance(verified, format="monai"))
    return MonaiExport(out, {key: len(v) for key, v in datalist.items()})
