"""Speed of softmask_builder.labelling.matting.closed_form_alpha against pymatting, side by side.

Builds synthetic CT nodule crops (a blurred, noisy, lobulated blob of diameter 3..30 mm at
0.7 mm/px on a textured lung background), trimaps by erode/dilate of the true mask, and times
on the SAME crops, interleaved:

* ours: ``closed_form_alpha(image, trimap, eps=1e-7)``
* pymatting: ``estimate_alpha_cf`` on the gray image replicated to RGB (float64 HxWx3), trimap
  in {0, 0.5, 1}, ``laplacian_kwargs={"epsilon": 3e-7}`` (the same system; everything else at
  pymatting's defaults: ichol preconditioner, CG to a relative residual of 1e-7).

Settings: 64x64 crops with a ~5 px wide unknown band (erode/dilate by a radius-2 disk) and
256x256 crops with a ~9 px band (radius 4). Both methods are warmed up first (numba compile or
cache load of both), so compile time is not timed. Per crop the time is the median of
``--repeats`` calls; per size class it prints the median times and the median of the per-crop
ratios pymatting / ours. Then the batch path (2 threads) against a loop of single calls on
>= 100 crops, with the parallel capacity the machine gives right now (a shared machine often
gives one core: then no batch can be faster than the loop).

    .venv/bin/python benchmarks/bench_matting.py           # full (~20 s on a quiet machine)
    .venv/bin/python benchmarks/bench_matting.py --quick   # a few seconds

The machine may be shared: times are noisy, the ratio (measured side by side) is the number.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from scipy import ndimage

from softmask_builder.labelling.matting import closed_form_alpha, closed_form_alpha_batch

SPACING_MM = 0.7
EPS = 1e-7
SETTINGS = [(64, 2), (256, 4)]          # (crop size px, erode/dilate disk radius px)
SIZE_CLASSES = [(3, 6), (6, 10), (10, 20), (20, 30.01)]   # diameter classes, mm


def nodule_crop(size: int, diameter_mm: float, seed: int):
    """(image in [0, 1], true mask) of one synthetic nodule crop."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = (size - 1) / 2 + rng.uniform(-1.5, 1.5, 2)
    radius_px = diameter_mm / SPACING_MM / 2
    theta = np.arctan2(rr - cy, cc - cx)
    lobes = 1 + 0.12 * np.sin(rng.integers(3, 7) * theta + rng.uniform(0, 2 * np.pi)) \
        + 0.06 * np.sin(rng.integers(7, 12) * theta + rng.uniform(0, 2 * np.pi))
    mask = np.hypot(rr - cy, cc - cx) <= radius_px * lobes
    lung = 0.12 + 0.08 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 3.0) * 3
    vessels = ndimage.gaussian_filter((rng.uniform(size=(size, size)) > 0.997).astype(float), 1.2) * 4
    image = lung + 0.4 * np.clip(vessels, 0, 1) + 0.55 * mask
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0.0, 0.02, (size, size))
    return np.clip(image, 0.0, 1.0), mask


def trimap_of(mask: np.ndarray, band_px: int) -> np.ndarray:
    """255 = mask eroded by a disk of radius band_px (its innermost pixel if that is empty),
    0 = outside the mask dilated by it, 128 between."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1, 2 * band_px + 1))
    m = mask.astype(np.uint8)
    lesion = cv2.erode(m, disk, borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0
    if not lesion.any():
        lesion = np.zeros_like(mask)
        lesion[np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)] = True
    outside = cv2.dilate(m, disk) == 0
    trimap = np.full(mask.shape, 128, np.uint8)
    trimap[outside] = 0
    trimap[lesion] = 255
    return trimap


def pymatting_alpha(rgb: np.ndarray, trimap01: np.ndarray) -> np.ndarray:
    from pymatting import estimate_alpha_cf

    return estimate_alpha_cf(rgb, trimap01, laplacian_kwargs={"epsilon": 3 * EPS})


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_setting(size, band_px, diameters, seeds, repeats):
    print(f"\n== {size}x{size} crops, unknown band ~{2 * band_px + 1} px (disk radius {band_px}), "
          f"{len(diameters)} diameters x {seeds} seeds, median of {repeats} calls per crop ==")
    crops = []
    for d in diameters:
        for s in range(seeds):
            image, mask = nodule_crop(size, d, seed=1000 * size + 10 * s + int(d * 10))
            crops.append((d, image, trimap_of(mask, band_px)))
    # warm up both (numba compile / cache load)
    d, image, trimap = crops[-1]
    closed_form_alpha(image, trimap, eps=EPS)
    pymatting_alpha(np.repeat(image[:, :, None], 3, axis=2), trimap / 255.0)
    rows = []
    for d, image, trimap in crops:
        rgb = np.repeat(image[:, :, None], 3, axis=2)
        tri01 = trimap / 255.0
        ours = closed_form_alpha(image, trimap, eps=EPS)
        diff = float(np.abs(ours - pymatting_alpha(rgb, tri01)).max())
        t_ours, t_pym = [], []
        for _ in range(repeats):   # interleaved, so both see the same machine load
            t_ours.append(median_time(lambda: closed_form_alpha(image, trimap, eps=EPS), 1))
            t_pym.append(median_time(lambda: pymatting_alpha(rgb, tri01), 1))
        rows.append((d, int((trimap == 128).sum()), float(np.median(t_ours)), float(np.median(t_pym)), diff))
    print(f"{'diameter mm':>12} {'crops':>5} {'unknown px':>11} {'ours ms':>8} {'pymatting ms':>12} "
          f"{'ratio':>6} {'max|ours-pym|':>13}")
    all_ratios = []
    for lo, hi in SIZE_CLASSES:
        sel = [r for r in rows if lo <= r[0] < hi]
        if not sel:
            continue
        ratios = [r[3] / r[2] for r in sel]
        all_ratios += ratios
        print(f"{f'{lo:g}-{min(hi, 30):g}':>12} {len(sel):>5} {int(np.median([r[1] for r in sel])):>11} "
              f"{np.median([r[2] for r in sel]) * 1e3:>8.3f} {np.median([r[3] for r in sel]) * 1e3:>12.3f} "
              f"{np.median(ratios):>6.1f} {max(r[4] for r in sel):>13.1e}")
    print(f"{'all':>12} {len(rows):>5} {'':>11} {np.median([r[2] for r in rows]) * 1e3:>8.3f} "
          f"{np.median([r[3] for r in rows]) * 1e3:>12.3f} {np.median(all_ratios):>6.1f}   "
          f"(min ratio {min(all_ratios):.1f})")
    return crops


def parallel_capacity(n_threads=2) -> float:
    """Speed-up of n_threads numba threads (GIL released) on a pure compute loop: what the
    machine gives this process right now (~1.0 when the other cores are busy)."""
    import threading

    from numba import njit

    @njit(nogil=True)
    def spin(n):
        s = 0.0
        for i in range(n):
            s += (i % 7) * 1e-9
        return s

    spin(10)
    work = 30_000_000

    def wall(k):
        threads = [threading.Thread(target=spin, args=(work,)) for _ in range(k)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    return float(np.median([n_threads * wall(1) / wall(n_threads) for _ in range(3)]))


def run_batch(crops, repeats, n_threads=2, min_crops=100):
    copies = -(-min_crops // len(crops))   # enough crops that thread start-up does not dominate
    images = [c[1] for c in crops] * copies
    trimaps = [c[2] for c in crops] * copies
    singles = [closed_form_alpha(i, t, eps=EPS) for i, t in zip(images, trimaps)]
    batch = closed_form_alpha_batch(images, trimaps, eps=EPS, n_threads=n_threads)
    same = all(a.tobytes() == b.tobytes() for a, b in zip(singles, batch))
    t_loop, t_batch, busy = [], [], []
    for _ in range(repeats):
        t_loop.append(median_time(lambda: [closed_form_alpha(i, t, eps=EPS) for i, t in zip(images, trimaps)], 1))
        c0 = time.process_time()
        t_batch.append(median_time(lambda: closed_form_alpha_batch(images, trimaps, eps=EPS, n_threads=n_threads), 1))
        busy.append((time.process_time() - c0) / t_batch[-1])
    tl, tb = float(np.median(t_loop)), float(np.median(t_batch))
    print(f"batch of {len(images)} {images[0].shape[0]}x{images[0].shape[1]} crops: loop {tl * 1e3:.2f} ms, "
          f"batch ({n_threads} threads) {tb * 1e3:.2f} ms, speed-up {tl / tb:.2f}x "
          f"(cores busy during the batch: {np.median(busy):.2f}), identical bytes: {same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer crops and repeats (a few seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="calls per crop and method")
    args = parser.parse_args()
    if args.quick:
        diameters, seeds, repeats = [3, 5, 8, 12, 18, 25, 30], 1, args.repeats or 3
    else:
        diameters, seeds, repeats = [3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 21, 25, 28, 30], 3, args.repeats or 7
    batches = {}
    for size, band_px in SETTINGS:
        batches[size] = run_setting(size, band_px, diameters, seeds, repeats)
    print(f"\nparallel capacity now (2 numba threads on a compute loop): {parallel_capacity():.2f}x")
    for size in batches:
        run_batch(batches[size], repeats=max(3, repeats // 2))


if __name__ == "__main__":
    main()
