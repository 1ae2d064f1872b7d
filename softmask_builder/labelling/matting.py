"""Closed-form matting of a single-channel CT crop (Levin, Lischinski & Weiss 2008), exact and fast.

Turns a trimap (0 background, 128 unknown, 255 lesion) and a windowed CT crop into a Soft Mask
alpha in [0, 1], as in DSNet (Wang, Xu et al., TNNLS 2023) Sec. III-A, Eqs. 5-8, gray case.
The result is the exact solution of the same linear system as pymatting's
``estimate_alpha_cf`` (gray replicated to RGB, ``epsilon = 3 * eps``), not an iterative
approximation of it; see :func:`closed_form_alpha` for the maths and the solver.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from softmask_builder.labelling import _matting_kernels as _k
from softmask_builder.labelling.matting3d import closed_form_alpha_3d
from softmask_builder.core.validate import as_image2d, check_matting_params, check_trimap
from softmask_builder.errors import InputError, SoftMaskError

__all__ = ["closed_form_alpha", "closed_form_alpha_batch"]

# Largest skyline factor (float64 values) of the banded solver: 2**26 values = 512 MiB. Only a
# huge unknown region (a filled disc of ~150 px radius) gets there; it goes to the sparse-LU
# fallback instead (same system, exact too, slower on rings, but with nested fill-reducing
# ordering its memory grows only like n log n).
_MAX_SKYLINE_ENTRIES = 1 << 26


def closed_form_alpha(image, trimap, *, eps: float = 1e-7, radius: int = 1) -> np.ndarray:
    """Soft Mask alpha of one crop by closed-form matting (Levin et al. 2008, DSNet Eq. 8).

    A (Z, H, W) volume with a (Z, H, W) trimap is matted in 3-D with (2r+1)^3 windows by
    :func:`softmask_builder.labelling.matting3d.closed_form_alpha_3d` (see there; a single
    slice with unknown voxels is refused there). Everything below is the 2-D case.

    Parameters
    ----------
    image : (rows, cols) float array
        Windowed CT crop, typically in [0, 1] (any finite real values are accepted).
    trimap : (rows, cols) uint8 array
        0 background (alpha = 0), 128 unknown (solved), 255 lesion (alpha = 1). Must hold at
        least one lesion and one background pixel.
    eps : float, keyword-only
        Regularisation epsilon of the matting Laplacian, > 0 (Levin et al.'s epsilon; the
        window variance gets ``eps / |w|``, as in pymatting). pymatting on the gray image
        replicated to RGB gives the same system with ``epsilon = 3 * eps``.
    radius : int, keyword-only
        Window radius r >= 1 in pixels; windows are (2r+1) x (2r+1).

    Returns
    -------
    alpha : (rows, cols) float32 array in [0, 1]
        Exactly 0 / 1 on the known pixels; on the unknown pixels the solution of the system
        below clipped to [0, 1]. With no unknown pixel, exactly ``trimap / 255``.

    Raises
    ------
    InputError
        ``image`` not 2-D / not real / with NaN or inf, or smaller than one window while it has
        unknown pixels; ``trimap`` of another shape, not integer, with values outside
        {0, 128, 255}, without a lesion or a background pixel; ``eps`` not a finite number > 0;
        ``radius`` not an integer >= 1. The message names the argument.

    Notes
    -----
    Gray form of the matting Laplacian (Levin et al. Eq. 8; DSNet Eqs. 5-8). For every window
    w_k of |w| = (2r+1)^2 pixels lying fully inside the image (centres at least r from the
    border, as pymatting), with mean mu_k and variance sigma_k^2::

        L_ij = sum_{k : i, j in w_k} [ delta_ij - (1 + (I_i - mu_k)(I_j - mu_k)
                                                   / (sigma_k^2 + eps / |w|)) / |w| ]

    Known pixels are hard constraints (as pymatting's ``estimate_alpha_cf``): with U the
    unknown and K the known pixels, ``L_UU a_U = -L_UK a_K``, a_K = 1 on lesion, 0 on
    background. Only windows that hold an unknown pixel contribute to L_UU and L_UK, so only
    those are built (pymatting builds the Laplacian of the whole image).

    L_UU is symmetric positive definite whenever eps > 0 and a known pixel exists (each
    window term is positive semi-definite with the constants as its only null vector, the
    windows cover the image and overlap, so x^T L x = 0 forces x constant over the image, and
    x = 0 on K).

    Solver: exact, a direct Cholesky factorisation (no tolerance), for every problem size.
    The unknown pixels are ordered by a reversed breadth-first search from a pixel on the
    outer edge of each unknown component (a cheap reverse Cuthill-McKee); on the thin ring of
    a lesion's unknown band its levels are short arcs across the ring, so every row of L_UU
    reaches back only a few ring widths. L_UU is assembled straight into skyline
    (variable-band) storage, where Cholesky has no fill outside the profile, and factored by
    contiguous column updates. Cost ~ n * p^2 for n unknown pixels and mean profile p
    (~20-40 for 5-9 px bands), against pymatting's Laplacian of the whole crop, incomplete
    Cholesky and CG. A preconditioned CG was not used: the condition number of L_UU grows
    like sigma^2 / eps (~1e6 at a lesion edge for eps = 1e-7), so no cheap stopping rule
    guarantees 1e-6 in alpha, while the banded factor already costs about as much as the
    assembly (``benchmarks/bench_matting.py`` has the timings).

    pymatting's own result differs from the exact solution by ~1e-5 .. 3e-4 at eps = 1e-7,
    mostly from its closed-form inverse of the nearly singular 3x3 covariance of a gray image
    replicated to RGB; at eps = 1e-5 it agrees with this function to float32 rounding.

    No fast-math: the arithmetic is IEEE-rounded in a fixed order, so the same inputs give the
    same bytes, from :func:`closed_form_alpha_batch` too.

    Edge cases: a flat image (sigma = 0) is regular thanks to eps; unknown pixels on the image
    border are covered by the windows that hold them; several unknown components are solved
    together (each is its own block in the ordering).
    """
    if np.ndim(image) == 3:
        return closed_form_alpha_3d(image, trimap, eps=eps, radius=radius)
    img, tri, scan, eps, radius = _prepare(image, trimap, eps, radius, "image", "trimap")
    out = np.empty(img.shape, np.float32)
    _solve_into(img, tri, scan, eps, radius, out, "image")
    return out


def closed_form_alpha_batch(images: Sequence, trimaps: Sequence, *, eps: float = 1e-7, radius: int = 1,
                            n_threads: int | None = None) -> list[np.ndarray]:
    """:func:`closed_form_alpha` of many crops on several threads; same arrays, byte for byte.

    Parameters
    ----------
    images, trimaps : sequences (or stacked arrays) of equal length
        One 2-D image and one uint8 trimap per crop; the crops may differ in shape.
    eps, radius : as in :func:`closed_form_alpha`.
    n_threads : int or None, keyword-only
        Worker threads (>= 1). None: the number of CPUs this process may run on. Capped at
        the number of crops. Each thread solves its share of the crops (assigned longest
        first by estimated cost) with the numba kernel of the single call, which releases the
        GIL, so the threads run in parallel; each crop is solved by the same code as the single
        call, so the result does not depend on the number of threads. Under a process pool,
        pass 1.

    Returns
    -------
    list of float32 arrays, one per crop, in input order.

    Raises
    ------
    InputError
        Lengths differ, ``n_threads`` invalid, or any crop fails the checks of
        :func:`closed_form_alpha` (the message names ``images[i]`` / ``trimaps[i]``). All crops
        are checked before any is solved.
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise InputError(f"images must be a sequence of 2-D images, got one 2-D array of shape {images.shape}")
    if isinstance(trimaps, np.ndarray) and trimaps.ndim == 2:
        raise InputError(f"trimaps must be a sequence of 2-D trimaps, got one 2-D array of shape {trimaps.shape}")
    try:
        n_images, n_trimaps = len(images), len(trimaps)
    except TypeError as exc:
        raise InputError(f"images and trimaps must be sequences: {exc}") from None
    if n_images != n_trimaps:
        raise InputError(f"trimaps has {n_trimaps} items but images has {n_images}")
    if n_threads is None:
        n_threads = _available_cpus()
    elif isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise InputError(f"n_threads must be an integer >= 1 or None, got {n_threads!r}")
    jobs = [_prepare(images[i], trimaps[i], eps, radius, f"images[{i}]", f"trimaps[{i}]")
            for i in range(n_images)]
    if n_images == 0:
        return []
    outs = [np.empty(job[0].shape, np.float32) for job in jobs]
    n_threads = int(min(n_threads, n_images))
    # Static longest-first assignment by estimated cost (unknown pixels, plus the per-pixel
    # passes over the crop). Each thread runs the single-crop kernel on its share; the kernel
    # releases the GIL, so the threads only meet on the GIL for the few microseconds of each
    # call's dispatch. A crop's arithmetic does not depend on its thread.
    cost = [job[2][1] + job[0].size // 64 for job in jobs]
    loads = [0] * n_threads
    shares = [[] for _ in range(n_threads)]
    for i in sorted(range(n_images), key=lambda j: (-cost[j], j)):
        t = loads.index(min(loads))
        shares[t].append(i)
        loads[t] += cost[i]

    def run(share):
        for i in share:
            img, tri, scan, eps_i, radius_i = jobs[i]
            _solve_into(img, tri, scan, eps_i, radius_i, outs[i], f"images[{i}]")

    if n_threads == 1:
        run(shares[0])
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for future in [pool.submit(run, share) for share in shares]:
                future.result()
    return outs


def _available_cpus() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _prepare(image, trimap, eps, radius, image_name, trimap_name):
    """Validate one crop; return (image f64 C-contiguous, trimap u8 C-contiguous, scan, eps,
    radius) where scan = _k.scan_trimap(trimap)."""
    eps_f, _ = check_matting_params(eps, radius)
    img = np.ascontiguousarray(as_image2d(image, image_name))
    # Fast path for the usual uint8 trimap: one numba pass counts the values and finds the
    # unknown box; check_trimap (the canonical checks and messages) runs only when that pass
    # finds a problem, or for other dtypes / shapes.
    tri = trimap
    if not (isinstance(tri, np.ndarray) and tri.dtype == np.uint8 and tri.shape == img.shape):
        tri = check_trimap(trimap, trimap_name, shape=img.shape)
    tri = np.ascontiguousarray(tri)
    scan = _k.scan_trimap(tri)
    n_bg, n_unk, n_fg, n_other = scan[:4]
    if n_other or not n_bg or not n_fg:
        check_trimap(tri, trimap_name, shape=img.shape)
        raise AssertionError("check_trimap accepted a trimap that scan_trimap rejects")  # pragma: no cover
    if n_unk:
        side = 2 * int(radius) + 1
        if img.shape[0] < side or img.shape[1] < side:
            raise InputError(f"{image_name} of shape {img.shape} is smaller than one {side}x{side} matting window "
                             f"(radius={radius}) but has {n_unk} unknown pixels")
    return img, tri, scan, eps_f, int(radius)


def _solve_into(img, tri, scan, eps, radius, out, image_name):
    n_unk, y0, y1, x0, x1 = scan[1], scan[4], scan[5], scan[6], scan[7]
    if n_unk == 0:
        _k.known_alpha(tri, out)
        return
    status = _k.solve_alpha(img, tri, eps, radius, n_unk, y0, y1, x0, x1, _MAX_SKYLINE_ENTRIES, out)
    if status == _k.TOO_LARGE:
        _solve_sparse_lu(img, tri, n_unk, eps, radius, out)
    elif status != _k.OK:
        _raise_not_spd(image_name, eps)


def _solve_sparse_lu(img, tri, n_unk, eps, radius, out):
    """Fallback for very large unknown regions: the same L_UU and right-hand side, solved by
    scipy's SuperLU with a minimum-degree ordering of L_UU + L_UU^T (exact, direct)."""
    import scipy.sparse
    import scipy.sparse.linalg

    rows, cols, vals, rhs = _k.assemble_triplets(img, tri, eps, radius, n_unk)
    l_uu = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(n_unk, n_unk))
    alpha_u = scipy.sparse.linalg.spsolve(l_uu, rhs, permc_spec="MMD_AT_PLUS_A")
    _k.known_alpha(tri, out)
    out[tri == _k._UNKNOWN] = np.clip(alpha_u, 0.0, 1.0)


def _raise_not_spd(image_name, eps):
    # Not reachable in exact arithmetic (L_UU is SPD for eps > 0); a pivot can only vanish if
    # eps is so small against the image's variance that it is lost in rounding.
    raise SoftMaskError(f"matting system of {image_name} is not positive definite to working precision "
                        f"(eps={eps} too small for this image?)", stage="matting")
