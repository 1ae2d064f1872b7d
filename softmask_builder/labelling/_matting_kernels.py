"""Numba kernels of :mod:`softmask_builder.labelling.matting` (private).

:func:`solve_alpha` does the whole closed-form solve of one crop without the GIL: index the
unknown pixels, order them (reversed breadth-first search), assemble the unknown block of the
matting Laplacian straight into skyline (variable-band) storage, factor it by Cholesky, solve,
clip. Every work array is allocated inside, so calls from several threads share nothing, and
the arithmetic does not depend on the thread, so a batch gives the same bytes as single calls.
:func:`assemble_triplets` builds the same system as sparse triplets for the SuperLU fallback.

Notation: ``r`` window radius, ``|w| = (2r+1)^2`` pixels per window, ``U`` the unknown pixels
(trimap 128), ``n = |U|``. Unknown pixels are numbered twice: ``raster`` (row-major scan of the
work region) and ``new`` (the fill-reducing order of the factorisation); ``perm[new] = raster``,
``newidx[raster] = new``. Only the *work region* is touched: the bounding box of ``U`` grown by
2r, the farthest a window that holds an unknown pixel reaches.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

_BACKGROUND = 0
_UNKNOWN = 128
_LESION = 255

# Status codes of solve_alpha.
OK = 0
NOT_POSITIVE_DEFINITE = 1
TOO_LARGE = 2   # the skyline would exceed max_entries: nothing done, use the sparse fallback

# No fast-math anywhere: every operation is an IEEE-rounded add/mul/div/sqrt in the order the
# code states (SIMD only runs independent element-wise updates side by side), so the bytes of
# the result do not depend on inlining, vector width or thread, nor on the x86-64 machine.


@njit(cache=True, nogil=True)
def scan_trimap(trimap):
    """One pass over a uint8 trimap: counts of background, unknown, lesion and other values,
    and the half-open bounding box (row0, row1, col0, col1) of the unknown pixels."""
    h, w = trimap.shape
    n_bg = 0
    n_unk = 0
    n_fg = 0
    y0 = h
    y1 = 0
    x0 = w
    x1 = 0
    for y in range(h):
        row = trimap[y]
        # branch-free counts (SIMD); the box is searched only in rows that have unknowns
        c_bg = 0
        c_unk = 0
        c_fg = 0
        for x in range(w):
            t = row[x]
            c_bg += t == _BACKGROUND
            c_unk += t == _UNKNOWN
            c_fg += t == _LESION
        n_bg += c_bg
        n_fg += c_fg
        if c_unk > 0:
            n_unk += c_unk
            y0 = min(y0, y)
            y1 = y + 1
            x = 0
            while row[x] != _UNKNOWN:
                x += 1
            x0 = min(x0, x)
            x = w - 1
            while row[x] != _UNKNOWN:
                x -= 1
            x1 = max(x1, x + 1)
    n_other = h * w - n_bg - n_unk - n_fg
    return n_bg, n_unk, n_fg, n_other, y0, y1, x0, x1


@njit(cache=True, nogil=True)
def known_alpha(trimap, out):
    """out = trimap / 255 on a trimap of 0 / 255 values (the unknown pixels are set later)."""
    h, w = trimap.shape
    for y in range(h):
        for x in range(w):
            out[y, x] = np.float32(1.0) if trimap[y, x] == _LESION else np.float32(0.0)


@njit(cache=True, nogil=True)
def _index_unknown(tri, n):
    """Raster index of each unknown pixel of ``tri`` (the work region) as a flat map (-1 for
    known pixels), and the (row, col) of each unknown pixel."""
    h, w = tri.shape
    uidx = np.empty(h * w, np.int32)
    ys = np.empty(n, np.int32)
    xs = np.empty(n, np.int32)
    k = 0
    for y in range(h):
        for x in range(w):
            p = y * w + x
            if tri[y, x] == _UNKNOWN:
                uidx[p] = k
                ys[k] = y
                xs[k] = x
                k += 1
            else:
                uidx[p] = -1
    return uidx, ys, xs


@njit(cache=True, nogil=True)
def reverse_bfs_order(uidx, w, ys, xs, reach):
    """Fill-reducing order of the unknown pixels: ``perm[new] = raster``.

    Breadth-first search over the unknown pixels (neighbours: a (2*reach+1)^2 box), started
    from the first unknown pixel in raster order of each connected component, then reversed
    (as reverse Cuthill-McKee). That start pixel is on the component's outer boundary, so on
    the thin ring of a lesion's unknown band the BFS levels are short arcs across the ring
    and the profile of the ordered matrix stays a few ring widths. Measured on nodule crops:
    full RCM (pseudo-peripheral start, children by degree) saves under 7 % of the Cholesky
    flops but costs more than it saves. Deterministic (ties by raster index).
    """
    h = uidx.shape[0] // w
    n = ys.shape[0]
    done = np.zeros(n, np.bool_)
    order = np.empty(n, np.int32)
    pos = 0
    for seed in range(n):
        if done[seed]:
            continue
        order[pos] = seed
        done[seed] = True
        head = pos
        pos += 1
        while head < pos:
            v = order[head]
            head += 1
            for y in range(max(ys[v] - reach, 0), min(ys[v] + reach + 1, h)):
                for x in range(max(xs[v] - reach, 0), min(xs[v] + reach + 1, w)):
                    u = uidx[y * w + x]
                    if u >= 0 and not done[u]:
                        done[u] = True
                        order[pos] = u
                        pos += 1
    perm = np.empty(n, np.int32)
    for i in range(n):
        perm[i] = order[n - 1 - i]
    return perm


@njit(cache=True, nogil=True)
def _min_into(dst, src):
    """dst = minimum(dst, src), same length (a SIMD loop)."""
    for t in range(dst.shape[0]):
        dst[t] = min(dst[t], src[t])


@njit(cache=True, nogil=True)
def _box_min(a, w, reach):
    """Minimum over the (2*reach+1)^2 box (clipped at the edges) of a flat int32 map with rows
    of length ``w``. Separable, over contiguous runs."""
    h = a.shape[0] // w
    rows = a.copy()
    for dx in range(-reach, reach + 1):
        if dx == 0:
            continue
        x0 = max(0, -dx)
        x1 = min(w, w - dx)
        for y in range(h):
            b = y * w
            _min_into(rows[b + x0:b + x1], a[b + x0 + dx:b + x1 + dx])
    out = rows.copy()
    for dy in range(-reach, reach + 1):
        if dy == 0:
            continue
        y0 = max(0, -dy)
        y1 = min(h, h - dy)
        _min_into(out[y0 * w:y1 * w], rows[(y0 + dy) * w:(y1 + dy) * w])
    return out


@njit(cache=True, nogil=True)
def _skyline(newmap, w, ys, xs, perm, reach):
    """Column skyline of the lower triangle (new order): column ``j`` holds rows
    ``j .. last[j]`` at ``env[cptr[j] : cptr[j+1]]``.

    ``last[j] = max{i : first[i] <= j}`` where ``first[i]`` is the lowest column of row i in
    the matrix: the least new index within the stencil (a box of radius 2r) around pixel i.
    Cholesky creates fill only inside this set (a fill L_ij needs some k < j with
    L_ik, L_jk != 0, so first[i] <= k). ``newmap``: flat map of new indices, n where known.
    """
    n = perm.shape[0]
    first = _box_min(newmap, w, reach)
    last = np.arange(n)
    for i in range(n):
        v = perm[i]
        f = first[ys[v] * w + xs[v]]
        if last[f] < i:
            last[f] = i
    cptr = np.empty(n + 1, np.int64)
    cptr[0] = 0
    run = 0
    for j in range(n):
        run = max(run, last[j])
        last[j] = run
        cptr[j + 1] = cptr[j] + (run - j + 1)
    return last, cptr


@njit(cache=True, nogil=True)
def _assemble(imf, code, w, cptr, n, eps, r, cy0, cy1, cx0, cx1):
    """Unknown block L_UU (lower triangle, skyline) and right-hand side b = -L_UK a_K.

    Window w_k (centre k, (2r+1)^2 pixels, fully inside the image), c_a = I_a - mu_k,
    sigma_k^2 = sum_a c_a^2 / |w|, g_k = 1 / (sigma_k^2 + eps/|w|):
        L_ab += delta_ab - (1 + g_k c_a c_b) / |w|                       (Levin et al. Eq. 8)
    Rows are unknown pixels only. Columns: unknown -> L_UU; lesion (a_K = 1) ->
        b_a -= sum_{b in lesion} L_ab = (n_lesion + g_k c_a sum_{b in lesion} c_b) / |w|;
    background (a_K = 0) adds nothing. Windows without an unknown pixel touch no row of L_UU
    or L_UK and are skipped: only centres within r of an unknown pixel are visited.

    ``imf`` (image) and ``code`` (new index, -1 lesion, -2 background) are flat maps of the
    work region, rows of length ``w``; centres run over [cy0, cy1) x [cx0, cx1).
    """
    h = code.shape[0] // w
    size = 2 * r + 1
    area = size * size
    inv_area = 1.0 / area
    env = np.zeros(cptr[n], np.float64)
    rhs = np.zeros(n, np.float64)
    # active centres: some unknown pixel in the window = box-min of (0 unknown, 1 known) is 0
    known = np.empty(h * w, np.int32)
    for p in range(h * w):
        known[p] = code[p] < 0
    none_unknown = _box_min(known, w, r)
    off = np.empty(area, np.int64)
    t = 0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            off[t] = dy * w + dx
            t += 1
    vals = np.empty(area, np.float64)
    cu = np.empty(area, np.float64)
    ju = np.empty(area, np.int64)
    cb = np.empty(area, np.int64)
    for cy in range(cy0, cy1):
        for cx in range(cx0, cx1):
            base = cy * w + cx
            if none_unknown[base]:
                continue
            s = 0.0
            for t in range(area):
                v = imf[base + off[t]]
                vals[t] = v
                s += v
            mu = s * inv_area
            var = 0.0
            s_fg = 0.0
            n_fg = 0
            nu = 0
            for t in range(area):
                d = vals[t] - mu
                var += d * d
                c = code[base + off[t]]
                # branch-free: keep unknowns in (ju, cu), sum lesion pixels' c
                ju[nu] = c
                cu[nu] = d
                nu += c >= 0
                is_fg = c == -1
                n_fg += is_fg
                s_fg += d if is_fg else 0.0
            g = 1.0 / (var * inv_area + eps * inv_area)
            for a in range(nu):
                cb[a] = cptr[ju[a]]
            for a in range(nu):
                ia = ju[a]
                ca = cb[a]
                ga = g * cu[a]
                env[ca] += 1.0 - (1.0 + ga * cu[a]) * inv_area
                for b in range(a):
                    ib = ju[b]
                    # entry (max, min) of the pair: row max in column min (a select, no branch)
                    slot = cb[b] + ia - ib if ia > ib else ca + ib - ia
                    env[slot] -= (1.0 + ga * cu[b]) * inv_area
                rhs[ia] += (n_fg + ga * s_fg) * inv_area
    return env, rhs


@njit(cache=True, nogil=True)
def _cholesky_skyline(env, last, cptr):
    """In-place Cholesky A = L L^T of an SPD skyline matrix, right-looking by columns.

    For each column k: L_kk = sqrt(A_kk), L_ik = A_ik / L_kk, then every later column m in
    the skyline of k gets A_im -= L_ik L_mk for i = m .. last[k] (a contiguous axpy, which
    SIMD-vectorises; last[] is non-decreasing, so it stays inside column m). Indices are cast
    to unsigned so that numba drops its negative-index check, which would block SIMD.
    The diagonal slot keeps 1 / L_kk (the solves multiply by it instead of dividing).
    Returns False if a pivot is not positive (A not positive definite).
    """
    n = last.shape[0]
    for k in range(n):
        ck = cptr[k]
        d = env[ck]
        if not d > 0.0:
            return False
        inv = 1.0 / np.sqrt(d)
        env[ck] = inv
        for t in range(1, cptr[k + 1] - ck):
            env[uint64(ck + t)] *= inv
        lk = last[k]
        for m in range(k + 1, lk + 1):
            cm = cptr[m]
            src = ck + m - k
            a = env[src]
            for t in range(lk - m + 1):
                env[uint64(cm + t)] -= a * env[uint64(src + t)]
    return True


@njit(cache=True, nogil=True)
def _solve_skyline(env, last, cptr, b):
    """Solve L L^T x = b in place of ``b`` with the factor of _cholesky_skyline (diagonal
    slots hold 1 / L_kk): L y = b by columns (axpy), then L^T x = y by columns (dot products
    with four explicit partial sums, which pipeline without reordering any sum)."""
    n = last.shape[0]
    for k in range(n):
        ck = cptr[k]
        yk = b[k] * env[ck]
        b[k] = yk
        for t in range(1, last[k] - k + 1):
            b[uint64(k + t)] -= yk * env[uint64(ck + t)]
    for k in range(n - 1, -1, -1):
        ck = cptr[k]
        length = last[k] - k
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        t = 1
        while t + 3 <= length:
            s0 += env[uint64(ck + t)] * b[uint64(k + t)]
            s1 += env[uint64(ck + t + 1)] * b[uint64(k + t + 1)]
            s2 += env[uint64(ck + t + 2)] * b[uint64(k + t + 2)]
            s3 += env[uint64(ck + t + 3)] * b[uint64(k + t + 3)]
            t += 4
        while t <= length:
            s0 += env[uint64(ck + t)] * b[uint64(k + t)]
            t += 1
        b[k] = (b[k] - ((s0 + s1) + (s2 + s3))) * env[ck]


@njit(cache=True, nogil=True)
def solve_alpha(image, trimap, eps, r, n, y0, y1, x0, x1, max_entries, out):
    """Closed-form alpha of one crop into ``out`` (float32, same shape as ``image``).

    ``image`` float64 and ``trimap`` uint8 (0/128/255), C-contiguous, at least 2r+1 in each
    dimension, with ``n >= 1`` unknown pixels in the box [y0, y1) x [x0, x1) (from
    :func:`scan_trimap`) and at least one known pixel. Returns OK, NOT_POSITIVE_DEFINITE, or
    TOO_LARGE (then ``out`` is not written) when the factor would need more than
    ``max_entries`` float64 values.
    """
    h, w = trimap.shape
    # work region: unknown box grown by 2r; window centres: unknown box grown by r, kept at
    # least r from the image border (pymatting's windows).
    ry0 = max(y0 - 2 * r, 0)
    ry1 = min(y1 + 2 * r, h)
    rx0 = max(x0 - 2 * r, 0)
    rx1 = min(x1 + 2 * r, w)
    img = image[ry0:ry1, rx0:rx1]
    tri = trimap[ry0:ry1, rx0:rx1]
    cy0 = max(y0 - r, r) - ry0
    cy1 = min(y1 + r, h - r) - ry0
    cx0 = max(x0 - r, r) - rx0
    cx1 = min(x1 + r, w - r) - rx0
    ww = rx1 - rx0
    uidx, ys, xs = _index_unknown(tri, n)
    perm = reverse_bfs_order(uidx, ww, ys, xs, r)
    newidx = np.empty(n, np.int32)
    for i in range(n):
        newidx[perm[i]] = i
    # flat maps of the work region: image, and new index / -1 lesion / -2 background
    imf = np.empty(tri.size, np.float64)
    code = np.empty(tri.size, np.int32)
    newmap = np.empty(tri.size, np.int32)
    for y in range(tri.shape[0]):
        for x in range(ww):
            p = y * ww + x
            imf[p] = img[y, x]
            u = uidx[p]
            code[p] = newidx[u] if u >= 0 else (-1 if tri[y, x] == _LESION else -2)
            newmap[p] = newidx[u] if u >= 0 else n
    last, cptr = _skyline(newmap, ww, ys, xs, perm, 2 * r)
    if cptr[n] > max_entries:
        return TOO_LARGE
    known_alpha(trimap, out)
    env, rhs = _assemble(imf, code, ww, cptr, n, eps, r, cy0, cy1, cx0, cx1)
    if not _cholesky_skyline(env, last, cptr):
        return NOT_POSITIVE_DEFINITE
    _solve_skyline(env, last, cptr, rhs)
    for i in range(n):
        a = rhs[newidx[i]]
        if a < 0.0:
            a = 0.0
        elif a > 1.0:
            a = 1.0
        out[ry0 + ys[i], rx0 + xs[i]] = a
    return OK


@njit(cache=True, nogil=True)
def assemble_triplets(image, trimap, eps, r, n):
    """L_UU as (row, col, value) triplets (both triangles, duplicates to be summed) and
    b = -L_UK a_K, unknown pixels numbered in raster order of the whole crop: the same sums as
    :func:`_assemble` (see there), for the sparse-LU fallback of very large unknown regions."""
    h, w = image.shape
    size = 2 * r + 1
    area = size * size
    inv_area = 1.0 / area
    uidx = np.full((h, w), -1, np.int64)
    k = 0
    for y in range(h):
        for x in range(w):
            if trimap[y, x] == _UNKNOWN:
                uidx[y, x] = k
                k += 1
    count = 0
    for cy in range(r, h - r):
        for cx in range(r, w - r):
            nu = 0
            for yy in range(cy - r, cy + r + 1):
                for xx in range(cx - r, cx + r + 1):
                    nu += uidx[yy, xx] >= 0
            count += nu * nu
    rows = np.empty(count, np.int64)
    cols = np.empty(count, np.int64)
    vals = np.empty(count, np.float64)
    rhs = np.zeros(n, np.float64)
    cu = np.empty(area, np.float64)
    ju = np.empty(area, np.int64)
    e = 0
    for cy in range(r, h - r):
        for cx in range(r, w - r):
            s = 0.0
            for yy in range(cy - r, cy + r + 1):
                for xx in range(cx - r, cx + r + 1):
                    s += image[yy, xx]
            mu = s * inv_area
            var = 0.0
            s_fg = 0.0
            n_fg = 0
            nu = 0
            for yy in range(cy - r, cy + r + 1):
                for xx in range(cx - r, cx + r + 1):
                    d = image[yy, xx] - mu
                    var += d * d
                    if uidx[yy, xx] >= 0:
                        ju[nu] = uidx[yy, xx]
                        cu[nu] = d
                        nu += 1
                    elif trimap[yy, xx] == _LESION:
                        s_fg += d
                        n_fg += 1
            if nu == 0:
                continue
            g = 1.0 / (var * inv_area + eps * inv_area)
            for a in range(nu):
                ga = g * cu[a]
                for b in range(nu):
                    rows[e] = ju[a]
                    cols[e] = ju[b]
                    vals[e] = (1.0 if a == b else 0.0) - (1.0 + ga * cu[b]) * inv_area
                    e += 1
                rhs[ju[a]] += (n_fg + ga * s_fg) * inv_area
    return rows, cols, vals, rhs
