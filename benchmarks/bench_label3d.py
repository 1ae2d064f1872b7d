"""Time per nodule of the 3-D labelling stage, original grid against near-isotropic, side by side.

``label_volume_from_readers`` (window, 3-D readers' trimap, 3-D closed-form matting, deblur,
default ``LabelParams``) on synthetic 32x64x64 crops (slices, rows, cols) of a blurred, noisy,
lobulated nodule with four simulated readers (the nodule's mask at four perturbed radii), at
LIDC-like spacings. Per crop: ``isotropic=False`` then ``isotropic=True`` on the same arrays,
one call each after a warm-up (numba compile / cache load), and the size of the matting system
(unknown voxels on the grid that is matted).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_label3d.py

The machine may be shared: times are noisy; both arms run interleaved on the same crops.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from softmask_builder.labelling.pipeline import LabelParams
from softmask_builder.labelling.pipeline3d import label_volume_from_readers
from softmask_builder.labelling.resample import z_upsampling_factor

SHAPE = (32, 64, 64)


def crop(rng, diameter_mm, spacing):
    zz, yy, xx = np.indices(SHAPE).astype(np.float64)
    c = [s / 2 + rng.uniform(-1, 1) for s in SHAPE]
    pz, py, px = ((zz - c[0]) * spacing[0], (yy - c[1]) * spacing[1], (xx - c[2]) * spacing[2])
    rad = np.sqrt(pz ** 2 + py ** 2 + px ** 2) + 1e-9
    theta = np.arctan2(py, px)
    phi = np.arccos(np.clip(pz / rad, -1, 1))
    lob = 1 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6)) * np.sin(2 * phi)
    shape_r = rad / lob
    truth = ndimage.gaussian_filter((shape_r <= diameter_mm / 2).astype(np.float64), sigma=(0.5, 1.0, 1.0))
    image_hu = -850 + 900 * truth + 40 * ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0) \
        + 20 * rng.standard_normal(SHAPE)
    readers = [shape_r <= diameter_mm / 2 * f for f in (0.85, 0.95, 1.05, 1.15)]
    return image_hu, readers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diameters", type=float, nargs="+", default=[6.0, 10.0, 16.0, 24.0])
    ap.add_argument("--spacings", type=float, nargs="+", default=[2.5, 1.25], help="slice spacings, mm")
    ap.add_argument("--pixel-mm", type=float, default=0.7)
    args = ap.parse_args(argv)
    params = LabelParams()
    rng = np.random.default_rng(0)
    warm = crop(rng, 10.0, (2.5, args.pixel_mm, args.pixel_mm))
    for iso in (False, True):
        label_volume_from_readers(*warm, (2.5, args.pixel_mm, args.pixel_mm), params, isotropic=iso)
    print(f"crop {SHAPE} (slices, rows, cols), 4 readers, default LabelParams, one call per arm")
    print(f"{'z_mm':>5} {'k':>2} {'diam_mm':>7} {'unknown':>8} {'orig_s':>7} {'unknown_k':>9} {'iso_s':>7} "
          f"{'ratio':>6} {'max|d|':>7}")
    for z_mm in args.spacings:
        spacing = (z_mm, args.pixel_mm, args.pixel_mm)
        k = z_upsampling_factor(spacing)
        for d in args.diameters:
            image_hu, readers = crop(rng, d, spacing)
            t0 = time.perf_counter()
            a = label_volume_from_readers(image_hu, readers, spacing, params, isotropic=False)
            t1 = time.perf_counter()
            b = label_volume_from_readers(image_hu, readers, spacing, params, isotropic=True)
            t2 = time.perf_counter()
            n_unk = int((a.trimap == 128).sum())
            print(f"{z_mm:5.2f} {k:2d} {d:7.1f} {n_unk:8d} {t1 - t0:7.3f} {n_unk * k:9d} {t2 - t1:7.3f} "
                  f"{(t2 - t1) / (t1 - t0):6.1f} {float(np.abs(a.soft_mask - b.soft_mask).max()):7.3f}")


if __name__ == "__main__":
    main()
