"""Closed-form matting of a single-channel CT crop (Levin, Lischinski & Weiss 2008), exact and fast.

Turns a trimap (0 background, 128 unknown, 255 lesion) and a windowed CT crop into a Soft Mask
alpha in [0, 1], as in DSNet (Wang, Xu et al., TNNLS 2023) Sec. III-A, Eqs. 5-8, gray case.
The result is the exact solution of the same linear system as pymatting's
``estimate_alpha_cf`` (gray replicated to RGB, ``epsilon = 3 * eps``), not an iterative
approximation of it; see :func:`closed_form_alpha` for the maths and the solver.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from . import _matting_kernels as _k
from ._validate import as_image2d, check_trimap
from .errors import InputError, SoftMaskError

__all__ = ["closed_form_alpha", "closed_form_alpha_batch"]


def closed_form_alpha(image, trimap, *, eps: float = 1e-7, radius: int = 1) -> np.ndarray:
    """Soft Mask alpha of one crop by closed-form matting (Levin et al. 2008, DSNet Eq. 8).

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
    x = 0 on K). It is solved *exactly* (direct Cholesky, no tolerance): the unknown pixels
    are ordered by reverse Cuthill-McKee, which on the thin ring of a lesion's unknown band
    gives a bandwidth of a few ring widths, and the factor is computed in skyline
    (variable-band) storage, where it has no fill outside the profile. Cost ~ n * b^2 for n
    unknown pixels and profile b, versus pymatting's whole-image Laplacian + incomplete
    Cholesky + CG (which stops at a relative residual of 1e-7, an error of ~1e-5 .. 1e-3 in
    alpha). An iterative solver was not used: the system's condition number grows like
    sigma^2 / eps (~1e6 for eps = 1e-7 at a lesion edge), so reaching 1e-6 in alpha needs
    many iterations, while the banded direct factor costs a fraction of the assembly on
    small bands and stays well under pymatting's time on large ones
    (``benchmarks/bench_matting.py``).

    Edge cases: a flat image (sigma = 0) is regular thanks to eps; unknown pixels on the image
    border are covered by the windows that hold them; several unknown components are solved
    together (each is its own block in the ordering).
    """
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
        Worker threads (>= 1). None: the number of CPUs this process may run on, at most the
        number of crops. The solver is a numba kernel that releases the GIL, so the threads run
        in parallel; each crop is solved by the same code as the single call, so the result
        does not depend on the number of threads.

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
    outs = [np.empty(job[0].shape, np.float32) for job in jobs]
    n_threads = int(min(n_threads, max(n_images, 1)))

    def solve(i):
        img, tri, scan, eps_i, radius_i = jobs[i]
        _solve_into(img, tri, scan, eps_i, radius_i, outs[i], f"images[{i}]")

    if n_threads == 1:
        for i in range(n_images):
            solve(i)
        return outs
    # Dynamic scheduling (crops differ a lot in cost): each worker takes the next index.
    lock = threading.Lock()
    next_index = iter(range(n_images))

    def worker():
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            solve(i)

    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for future in [pool.submit(worker) for _ in range(n_threads)]:
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
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise InputError(f"radius must be an integer >= 1, got {radius!r}")
    try:
        eps_f = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}") from None
    if not (math.isfinite(eps_f) and eps_f > 0.0):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}")
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
    status = _k.solve_alpha(img, tri, eps, radius, n_unk, y0, y1, x0, x1, out)
    if status != _k.OK:
        # Not reachable in exact arithmetic (L_UU is SPD for eps > 0); a pivot can only vanish
        # if eps is so small against the image's variance that it is lost in rounding.
        raise SoftMaskError(f"matting system of {image_name} is not positive definite to working precision "
                            f"(eps={eps} too small for this image?)", stage="matting")
