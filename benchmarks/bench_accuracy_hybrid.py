"""Accuracy of the Soft Mask on the hybrid phantom (real LIDC nodule shapes, known truth).

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_accuracy_hybrid.py [--n-per-cell 20] [--json out.json]
    make bench-accuracy-hybrid

Cases: cells = texture class (ground-glass / part-solid / solid, the readers' median rating) x
placement (free / pleura / vessel) x size (3-6 / 6-12 / 12-30 mm, the shape's largest axial
diameter, ``LesionShape.max_axial_diameter_mm``), ``--n-per-cell`` cases per cell in each of two
disjoint parts: **choosing** and **held-out**, split by LIDC patient (a patient's shapes are all in
one part: ``sha256(patient_id)`` parity), with backgrounds fixed per part (``--backgrounds`` synthetic
chest stacks per part, seeds disjoint between parts). A case = shape + background + placement + slice
offset + in-plane rotation (drawn by :func:`softmask_builder.phantom.hybrid.render_case` from the case's seed);
a cell with fewer distinct shapes than cases reuses shapes (the tables give the distinct count).

Each key slice is cropped to 64x64 as the DeepLesion adapter does (centre of the RECIST endpoints'
box, extent = long axis, down-scaled when longer than 48 px; truth and simulated readers go through
the same crop). Strategies (``benchmarks/bench_accuracy.py``'s metrics):

1. ``mask``     the true binary mask (fraction >= 0.5) -> erode/dilate trimap -> matting;
2. ``readers``  the hybrid's 4 simulated readers (:func:`softmask_builder.phantom.hybrid.simulate_readers`,
   calibrated on the database) -> Eqs. 2-4 trimap -> matting; binary = their 50 % consensus;
3. ``recist``   RECIST measured on the true mask -> region-bounded GrabCut (``recist_method`` "region")
   -> trimap -> matting;
4. ``uls23``    the same mark -> the ULS23 challenge's GrabCut recipe (``recist_method`` "uls23")
   -> the same trimap -> matting.

Per strategy: Dice with the true mask of the binarized Soft Mask and of the binary mask it came from;
SAD (px over the crop) and MSE of the Soft Mask, the binary mask, Kats and SoftSeg labels against the
true fraction; means with 95 % percentile-bootstrap intervals over cases (seed 0, 1000 resamples).

Re-choice of the defaults on the choosing part only (the rule of ``bench_accuracy.sweep``, written
there and repeated here): band_px x eps at the default window, then the windows at the best (band,
eps); among the configurations whose Soft Mask has a lower mean SAD than its binary mask in all three
strategies 1-3, the highest RECIST (region) mean Dice, ties within 0.001 broken by the lowest mean
Soft Mask SAD. The held-out part is scored with the defaults and with the chosen parameters. The
band-vs-SAD curve (choosing part, at the default eps and window) is drawn to ``--figure``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import pickle
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as ba  # noqa: E402

from softmask_builder.labelling.crop import crop_image, crop_plan  # noqa: E402
from softmask_builder.errors import InputError  # noqa: E402
from softmask_builder.reports.image_stats import bootstrap_ci  # noqa: E402
from softmask_builder.labelling.matting import closed_form_alpha  # noqa: E402
from softmask_builder.labelling.pipeline import LabelParams, deblur_soft_mask  # noqa: E402
from softmask_builder.labelling.recist import (mask_from_recist, mask_from_recist_uls23, recist_region,  # noqa: E402
                                               trimap_from_recist_mask)
from softmask_builder.labelling.trimap import consensus_mask, trimap_from_mask, trimap_from_readers  # noqa: E402
from softmask_builder.labelling.window import window_hu  # noqa: E402

TEXTURES = ("ground_glass", "part_solid", "solid")
PLACEMENTS = ("free", "pleura", "vessel")
SIZE_BINS = ((3.0, 6.0), (6.0, 12.0), (12.0, 30.0))
PARTS = ("choosing", "held_out")
STRATEGIES = ("mask", "readers", "recist", "uls23")
NAMES = {"mask": "1: true binary mask", "readers": "2: 4 simulated readers (consensus)",
         "recist": "3: RECIST, region GrabCut (ours)", "uls23": "3: RECIST, ULS23 GrabCut recipe"}


def size_bin(d_mm: float) -> str | None:
    for lo, hi in SIZE_BINS:
        if lo <= d_mm < hi or (hi == 30.0 and d_mm == 30.0):
            return f"{lo:g}-{hi:g} mm"
    return None


def part_of(patient_id: str) -> str:
    return PARTS[hashlib.sha256(patient_id.encode()).digest()[0] & 1]


def load_shapes_cached(cache: Path | None):
    from softmask_builder.phantom.shapes import load_shapes

    if cache is not None and cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    report = load_shapes()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(report, fh)
        tmp.replace(cache)
    return report


@dataclasses.dataclass
class HybridCrop(ba.CropCase):
    part: str = ""
    texture: str = ""
    placement: str = ""
    size: str = ""
    shape_id: str = ""
    psf_sigma_px: float = float("nan")   # the scanner PSF in crop pixels (render's sigma x crop scale)


def _crop_case(case, name: str, part: str, cell, size_px: int = 64) -> HybridCrop:
    pts = case.recist.as_array()
    centre = tuple((pts.min(axis=0) + pts.max(axis=0)) / 2.0)
    origin, scale = crop_plan(centre, size_px=size_px, extent_px=case.recist.long_px)
    image = crop_image(case.image_hu.astype(np.float32), origin, scale, size_px=size_px)
    frac = np.clip(crop_image(case.true_fraction, origin, scale, size_px=size_px), 0.0, 1.0)
    apparent = np.clip(crop_image(case.apparent_fraction, origin, scale, size_px=size_px), 0.0, 1.0)
    readers = [crop_image(r.astype(np.uint8), origin, scale, size_px=size_px, interpolation=cv2.INTER_NEAREST) > 0
               for r in case.reader_masks]
    readers = [r for r in readers if r.any()]
    if len(readers) < 2:   # the readers' trimap needs 2 outlines; the case is a reject
        raise InputError(f"{name}: only {len(readers)} simulated reader(s) outline the lesion in the crop")
    recist = case.recist.shifted(-origin[0], -origin[1]).scaled(scale)
    tex, pl, sz = cell
    return HybridCrop(name, tex, case.diameter_mm, scale, image, frac, apparent, frac >= 0.5, readers, recist,
                      part=part, texture=tex, placement=pl, size=sz, shape_id=case.shape_id,
                      psf_sigma_px=float(case.psf_sigma_px) * scale)


def build_cases(shapes, *, n_per_cell: int, n_backgrounds: int, seed: int, log=print):
    """Render the cases of both parts; returns (crops, distinct shapes per (part, cell), rejects)."""
    from softmask_builder.phantom.hybrid import render_case, synthetic_background

    pools: dict = {}
    for s in shapes:
        sz = size_bin(s.max_axial_diameter_mm)
        if sz is None or s.texture_class not in TEXTURES:
            continue
        pools.setdefault((part_of(s.patient_id), s.texture_class, sz), []).append(s)
    crops, distinct, rejects = [], {}, []
    for pi, part in enumerate(PARTS):
        t0 = time.perf_counter()
        bgs = [synthetic_background(np.random.SeedSequence([seed, pi, b, 11]), n_neighbors=1,
                                    background_id=f"{part}-bg{b}") for b in range(n_backgrounds)]
        log(f"  {part}: {n_backgrounds} backgrounds in {time.perf_counter() - t0:.1f} s")
        for tex in TEXTURES:
            for (lo, hi) in SIZE_BINS:
                sz = f"{lo:g}-{hi:g} mm"
                pool = sorted(pools.get((part, tex, sz), []), key=lambda s: s.shape_id)
                for pl in PLACEMENTS:
                    cell = (tex, pl, sz)
                    used = set()
                    if not pool:
                        distinct[(part, cell)] = 0
                        continue
                    rng = np.random.default_rng(np.random.SeedSequence([seed, pi, TEXTURES.index(tex),
                                                                        PLACEMENTS.index(pl), int(lo)]))
                    order = rng.permutation(len(pool))
                    made, attempt = 0, 0
                    while made < n_per_cell and attempt < 4 * n_per_cell:
                        shape = pool[order[attempt % len(pool)]]
                        bg = bgs[attempt % len(bgs)]
                        name = f"{part}/{tex}/{pl}/{sz.split()[0]}/{attempt:03d}"
                        attempt += 1
                        try:
                            case = render_case(shape, bg, np.random.SeedSequence([seed, pi, attempt, hash_id(name)]),
                                               placement=pl)
                            crops.append(_crop_case(case, name, part, cell))
                        except InputError as exc:
                            rejects.append((name, shape.shape_id, str(exc)))
                            continue
                        used.add(shape.shape_id)
                        made += 1
                    distinct[(part, cell)] = len(used)
        log(f"  {part}: {sum(c.part == part for c in crops)} cases in {time.perf_counter() - t0:.1f} s")
    return crops, distinct, rejects


def natural_cases(n: int, *, seed: int = 0, log=print) -> list[HybridCrop]:
    """The cases ``make lnsm N=n`` renders (the hybrid sample's natural mix of sizes, textures and
    placements: :func:`softmask_builder.phantom.hybrid.sample_patients`, ``load_shapes`` on them,
    :func:`softmask_builder.phantom.hybrid.iter_hybrid_cases` with ``seed``), cropped as above;
    each crop's ``part`` is its LIDC patient's part (the same ``sha256`` parity as the cells)."""
    from softmask_builder.phantom.hybrid import iter_hybrid_cases, sample_patients
    from softmask_builder.phantom.shapes import load_shapes

    t0 = time.perf_counter()
    shapes = load_shapes(patients=sample_patients(n)).shapes
    crops = []
    for case in iter_hybrid_cases(n, shapes=shapes, seed=seed):
        part = part_of(case.lidc_patient_id)
        sz = size_bin(case.diameter_mm) or ("3-6 mm" if case.diameter_mm < 3 else "12-30 mm")
        try:
            crops.append(_crop_case(case, f"natural/{case.file_name}", part, (case.texture_class, case.placement, sz)))
        except InputError:
            continue
    log(f"  natural sample: {len(crops)} of {n} cases in {time.perf_counter() - t0:.1f} s")
    return crops


def hash_id(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _relevant(strategy: str, p: LabelParams) -> tuple:
    """The LabelParams fields that strategy's Soft Mask depends on (the sweep's cache key)."""
    common = (p.eps, p.radius, p.window_level_hu, p.window_width_hu, p.deblur_iterations, p.psf_sigma_px,
              p.psf_sigma_fallback_px)
    if strategy == "mask":
        return common + (p.band_px,)
    if strategy == "readers":
        return common + (p.consensus,)
    if strategy == "recist":
        return common + (p.recist_band_px, p.grabcut_iterations)
    return common + (p.recist_band_px,)


def evaluate(crops, params: LabelParams, cache: dict, *, strategies=STRATEGIES) -> dict[str, list[dict]]:
    """Per strategy, per case metric rows (``bench_accuracy._metrics`` plus the cell).

    The stages are composed as :mod:`softmask_builder.labelling.pipeline` composes them (window ->
    GrabCut -> trimap -> matting -> deblur; the RECIST Soft Mask kept inside the mark's region);
    ``cache`` keeps GrabCut masks, matting alphas and metric rows across calls with other
    parameters (only the fields a strategy depends on are in its keys)."""
    p = params
    out = {s: [] for s in strategies}
    for case in crops:
        image01 = None

        def windowed():
            nonlocal image01
            if image01 is None:
                image01 = window_hu(case.image_hu, level_hu=p.window_level_hu, width_hu=p.window_width_hu)
            return image01

        def soft_of(strategy, make_trimap, recist=None):
            key = ("alpha", strategy, case.name) + _relevant(strategy, dataclasses.replace(p, deblur_iterations=0))
            if key not in cache:
                cache[key] = closed_form_alpha(windowed(), make_trimap(), eps=p.eps, radius=p.radius)
            alpha = deblur_soft_mask(case.image_hu, cache[key], p, sample_id=case.name)
            if recist is not None and p.deblur_iterations:
                alpha = np.where(recist_region(recist, alpha.shape), alpha, np.float32(0.0))
            return alpha

        def grabcut(method):
            key = (method, case.name) + ((p.window_level_hu, p.window_width_hu, p.grabcut_iterations)
                                         if method == "region" else ())
            if key not in cache:   # the ULS23 recipe windows the HU image itself
                cache[key] = (mask_from_recist(windowed(), case.recist, iterations=p.grabcut_iterations)
                              if method == "region" else mask_from_recist_uls23(case.image_hu, case.recist))
            return cache[key]

        makers = {
            "mask": lambda: (soft_of("mask", lambda: trimap_from_mask(case.mask, band_px=p.band_px)), case.mask),
            "readers": lambda: (soft_of("readers", lambda: trimap_from_readers(case.readers)),
                                consensus_mask(case.readers, level=p.consensus)),
            "recist": lambda: (soft_of("recist", lambda: trimap_from_recist_mask(
                grabcut("region"), case.recist, band_px=p.recist_band_px), case.recist), grabcut("region")),
            "uls23": lambda: (soft_of("uls23", lambda: trimap_from_recist_mask(
                grabcut("uls23"), case.recist, band_px=p.recist_band_px), case.recist), grabcut("uls23")),
        }
        for s in strategies:
            key = ("row", s, case.name) + _relevant(s, p)
            if key not in cache:
                alpha, binary = makers[s]()
                row = ba._metrics(alpha, binary, case)
                row.update(texture=case.texture, placement=case.placement, size=case.size, part=case.part,
                           diameter_mm=case.diameter_mm, name=case.name)
                cache[key] = row
            out[s].append(cache[key])
    return out


def _mean_ci(vals, scale=1.0, digits=3):
    vals = np.asarray(vals, dtype=np.float64) * scale
    lo, hi = bootstrap_ci(vals, n_boot=1000, seed=0)
    return f"{vals.mean():.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def main_table(results) -> str:
    head = ("| strategy | n | Dice Soft Mask | Dice binary | SAD Soft Mask | SAD binary | SAD Kats | SAD SoftSeg "
            "| MSE Soft Mask x1e3 | MSE binary x1e3 | MSE Kats x1e3 | MSE SoftSeg x1e3 | SAD soft < binary |")
    lines = [head, "|" + "---|" * 13]
    for s in results:
        rows = results[s]
        g = {k: [r[k] for r in rows] for k in rows[0] if isinstance(rows[0][k], float)}
        beats = np.mean([r["sad_soft"] < r["sad_binary"] for r in rows])
        lines.append(f"| {NAMES[s]} | {len(rows)} | {_mean_ci(g['dice_soft'])} | {_mean_ci(g['dice_binary'])} | "
                     f"{_mean_ci(g['sad_soft'], digits=2)} | {_mean_ci(g['sad_binary'], digits=2)} | "
                     f"{np.mean(g['sad_kats']):.2f} | {np.mean(g['sad_softseg']):.2f} | "
                     f"{_mean_ci(g['mse_soft'], 1e3, 3)} | {1e3 * np.mean(g['mse_binary']):.3f} | "
                     f"{1e3 * np.mean(g['mse_kats']):.3f} | {1e3 * np.mean(g['mse_softseg']):.3f} | {100 * beats:.0f} % |")
    return "\n".join(lines)


#: The label defaults before issue 27 (no deblurring): the "before" of the target table.
PREVIOUS_DEFAULTS = LabelParams(band_px=1.0, recist_band_px=1.0, eps=1e-3, deblur_iterations=0,
                                window_level_hu=-600.0, window_width_hu=1500.0)

#: Issue 27's targets for the binarized Soft Mask against the true mask, held-out part, per crop.
TARGETS = {"dice": 0.92, "area": (0.97, 1.03), "small_half": 0.88, "pleura": 0.88}


def subgroup_scores(rows) -> dict:
    """Means over cases of one strategy's rows: Dice and area ratio of the binarized Soft Mask
    (alpha >= 0.5) against the true mask, Dice by size half (below / at or above the median
    diameter of these cases), placement and texture, and the Soft Mask's SAD against the true
    fraction."""
    d = np.array([r["diameter_mm"] for r in rows])
    small = d < np.median(d)

    def mean(key, sel=None):
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        sel = np.ones(len(rows), bool) if sel is None else np.asarray(sel, bool)
        return float(vals[sel].mean()) if sel.any() else math.nan

    pooled = sum(r["soft_area_px"] for r in rows) / max(sum(r["true_area_px"] for r in rows), 1.0)
    out = {"n": len(rows), "dice": mean("dice_soft"), "area": mean("area_soft"), "sad": mean("sad_soft"),
           "area_pooled": pooled,
           "small_half": mean("dice_soft", small), "large_half": mean("dice_soft", ~small)}
    for key, values in (("placement", PLACEMENTS), ("texture", TEXTURES)):
        for v in values:
            out[v] = mean("dice_soft", [r[key] == v for r in rows])
    return out


def target_table(results, before=None) -> str:
    """Issue 27's table: per strategy, Dice / area ratio / subgroups / SAD of the Soft Mask against
    the truth; with ``before`` (results of the same cases under the previous defaults), its
    Dice / area / SAD beside them."""
    cols = ("dice", "area", "area_pooled", "small_half", "large_half", "pleura", "vessel", "free", "ground_glass", "part_solid",
            "solid", "sad")
    head = "| strategy | n | " + " | ".join(("Dice", "area / true area (mean per crop)", "total area / total true area",
                                               "small half", "large half", "pleural",
                                               "vessel", "free", "ground-glass", "part-solid", "solid",
                                               "SAD Soft Mask")) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for s in results:
        sc = subgroup_scores(results[s])
        cells = [f"{sc[c]:.2f}" if c == "sad" else f"{sc[c]:.3f}" for c in cols]
        if before is not None and s in before:
            b = subgroup_scores(before[s])
            for i, c in enumerate(cols):
                cells[i] += f" ({b[c]:.2f})" if c == "sad" else f" ({b[c]:.3f})"
        lines.append(f"| {NAMES[s]} | {sc['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(results, before=None) -> str:
    """One line per target for RECIST (region) and SAD for strategies 1-3: met / missed, with the value."""
    out = []
    rec = subgroup_scores(results["recist"])
    lo, hi = TARGETS["area"]
    checks = [("RECIST Dice >= 0.92", rec["dice"] >= TARGETS["dice"], f"{rec['dice']:.3f}"),
              ("RECIST total area / total true area in [0.97, 1.03]", lo <= rec["area_pooled"] <= hi,
               f"{rec['area_pooled']:.3f}; mean per crop {rec['area']:.3f}"),
              ("RECIST small half >= 0.88", rec["small_half"] >= TARGETS["small_half"], f"{rec['small_half']:.3f}"),
              ("RECIST pleural >= 0.88", rec["pleura"] >= TARGETS["pleura"], f"{rec['pleura']:.3f}")]
    if before is not None:
        for s in ("mask", "readers", "recist"):
            if s in results and s in before:
                a, b = subgroup_scores(results[s])["sad"], subgroup_scores(before[s])["sad"]
                checks.append((f"SAD {NAMES[s]} below the previous defaults'", a < b, f"{a:.2f} vs {b:.2f}"))
    for text, ok, value in checks:
        out.append(f"- {text}: {'met' if ok else 'MISSED'} ({value})")
    return "\n".join(out)


def cell_table(results, distinct, part) -> str:
    lines = ["| texture | placement | size | n | distinct shapes | Dice Soft (mask / readers / region / ULS23) "
             "| SAD soft / binary (mask) | SAD soft / binary (region) | SAD soft / binary (ULS23) |",
             "|" + "---|" * 9]
    for tex in TEXTURES:
        for pl in PLACEMENTS:
            for lo, hi in SIZE_BINS:
                sz = f"{lo:g}-{hi:g} mm"
                sel = {s: [r for r in results[s] if (r["texture"], r["placement"], r["size"]) == (tex, pl, sz)]
                       for s in results}
                n = len(sel["mask"])
                if n == 0:
                    lines.append(f"| {tex} | {pl} | {sz} | 0 | {distinct.get((part, (tex, pl, sz)), 0)} | - | - | - | - |")
                    continue
                m = {s: {k: float(np.mean([r[k] for r in sel[s]])) for k in ("dice_soft", "sad_soft", "sad_binary")}
                     for s in sel}
                dices = " / ".join(f"{m[s]['dice_soft']:.3f}" for s in STRATEGIES if s in m)
                lines.append(f"| {tex} | {pl} | {sz} | {n} | {distinct.get((part, (tex, pl, sz)), 0)} | {dices} | "
                             + " | ".join(f"{m[s]['sad_soft']:.1f} / {m[s]['sad_binary']:.1f}"
                                          for s in ("mask", "recist", "uls23") if s in m) + " |")
    return "\n".join(lines)


def _score(res) -> dict:
    s = {k: {m: float(np.mean([r[m] for r in res[k]])) for m in ("dice_soft", "sad_soft", "sad_binary")}
         for k in res}
    return {"recist_dice": s["recist"]["dice_soft"],
            "mean_sad_soft": float(np.mean([s[k]["sad_soft"] for k in ("mask", "readers", "recist")])),
            "sad_target": all(s[k]["sad_soft"] < s[k]["sad_binary"] for k in ("mask", "readers", "recist")),
            **{f"sad_{k}": s[k]["sad_soft"] for k in res}, **{f"sad_binary_{k}": s[k]["sad_binary"] for k in res},
            **{f"dice_{k}": s[k]["dice_soft"] for k in res},
            **{f"area_{k}": float(np.mean([r["area_soft"] for r in res[k]])) for k in res}}


def sweep(crops, base: LabelParams, *, bands, recist_bands, epss, deblurs=(0,), windows, log=print):
    """band_px x recist_band_px x eps x deblur_iterations at the base window, then the windows at
    the best; the choice is ``bench_accuracy.choose_params`` (the written rule, unchanged)."""
    cache: dict = {}
    rows = []

    def run(p):
        res = evaluate(crops, p, cache, strategies=("mask", "readers", "recist"))
        sc = _score(res)
        rows.append((p, sc))
        log(f"  band {p.band_px:g} recist band {p.recist_band_px:g} eps {p.eps:g} deblur {p.deblur_iterations} window ({p.window_level_hu:g}, "
            f"{p.window_width_hu:g}): RECIST Dice {sc['recist_dice']:.4f}, area {sc['area_recist']:.3f}, "
            f"mean SAD soft {sc['mean_sad_soft']:.2f}")

    for b in bands:
        for rb in recist_bands:
            for e in epss:
                for k in deblurs:
                    run(dataclasses.replace(base, band_px=float(b), recist_band_px=float(rb), eps=float(e),
                                            deblur_iterations=int(k)))
    best = ba.choose_params(rows)
    for level, width in windows:
        if (level, width) != (best.window_level_hu, best.window_width_hu):
            run(dataclasses.replace(best, window_level_hu=float(level), window_width_hu=float(width)))
    best = ba.choose_params(rows)
    lines = ["| band_px | recist_band_px | eps | deblur_iterations | window (level, width) HU | RECIST Dice "
             "| RECIST area ratio | SAD soft: mask / readers / RECIST | SAD binary: mask / readers / RECIST "
             "| mean SAD soft | soft < binary in all 3 |", "|" + "---|" * 11]
    for p, sc in rows:
        mark = " **" if p == best else ""
        lines.append(f"| {p.band_px:g}{mark} | {p.recist_band_px:g} | {p.eps:g} | {p.deblur_iterations} | ({p.window_level_hu:g}, "
                     f"{p.window_width_hu:g}) | {sc['recist_dice']:.4f} | {sc['area_recist']:.3f} | "
                     f"{sc['sad_mask']:.2f} / {sc['sad_readers']:.2f} / {sc['sad_recist']:.2f} | "
                     f"{sc['sad_binary_mask']:.2f} / {sc['sad_binary_readers']:.2f} / {sc['sad_binary_recist']:.2f} | "
                     f"{sc['mean_sad_soft']:.2f} | {'yes' if sc['sad_target'] else 'no'} |")
    return best, "\n".join(lines), rows


def band_figure(rows, base: LabelParams, path: Path, n_cases: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same = [(p, sc) for p, sc in rows if p.eps == base.eps and p.deblur_iterations == base.deblur_iterations
            and (p.window_level_hu, p.window_width_hu) == (base.window_level_hu, base.window_width_hu)]
    # Strategy 1 depends on band_px, strategy 3 on recist_band_px, strategy 2 on neither.
    curves = {"mask": sorted((p.band_px, sc) for p, sc in same if p.recist_band_px == base.recist_band_px),
              "readers": sorted((p.band_px, sc) for p, sc in same if p.recist_band_px == base.recist_band_px),
              "recist": sorted((p.recist_band_px, sc) for p, sc in same if p.band_px == base.band_px)}
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for k, colour in zip(("mask", "readers", "recist"), ("C0", "C1", "C2")):
        pts = curves[k]
        ax.plot([b for b, _ in pts], [sc[f"sad_{k}"] for _, sc in pts], "o-", color=colour, label=f"Soft Mask, {k}")
        ax.axhline(pts[0][1][f"sad_binary_{k}"], color=colour, ls="--", lw=0.8, label=f"binary mask, {k}")
    ax.set_xlabel("trimap half-width, px (mask: band_px; recist: recist_band_px)")
    ax.set_ylabel("mean SAD vs true fraction (px)")
    ax.set_title(f"Hybrid phantom, choosing part (n={n_cases}; eps {base.eps:g}, deblur "
                 f"{base.deblur_iterations}, window ({base.window_level_hu:g}, {base.window_width_hu:g}))", fontsize=7)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-cell", type=int, default=20)
    ap.add_argument("--backgrounds", type=int, default=6, help="synthetic backgrounds per part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes-cache", type=Path, default=Path("build/cache/hybrid_shapes.pkl"))
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--figure", type=Path, default=Path("docs/img/hybrid_band_sad.png"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SOFTMASK_SHARED_DATA", "../shared/data")),
                    help="real fixtures (LIDC) for the real-data figure beside the table; skipped when absent")
    ap.add_argument("--natural", type=int, default=300,
                    help="also score the cases of `make lnsm N=...` (natural mix; 0 = skip)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    report = load_shapes_cached(args.shapes_cache)
    log(f"shapes: {len(report.shapes)} ({len(report.skipped)} skipped) in {time.perf_counter() - t0:.1f} s")
    crops, distinct, rejects = build_cases(report.shapes, n_per_cell=args.n_per_cell,
                                           n_backgrounds=args.backgrounds, seed=args.seed, log=log)
    t1 = time.perf_counter()
    parts = {p: [c for c in crops if c.part == p] for p in PARTS}
    print(f"# Soft Mask accuracy on the hybrid phantom (seed {args.seed}, {args.n_per_cell} cases per cell and part, "
          f"{args.backgrounds} backgrounds per part)\n")
    print(f"shapes {len(report.shapes)}; cases: choosing {len(parts['choosing'])}, held-out {len(parts['held_out'])}; "
          f"render rejects {len(rejects)}; down-scaled crops {sum(c.scale < 1 for c in crops)}; "
          f"render + crop {t1 - t0:.0f} s\n")
    defaults = LabelParams()
    out = {"seed": args.seed, "n_per_cell": args.n_per_cell, "defaults": json.loads(defaults.to_json()),
           "distinct": {f"{k[0]}|{'|'.join(k[1])}": v for k, v in distinct.items()}, "rejects": rejects}
    best = defaults
    if not args.no_sweep:
        log("sweep on the choosing part:")
        best, table, rows = sweep(parts["choosing"], defaults, bands=(1, 1.5, 2), recist_bands=(1, 2, 3, 4, 5, 6),
                                  epss=(1e-5, 1e-3), deblurs=(0, 1, 2, 3),
                                  windows=((-600, 1500), (-500, 1000), (-700, 1000), (-400, 1200)), log=log)
        print("## Re-choice on the choosing part\n")
        print(table)
        print(f"\nChosen (** above): band_px={best.band_px:g}, recist_band_px={best.recist_band_px:g}, eps={best.eps:g}, "
              f"deblur_iterations={best.deblur_iterations}, "
              f"window=({best.window_level_hu:g}, {best.window_width_hu:g})\n")
        band_figure(rows, defaults, args.figure, len(parts["choosing"]))
        print(f"band-vs-SAD figure: {args.figure}\n")
        out["sweep"] = [{"params": json.loads(p.to_json()), "score": sc} for p, sc in rows]
        out["chosen"] = json.loads(best.to_json())
    cache: dict = {}
    before = evaluate(parts["held_out"], PREVIOUS_DEFAULTS, cache)
    out["held_out_previous_defaults"] = before
    for label, params in (("defaults", defaults),) + ((("chosen", best),) if best != defaults else ()):
        res = evaluate(parts["held_out"], params, cache)
        print(f"## Held-out part, {label}: {params.to_json()}\n")
        print("Issue 27's table: binarized Soft Mask (alpha >= 0.5) against the true mask, per crop; in brackets the "
              f"previous defaults ({PREVIOUS_DEFAULTS.to_json()}) on the same cases:\n")
        print(target_table(res, before))
        print("\nTargets (RECIST = region GrabCut):\n")
        print(target_lines(res, before))
        print()
        print(main_table(res))
        print("\nPer cell (held-out):\n")
        print(cell_table(res, distinct, "held_out"))
        print()
        out[f"held_out_{label}"] = res
    if args.natural:
        nat = natural_cases(args.natural, seed=args.seed, log=log)
        held = [c for c in nat if c.part == "held_out"]
        print(f"## The natural mix of `make lnsm N={args.natural}` (seed {args.seed}): held-out patients' "
              f"{len(held)} of {len(nat)} crops\n")
        ncache: dict = {}
        before = evaluate(held, PREVIOUS_DEFAULTS, ncache, strategies=("mask", "readers", "recist", "uls23"))
        res = evaluate(held, defaults, ncache, strategies=("mask", "readers", "recist", "uls23"))
        print("Defaults; in brackets the previous defaults on the same crops:\n")
        print(target_table(res, before))
        print("\nTargets (RECIST = region GrabCut):\n")
        print(target_lines(res, before))
        allres = evaluate(nat, defaults, ncache, strategies=("recist",))
        allbefore = evaluate(nat, PREVIOUS_DEFAULTS, ncache, strategies=("recist",))
        print(f"\nAll {len(nat)} crops (both parts), RECIST region:\n")
        print(target_table(allres, allbefore))
        print()
        out["natural"] = {"held_out": res, "held_out_previous": before}
    if (args.data / "lidc").is_dir():
        import calibrate_real as cr

        print("## Real LIDC fixture: RECIST -> Soft Mask against the readers' 50 % consensus "
              "(`benchmarks/calibrate_real.py`)\n")
        real = {}
        for min_readers in (3, 2):
            table, real[min_readers] = cr.label_table(cr.real_cases(args.data, min_readers=min_readers),
                                                      {"previous defaults": PREVIOUS_DEFAULTS, "defaults": defaults})
            print(f"Slices with >= {min_readers} readers:\n\n{table}\n")
        out["real_lidc"] = {str(k): v for k, v in real.items()}
    else:
        log(f"no LIDC fixtures under {args.data}: the real-data figure is left out (set --data or SOFTMASK_SHARED_DATA)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
