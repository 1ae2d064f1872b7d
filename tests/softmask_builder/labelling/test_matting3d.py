"""3-D closed-form matting against an independent full-Laplacian sparse solve (Levin et al. Eq. 8)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from softmask_builder.errors import InputError
from softmask_builder.labelling.matting import closed_form_alpha


def _oracle(image, trimap, eps, r):
    """Full N x N matting Laplacian built window by window from its definition, then the
    reduced system L_UU a_U = -L_UK a_K solved by scipy's spsolve."""
    img = np.asarray(image, np.float64)
    nz, ny, nx = img.shape
    idx = np.arange(img.size).reshape(img.shape)
    size = 2 * r + 1
    nw = size ** 3
    rows, cols, vals = [], [], []
    for cz in range(r, nz - r):
        for cy in range(r, ny - r):
            for cx in range(r, nx - r):
                sl = (slice(cz - r, cz + r + 1), slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1))
                win = img[sl].ravel()
                ids = idx[sl].ravel()
                c = win - win.mean()
                var = np.mean(c * c)
                block = np.eye(nw) - (1.0 + np.outer(c, c) / (var + eps / nw)) / nw
                rows.append(np.repeat(ids, nw))
                cols.append(np.tile(ids, nw))
                vals.append(block.ravel())
    lap = scipy.sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(img.size, img.size)).tocsr()
    t = np.asarray(trimap).ravel()
    u = np.flatnonzero(t == 128)
    k = np.flatnonzero(t != 128)
    a_k = (t[k] == 255).astype(np.float64)
    alpha = a_k_full = (t == 255).astype(np.float64)
    if u.size:
        a_u = scipy.sparse.linalg.spsolve(lap[u][:, u].tocsc(), -(lap[u][:, k] @ a_k))
        alpha = a_k_full.copy()
        alpha[u] = np.clip(a_u, 0.0, 1.0)
    return alpha.reshape(img.shape)


def _blob_volume(rng, shape, centres, radius, band):
    zz, yy, xx = np.indices(shape)
    dist = np.full(shape, np.inf)
    for c in centres:
        dist = np.minimum(dist, np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) - radius)
    trimap = np.zeros(shape, np.uint8)
    trimap[dist <= band] = 128
    trimap[dist < -band] = 255
    image = np.clip(0.5 - 0.4 * np.tanh(dist) + 0.05 * rng.standard_normal(shape), 0, 1)
    return image, trimap


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [1e-7, 1e-4])
def test_random_volume_matches_full_laplacian_solve(seed, eps):
    rng = np.random.default_rng(seed)
    shape = (7, 11, 10)
    image, trimap = _blob_volume(rng, shape, [(3, 5, 5)], 2.2, 1.1)
    assert (trimap == 128).sum() > 50
    alpha = closed_form_alpha(image, trimap, eps=eps, radius=1)
    assert alpha.dtype == np.float32 and alpha.shape == shape
    np.testing.assert_allclose(alpha, _oracle(image, trimap, eps, 1), atol=1e-6, rtol=0)


def test_fully_random_image_and_trimap():
    rng = np.random.default_rng(7)
    shape = (5, 6, 7)
    image = rng.random(shape)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=shape, p=[0.3, 0.4, 0.3])
    alpha = closed_form_alpha(image, trimap, eps=1e-5, radius=1)
    np.testing.assert_allclose(alpha, _oracle(image, trimap, 1e-5, 1), atol=1e-6, rtol=0)


def test_radius_two():
    rng = np.random.default_rng(3)
    image, trimap = _blob_volume(rng, (7, 9, 9), [(3, 4, 4)], 2.0, 1.0)
    alpha = closed_form_alpha(image, trimap, eps=1e-6, radius=2)
    np.testing.assert_allclose(alpha, _oracle(image, trimap, 1e-6, 2), atol=1e-6, rtol=0)


def test_band_at_the_border():
    """A blob cut by the volume's faces: unknown voxels on the first/last slice and on the edges."""
    rng = np.random.default_rng(4)
    image, trimap = _blob_volume(rng, (5, 9, 9), [(0, 0, 4)], 3.0, 1.2)
    assert (trimap[0] == 128).any() and (trimap[:, 0] == 128).any()
    alpha = closed_form_alpha(image, trimap, eps=1e-7)
    np.testing.assert_allclose(alpha, _oracle(image, trimap, 1e-7, 1), atol=1e-6, rtol=0)


def test_two_blobs():
    rng = np.random.default_rng(5)
    image, trimap = _blob_volume(rng, (6, 8, 16), [(2, 4, 3), (3, 4, 12)], 1.8, 1.0)
    from scipy import ndimage
    assert ndimage.label(trimap != 0)[1] == 2
    alpha = closed_form_alpha(image, trimap, eps=1e-7)
    np.testing.assert_allclose(alpha, _oracle(image, trimap, 1e-7, 1), atol=1e-6, rtol=0)


def test_no_unknown_voxel_gives_the_trimap():
    trimap = np.zeros((3, 4, 5), np.uint8)
    trimap[1, 1:3, 1:3] = 255
    alpha = closed_form_alpha(np.random.default_rng(0).random(trimap.shape), trimap)
    np.testing.assert_array_equal(alpha, trimap / 255.0)
    assert alpha.dtype == np.float32


def test_single_slice():
    """Z = 1: no 3x3x3 window fits. Without unknown voxels the trimap is returned; with unknown
    voxels the call is refused (matte image[0] in 2-D)."""
    trimap = np.zeros((1, 9, 9), np.uint8)
    trimap[0, 3:6, 3:6] = 255
    image = np.random.default_rng(1).random(trimap.shape)
    np.testing.assert_array_equal(closed_form_alpha(image, trimap), trimap / 255.0)
    trimap[0, 2, 2:7] = 128
    with pytest.raises(InputError, match="single slice"):
        closed_form_alpha(image, trimap)


@pytest.mark.parametrize("image, trimap, match", [
    (np.zeros((3, 4, 4)), np.zeros((3, 4, 5), np.uint8), "trimap shape"),
    (np.full((3, 4, 4), np.nan), np.zeros((3, 4, 4), np.uint8), "NaN"),
    (np.zeros((3, 4, 4)), np.full((3, 4, 4), 255, np.uint8), "no background"),
    (np.zeros((3, 4, 4)), np.full((3, 4, 4), 7, np.uint8), "outside"),
])
def test_bad_input_names_the_argument(image, trimap, match):
    with pytest.raises(InputError, match=match):
        closed_form_alpha(image, trimap)


def test_same_bytes_twice():
    rng = np.random.default_rng(9)
    image, trimap = _blob_volume(rng, (8, 14, 14), [(4, 7, 7)], 3.5, 1.5)
    a = closed_form_alpha(image, trimap)
    b = closed_form_alpha(image.copy(), trimap.copy())
    assert a.tobytes() == b.tobytes()


def test_larger_shell_exercises_the_nested_dissection():
    """~700 unknown voxels: the ordering cuts the shell several times; the answer must not move."""
    rng = np.random.default_rng(11)
    image, trimap = _blob_volume(rng, (9, 16, 16), [(4, 8, 7)], 4.0, 1.5)
    assert (trimap == 128).sum() > 500
    alpha = closed_form_alpha(image, trimap, eps=1e-7)
    np.testing.assert_allclose(alpha, _oracle(image, trimap, 1e-7, 1), atol=1e-6, rtol=0)


def test_nested_dissection_is_a_permutation_with_separating_slabs():
    from softmask_builder.labelling.matting3d import _nested_dissection_order

    rng = np.random.default_rng(12)
    coords = np.unique(rng.integers(0, 20, size=(600, 3)), axis=0)
    perm = _nested_dissection_order(coords, 2, leaf=8)
    assert np.array_equal(np.sort(perm), np.arange(coords.shape[0]))


# --- the multifrontal Cholesky on the nested-dissection tree (issue 26, speed) -----------------

def _reduced_system(image, trimap, eps=1e-7, r=1):
    from softmask_builder.labelling import _matting3d_kernels as k3
    from softmask_builder.labelling.matting3d import _prepare_3d

    img, tri, eps_f, r = _prepare_3d(image, trimap, eps, r)
    indptr, indices, data, rhs, flat_u = k3.assemble_reduced_3d(img, tri, eps_f, r)
    coords = np.stack(np.unravel_index(flat_u, img.shape), axis=1)
    return indptr, indices, data, rhs, coords


def _ours(indptr, indices, data, rhs, coords, *, leaf, reach=2):
    from softmask_builder.labelling.matting3d import (_multifrontal_cholesky, _nested_dissection_tree,
                                                      _solve_factored)

    perm, node_ptr, parent = _nested_dissection_tree(coords, reach, leaf=leaf)
    return _solve_factored(_multifrontal_cholesky(indptr, indices, data, perm, node_ptr, parent, eps=1e-7), rhs)


@pytest.mark.parametrize("leaf", [8, 64, 100000])
def test_multifrontal_cholesky_matches_superlu(leaf):
    """A ~2600-unknown shell (2-voxel band): deep tree (leaf 8), the default-like tree, and one
    dense front all give SuperLU's answer (COLAMD order, partial pivoting) within 1e-10."""
    rng = np.random.default_rng(21)
    image, trimap = _blob_volume(rng, (14, 34, 34), [(7, 17, 16)], 7.0, 2.0)
    indptr, indices, data, rhs, coords = _reduced_system(image, trimap)
    n = rhs.shape[0]
    assert n > 2000
    a = scipy.sparse.csc_matrix((data, indices, indptr), shape=(n, n))
    ref = scipy.sparse.linalg.splu(a).solve(rhs)
    x = _ours(indptr, indices, data, rhs, coords, leaf=leaf)
    assert np.max(np.abs(x - ref)) <= 1e-10 * max(1.0, np.max(np.abs(ref)))
    assert np.max(np.abs(a @ x - rhs)) <= 1e-10 * np.max(np.abs(rhs))


@pytest.mark.parametrize("leaf", [8, 32])
def test_deep_trees_match_the_full_laplacian_solve(monkeypatch, leaf):
    """Small leaves make many fronts (children's updates added into parents) on the test volumes."""
    from softmask_builder.labelling import matting3d

    monkeypatch.setattr(matting3d, "_LEAF", leaf)
    rng = np.random.default_rng(11)
    image, trimap = _blob_volume(rng, (9, 16, 16), [(4, 8, 7)], 4.0, 1.5)
    np.testing.assert_allclose(closed_form_alpha(image, trimap, eps=1e-7), _oracle(image, trimap, 1e-7, 1),
                               atol=1e-6, rtol=0)
    image, trimap = _blob_volume(rng, (7, 11, 11), [(3, 5, 5)], 2.5, 1.0)
    np.testing.assert_allclose(closed_form_alpha(image, trimap, eps=1e-6, radius=2),
                               _oracle(image, trimap, 1e-6, 2), atol=1e-6, rtol=0)


def test_two_blobs_are_independent_systems():
    """Two shells far apart: the tree has one root per blob (an empty slab separates them) and
    each blob's alpha is the one it gets when the other blob is not there at all."""
    from softmask_builder.labelling.matting3d import _nested_dissection_tree

    rng = np.random.default_rng(22)
    image, trimap = _blob_volume(rng, (9, 14, 40), [(4, 7, 8), (4, 7, 31)], 3.5, 1.5)
    *_, coords = _reduced_system(image, trimap)
    perm, node_ptr, parent = _nested_dissection_tree(coords, 2, leaf=64)
    roots = np.flatnonzero(parent == -1)
    assert roots.size == 2
    # the subtree of the first root ends where the second root's subtree starts (postorder)
    first_end = node_ptr[roots[0] + 1]
    side = coords[perm[:first_end], 2] < 20
    assert side.all() or not side.any()
    assert (coords[perm[first_end:], 2] < 20).all() != side.all()
    both = closed_form_alpha(image, trimap, eps=1e-7)
    for keep in (slice(0, 20), slice(20, 40)):
        alone = trimap.copy()
        mask = np.ones(trimap.shape, bool)
        mask[:, :, keep] = False
        alone[mask] = 0
        single = closed_form_alpha(image, alone, eps=1e-7)
        np.testing.assert_allclose(both[:, :, keep], single[:, :, keep], atol=1e-7, rtol=0)


def test_not_positive_definite_raises():
    """dpotrf's failure becomes a SoftMaskError, not a traceback (the matrix [[1, 2], [2, 1]])."""
    from softmask_builder.errors import SoftMaskError
    from softmask_builder.labelling.matting3d import _multifrontal_cholesky

    a = scipy.sparse.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(SoftMaskError, match="singular"):
        _multifrontal_cholesky(a.indptr.astype(np.int64), a.indices, a.data, np.arange(2),
                               np.array([0, 2]), np.array([-1]), eps=1e-7)


def test_same_bytes_whatever_the_blas_threads(tmp_path):
    """The dense fronts go through OpenBLAS, whose dsyrk/dpotrf round differently with 1 and >= 2
    threads: a process started with 1 and one with 4 BLAS threads give the same float64 solution."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, hashlib, sys\n"
        "sys.path.insert(0, %r)\n"
        "from test_matting3d import _blob_volume\n"
        "from softmask_builder.labelling import matting3d\n"
        "rng = np.random.default_rng(23)\n"
        "image, trimap = _blob_volume(rng, (12, 30, 30), [(6, 15, 14)], 6.0, 2.0)\n"
        "def keep(f):\n"
        "    def g(*a, **k):\n"
        "        x = f(*a, **k); print(hashlib.sha256(x.tobytes()).hexdigest()); return x\n"
        "    return g\n"
        "matting3d._solve_factored = keep(matting3d._solve_factored)\n"
        "matting3d.closed_form_alpha_3d(image, trimap)\n" % os.path.dirname(__file__))
    digests = set()
    for threads in ("1", "4"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_blas_thread_limit_is_restored_and_shared_by_threads():
    """Inside the solve BLAS has one thread; afterwards the caller's limits are back; callers on
    two threads at once get the bytes of sequential calls."""
    from concurrent.futures import ThreadPoolExecutor

    import threadpoolctl

    from softmask_builder.labelling.matting3d import _one_blas_thread

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")

    with threadpoolctl.threadpool_limits(2, "blas"):
        before = blas_threads()
        with _one_blas_thread():
            with _one_blas_thread():
                inside = blas_threads()
            assert blas_threads() == inside
        assert blas_threads() == before
    assert set(inside) == {1}
    rng = np.random.default_rng(24)
    cases = [_blob_volume(rng, (10, 22, 22), [(5, 11, 10)], 5.0, 2.0) for _ in range(4)]
    sequential = [closed_form_alpha(im, tm).tobytes() for im, tm in cases]
    with ThreadPoolExecutor(2) as pool:
        parallel = [a.tobytes() for a in pool.map(lambda c: closed_form_alpha(*c), cases)]
    assert parallel == sequential


def test_blas_thread_limit_covers_scipy_openblas_in_a_fresh_process():
    """In a process that has not imported scipy.linalg yet, the limit must still reach SciPy's
    BLAS (a library of its own, loaded with scipy.linalg, the one the fronts use): every BLAS
    library loaded once the factorisation's imports are done has one thread."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, threadpoolctl\n"
            "from softmask_builder.labelling import matting3d\n"
            "with matting3d._one_blas_thread():\n"
            "    from scipy.linalg import blas, lapack  # what _multifrontal_cholesky imports\n"
            "    print(json.dumps([[i['filepath'], i['num_threads']] for i in threadpoolctl.threadpool_info()\n"
            "                      if i['user_api'] == 'blas']))\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    libs = json.loads(out.stdout)
    assert libs and all(n == 1 for _, n in libs), libs
