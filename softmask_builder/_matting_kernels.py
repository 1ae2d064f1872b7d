"""Numba kernels of :mod:`softmask_builder.matting` (private).

:func:`solve_alpha` does the whole closed-form solve of one crop without the GIL: index the
unknown pixels, order them (reverse Cuthill-McKee), assemble the unknown block of the matting
Laplacian straight into skyline (variable-band) storage, factor it by Cholesky, solve, clip.
Every work array is allocated inside, so calls from several threads share nothing, and the
arithmetic does not depend on the thread, so a batch gives the same bytes as single calls.

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

# Loops that are plain sums of products may be reassociated (SIMD); no other fast-math flag, so
# NaN/inf keep their meaning. The order of operations is fixed by the code, hence deterministic.
_FAST = {"reassoc", "contract"}


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
def _neighbours(uidx, w, ys, xs, reach):
    """CSR lists of the unknown neighbours of each unknown pixel within a (2*reach+1)^2 box,
    in raster order. ``uidx`` is the flat map of :func:`_index_unknown`, ``w`` its row length."""
    h = uidx.shape[0] // w
    n = ys.shape[0]
    nptr = np.empty(n + 1, np.int32)
    nbr = np.empty(n * (2 * reach + 1) ** 2, np.int32)
    nptr[0] = 0
    k = 0
    for i in range(n):
        for y in range(max(ys[i] - reach, 0), min(ys[i] + reach + 1, h)):
            for x in range(max(xs[i] - reach, 0), min(xs[i] + reach + 1, w)):
                u = uidx[y * w + x]
                nbr[k] = u
                k += (u >= 0) & (u != i)   # branch-free compaction
        nptr[i + 1] = k
    return nptr, nbr


@njit(cache=True, nogil=True)
def _bfs(root, nptr, nbr, level, queue, seen):
    """Breadth-first search from ``root``: visit order in ``queue``, depth in ``level``.
    Clears ``seen`` again before returning. Returns (count, eccentricity)."""
    queue[0] = root
    level[root] = 0
    seen[root] = True
    head = 0
    tail = 1
    while head < tail:
        v = queue[head]
        head += 1
        for e in range(nptr[v], nptr[v + 1]):
            u = nbr[e]
            if not seen[u]:
                seen[u] = True
                level[u] = level[v] + 1
                queue[tail] = u
                tail += 1
    for t in range(tail):
        seen[queue[t]] = False
    return tail, level[queue[tail - 1]]


@njit(cache=True, nogil=True)
def rcm_order(nptr, nbr):
    """Reverse Cuthill-McKee order (``perm[new] = raster``) of a graph in CSR form.

    Each connected component starts from a pseudo-peripheral node (George & Liu: BFS again
    from the lowest-degree node of the last level while the eccentricity grows); children are
    queued by increasing degree. Ties are broken by raster index, so the order is a pure
    function of the graph. On a thin ring of unknown pixels the BFS levels are short arcs
    across the ring, so the bandwidth stays a few times the ring width.
    """
    n = nptr.shape[0] - 1
    deg = np.empty(n, np.int32)
    for i in range(n):
        deg[i] = nptr[i + 1] - nptr[i]
    level = np.zeros(n, np.int32)
    queue = np.empty(n, np.int32)
    seen = np.zeros(n, np.bool_)
    done = np.zeros(n, np.bool_)
    order = np.empty(n, np.int32)
    maxdeg = 0
    for i in range(n):
        maxdeg = max(maxdeg, deg[i])
    cand = np.empty(maxdeg + 1, np.int32)
    pos = 0
    for seed in range(n):
        if done[seed]:
            continue
        root = seed
        cnt, ecc = _bfs(root, nptr, nbr, level, queue, seen)
        for _ in range(8):
            # lowest-degree node of the last level
            best = queue[cnt - 1]
            for t in range(cnt - 1, -1, -1):
                u = queue[t]
                if level[u] < ecc:
                    break
                if deg[u] < deg[best] or (deg[u] == deg[best] and u < best):
                    best = u
            cnt2, ecc2 = _bfs(best, nptr, nbr, level, queue, seen)
            if ecc2 <= ecc:
                break
            root = best
            cnt = cnt2
            ecc = ecc2
        # Cuthill-McKee from the root
        order[pos] = root
        done[root] = True
        head = pos
        pos += 1
        while head < pos:
            v = order[head]
            head += 1
            m = 0
            for e in range(nptr[v], nptr[v + 1]):
                u = nbr[e]
                if not done[u]:
                    done[u] = True
                    k = m
                    while k > 0 and (deg[cand[k - 1]] > deg[u]
                                     or (deg[cand[k - 1]] == deg[u] and cand[k - 1] > u)):
                        cand[k] = cand[k - 1]
                        k -= 1
                    cand[k] = u
                    m += 1
            for k in range(m):
                order[pos] = cand[k]
                pos += 1
    perm = np.empty(n, np.int32)
    for i in range(n):
        perm[i] = order[n - 1 - i]
    return perm


@njit(cache=True, nogil=True)
def _skyline(code, w, ys, xs, perm, reach):
    """Column skyline of the lower triangle (new order): column ``j`` holds rows
    ``j .. last[j]`` at ``env[cptr[j] : cptr[j+1]]``.

    ``last[j] = max{i : first[i] <= j}`` where ``first[i]`` is the lowest column of row i in
    the matrix (its unknown neighbours within the stencil, a box of radius 2r). Cholesky
    creates fill only inside this set (a fill L_ij needs some k < j with L_ik, L_jk != 0, so
    first[i] <= k). ``code`` is the flat map of new indices (< 0 for known pixels).
    """
    h = code.shape[0] // w
    n = perm.shape[0]
    last = np.arange(n)
    for i in range(n):
        v = perm[i]
        f = n
        for y in range(max(ys[v] - reach, 0), min(ys[v] + reach + 1, h)):
            for x in range(max(xs[v] - reach, 0), min(xs[v] + reach + 1, w)):
                c = code[y * w + x]
                f = min(f, c if c >= 0 else n)
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
    # active centres = box-OR of the unknown indicator, separable (rows, then columns)
    rows_any = np.zeros(h * w, np.bool_)
    for y in range(h):
        for x in range(cx0, cx1):
            hit = False
            for xx in range(x - r, x + r + 1):
                hit |= code[y * w + xx] >= 0
            rows_any[y * w + x] = hit
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
            hit = False
            for yy in range(cy - r, cy + r + 1):
                hit |= rows_any[yy * w + cx]
            if not hit:
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


@njit(cache=True, nogil=True, fastmath=_FAST)
def _cholesky_skyline(env, last, cptr):
    """In-place Cholesky A = L L^T of an SPD skyline matrix, right-looking by columns.

    For each column k: L_kk = sqrt(A_kk), L_ik = A_ik / L_kk, then every later column m in
    the skyline of k gets A_im -= L_ik L_mk for i = m .. last[k] (a contiguous axpy, which
    SIMD-vectorises; last[] is non-decreasing, so it stays inside column m). Indices are cast
    to unsigned so that numba drops its negative-index check, which would block SIMD.
    Returns False if a pivot is not positive (A not positive definite).
    """
    n = last.shape[0]
    for k in range(n):
        ck = cptr[k]
        d = env[ck]
        if not d > 0.0:
            return False
        d = np.sqrt(d)
        env[ck] = d
        inv = 1.0 / d
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


@njit(cache=True, nogil=True, fastmath=_FAST)
def _solve_skyline(env, last, cptr, b):
    """Solve L L^T x = b in place of ``b`` with the factor of _cholesky_skyline:
    L y = b by columns (axpy), then L^T x = y by columns (dot)."""
    n = last.shape[0]
    for k in range(n):
        ck = cptr[k]
        yk = b[k] / env[ck]
        b[k] = yk
        for t in range(1, last[k] - k + 1):
            b[uint64(k + t)] -= yk * env[uint64(ck + t)]
    for k in range(n - 1, -1, -1):
        ck = cptr[k]
        s = b[k]
        for t in range(1, last[k] - k + 1):
            s -= env[uint64(ck + t)] * b[uint64(k + t)]
        b[k] = s / env[ck]


@njit(cache=True, nogil=True)
def solve_alpha(image, trimap, eps, r, n, y0, y1, x0, x1, out):
    """Closed-form alpha of one crop into ``out`` (float32, same shape as ``image``).

    ``image`` float64 and ``trimap`` uint8 (0/128/255), C-contiguous, at least 2r+1 in each
    dimension, with ``n >= 1`` unknown pixels in the box [y0, y1) x [x0, x1) (from
    :func:`scan_trimap`) and at least one known pixel. Returns OK or NOT_POSITIVE_DEFINITE.
    """
    h, w = trimap.shape
    known_alpha(trimap, out)
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
    nptr, nbr = _neighbours(uidx, ww, ys, xs, r)
    perm = rcm_order(nptr, nbr)
    newidx = np.empty(n, np.int32)
    for i in range(n):
        newidx[perm[i]] = i
    # flat maps of the work region: image, and new index / -1 lesion / -2 background
    imf = np.empty(tri.size, np.float64)
    code = np.empty(tri.size, np.int32)
    for y in range(tri.shape[0]):
        for x in range(ww):
            p = y * ww + x
            imf[p] = img[y, x]
            u = uidx[p]
            code[p] = newidx[u] if u >= 0 else (-1 if tri[y, x] == _LESION else -2)
    last, cptr = _skyline(code, ww, ys, xs, perm, 2 * r)
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
