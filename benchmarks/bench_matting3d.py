"""Speed of 3-D closed_form_alpha against a plain SciPy sparse direct solve, side by side.

Synthetic CT nodules in 64x64x24 volumes (0.7 mm pixels, 2.0 mm slices; a blurred, noisy,
lobulated ellipsoid of diameter 6..20 mm on a textured background), trimap by eroding and
dilating the true mask with a ball of ``band`` voxels (1 or 2: an unknown shell 2-4 voxels
thick). On the SAME volumes, interleaved, both solving the same reduced system
``L_UU a_U = -L_UK a_K`` (Levin et al. Eq. 8, 3x3x3 windows inside the volume, eps = 1e-7):

* ours: ``closed_form_alpha(image, trimap)`` on the (Z, H, W) arrays (numba assembly of the
  windows that hold an unknown voxel, geometric nested-dissection order, multifrontal dense
  Cholesky on its tree, one BLAS thread);
* plain SciPy: the Laplacian assembled with NumPy (``sliding_window_view``, one 27x27 block per
  window, restricted to the windows that hold an unknown voxel, as ours; the full Laplacian of
  all ~85k windows would need ~1.5 GB of triplets), ``coo -> csr``, ``L[U][:, U]``,
  ``L[U][:, K] @ a_K``, then ``scipy.sparse.linalg.spsolve`` with its defaults.

Laplacian assembly is timed on both sides. Both are warmed up first (numba compile / cache
load). Per volume the time is the min of ``--repeats`` calls; it prints per-volume times,
the max |difference| of the two alphas, and the median ratio. One thread each (the numba
kernel is single-threaded, ours holds BLAS to one thread; run with OMP/OPENBLAS threads = 1 so
that SciPy's side is single-threaded too).

``--superlu`` adds, interleaved on the same volumes, the solver ours replaced (issue 26 speed):
the same numba assembly and nested-dissection order, then SuperLU's LU (symmetric mode, diagonal
pivots) instead of the multifrontal Cholesky, and prints the median speed-up of ours over it.

    nice -n 10 .venv/bin/python benchmarks/bench_matting3d.py            # ~1 min
    nice -n 10 .venv/bin/python benchmarks/bench_matting3d.py --quick
    nice -n 10 .venv/bin/python benchmarks/bench_matting3d.py --superlu

The machine may be shared: times are noisy, the ratio (measured side by side) is the number.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy import ndimage

from softmask_builder.labelling.matting import closed_form_alpha

SHAPE = (24, 64, 64)
SPACING = (2.0, 0.7, 0.7)
EPS = 1e-7


def nodule(rng, diameter_mm, band_vox):
    zz, yy, xx = np.indices(SHAPE).astype(np.float64)
    c = [s / 2 + rng.uniform(-1, 1) for s in SHAPE]
    pz, py, px = ((zz - c[0]) * SPACING[0], (yy - c[1]) * SPACING[1], (xx - c[2]) * SPACING[2])
    rad = np.sqrt(pz ** 2 + py ** 2 + px ** 2) + 1e-9
    theta = np.arctan2(py, px)
    phi = np.arccos(np.clip(pz / rad, -1, 1))
    lob = 1 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6)) * np.sin(2 * phi)
    mask = rad <= diameter_mm / 2 * lob
    truth = ndimage.gaussian_filter(mask.astype(np.float64), sigma=(0.5, 1.0, 1.0))
    bg = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0) * 0.05
    image = np.clip(0.15 + 0.6 * truth + bg + 0.02 * rng.standard_normal(SHAPE), 0, 1)
    o = np.arange(-band_vox, band_vox + 1)
    ball = (o[:, None, None] ** 2 + o[None, :, None] ** 2 + o[None, None, :] ** 2) <= band_vox ** 2
    trimap = np.zeros(SHAPE, np.uint8)
    trimap[ndimage.binary_dilation(mask, ball)] = 128
    lesion = ndimage.binary_erosion(mask, ball, border_value=1)
    if not lesion.any():  # thinner than the band: keep the innermost voxels as lesion
        dist = ndimage.distance_transform_edt(mask)
        lesion = dist >= dist.max()
    trimap[lesion] = 255
    return image, trimap


def plain_scipy(image, trimap, eps=EPS, r=1):
    size = 2 * r + 1
    nw = size ** 3
    idx = np.arange(image.size).reshape(image.shape)
    unk = trimap == 128
    win_img = np.lib.stride_tricks.sliding_window_view(image, (size,) * 3).reshape(-1, nw)
    win_idx = np.lib.stride_tricks.sliding_window_view(idx, (size,) * 3).reshape(-1, nw)
    has_u = np.lib.stride_tricks.sliding_window_view(unk, (size,) * 3).reshape(-1, nw).any(axis=1)
    win_img, win_idx = win_img[has_u], win_idx[has_u]
    c = win_img - win_img.mean(axis=1, keepdims=True)
    var = np.mean(c * c, axis=1)
    blocks = np.eye(nw)[None] - (1.0 + c[:, :, None] * c[:, None, :] / (var + eps / nw)[:, None, None]) / nw
    rows = np.repeat(win_idx, nw, axis=1).ravel()
    cols = np.tile(win_idx, (1, nw)).ravel()
    lap = scipy.sparse.coo_matrix((blocks.ravel(), (rows, cols)), shape=(image.size,) * 2).tocsr()
    t = trimap.ravel()
    u = np.flatnonzero(t == 128)
    k = np.flatnonzero(t != 128)
    a_u = scipy.sparse.linalg.spsolve(lap[u][:, u].tocsc(), -(lap[u][:, k] @ (t[k] == 255).astype(np.float64)))
    alpha = (t == 255).astype(np.float32)
    alpha[u] = np.clip(a_u, 0, 1)
    return alpha.reshape(image.shape)


def superlu_same_order(image, trimap, eps=EPS, r=1):
    """The previous solver of closed_form_alpha_3d: same assembly and order, SuperLU's LU."""
    from softmask_builder.labelling import _matting3d_kernels as k3
    from softmask_builder.labelling.matting3d import _nested_dissection_order, _prepare_3d

    img, tri, eps_f, r = _prepare_3d(image, trimap, eps, r)
    out = np.zeros(img.shape, np.float32)
    out[tri == 255] = 1.0
    indptr, indices, data, rhs, flat_u = k3.assemble_reduced_3d(img, tri, eps_f, r)
    n = rhs.shape[0]
    perm = _nested_dissection_order(np.stack(np.unravel_index(flat_u, img.shape), axis=1), 2 * r)
    l_pp = scipy.sparse.csc_matrix((data, indices, indptr), shape=(n, n))[perm][:, perm].tocsc()
    lu = scipy.sparse.linalg.splu(l_pp, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                                  options={"SymmetricMode": True})
    a_u = np.empty(n)
    a_u[perm] = lu.solve(rhs[perm])
    out.reshape(-1)[flat_u] = np.clip(a_u, 0.0, 1.0)
    return out


def timed(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 volumes per band, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--superlu", action="store_true",
                    help="also time the previous solver (SuperLU LU, same order), interleaved")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    diameters = [8.0, 16.0] if args.quick else [6.0, 9.0, 12.0, 16.0, 20.0]
    repeats = 1 if args.quick else args.repeats
    warm = nodule(rng, 8.0, 1)
    closed_form_alpha(*warm)
    plain_scipy(*warm)
    if args.superlu:
        superlu_same_order(*warm)
    print(f"volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (Z x H x W), spacing {SPACING} mm, eps {EPS:g}, 3x3x3 windows")
    print(f"{'band':>4} {'diam mm':>7} {'unknown':>8} {'ours s':>8} {'scipy s':>8} {'ratio':>6} {'max|da|':>9}"
          + (f" {'superlu s':>9} {'ratio':>6}" if args.superlu else ""))
    ratios, ours_all, vs_lu = [], [], []
    for band in (1, 2):
        for d in diameters:
            image, trimap = nodule(rng, d, band)
            t_ours, a_ours = timed(lambda: closed_form_alpha(image, trimap, eps=EPS), repeats)
            t_ref, a_ref = timed(lambda: plain_scipy(image, trimap), repeats)
            ratios.append(t_ref / t_ours)
            ours_all.append(t_ours)
            line = (f"{band:>4} {d:>7.1f} {int((trimap == 128).sum()):>8} {t_ours:>8.3f} {t_ref:>8.3f} "
                    f"{t_ref / t_ours:>6.1f} {float(np.abs(a_ours - a_ref).max()):>9.1e}")
            if args.superlu:
                t_lu, _ = timed(lambda: superlu_same_order(image, trimap), repeats)
                vs_lu.append(t_lu / t_ours)
                line += f" {t_lu:>9.3f} {t_lu / t_ours:>6.2f}"
            print(line)
    print(f"median ratio plain-scipy / ours: {np.median(ratios):.1f}x; ours max {max(ours_all):.3f} s, "
          f"median {np.median(ours_all):.3f} s per nodule")
    if args.superlu:
        print(f"median speed-up of ours over the previous solver (SuperLU LU, same order): {np.median(vs_lu):.2f}x")


if __name__ == "__main__":
    main()
