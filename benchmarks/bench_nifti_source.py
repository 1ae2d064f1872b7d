"""Time and memory of the NIfTI volume source on a full-size CT volume.

Writes one ``--shape`` (default 512 x 512 x 300, stored (i, j, k) = (col, row, slice) like
dcm2niix output, 0.7 x 0.7 x 1.25 mm) int16 ``.nii.gz`` image with a two-nodule mask to a
temporary folder, then times :func:`softmask_builder.sources.nifti.plan_nifti_volumes` (headers +
the mask's voxels) and :func:`~softmask_builder.sources.nifti.load_nifti_volume` of the first
nodule (the crop's slices of both files), with the peak memory each allocates (tracemalloc:
numpy's buffers included).

Run (about 30 s, most of it writing the file)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_nifti_source.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    args = parser.parse_args(argv)
    import nibabel as nib

    from softmask_builder.sources.nifti import load_nifti_volume, plan_nifti_volumes

    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    image = rng.normal(-700, 200, shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    i, j, k = (n // 2 for n in shape)
    mask[i - 6:i + 6, j - 6:j + 6, k - 3:k + 3] = 1
    mask[i // 2:i // 2 + 10, j // 2:j // 2 + 12, k // 3:k // 3 + 4] = 1
    affine = np.diag([-0.7, -0.7, 1.25, 1.0])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        nib.save(nib.Nifti1Image(image, affine), str(folder / "ct.nii.gz"))
        nib.save(nib.Nifti1Image(mask, affine), str(folder / "ct_mask.nii.gz"))
        del image, mask
        tracemalloc.start()
        t0 = time.perf_counter()
        refs, rejects = plan_nifti_volumes(folder)
        t1 = time.perf_counter()
        plan_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.reset_peak()
        t2 = time.perf_counter()
        record = load_nifti_volume(refs[0])
        t3 = time.perf_counter()
        load_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"volume {shape} int16 .nii.gz: plan {t1 - t0:.2f} s, peak {plan_peak:.0f} MiB ({len(refs)} samples, "
          f"{len(rejects)} rejects); load {t3 - t2:.2f} s, peak {load_peak:.0f} MiB (crop {record.image_hu.shape})")


if __name__ == "__main__":
    main()
