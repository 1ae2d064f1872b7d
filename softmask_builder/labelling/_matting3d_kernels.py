"""Numba kernels of the 3-D closed-form matting in :mod:`softmask_builder.labelling.matting3d` (private).

:func:`assemble_reduced_3d` builds the reduced system ``L_UU a_U = -L_UK a_K`` of Levin's matting
Laplacian on a (Z, H, W) voxel grid as a CSR matrix, visiting only the windows that hold an unknown
voxel. The 2-D kernels (:mod:`softmask_builder.labelling._matting_kernels`) are left untouched.

Notation: ``r`` window radius, ``|w| = (2r+1)^3`` voxels per window, ``U`` the unknown voxels
(trimap 128) numbered in raster (z, y, x) order, ``n = |U|``. Two unknown voxels share a window
only if they are at most ``2r`` apart along each axis, so row ``i`` of ``L_UU`` has at most
``(4r+1)^3`` entries: they are summed in a dense (n, (4r+1)^3) table indexed by the offset, then
written out as CSR with sorted columns. No fast-math: the same inputs give the same bytes.

:func:`front_boundary`, :func:`assemble_front` and :func:`extend_add` are the index work of the
multifrontal Cholesky (``matting3d._multifrontal_cholesky``); the dense arithmetic is LAPACK/BLAS.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BACKGROUND = 0
_UNKNOWN = 128
_LESION = 255


@njit(cache=True, nogil=True)
def assemble_reduced_3d(image, trimap, eps, r):
    """Return (indptr, indices, data, rhs, flat_unknown): ``L_UU`` in CSR (symmetric, so also its
    CSC), ``rhs = -L_UK a_K`` and the flat (raster) index of each unknown voxel.

    Window w_k: centre k with every voxel inside the volume (``r <= k_z < Z - r``, same in y, x),
    c_a = I_a - mu_k, sigma_k^2 = sum_a c_a^2 / |w|, g_k = 1 / (sigma_k^2 + eps / |w|):
        L_ab += delta_ab - (1 + g_k c_a c_b) / |w|                    (Levin et al. 2008, Eq. 8)
    Lesion columns (a_K = 1) go to the right-hand side:
        rhs_a += (n_lesion(w_k) + g_k c_a sum_{b in lesion} c_b) / |w|;
    background columns (a_K = 0) add nothing; windows without an unknown voxel are skipped.
    """
    nz, ny, nx = image.shape
    img = image.ravel()
    tri = trimap.ravel()
    nvox = nz * ny * nx
    uidx = np.full(nvox, -1, np.int64)
    n = 0
    z0, z1, y0, y1, x0, x1 = nz, 0, ny, 0, nx, 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                p = (z * ny + y) * nx + x
                if tri[p] == _UNKNOWN:
                    uidx[p] = n
                    n += 1
                    z0 = min(z0, z)
                    z1 = max(z1, z + 1)
                    y0 = min(y0, y)
                    y1 = max(y1, y + 1)
                    x0 = min(x0, x)
                    x1 = max(x1, x + 1)
    flat_u = np.empty(n, np.int64)
    for p in range(nvox):
        if uidx[p] >= 0:
            flat_u[uidx[p]] = p
    size = 2 * r + 1
    vol = size * size * size
    inv_vol = 1.0 / vol
    reach = 2 * r
    side = 2 * reach + 1
    nslot = side * side * side
    acc = np.zeros((n, nslot), np.float64)
    rhs = np.zeros(n, np.float64)
    off = np.empty(vol, np.int64)
    oz = np.empty(vol, np.int64)
    oy = np.empty(vol, np.int64)
    ox = np.empty(vol, np.int64)
    t = 0
    for dz in range(-r, r + 1):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                off[t] = (dz * ny + dy) * nx + dx
                oz[t] = dz
                oy[t] = dy
                ox[t] = dx
                t += 1
    vals = np.empty(vol, np.float64)
    cu = np.empty(vol, np.float64)
    ju = np.empty(vol, np.int64)
    tu = np.empty(vol, np.int64)
    # centres whose window may hold an unknown voxel, windows inside the volume
    for cz in range(max(r, z0 - r), min(nz - r, z1 + r)):
        for cy in range(max(r, y0 - r), min(ny - r, y1 + r)):
            for cx in range(max(r, x0 - r), min(nx - r, x1 + r)):
                base = (cz * ny + cy) * nx + cx
                nu = 0
                for t in range(vol):
                    nu += uidx[base + off[t]] >= 0
                if nu == 0:
                    continue
                s = 0.0
                for t in range(vol):
                    v = img[base + off[t]]
                    vals[t] = v
                    s += v
                mu = s * inv_vol
                var = 0.0
                s_fg = 0.0
                n_fg = 0
                nu = 0
                for t in range(vol):
                    d = vals[t] - mu
                    var += d * d
                    q = base + off[t]
                    if uidx[q] >= 0:
                        ju[nu] = uidx[q]
                        cu[nu] = d
                        tu[nu] = t
                        nu += 1
                    elif tri[q] == _LESION:
                        s_fg += d
                        n_fg += 1
                g = 1.0 / (var * inv_vol + eps * inv_vol)
                for a in range(nu):
                    ia = ju[a]
                    ga = g * cu[a]
                    ta = tu[a]
                    centre = ((reach) * side + reach) * side + reach
                    acc[ia, centre] += 1.0 - (1.0 + ga * cu[a]) * inv_vol
                    for b in range(a + 1, nu):
                        tb = tu[b]
                        v = (1.0 + ga * cu[b]) * inv_vol
                        sab = (((oz[tb] - oz[ta] + reach) * side + (oy[tb] - oy[ta] + reach)) * side
                               + (ox[tb] - ox[ta] + reach))
                        acc[ia, sab] -= v
                        acc[ju[b], nslot - 1 - sab] -= v
                    rhs[ia] += (n_fg + ga * s_fg) * inv_vol
    # CSR with columns in increasing order (offsets in raster order = increasing flat index)
    indptr = np.zeros(n + 1, np.int64)
    indices = np.empty(n * nslot, np.int32)
    data = np.empty(n * nslot, np.float64)
    e = 0
    for i in range(n):
        p = flat_u[i]
        z = p // (ny * nx)
        y = (p // nx) % ny
        x = p % nx
        slot = 0
        for dz in range(-reach, reach + 1):
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    zz = z + dz
                    yy = y + dy
                    xx = x + dx
                    if 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx:
                        j = uidx[(zz * ny + yy) * nx + xx]
                        if j >= 0 and acc[i, slot] != 0.0:
                            indices[e] = j
                            data[e] = acc[i, slot]
                            e += 1
                    slot += 1
        indptr[i + 1] = e
    return indptr, indices[:e].copy(), data[:e].copy(), rhs, flat_u


# --- multifrontal Cholesky helpers (used by matting3d._multifrontal_cholesky) ---------------------
# Positions: ``pos[i]`` is the place of unknown i in the fill-reducing order, ``perm[p]`` its inverse.
# A front holds the node's own positions s..e-1 (local 0..m-1) then its boundary (local m..),
# ``loc[p]`` the local index of position p in the current front. Only lower triangles are kept.


@njit(cache=True, nogil=True)
def front_boundary(indptr, indices, perm, pos, s, e, child_boundaries, mark, stamp):
    """Sorted positions >= e coupled in L_UU to a position in s..e-1 or in a child's boundary.

    ``mark`` (one int per position) must not hold ``stamp`` on entry; it does on exit for the
    returned positions (the caller passes the node number, so no reset is needed).
    """
    cnt = child_boundaries.shape[0]
    for p in range(s, e):
        j = perm[p]
        cnt += indptr[j + 1] - indptr[j]
    out = np.empty(cnt, np.int64)
    k = 0
    for t in range(child_boundaries.shape[0]):
        q = child_boundaries[t]
        if q >= e and mark[q] != stamp:
            mark[q] = stamp
            out[k] = q
            k += 1
    for p in range(s, e):
        j = perm[p]
        for t in range(indptr[j], indptr[j + 1]):
            q = pos[indices[t]]
            if q >= e and mark[q] != stamp:
                mark[q] = stamp
                out[k] = q
                k += 1
    return np.sort(out[:k])


@njit(cache=True, nogil=True)
def assemble_front(front, indptr, indices, data, perm, pos, loc, s, e):
    """Add the entries of L_UU in columns s..e-1 (rows at or below the diagonal) to ``front``."""
    for p in range(s, e):
        j = perm[p]
        col = p - s
        for t in range(indptr[j], indptr[j + 1]):
            q = pos[indices[t]]
            if q >= p:
                front[loc[q], col] += data[t]


@njit(cache=True, nogil=True)
def extend_add(front, update, loc, boundary):
    """Add a child's update matrix (lower triangle, rows/cols = ``boundary`` positions) to ``front``."""
    nb = boundary.shape[0]
    li = np.empty(nb, np.int64)
    for t in range(nb):
        li[t] = loc[boundary[t]]
    for jj in range(nb):
        lj = li[jj]
        for ii in range(jj, nb):
            front[li[ii], lj] += update[ii, jj]


@njit(cache=True, nogil=True)
def zero_lower(front):
    """Set the lower triangle (diagonal included) of a square Fortran-order ``front`` to 0."""
    f = front.shape[0]
    for j in range(f):
        for i in range(j, f):
            front[i, j] = 0.0
