"""Export a verified sample build as an nnU-Net v2 raw dataset.

Layout (nnU-Net v2's ``dataset_format.md``)::

    NNUNET_RAW/DatasetNNN_Name/
      dataset.json         channel_names {"0": "CT"}, labels, numTraining, file_ending ".nii.gz"
      imagesTr/<case>_0000.nii.gz   our train + val crops (nnU-Net makes its own folds)
      labelsTr/<case>.nii.gz
      imagesTs/<case>_0000.nii.gz   our test crops
      labelsTs/<case>.nii.gz        (ours, not nnU-Net's spec: for scoring predictions)
      cases.csv            case_id, sample_id, split, patient, source_key
      export.json          provenance (build manifest hash, options)
      SHA256SUMS
    [PREPROCESSED/DatasetNNN_Name/splits_final.json]   with --splits-final: one fold, our train / val

Data contract, sample builds (2-D crops): each crop is a NIfTI of shape (col, row, 1) (NIfTI's
first axis is x = columns), pixdim (col_mm, row_mm, 1), int16 HU for images (exactly the shard's
``image_hu``), uint8 labels. nnU-Net reads them as one-slice 3-D images and plans its ``2d``
configuration.

Volume builds (3-D crops, issue 26): each crop (z, row, col) is a NIfTI of shape (col, row, z),
pixdim (col_mm, row_mm, z_mm) = the crop's native spacing, the same dtypes (int16 HU: nnU-Net's
``CTNormalization`` reads any dtype as float32, clips to the foreground's 0.5-99.5 percentiles and
z-scores, so storing the shard's integers loses nothing). nnU-Net (SimpleITK) reads a case back as a
(z, row, col) array with spacing (z_mm, row_mm, col_mm) and plans ``2d`` and ``3d_fullres`` (on
(48, 96, 96) crops the planned patch is the crop: ``tests/softmask_builder/export/test_export_volumes.py``).
The labels, ``--band-as-ignore`` (the 3-D trimap's unknown band), the folders, ``cases.csv``, the case
ids and ``splits_final.json`` are those of a sample build; only the axes and ``dataset.json``'s
description differ. No option is 2-D-only, so a volume build takes every option.

Labels: 0 background, 1 nodule = the shard's ``binary_mask``. nnU-Net trains on hard labels
only, so the Soft Mask (``soft_mask``, the alpha in [0, 1] of the unknown band) is **not**
exported here: the boundary's partial-volume information, the thing DSNet's soft head learns,
is lost. ``band_as_ignore`` keeps a trace of it: the trimap's unknown band (128) becomes
nnU-Net's ``ignore`` label 2, so the loss skips the uncertain boundary rather than trusting the
binary mask there (nnU-Net then predicts only 0/1).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softmask_builder.core import atomic
from softmask_builder.errors import InputError
from softmask_builder.export._common import (SPLITS, AtomicFolder, ExportError, VerifiedBuild, check_name, load_verified_build,
                      export_affine, nifti_bytes, pixdim_of, provenance, to_nifti_axes)

FILE_ENDING = ".nii.gz"
IGNORE_LABEL = 2


@dataclass(frozen=True)
class NnunetExport:
    folder: Path
    n_training: int
    n_test: int
    splits_final: Path | None

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "numTraining": self.n_training, "n_test": self.n_test,
                "splits_final": str(self.splits_final) if self.splits_final else None}


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset{id:03d}_{name}``; ``dataset_id`` in 1..999 as nnU-Net v2 requires."""
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"--dataset-id must be in 1..999 (nnU-Net's three digits), got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{check_name(name, option='--name')}"


def nnunet_label(binary_mask: np.ndarray, trimap: np.ndarray, *, band_as_ignore: bool) -> np.ndarray:
    """uint8 label shaped like ``binary_mask`` ((row, col) or (z, row, col)): ``binary_mask`` in
    {0, 1}; with ``band_as_ignore`` the unknown band (trimap 128) set to :data:`IGNORE_LABEL`."""
    label = (np.asarray(binary_mask) != 0).astype(np.uint8)
    if band_as_ignore:
        label[np.asarray(trimap) == 128] = IGNORE_LABEL
    return label


def dataset_json(build: VerifiedBuild, *, name: str, n_training: int, band_as_ignore: bool) -> dict[str, Any]:
    labels = {"background": 0, "nodule": 1}
    if band_as_ignore:
        labels["ignore"] = IGNORE_LABEL
    m = build.manifest
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (f"{m['dataset']} {m['dataset_version']} (Soft Mask toolkit) exported for nnU-Net v2: "
                        + ("3-D nodule crops in HU at their native voxel spacing, binary nodule masks"
                           if build.kind == "volumes" else "2-D lesion crops in HU, binary nodule masks")
                        + ("; the trimap's unknown band is the ignore label" if band_as_ignore else "")
                        + ". The Soft Mask (soft labels) is not part of this export."),
        "reference": _citation(m),
        "licence": _licence(m),
        "tensorImageSize": "3D",
        "softmask_build": {"dataset": m["dataset"], "recipe_sha256": m["recipe_sha256"],
                           "manifest_sha256": build.manifest_sha256},
    }


def _citation(manifest: dict[str, Any]) -> str:
    from softmask_builder.formats.metadata import citation_text

    return citation_text(manifest)


def _licence(manifest: dict[str, Any]) -> str:
    """The build's licence statement, from what it used (a phantom's LIDC shapes and backgrounds included)."""
    from softmask_builder.formats.metadata import licence

    return licence(manifest)[3]


def export_nnunet(build: str | Path, out: str | Path, *, dataset_id: int, name: str = "LNSM",
                  band_as_ignore: bool = False, splits_final: bool = False, preprocessed: str | Path | None = None,
                  overwrite: bool = False) -> NnunetExport:
    """Write ``out/DatasetNNN_name`` (see the module docstring) from the verified build ``build``,
    a sample build (2-D crops) or a volume build (3-D crops, NIfTI volumes with their spacing).

    Parameters
    ----------
    dataset_id : int
        nnU-Net dataset id, 1..999.
    band_as_ignore : bool
        Label the trimap's unknown band as nnU-Net's ignore label 2.
    splits_final, preprocessed : bool, path
        Also write ``preprocessed/DatasetNNN_name/splits_final.json``: one fold whose train and
        val case ids are this build's train and val splits (instead of nnU-Net's 5 random folds).
    overwrite : bool
        Replace an existing dataset folder (and splits_final.json); without it they are refused.

    Case ids are ``{name}_{k:05d}``, k counting train, then val, then test samples in shard and
    sample-id order; ``cases.csv`` maps them back to ``sample_id``.

    Raises
    ------
    BuildNotVerified, ExportError, InputError
    """
    folder_name = dataset_folder_name(dataset_id, name)
    if splits_final and preprocessed is None:
        raise InputError("--splits-final needs --preprocessed DIR (nnU-Net_preprocessed, where nnU-Net reads it)")
    if preprocessed is not None and not splits_final:
        raise InputError("--preprocessed is only used with --splits-final")
    verified = load_verified_build(build)
    out = Path(out)
    final = out / folder_name
    splits_path = Path(preprocessed) / folder_name / "splits_final.json" if splits_final else None
    if splits_path is not None and splits_path.exists() and not overwrite:
        raise ExportError(f"{splits_path} already exists; pass --overwrite to replace it")
    if splits_path is not None and not (verified.n_samples("train") and verified.n_samples("val")):
        raise ExportError(f"--splits-final needs train and val samples; the build has "
                          f"{verified.n_samples('train')} train and {verified.n_samples('val')} val")

    cases: list[tuple[str, str, str, str, str]] = []
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    with AtomicFolder(final, overwrite=overwrite) as folder:
        k = 0
        for split in SPLITS:
            images, labels = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
            for sample in verified.samples(split):
                case = f"{name}_{k:05d}"
                k += 1
                pixdim = pixdim_of(sample.spacing_mm)
                affine = export_affine(sample.spacing_mm)
                folder.write_bytes(f"{images}/{case}_0000{FILE_ENDING}",
                                   nifti_bytes(to_nifti_axes(sample.image_hu), pixdim=pixdim, dtype=np.dtype("<i2"),
                                               affine=affine))
                label = nnunet_label(sample.binary_mask, sample.trimap, band_as_ignore=band_as_ignore)
                folder.write_bytes(f"{labels}/{case}{FILE_ENDING}",
                                   nifti_bytes(to_nifti_axes(label), pixdim=pixdim, dtype=np.dtype("u1"),
                                               affine=affine))
                cases.append((case, sample.sample_id, split, sample.patient, sample.source_key))
                by_split[split].append(case)
        n_training = len(by_split["train"]) + len(by_split["val"])
        folder.write_json("dataset.json", dataset_json(verified, name=name, n_training=n_training,
                                                       band_as_ignore=band_as_ignore))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["case_id", "sample_id", "split", "patient", "source_key"])
        writer.writerows(cases)
        folder.write_text("cases.csv", buf.getvalue())
        folder.write_json("export.json", provenance(verified, format="nnunetv2", dataset_id=int(dataset_id),
                                                    name=name, band_as_ignore=band_as_ignore,
                                                    splits_final=bool(splits_final)))
    if splits_path is not None:
        splits_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(splits_path, json.dumps([{"train": by_split["train"], "val": by_split["val"]}], indent=1)
                          + "\n")
    return NnunetExport(final, n_training, len(by_split["test"]), splits_path)
