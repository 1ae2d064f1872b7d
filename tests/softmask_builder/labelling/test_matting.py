"""Closed-form matting against an independent exact sparse solve and against pymatting."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.labelling.matting import closed_form_alpha, closed_form_alpha_batch

EXACT_TOL = 1e-6


def _exact_alpha(image, trimap, eps, radius):
    """Plain construction of the whole image's gray matting Laplacian (Levin et al. Eq. 8),
    window by window with dense outer products, then scipy's sparse direct solve of
    L_UU a_U = -L_UK a_K. Slow and independent of the package's kernels."""
    image = np.asarray(image, np.float64)
    h, w = image.shape
    size = 2 * radius + 1
    area = size * size
    index = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [], [], []
    for cy in range(radius, h - radius):
        for cx in range(radius, w - radius):
            win = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1].ravel()
            ids = index[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1].ravel()
            centred = win - win.mean()
            var = np.mean(centred ** 2)
            block = np.eye(area) - (1.0 + np.outer(centred, centred) / (var + eps / area)) / area
            rows.append(np.repeat(ids, area))
            cols.append(np.tile(ids, area))
            vals.append(block.ravel())
    lap = scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(h * w, h * w))
    t = trimap.ravel()
    unknown = t == 128
    known_alpha = (t == 255).astype(np.float64)
    alpha = known_alpha.copy()
    if unknown.any():
        l_uu = lap[unknown][:, unknown].tocsc()
        rhs = -(lap[unknown][:, ~unknown] @ known_alpha[~unknown])
        alpha[unknown] = scipy.sparse.linalg.spsolve(l_uu, rhs)
    return np.clip(alpha, 0.0, 1.0).reshape(h, w)


def _nodule(shape, seed, *, radius_px=None, center=None, noise=0.03):
    """A blurred, noisy, lobulated bright blob on a textured background, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = center if center is not None else ((h - 1) / 2 + rng.uniform(-1, 1), (w - 1) / 2 + rng.uniform(-1, 1))
    base = radius_px if radius_px is not None else min(h, w) / 4
    theta = np.arctan2(rr - cy, cc - cx)
    lobes = base * (1 + 0.15 * np.sin(rng.integers(3, 7) * theta + rng.uniform(0, 2 * np.pi)))
    mask = np.hypot(rr - cy, cc - cx) <= lobes
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    image = 0.2 + 0.1 * texture + 0.5 * mask
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0.0, noise, shape)
    return np.clip(image, 0.0, 1.0), mask


def _trimap(mask, band):
    """Erode/dilate by a square of half-size ``band``: 255 inside, 0 outside, 128 between."""
    st = np.ones((2 * band + 1, 2 * band + 1), bool)
    lesion = ndimage.binary_erosion(mask, st, border_value=1)
    if not lesion.any():
        lesion = np.zeros_like(mask)
        lesion[np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)] = True
    outside = ~ndimage.binary_dilation(mask, st)
    trimap = np.full(mask.shape, 128, np.uint8)
    trimap[outside] = 0
    trimap[lesion] = 255
    return trimap


def _cases():
    """(name, image, trimap, eps, radius) edge cases and random crops."""
    cases = []
    for seed in range(4):
        image, mask = _nodule((32, 32), seed)
        cases.append((f"random-{seed}", image, _trimap(mask, 2), 1e-7, 1))
    image, mask = _nodule((27, 41), 10)
    cases.append(("non-square", image, _trimap(mask, 3), 1e-7, 1))
    # a large nodule filling a 64x64 crop: a long unknown ring (~650 pixels)
    image, mask = _nodule((64, 64), 18, radius_px=20)
    cases.append(("ring-64", image, _trimap(mask, 2), 1e-7, 1))
    image, mask = _nodule((30, 30), 11)
    cases.append(("radius-2", image, _trimap(mask, 3), 1e-7, 2))
    cases.append(("eps-1e-4", image, _trimap(mask, 2), 1e-4, 1))
    # lesion cut by the crop border: the unknown band runs along the top and left edges
    image, mask = _nodule((28, 28), 12, radius_px=9, center=(3.0, 4.0))
    trimap = _trimap(mask, 2)
    trimap[:2, :] = np.where(trimap[:2, :] == 0, 128, trimap[:2, :])
    trimap[:, :1] = 128
    cases.append(("border-band", image, trimap, 1e-7, 1))
    # two blobs, two unknown rings
    a, mask_a = _nodule((34, 34), 13, radius_px=5, center=(9.0, 9.0))
    b, mask_b = _nodule((34, 34), 14, radius_px=6, center=(24.0, 23.0))
    cases.append(("two-blobs", np.maximum(a, b), _trimap(mask_a | mask_b, 2), 1e-7, 1))
    # flat image: every window has sigma = 0, only eps keeps the system regular
    _, mask = _nodule((24, 24), 15)
    cases.append(("flat", np.full((24, 24), 0.4), _trimap(mask, 2), 1e-7, 1))
    # tiny crop, most pixels unknown
    rng = np.random.default_rng(16)
    trimap = np.full((5, 7), 128, np.uint8)
    trimap[2, 3] = 255
    trimap[0, 0] = trimap[4, 6] = 0
    cases.append(("tiny-5x7", rng.uniform(0, 1, (5, 7)), trimap, 1e-7, 1))
    # no unknown pixel
    image, mask = _nodule((20, 20), 17)
    cases.append(("no-unknown", image, np.where(mask, 255, 0).astype(np.uint8), 1e-7, 1))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name,image,trimap,eps,radius", CASES, ids=[c[0] for c in CASES])
def test_matches_exact_sparse_solve(name, image, trimap, eps, radius):
    got = closed_form_alpha(image, trimap, eps=eps, radius=radius)
    want = _exact_alpha(image, trimap, eps, radius)
    assert got.dtype == np.float32 and got.shape == image.shape
    assert np.abs(got - want).max() <= EXACT_TOL
    # known pixels are hard constraints, exactly 0 / 1
    np.testing.assert_array_equal(got[trimap != 128], trimap[trimap != 128] / 255.0)
    # a non-trivial case must actually leave some alpha strictly between 0 and 1
    if name not in ("no-unknown", "flat"):
        assert np.any((got > 0.05) & (got < 0.95))


def test_no_unknown_returns_trimap_over_255():
    _, mask = _nodule((16, 18), 3)
    trimap = np.where(mask, 255, 0).astype(np.uint8)
    got = closed_form_alpha(np.zeros((16, 18)), trimap)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (trimap / 255).astype(np.float32))


def test_integer_image_and_trimap_dtypes_accepted():
    image, mask = _nodule((24, 24), 4)
    image_int = np.round(image * 1000).astype(np.int16)
    trimap = _trimap(mask, 2)
    got = closed_form_alpha(image_int, trimap.astype(np.int64), eps=0.1)
    assert np.abs(got - _exact_alpha(image_int.astype(np.float64), trimap, 0.1, 1)).max() <= EXACT_TOL


def _pymatting_alpha(image, trimap, eps, **cg_kwargs):
    from pymatting import estimate_alpha_cf

    rgb = np.repeat(np.asarray(image, np.float64)[:, :, None], 3, axis=2)
    return estimate_alpha_cf(rgb, trimap / 255.0, laplacian_kwargs={"epsilon": 3 * eps}, cg_kwargs=cg_kwargs)


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pymatting_within_its_own_error(seed):
    # pymatting solves the same system: gray replicated to RGB with epsilon = 3 eps gives
    # (Sigma + eps_rgb/|w| I)^-1 = 1 1^T / (3 (sigma^2 + eps/|w|)) along the gray direction.
    # At eps = 1e-7 its closed-form 3x3 inverse of that nearly singular covariance loses digits
    # (and its CG stops at a relative residual of 1e-7): measure that error against the exact
    # solve and allow it.
    image, mask = _nodule((40, 40), 100 + seed)
    trimap = _trimap(mask, 2)
    ours = closed_form_alpha(image, trimap)
    pym = _pymatting_alpha(image, trimap, 1e-7)
    pym_error = np.abs(pym - _exact_alpha(image, trimap, 1e-7, 1)).max()
    assert pym_error < 3e-3
    assert np.abs(ours - pym).max() <= pym_error + EXACT_TOL


@pytest.mark.parametrize("seed", range(2))
def test_equals_converged_pymatting_when_its_inverse_is_well_conditioned(seed):
    # At eps = 1e-5 pymatting's 3x3 inverse is accurate; with CG driven to convergence it is an
    # independent exact oracle. The same call with epsilon = eps (not 3 eps) must not pass.
    image, mask = _nodule((40, 40), 300 + seed)
    trimap = _trimap(mask, 2)
    ours = closed_form_alpha(image, trimap, eps=1e-5)
    converged = _pymatting_alpha(image, trimap, 1e-5, rtol=1e-13, maxiter=100000)
    assert np.abs(ours - converged).max() <= EXACT_TOL
    wrong_eps = _pymatting_alpha(image, trimap, 1e-5 / 3, rtol=1e-13, maxiter=100000)
    assert np.abs(ours - wrong_eps).max() > 10 * EXACT_TOL


def test_batch_equals_single_byte_for_byte():
    images, trimaps = [], []
    for seed, shape in enumerate([(32, 32), (48, 40), (20, 26), (64, 64), (30, 30), (40, 52)]):
        image, mask = _nodule(shape, 200 + seed)
        images.append(image)
        trimaps.append(_trimap(mask, 1 + seed % 3))
    single = [closed_form_alpha(i, t) for i, t in zip(images, trimaps)]
    for n_threads in (None, 1, 2, 3):
        batch = closed_form_alpha_batch(images, trimaps, n_threads=n_threads)
        assert len(batch) == len(single)
        for a, b in zip(single, batch):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    # stacked arrays work too, radius and eps are passed through
    stacked = closed_form_alpha_batch(np.stack(images[3:4]), np.stack(trimaps[3:4]), radius=2, eps=1e-5)
    assert stacked[0].tobytes() == closed_form_alpha(images[3], trimaps[3], radius=2, eps=1e-5).tobytes()
    assert closed_form_alpha_batch([], []) == []


def test_sparse_lu_fallback_for_huge_factors(monkeypatch):
    # Unknown regions whose banded factor would exceed the memory cap go to scipy's SuperLU on
    # the same system: force it with a cap of 0 and compare with the exact solve.
    from softmask_builder.labelling import matting

    cases = [c for c in CASES if c[0] in ("random-0", "border-band", "two-blobs", "radius-2", "tiny-5x7")]
    monkeypatch.setattr(matting, "_MAX_SKYLINE_ENTRIES", 0)
    for name, image, trimap, eps, radius in cases:
        got = closed_form_alpha(image, trimap, eps=eps, radius=radius)
        assert np.abs(got - _exact_alpha(image, trimap, eps, radius)).max() <= EXACT_TOL, name
        np.testing.assert_array_equal(got[trimap != 128], trimap[trimap != 128] / 255.0)
    images = [c[1] for c in cases if c[4] == 1]
    trimaps = [c[2] for c in cases if c[4] == 1]
    single = [closed_form_alpha(i, t) for i, t in zip(images, trimaps)]
    batch = closed_form_alpha_batch(images, trimaps, n_threads=2)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(single, batch))


def test_repeated_calls_are_identical():
    image, mask = _nodule((48, 48), 9)
    trimap = _trimap(mask, 3)
    first = closed_form_alpha(image, trimap)
    assert all(closed_form_alpha(image, trimap).tobytes() == first.tobytes() for _ in range(3))


def _good():
    image, mask = _nodule((16, 16), 1)
    return image, _trimap(mask, 1)


_IMAGE, _TRIMAP = _good()
_NAN_IMAGE = _IMAGE.copy()
_NAN_IMAGE[3, 4] = np.nan
_VALUE_TRIMAP = _TRIMAP.copy()
_VALUE_TRIMAP[0, 0] = 100

BAD_INPUTS = [
    ("image-3d", dict(image=np.stack([_IMAGE] * 3, axis=-1)), "image"),
    ("image-nan", dict(image=_NAN_IMAGE), "image"),
    ("image-bool", dict(image=_IMAGE > 0.5), "image"),
    ("image-too-small", dict(image=_IMAGE[:2, :5], trimap=np.array([[0, 128, 255, 128, 0]] * 2, np.uint8)), "image"),
    ("trimap-shape", dict(trimap=_TRIMAP[:-1]), "trimap"),
    ("trimap-float", dict(trimap=_TRIMAP / 255.0), "trimap"),
    ("trimap-value", dict(trimap=_VALUE_TRIMAP), "trimap"),
    ("trimap-no-lesion", dict(trimap=np.where(_TRIMAP == 255, 128, _TRIMAP).astype(np.uint8)), "trimap"),
    ("trimap-no-background", dict(trimap=np.where(_TRIMAP == 0, 128, _TRIMAP).astype(np.uint8)), "trimap"),
    ("trimap-3d", dict(trimap=np.stack([_TRIMAP] * 2)), "trimap"),
    ("eps-zero", dict(eps=0.0), "eps"),
    ("eps-nan", dict(eps=float("nan")), "eps"),
    ("eps-str", dict(eps="small"), "eps"),
    ("radius-zero", dict(radius=0), "radius"),
    ("radius-float", dict(radius=1.5), "radius"),
]


@pytest.mark.parametrize("name,override,argument", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_input_error_naming_argument(name, override, argument):
    kwargs = dict(image=_IMAGE, trimap=_TRIMAP, eps=1e-7, radius=1) | override
    with pytest.raises(InputError, match=rf"\b{argument}\b"):
        closed_form_alpha(kwargs.pop("image"), kwargs.pop("trimap"), **kwargs)


def test_batch_bad_input_names_the_item():
    with pytest.raises(InputError, match=r"trimaps\[1\]"):
        closed_form_alpha_batch([_IMAGE, _IMAGE], [_TRIMAP, _VALUE_TRIMAP])
    with pytest.raises(InputError, match=r"images\[0\]"):
        closed_form_alpha_batch([_NAN_IMAGE], [_TRIMAP])
    with pytest.raises(InputError, match="trimaps"):
        closed_form_alpha_batch([_IMAGE, _IMAGE], [_TRIMAP])
    with pytest.raises(InputError, match="n_threads"):
        closed_form_alpha_batch([_IMAGE], [_TRIMAP], n_threads=0)
