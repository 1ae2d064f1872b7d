"""Hybrid phantom (softmask_builder.phantom.hybrid): image formation, determinism, splits, simulated readers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from softmask_builder.errors import InputError
from softmask_builder.phantom.hybrid import (HybridParams, lung_mask, measure_noise_hu, plan_hybrid_cases, render_case,
                                     simulate_readers, synthetic_background, write_hybrid_sample)
from softmask_builder.phantom.deeplesion_writer import read_truth
from softmask_builder.phantom.shapes import load_shapes, sphere_shape

SMALL = (192, 192)


@pytest.fixture(scope="module")
def background():
    # noise correlation pinned at the pre-PHANTOM_VERSION-3 0.6 px: measure_noise_hu's flatness test
    # (7 x 7 range of the median image < 60 HU) finds too few flat lung pixels at >= 0.9 px
    return synthetic_background(3, shape=SMALL, spacing_mm=0.7, slice_thickness_mm=1.25, psf_sigma_px=0.8,
                                noise_hu=20.0, noise_corr_px=0.6)


@pytest.fixture(scope="module")
def few_db_shapes():
    return load_shapes(patients=["LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0011",
                                 "LIDC-IDRI-0012", "LIDC-IDRI-0014"]).shapes


@pytest.fixture(scope="module")
def split_db_shapes():
    # patients whose shapes assign_splits puts in train (0001, 0017, 0034), val (0072, 0242) and
    # test (0121, 0308): a pool with all three splits
    return load_shapes(patients=["LIDC-IDRI-0001", "LIDC-IDRI-0017", "LIDC-IDRI-0034", "LIDC-IDRI-0072",
                                 "LIDC-IDRI-0242", "LIDC-IDRI-0121", "LIDC-IDRI-0308"]).shapes


@pytest.mark.parametrize("placement", ["free", "pleura", "vessel"])
def test_pixels_beyond_the_psf_radius_keep_the_background(background, placement):
    case = render_case(sphere_shape(3.0), background, 7, placement=placement)
    radius_px = math.ceil(4.0 * case.psf_sigma_px)
    touched = ndimage.distance_transform_edt(case.true_fraction <= 0) > radius_px + 1
    assert touched.any() and (~touched).any()
    assert np.array_equal(case.image_hu[touched], case.background_hu[touched])
    # and the lesion did change the image where it is
    inside = case.true_fraction > 0.9
    assert np.abs(case.image_hu[inside].astype(float) - case.background_hu[inside]).mean() > 100


def test_real_background_far_pixels_untouched_and_lesion_not_over_its_own(shared_data):
    from softmask_builder.phantom.backgrounds import load_backgrounds

    bgs = load_backgrounds(shared_data / "lidc")
    assert bgs and all(b.source == "lidc" for b in bgs)
    bg = bgs[len(bgs) // 2]
    assert bg.exclude.any()  # LIDC-IDRI-0001's nodule (or 0002's) is excluded
    case = render_case(sphere_shape(4.0), bg, 3, placement="free")
    radius_px = math.ceil(4.0 * case.psf_sigma_px)
    far = ndimage.distance_transform_edt(case.true_fraction <= 0) > radius_px + 1
    assert np.array_equal(case.image_hu[far], case.background_hu[far])  # incl. the -2048 HU FOV padding
    assert case.background_hu.min() < -1500
    assert not (case.true_fraction > 0)[bg.exclude].any()


def test_lesion_keeps_the_background_noise(background):
    # no heterogeneity: inside the lesion only the background's own noise is left
    params = HybridParams(solid_heterogeneity_hu=0.0)
    case = render_case(sphere_shape(7.0), background, 11, placement="free", params=params, z_offset_mm=0.0)
    core = ndimage.binary_erosion(case.true_fraction >= 0.999, iterations=4)
    assert core.sum() > 100
    around = background.lung[background.key] & (ndimage.distance_transform_edt(case.true_fraction <= 0) > 8)
    inside_noise = measure_noise_hu(case.image_hu, core)
    outside_noise = measure_noise_hu(case.image_hu, around)
    assert inside_noise == pytest.approx(outside_noise, rel=0.25)


def test_part_solid_core_is_denser_and_inside(background):
    case = render_case(sphere_shape(6.0, texture_class="part_solid"), background, 5, placement="free",
                       z_offset_mm=0.0)
    assert (case.core_fraction <= case.true_fraction + 1e-6).all() and case.core_fraction.max() > 0.9
    core = case.core_fraction > 0.99
    rim = (case.true_fraction > 0.99) & (case.core_fraction < 0.01)
    assert case.image_hu[core].mean() > case.image_hu[rim].mean() + 200
    # a 30 % core by volume is 0.3^(1/3) = 67 % of the radius: 45 % of the central section's area
    assert case.core_fraction.sum() / case.true_fraction.sum() == pytest.approx(0.3 ** (2 / 3), abs=0.05)


def test_lung_mask_matches_the_phantom_lungs(background):
    # reference: the noise-free anatomy (before PSF) thresholded half-way between lung and soft
    # tissue, minus the outside air, vessels filled; the mask is made on the noisy, blurred slice
    clean = background.clean_hu[background.key]
    lab, _ = ndimage.label(clean < -400)
    border = np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    truth = ndimage.binary_fill_holes((lab > 0) & ~np.isin(lab, border))
    mask = lung_mask(background.slices_hu[background.key], spacing_mm=background.spacing_mm)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.97


def test_render_rejects_bad_placement(background):
    with pytest.raises(InputError, match="placement"):
        render_case(sphere_shape(3.0), background, 1, placement="airway")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_is_byte_deterministic_per_seed_and_worker_count(tmp_path, few_db_shapes):
    from joblib import parallel_config

    shapes = few_db_shapes[:4] + [sphere_shape(3.0, texture_class="ground_glass")]
    kw = dict(n=5, shapes=shapes, slice_shape=SMALL, cases_per_background=2)
    write_hybrid_sample(tmp_path / "a", seed=4, **kw)
    with parallel_config(backend="loky", n_jobs=2):
        write_hybrid_sample(tmp_path / "b", seed=4, **kw)
    write_hybrid_sample(tmp_path / "c", seed=5, **kw)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() and a != c
    truth = read_truth(tmp_path / "a" / "phantom_truth.npz")
    assert {t["shape_id"] for t in truth.values()} <= {s.shape_id for s in shapes}
    for t in truth.values():
        assert t["reader_masks"].shape[0] == 4 and t["reader_masks"].shape[1:] == t["true_mask"].shape


def test_rendering_holds_a_bounded_window_of_cases_while_the_writer_is_slow(monkeypatch, few_db_shapes):
    # A slow consumer (the PNG and truth-zip writer) must not let every rendered case pile up in
    # memory: before the window, joblib rendered all groups ahead (18 GB at 4000 of 6700 cases).
    import threading
    import time

    from joblib import parallel_config

    import softmask_builder.phantom.hybrid as H

    shapes = few_db_shapes[:4] + [sphere_shape(3.0)]
    kw = dict(shapes=shapes, seed=2, slice_shape=SMALL, cases_per_background=1)
    plain = [c.file_name for c in H.iter_hybrid_cases(12, **kw)]
    lock, state = threading.Lock(), {"rendered": 0, "consumed": 0, "ahead": 0}
    real = H._render_group

    def counting(*args):
        out = real(*args)
        with lock:
            state["rendered"] += len(out)
            state["ahead"] = max(state["ahead"], state["rendered"] - state["consumed"])
        return out

    monkeypatch.setattr(H, "_render_group", counting)
    monkeypatch.setattr(H, "RENDER_WINDOW_GROUPS", 2)
    names = []
    with parallel_config(backend="threading", n_jobs=2):
        for case in H.iter_hybrid_cases(12, **kw):
            time.sleep(0.05)  # a writer slower than rendering
            with lock:
                state["consumed"] += 1
            names.append(case.file_name)
    assert names == plain and len(names) >= 10  # same cases, same order
    assert state["ahead"] <= 2  # one window of one-case groups, not the whole sample


def test_no_shape_and_no_patient_in_two_splits(few_db_shapes):
    cases, bgs, policy = plan_hybrid_cases(40, shapes=few_db_shapes, seed=1, cases_per_background=3)
    split_of: dict[str, set] = {}
    dl_patient: dict[int, set] = {}
    for c in cases:
        split_of.setdefault(c.shape_id, set()).add(c.split)
        dl_patient.setdefault(c.patient_index, set()).add(c.split)
        assert bgs[c.background].split == c.split
    assert all(len(v) == 1 for v in split_of.values())
    assert all(len(v) == 1 for v in dl_patient.values())
    lidc_split: dict[str, set] = {}
    by_id = {s.shape_id: s for s in few_db_shapes}
    for c in cases:
        lidc_split.setdefault(by_id[c.shape_id].patient_id, set()).add(c.split)
    assert all(len(v) == 1 for v in lidc_split.values())
    series = {(c.patient_index, c.study_index) for c in cases}
    assert len(series) == len(cases)  # every case its own DeepLesion series folder


def test_simulated_readers_agree_like_the_database_readers():
    # Oracle: the real four-reader nodules' pairwise Dice on their central slices (the agreement
    # module, as `softmask lidc-agreement --cohort eq4`). On these ~40 nodules the real mean has
    # a standard error of ~0.015; the model was fitted on all eq4 nodules (per-bucket rmse 0.007),
    # so |simulated - real| < 0.05 (about 3 standard errors) or the calibration is off.
    from softmask_builder.reports.agreement import nodule_agreement, pairwise_dice
    from softmask_builder.sources.lidc_db import cluster_annotations, read_lidc_db

    real, sim = [], []
    rng = np.random.default_rng(0)
    for scan in read_lidc_db(patients=[f"LIDC-IDRI-{i:04d}" for i in range(1, 80)]):
        for group in cluster_annotations(scan):
            if len(group) != 4:
                continue
            one = nodule_agreement(group)
            cons = np.pad(one["masks"].mean(axis=0) >= 0.5, 12)
            if cons.sum() < 3:
                continue
            real += [v for v in one["pairwise"] if v == v]
            for _ in range(3):
                m = simulate_readers(cons.astype(np.float32), spacing_mm=scan.pixel_spacing_mm, rng=rng)
                sim += [v for v in pairwise_dice(m) if v == v]
    assert len(real) >= 150
    assert abs(np.mean(sim) - np.mean(real)) < 0.05, (np.mean(sim), np.mean(real))
    # and the readers are not copies of the truth
    assert np.mean(sim) < 0.95


def test_recist_jitter_moves_endpoints_along_their_axes(background):
    plain = render_case(sphere_shape(5.0), background, 9, placement="free", z_offset_mm=0.0)
    jit = render_case(sphere_shape(5.0), background, 9, placement="free", z_offset_mm=0.0,
                      params=HybridParams(recist_jitter_mm=0.7))
    p, q = plain.recist.as_array(), jit.recist.as_array()
    assert not np.allclose(p, q)
    for a, b in ((0, 1), (2, 3)):
        u, v = p[b] - p[a], q[b] - q[a]
        assert abs(u[0] * v[1] - u[1] * v[0]) < 1e-6 * np.hypot(*u) * np.hypot(*v)  # same direction
        assert np.dot(u, v) > 0


def test_default_sample_has_a_validation_patient_under_the_sample_recipe(split_db_shapes):
    """The bundled sample (60 cases) keeps the phantom's splits (the sample recipe's ``official``
    method): every split must get cases and more than one background patient."""
    from softmask_builder.phantom.hybrid import default_cases_per_background
    from softmask_builder.dataset.build import split_refs
    from softmask_builder.formats.recipes import load_recipe
    from softmask_builder.sources.base import SampleRef

    for n, per_bg in [(60, 2), (1500, 20), (10, 1), (3000, 20)]:
        assert default_cases_per_background(n) == per_bg
    cases, bgs, policy = plan_hybrid_cases(60, shapes=split_db_shapes, seed=0)
    patients = sorted({c.patient_index for c in cases})
    assert len(patients) == len(bgs) >= 30 and policy["cases_per_background"] == 2  # a split may end a background early
    refs = [SampleRef(f"c{c.index:03d}", f"k{c.index}", str(c.patient_index), split=c.split) for c in cases]
    by_split = split_refs(refs, load_recipe("sample").split)[0]
    assert all(len({r.patient for r in by_split[s]}) > 1 for s in ("train", "val", "test"))


def test_real_backgrounds_serve_one_split_each(split_db_shapes):
    real = [object()] * 5  # the plan only counts them
    cases, bgs, policy = plan_hybrid_cases(60, shapes=split_db_shapes, seed=2, real_backgrounds=real,
                                           cases_per_background=2)
    split_of_real: dict[int, set] = {}
    for b in bgs:
        split_of_real.setdefault(b.real, set()).add(b.split)
    assert all(len(v) == 1 for v in split_of_real.values()), split_of_real
    assert len(split_of_real) == 5 and "one split only" in policy["backgrounds"]
    with pytest.raises(InputError, match="real backgrounds: 2 given"):
        plan_hybrid_cases(60, shapes=split_db_shapes, seed=2, real_backgrounds=real[:2])


def test_a_sample_build_keeps_shapes_and_background_patients_in_one_split(tmp_path, split_db_shapes):
    """Issue 25: from the build's own records (shards' source_key and patient, the truth file's
    shape and background ids), no nodule shape, LIDC patient, background or background patient
    is in two splits of a sample built with the sample recipe."""
    from softmask_builder.dataset.build import plan_build, run_build
    from softmask_builder.formats.recipes import load_recipe
    from softmask_builder.formats.shards import open_shard

    root = tmp_path / "src"
    write_hybrid_sample(root, n=24, seed=3, shapes=split_db_shapes, slice_shape=(256, 256), cases_per_background=2)
    result = run_build(plan_build(load_recipe("sample"), root), tmp_path / "out")
    truth = read_truth(root / "phantom_truth.npz")
    owners: dict[str, dict[str, set]] = {k: {} for k in ("shape_id", "lidc_patient_id", "background_id", "patient")}
    for sh in result.shards:
        with open_shard(tmp_path / "out" / sh.name) as f:
            for key, patient in zip(f.meta_column("source_key"), f.meta_column("patient")):
                t = truth[key]
                for field, value in (("shape_id", t["shape_id"]), ("lidc_patient_id", t["lidc_patient_id"]),
                                     ("background_id", t["background_id"]), ("patient", patient)):
                    owners[field].setdefault(value, set()).add(sh.split)
    assert {sh.split for sh in result.shards} == {"train", "val", "test"}
    for field, splits in owners.items():
        shared = {v: s for v, s in splits.items() if len(s) > 1}
        assert not shared, f"{field} in two splits: {shared}"


def test_alternates_share_the_cases_split_and_texture(few_db_shapes):
    cases, _, _ = plan_hybrid_cases(40, shapes=few_db_shapes, seed=1, cases_per_background=3)
    by_id = {s.shape_id: s for s in few_db_shapes}
    split_of = {c.shape_id: c.split for c in cases}
    assert any(c.alternates for c in cases)
    for c in cases:
        assert c.shape_id not in c.alternates and len(set(c.alternates)) == len(c.alternates)
        for a in c.alternates:
            assert by_id[a].texture_class == by_id[c.shape_id].texture_class
            assert split_of.get(a, c.split) == c.split  # never a shape another split uses


def test_a_shape_that_cannot_be_placed_is_replaced_by_its_alternates(monkeypatch, few_db_shapes):
    import softmask_builder.phantom.hybrid as H

    cases, bgs, _ = plan_hybrid_cases(40, shapes=few_db_shapes, seed=1, cases_per_background=3)
    spec = next(c for c in cases if len(c.alternates) >= 2)
    bad = {spec.shape_id, spec.alternates[0]}
    tried = []

    def fake_render(shape, bg, seed, **kw):
        tried.append(shape.shape_id)
        if shape.shape_id in bad:
            raise InputError(f"shape {shape.shape_id}: no room")
        return ("rendered", shape.shape_id, seed)

    monkeypatch.setattr(H, "render_case", fake_render)
    monkeypatch.setattr(H, "synthetic_background", lambda *a, **k: None)
    shapes = {s.shape_id: s for s in few_db_shapes}
    out = H._render_group(bgs[spec.background], [spec], shapes, HybridParams(), None)
    assert out == [("rendered", spec.alternates[1], spec.seed)]
    assert tried == [spec.shape_id, *spec.alternates[:2]]
    # every alternate failing: one reject row with the case's own shape's reason
    bad.update(spec.alternates)
    tried.clear()
    out = H._render_group(bgs[spec.background], [spec], shapes, HybridParams(), None)
    assert out == [(spec, f"shape {spec.shape_id}: no room")]
    assert tried == [spec.shape_id, *spec.alternates]
