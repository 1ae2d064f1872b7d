"""Issue 26, item 6 (real part): the 3-D Soft Mask of LIDC-IDRI-0001's nodule (4 readers) against
the readers' 50 % consensus volume, beside each reader against the consensus of the other three;
Soft Mask on the original grid and on near-isotropic voxels.

    PYTHONPATH=. .venv/bin/python benchmarks/lidc3d_agreement.py [LIDC_ROOT]

LIDC_ROOT defaults to ../shared/data/lidc (or $SOFTMASK_SHARED_DATA/lidc). The nodule goes through
the build's own path: plan_lidc_volumes -> load_lidc_volume (48x96x96 crop, every reader's
contours on every slice) -> label_volume_from_readers with the bundled lidc3d recipe's LabelParams.
Prints the markdown table of docs/RESULTS.md ("3-D Soft Masks on real LIDC-IDRI-0001").
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    from softmask_builder.formats.recipes import load_recipe
    from softmask_builder.labelling.pipeline3d import label_volume_from_readers
    import numpy as np

    from softmask_builder.reports.agreement3d import (agreement_table_markdown, held_out_agreement,
                                                      held_out_table_markdown, reader_agreement, soft_mask_agreement,
                                                      voxel_volume_mm3)
    from softmask_builder.sources.lidc import load_lidc_volume, plan_lidc_volumes

    shared = Path(os.environ.get("SOFTMASK_SHARED_DATA", REPO.parent / "shared" / "data"))
    root = Path(argv[0]) if argv else shared / "lidc"
    if not (root / "LIDC-IDRI-0001").is_dir():
        print(f"LIDC-IDRI-0001 not found under {root}: pass the fixture's lidc folder", file=sys.stderr)
        return 2
    recipe = load_recipe("lidc3d")
    refs, _ = plan_lidc_volumes(root, min_readers=4, max_readers=4)
    (ref,) = [r for r in refs if r.patient == "LIDC-IDRI-0001"]
    record = load_lidc_volume(ref)
    level = recipe.label.consensus
    soft, seconds_by = {}, []
    for isotropic in (False, True):
        t0 = time.perf_counter()
        labels = label_volume_from_readers(record.image_hu, record.prior, record.spacing_mm, recipe.label,
                                           isotropic=isotropic, sample_id=ref.sample_id)
        seconds = time.perf_counter() - t0
        name = f"3-D Soft Mask, {'near-isotropic voxels' if isotropic else 'original grid'}"
        seconds_by.append(f"{name}: {seconds:.1f} s")
        soft[name] = soft_mask_agreement(labels.soft_mask, record.prior, record.spacing_mm, level=level)
    readers = reader_agreement(record.prior, record.spacing_mm, level=level)
    z, r, c = record.spacing_mm
    print(f"{ref.sample_id}: crop {record.image_hu.shape} (z, row, col), spacing {z:g} x {r:g} x {c:g} mm, "
          f"{record.n_readers} readers, annotation ids {list(ref.payload['annotation_ids'])}")
    print(agreement_table_markdown(soft, readers, level=level))
    voxel = voxel_volume_mm3(record.spacing_mm)
    print(f"readers' intersection {record.prior.all(axis=0).sum() * voxel:.0f} mm³, union "
          f"{record.prior.any(axis=0).sum() * voxel:.0f} mm³ (the Soft Mask's sure lesion and outer limit)")
    print("labelling time (this machine, one process): " + "; ".join(seconds_by))
    print()
    print("Leave one reader out: the Soft Mask made from the other readers vs the held-out reader")
    held = {}
    for isotropic in (False, True):
        name = "3-D Soft Mask, " + ("near-isotropic" if isotropic else "original grid")
        held[name] = []
        for r in range(record.n_readers):
            others = np.delete(record.prior, r, axis=0)
            labels = label_volume_from_readers(record.image_hu, others, record.spacing_mm, recipe.label,
                                               isotropic=isotropic, sample_id=ref.sample_id)
            held[name].append(held_out_agreement(labels.soft_mask, record.prior, r, record.spacing_mm, level=level))
    print(held_out_table_markdown(held, level=level))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(sys.argv[1:]))
