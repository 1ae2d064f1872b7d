"""Closed-form matting of a (Z, H, W) CT volume (Levin, Lischinski & Weiss 2008, 3-D windows), exact.

The 3-D case of :func:`softmask_builder.labelling.matting.closed_form_alpha` (which dispatches
here for 3-D input): same trimap encoding (0 background, 128 unknown, 255 lesion), same gray
matting Laplacian, with (2r+1)^3 windows on the voxel grid. See :func:`closed_form_alpha_3d`.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from softmask_builder.labelling import _matting3d_kernels as _k3
from softmask_builder.core.validate import check_matting_params
from softmask_builder.errors import InputError, SoftMaskError

__all__ = ["closed_form_alpha_3d"]

# Largest node of the nested-dissection tree left uncut (one dense front). 64 gave the fewest
# flops and the shortest factorisation of 32, 64, 96, 128, 192, 256 on the 12-20 mm nodules of
# benchmarks/bench_matting3d.py (1-2 voxel bands; smaller leaves: more fronts, more Python).
_LEAF = 64


def closed_form_alpha_3d(image, trimap, *, eps: float = 1e-7, radius: int = 1) -> np.ndarray:
    """Soft Mask alpha of one volume by 3-D closed-form matting (Levin et al. 2008, Eq. 8 on voxels).

    Parameters
    ----------
    image : (Z, H, W) float array
        Windowed CT volume (any finite real values). Voxel spacing is not used: windows are
        (2r+1)^3 voxels whatever the spacing (resample first for near-isotropic windows).
    trimap : (Z, H, W) integer array
        0 background (alpha = 0), 128 unknown (solved), 255 lesion (alpha = 1); at least one
        lesion and one background voxel.
    eps : float, keyword-only
        Regularisation epsilon, > 0; the window variance gets ``eps / |w|``, |w| = (2r+1)^3.
    radius : int, keyword-only
        Window radius r >= 1 in voxels.

    Returns
    -------
    alpha : (Z, H, W) float32 array in [0, 1]
        Exactly 0 / 1 on known voxels; the solution of the system below, clipped to [0, 1], on
        unknown voxels. With no unknown voxel, exactly ``trimap / 255`` (any shape, even Z = 1).

    Raises
    ------
    InputError
        ``image`` not 3-D / not real / non-finite; ``trimap`` of another shape, not integer,
        values outside {0, 128, 255}, no lesion or no background voxel; ``eps`` / ``radius``
        invalid; or an axis shorter than one window (2r+1) while there are unknown voxels.
        In particular a single slice (Z = 1) with unknown voxels is refused: no 3x3x3 window
        fits, so the 3-D Laplacian is empty; matte ``image[0]`` with the 2-D function instead.

    Notes
    -----
    For every window w_k of |w| = (2r+1)^3 voxels lying fully inside the volume, with mean
    mu_k and variance sigma_k^2 (Levin et al. Eq. 8, gray case; DSNet Eqs. 5-8)::

        L_ij = sum_{k : i, j in w_k} [ delta_ij - (1 + (I_i - mu_k)(I_j - mu_k)
                                                   / (sigma_k^2 + eps / |w|)) / |w| ]

    Known voxels are hard constraints: ``L_UU a_U = -L_UK a_K``. Only windows holding an
    unknown voxel are built (numba, :mod:`._matting3d_kernels`). L_UU is symmetric positive
    definite (eps > 0, a known voxel exists, overlapping windows cover the volume), except
    for unknown voxels that no window reaches, which cannot happen when every axis is >= 2r+1.

    Solver: exact sparse direct Cholesky, no iteration, no tolerance. The unknown voxels are
    ordered by a geometric nested dissection (:func:`_nested_dissection_tree`: the unknown shell
    of a nodule is a thin 2-D surface, cut by slabs of 2r voxel planes), and L_UU is factorised
    by the multifrontal method on that tree (:func:`_multifrontal_cholesky`: one dense front per
    tree node, LAPACK/BLAS on the fronts). Blobs that no slab joins are independent roots of the
    tree, i.e. separate systems. On 64x64x24 nodules with a 1-2 voxel band this is ~2x faster
    than SuperLU's LU in the same order (``benchmarks/bench_matting3d.py --superlu``); the two agree within
    1e-10 (tests). BLAS runs single-threaded during the solve (:func:`_one_blas_thread`), so the
    same inputs and SciPy/NumPy/numba versions give the same bytes whatever the thread or
    worker count.
    """
    img, tri, eps_f, r = _prepare_3d(image, trimap, eps, radius)
    out = np.zeros(img.shape, np.float32)
    out[tri == 255] = 1.0
    n_unk = int(np.count_nonzero(tri == 128))
    if n_unk == 0:
        return out
    indptr, indices, data, rhs, flat_u = _k3.assemble_reduced_3d(img, tri, eps_f, r)
    coords = np.stack(np.unravel_index(flat_u, img.shape), axis=1)
    perm, node_ptr, parent = _nested_dissection_tree(coords, 2 * r, leaf=_LEAF)
    with _one_blas_thread():
        factor = _multifrontal_cholesky(indptr, indices, data, perm, node_ptr, parent, eps=eps)
        alpha_u = _solve_factored(factor, rhs)
    if not np.all(np.isfinite(alpha_u)):
        raise SoftMaskError(f"3-D matting system of image is not solvable to working precision (eps={eps})",
                            stage="matting")
    out.reshape(-1)[flat_u] = np.clip(alpha_u, 0.0, 1.0)
    return out


_blas_lock = threading.Lock()
_blas_state: dict = {"depth": 0, "controller": None, "limiter": None}


@contextlib.contextmanager
def _one_blas_thread():
    """Run the block in single-threaded BLAS/LAPACK (both NumPy's and SciPy's OpenBLAS).

    OpenBLAS's dpotrf, dsyrk and dgemm round differently with 1 and with >= 2 threads (measured:
    OpenBLAS 0.3.31), and a build's workers get 1 thread while ``--jobs 1`` runs inline with the
    machine's default: without this, the same volume would give other bytes at another
    ``--jobs``. Process-wide (threadpoolctl) but counted, so concurrent callers on threads keep
    one BLAS thread until the last one leaves; the previous limits are then restored.
    """
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS before the controller looks for it)
    import threadpoolctl

    with _blas_lock:
        if _blas_state["depth"] == 0:
            if _blas_state["controller"] is None:
                _blas_state["controller"] = threadpoolctl.ThreadpoolController()
            _blas_state["limiter"] = _blas_state["controller"].limit(limits=1, user_api="blas")
        _blas_state["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["depth"] -= 1
            if _blas_state["depth"] == 0:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


def _nested_dissection_tree(coords: np.ndarray, reach: int, leaf: int = 32):
    """The order of :func:`_nested_dissection_order` with its elimination tree of dense blocks.

    Returns ``(perm, node_ptr, parent)``: node k holds the positions ``node_ptr[k]:node_ptr[k+1]``
    of ``perm`` (``perm[position] = unknown``), nodes are numbered in postorder (children before
    their parent), ``parent[k]`` is the separator that cuts node k's subtree off its sibling, -1
    for a root. A node is a leaf (at most ``leaf`` voxels or too thin to cut) or a slab separator.
    An empty slab separates nothing: its two sides become independent subtrees (so unconnected
    parts, e.g. two blobs, end as separate roots, solved as independent systems). Deterministic.
    """
    nodes: list[np.ndarray] = []
    parent: list[int] = []

    def split(ids) -> list[int]:  # the roots of the subtree holding ids
        if ids.size == 0:
            return []
        c = coords[ids]
        lo, hi = c.min(axis=0), c.max(axis=0)
        axis = int(np.argmax(hi - lo))
        if ids.size <= leaf or hi[axis] - lo[axis] < 2 * reach + 1:
            nodes.append(ids)
            parent.append(-1)
            return [len(nodes) - 1]
        v = c[:, axis]
        m = min(max(int(np.median(v)), int(lo[axis]) + 1), int(hi[axis]) - reach)
        roots = split(ids[v < m]) + split(ids[v >= m + reach])
        sep = ids[(v >= m) & (v < m + reach)]
        if sep.size == 0:
            return roots
        nodes.append(sep)
        parent.append(-1)
        for k in roots:
            parent[k] = len(nodes) - 1
        return [len(nodes) - 1]

    split(np.arange(coords.shape[0]))
    node_ptr = np.zeros(len(nodes) + 1, np.int64)
    node_ptr[1:] = np.cumsum([ids.size for ids in nodes])
    return np.concatenate(nodes), node_ptr, np.asarray(parent, np.int64)


def _nested_dissection_order(coords: np.ndarray, reach: int, leaf: int = 32) -> np.ndarray:
    """Fill-reducing order of the unknown voxels (``perm[new] = old``) by geometric nested dissection.

    Two unknown voxels are coupled in L_UU only if they are at most ``reach`` (= 2r) apart
    along every axis. So a slab of ``reach`` voxel planes ``m <= coord < m + reach`` along
    one axis separates the voxels below it from those above it: each part is ordered
    recursively, then the slab last. The axis is the one of largest extent, ``m`` its median
    (clamped so both sides are non-empty); parts of at most ``leaf`` voxels, or too thin to
    cut, keep their raster order. Deterministic.
    """
    return _nested_dissection_tree(coords, reach, leaf)[0]


def _multifrontal_cholesky(indptr, indices, data, perm, node_ptr, parent, *, eps):
    """Cholesky factor ``P L_UU P^T = L L^T`` (P from ``perm``) by dense fronts on the nested-dissection tree.

    ``indptr, indices, data``: L_UU in CSC (or CSR: it is symmetric), all entries of both
    triangles. Multifrontal method: for node k (own positions s..e-1, boundary B_k = the later
    positions coupled to them in L_UU or in a child's boundary), the dense front

        F = [[A_kk, .], [A_Bk, 0]] + sum over children c of extend(U_c)

    is partially factorised, ``L_kk = chol(F_11)``, ``L_Bk = F_21 L_kk^-T`` (LAPACK dpotrf,
    BLAS dtrsm), and its Schur complement ``U_k = F_22 - L_Bk L_Bk^T`` (dsyrk) goes to the
    parent. Exact in the sense of a direct solve (no iteration, no dropping): the same factor as
    a sparse Cholesky in this order, up to rounding. Returns the per-node blocks for
    :func:`_solve_factored`.

    Raises SoftMaskError if a pivot block is not positive definite to working precision
    (L_UU is SPD for eps > 0 in exact arithmetic).
    """
    from scipy.linalg import blas, lapack

    n = perm.shape[0]
    pos = np.empty(n, np.int64)
    pos[perm] = np.arange(n)
    loc = np.empty(n, np.int64)
    n_nodes = node_ptr.shape[0] - 1
    children: list[list[int]] = [[] for _ in range(n_nodes)]
    for k in range(n_nodes):
        if parent[k] >= 0:
            children[parent[k]].append(k)
    boundary: list = [None] * n_nodes
    update: list = [None] * n_nodes
    blocks = []
    mark = np.full(n, -1, np.int64)
    no_child = np.empty(0, np.int64)
    work = np.empty(0)  # reused front storage: fresh pages for every front cost ~10 % of the time
    for k in range(n_nodes):
        s, e = int(node_ptr[k]), int(node_ptr[k + 1])
        m = e - s
        kids = np.concatenate([boundary[c] for c in children[k]]) if children[k] else no_child
        bnd = _k3.front_boundary(indptr, indices, perm, pos, s, e, kids, mark, k)
        f = m + bnd.shape[0]
        loc[s:e] = np.arange(m)
        loc[bnd] = np.arange(m, f)
        if work.shape[0] < f * f:
            work = np.empty(f * f)
        front = work[:f * f].reshape((f, f), order="F")
        _k3.zero_lower(front)  # only lower triangles are read or written below
        _k3.assemble_front(front, indptr, indices, data, perm, pos, loc, s, e)
        for c in children[k]:
            _k3.extend_add(front, update[c], loc, boundary[c])
            update[c] = boundary[c] = None
        l_kk, info = lapack.dpotrf(front[:m, :m], lower=1, clean=1)
        if info != 0:
            raise SoftMaskError(f"3-D matting system of image is singular to working precision "
                                f"(Cholesky info {info}); eps={eps} too small?", stage="matting")
        if bnd.shape[0]:
            l_bk = blas.dtrsm(1.0, l_kk, front[m:, :m], side=1, lower=1, trans_a=1)
            update[k] = blas.dsyrk(-1.0, l_bk, beta=1.0, c=front[m:, m:], lower=1)
        else:
            l_bk = np.zeros((0, m), order="F")
        boundary[k] = bnd
        blocks.append((s, e, bnd, l_kk, l_bk))
    return perm, blocks


def _solve_factored(factor, rhs: np.ndarray) -> np.ndarray:
    """Solve ``L_UU x = rhs`` with the factor of :func:`_multifrontal_cholesky` (forward, then backward)."""
    from scipy.linalg import blas

    perm, blocks = factor
    y = rhs[perm].astype(np.float64)
    for s, e, bnd, l_kk, l_bk in blocks:  # L y = P rhs
        y[s:e] = blas.dtrsv(l_kk, y[s:e], lower=1)
        if bnd.shape[0]:
            y[bnd] -= l_bk @ y[s:e]
    for s, e, bnd, l_kk, l_bk in reversed(blocks):  # L^T x = y
        z = y[s:e] - l_bk.T @ y[bnd] if bnd.shape[0] else y[s:e]
        y[s:e] = blas.dtrsv(l_kk, z, lower=1, trans=1)
    x = np.empty_like(y)
    x[perm] = y
    return x


def _prepare_3d(image, trimap, eps, radius):
    eps_f, _ = check_matting_params(eps, radius)
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise InputError(f"image must be 3-D (slices, rows, cols), got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"image must be a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"image is empty, got shape {arr.shape}")
    img = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(img)):
        raise InputError(f"image has {int(np.count_nonzero(~np.isfinite(img)))} NaN/inf voxels")
    tri = np.asarray(trimap)
    if tri.shape != img.shape:
        raise InputError(f"trimap shape {tri.shape} does not match image shape {img.shape}")
    if not np.issubdtype(tri.dtype, np.integer):
        raise InputError(f"trimap must be an integer array in {{0, 128, 255}}, got dtype {tri.dtype}")
    bad = ~np.isin(tri, (0, 128, 255))
    if bad.any():
        raise InputError(f"trimap has values outside {{0, 128, 255}}: {np.unique(tri[bad])[:6].tolist()}")
    if not (tri == 255).any():
        raise InputError("trimap has no lesion (255) voxel")
    if not (tri == 0).any():
        raise InputError("trimap has no background (0) voxel")
    tri = np.ascontiguousarray(tri, dtype=np.uint8)
    side = 2 * int(radius) + 1
    if (tri == 128).any() and min(img.shape) < side:
        raise InputError(f"image of shape {img.shape} has an axis shorter than one {side}x{side}x{side} "
                         f"matting window (radius={radius}) but has unknown voxels"
                         + ("; a single slice has no 3-D window: use 2-D matting on image[0]"
                            if img.shape[0] == 1 else ""))
    return img, tri, eps_f, int(radius)
