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
from softmask_builder.labelling.pipeline import LabelParams  # noqa: E402
from softmask_builder.labelling.recist import mask_from_recist, mask_from_recist_uls23, trimap_from_recist_mask  # noqa: E402
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
                      part=part, texture=tex, placement=pl, size=sz, shape_id=case.shape_id)


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


def hash_id(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def evaluate(crops, params: LabelParams, cache: dict, *, strategies=STRATEGIES) -> dict[str, list[dict]]:
    """Per strategy, per case metric rows (``bench_accuracy._metrics`` plus the cell)."""
    out = {s: [] for s in strategies}
    for case in crops:
        image01 = window_hu(case.image_hu, level_hu=params.window_level_hu, width_hu=params.window_width_hu)

        def alpha_of(trimap):
            return closed_form_alpha(image01, trimap, eps=params.eps, radius=params.radius)

        results = {}
        if "mask" in strategies:
            results["mask"] = (alpha_of(trimap_from_mask(case.mask, band_px=params.band_px)), case.mask)
        if "readers" in strategies:
            results["readers"] = (alpha_of(trimap_from_readers(case.readers)),
                                  consensus_mask(case.readers, level=params.consensus))
        if "recist" in strategies:
            key = ("region", case.name, params.window_level_hu, params.window_width_hu)
            if key not in cache:
                cache[key] = mask_from_recist(image01, case.recist, iterations=params.grabcut_iterations)
            gc = cache[key]
            results["recist"] = (alpha_of(trimap_from_recist_mask(gc, case.recist, band_px=params.band_px)), gc)
        if "uls23" in strategies:
            key = ("uls23", case.name)
            if key not in cache:   # the recipe windows the HU image itself
                cache[key] = mask_from_recist_uls23(case.image_hu, case.recist)
            gc = cache[key]
            results["uls23"] = (alpha_of(trimap_from_recist_mask(gc, case.recist, band_px=params.band_px)), gc)
        for s, (alpha, binary) in results.items():
            row = ba._metrics(alpha, binary, case)
            row.update(texture=case.texture, placement=case.placement, size=case.size, part=case.part,
                       diameter_mm=case.diameter_mm, name=case.name)
            out[s].append(row)
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
            **{f"dice_{k}": s[k]["dice_soft"] for k in res}}


def sweep(crops, base: LabelParams, *, bands, epss, windows, log=print):
    cache: dict = {}
    rows = []

    def run(p):
        res = evaluate(crops, p, cache, strategies=("mask", "readers", "recist"))
        sc = _score(res)
        rows.append((p, sc))
        log(f"  band {p.band_px:g} eps {p.eps:g} window ({p.window_level_hu:g}, {p.window_width_hu:g}): "
            f"RECIST Dice {sc['recist_dice']:.4f}, mean SAD soft {sc['mean_sad_soft']:.2f}")

    for b in bands:
        for e in epss:
            run(dataclasses.replace(base, band_px=float(b), eps=float(e)))
    best = ba.choose_params(rows)
    for level, width in windows:
        if (level, width) != (best.window_level_hu, best.window_width_hu):
            run(dataclasses.replace(best, window_level_hu=float(level), window_width_hu=float(width)))
    best = ba.choose_params(rows)
    lines = ["| band_px | eps | window (level, width) HU | RECIST Dice | SAD soft: mask / readers / RECIST "
             "| SAD binary: mask / readers / RECIST | mean SAD soft | soft < binary in all 3 |", "|" + "---|" * 8]
    for p, sc in rows:
        mark = " **" if p == best else ""
        lines.append(f"| {p.band_px:g}{mark} | {p.eps:g} | ({p.window_level_hu:g}, {p.window_width_hu:g}) | "
                     f"{sc['recist_dice']:.4f} | {sc['sad_mask']:.2f} / {sc['sad_readers']:.2f} / {sc['sad_recist']:.2f} | "
                     f"{sc['sad_binary_mask']:.2f} / {sc['sad_binary_readers']:.2f} / {sc['sad_binary_recist']:.2f} | "
                     f"{sc['mean_sad_soft']:.2f} | {'yes' if sc['sad_target'] else 'no'} |")
    return best, "\n".join(lines), rows


def band_figure(rows, base: LabelParams, path: Path, n_cases: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((p.band_px, sc) for p, sc in rows if p.eps == base.eps and
                 (p.window_level_hu, p.window_width_hu) == (base.window_level_hu, base.window_width_hu))
    bands = [b for b, _ in pts]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for k, colour in zip(("mask", "readers", "recist"), ("C0", "C1", "C2")):
        ax.plot(bands, [sc[f"sad_{k}"] for _, sc in pts], "o-", color=colour, label=f"Soft Mask, {k}")
        ax.axhline(pts[0][1][f"sad_binary_{k}"], color=colour, ls="--", lw=0.8, label=f"binary mask, {k}")
    ax.set_xlabel("band_px (trimap half-width, px)")
    ax.set_ylabel("mean SAD vs true fraction (px)")
    ax.set_title(f"Hybrid phantom, choosing part (n={n_cases} cases; eps {base.eps:g}, window "
                 f"({base.window_level_hu:g}, {base.window_width_hu:g}))", fontsize=8)
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
        best, table, rows = sweep(parts["choosing"], defaults, bands=(0.5, 1, 1.5, 2, 3), epss=(1e-5, 1e-3, 1e-2),
                                  windows=((-600, 1500), (-500, 1000), (-700, 1000), (-400, 1200)), log=log)
        print("## Re-choice on the choosing part\n")
        print(table)
        print(f"\nChosen (** above): band_px={best.band_px:g}, eps={best.eps:g}, "
              f"window=({best.window_level_hu:g}, {best.window_width_hu:g})\n")
        band_figure(rows, defaults, args.figure, len(parts["choosing"]))
        print(f"band-vs-SAD figure: {args.figure}\n")
        out["sweep"] = [{"params": json.loads(p.to_json()), "score": sc} for p, sc in rows]
        out["chosen"] = json.loads(best.to_json())
    cache: dict = {}
    for label, params in (("defaults", defaults),) + ((("chosen", best),) if best != defaults else ()):
        res = evaluate(parts["held_out"], params, cache)
        print(f"## Held-out part, {label}: {params.to_json()}\n")
        print(main_table(res))
        print("\nPer cell (held-out):\n")
        print(cell_table(res, distinct, "held_out"))
        print()
        out[f"held_out_{label}"] = res
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
