"""Where the RECIST -> Soft Mask label's area deficit comes from, stage by stage (issue 27).

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/diagnose_label_bias.py [--n-per-cell 20] [--natural 300]

On the held-out part of ``bench_accuracy_hybrid``'s cells (and of the natural mix of
``make lnsm N=...``), each stage's output is compared with the truth (true mask T = fraction >= 0.5):

* ``apparent``: the scanner-blurred fraction PSF * f >= 0.5 (what the image can show);
* ``partial volume``: sum(f) / |T| (> 1: lesion mass outside T) and the share of T with f < 0.9;
* ``GrabCut``: the region GrabCut mask (``mask_from_recist``, lung window);
* ``trimap``: the RECIST trimap around it (``trimap_from_recist_mask``): sure-lesion pixels outside
  T and true-lesion pixels forced to background (both in % of |T|), share of T's boundary pixels in
  the unknown band;
* ``matting``: alpha >= 0.5 from that trimap, and from strategy 1's trimap of T itself (band 1),
  which isolates the matting from GrabCut;
* ``region``: share of T outside the mark's region (``recist_region``);
* ``deblurred``: the labels of the given parameters (defaults: with the issue-27 deblurring).

Each row: mean Dice with T / mean area ratio (label / T) per group (all, size bins, placements).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy_hybrid as bh  # noqa: E402

from softmask_builder.labelling.matting import closed_form_alpha  # noqa: E402
from softmask_builder.labelling.metrics import dice  # noqa: E402
from softmask_builder.labelling.pipeline import LabelParams, deblur_soft_mask  # noqa: E402
from softmask_builder.labelling.recist import mask_from_recist, recist_region, trimap_from_recist_mask  # noqa: E402
from softmask_builder.labelling.trimap import trimap_from_mask  # noqa: E402
from softmask_builder.labelling.window import window_hu  # noqa: E402

GROUPS = (("all", lambda c: True),) + tuple(
    (sz, lambda c, sz=sz: c.size == sz) for sz in ("3-6 mm", "6-12 mm", "12-30 mm")) + tuple(
    (pl, lambda c, pl=pl: c.placement == pl) for pl in bh.PLACEMENTS)


def _area(m, t) -> float:
    return float(np.count_nonzero(m)) / max(float(np.count_nonzero(t)), 1.0)


def stage_rows(case, old: LabelParams, new: LabelParams) -> dict:
    """Per-stage numbers of one crop (module docstring)."""
    t = case.mask
    f = case.fraction
    im = window_hu(case.image_hu, level_hu=old.window_level_hu, width_hu=old.window_width_hu)
    out = {}
    app = case.apparent >= 0.5
    out["apparent (PSF * f >= 0.5)"] = (dice(app, t), _area(app, t))
    out["partial volume: sum f / |T|, share of T with f < 0.9"] = (float(f.sum()) / max(t.sum(), 1),
                                                                   float(np.mean(f[t] < 0.9)) if t.any() else 0.0)
    gc = mask_from_recist(im, case.recist, iterations=old.grabcut_iterations)
    out["GrabCut mask (region, lung window)"] = (dice(gc, t), _area(gc, t))
    tri = trimap_from_recist_mask(gc, case.recist, band_px=old.recist_band_px)
    edge = t & ~ndimage.binary_erosion(t, border_value=1)
    out[f"trimap band {old.recist_band_px:g}: sure lesion outside T, T forced to background (% of |T|)"] = (
        100 * float(((tri == 255) & ~t).sum()) / t.sum(), 100 * float(((tri == 0) & t).sum()) / t.sum())
    out[f"trimap band {old.recist_band_px:g}: T's edge pixels in the unknown band, T's edge pixels in background"] = (
        float(np.mean(tri[edge] == 128)), float(np.mean(tri[edge] == 0)))
    a = closed_form_alpha(im, tri, eps=old.eps, radius=old.radius)
    out["matting alpha >= 0.5 (RECIST trimap; previous label)"] = (dice(a >= 0.5, t), _area(a >= 0.5, t))
    a1 = closed_form_alpha(im, trimap_from_mask(t, band_px=1.0), eps=old.eps, radius=old.radius)
    out["matting alpha >= 0.5 from T's own trimap (band 1)"] = (dice(a1 >= 0.5, t), _area(a1 >= 0.5, t))
    reg = recist_region(case.recist, t.shape)
    miss = t & ~(a >= 0.5)
    out["region: share of T outside it, share of the missed pixels outside it"] = (
        float(np.mean(~reg[t])), float(np.mean(~reg[miss])) if miss.any() else 0.0)
    d1 = deblur_soft_mask(case.image_hu, a1, new)
    out["T's own trimap, deblurred"] = (dice(d1 >= 0.5, t), _area(d1 >= 0.5, t))
    im_new = window_hu(case.image_hu, level_hu=new.window_level_hu, width_hu=new.window_width_hu)
    gc_new = mask_from_recist(im_new, case.recist, iterations=new.grabcut_iterations)
    out[f"new: GrabCut mask, window ({new.window_level_hu:g}, {new.window_width_hu:g})"] = (dice(gc_new, t),
                                                                                      _area(gc_new, t))
    a_new = closed_form_alpha(im_new, trimap_from_recist_mask(gc_new, case.recist, band_px=new.recist_band_px),
                              eps=new.eps, radius=new.radius)
    out[f"new: RECIST band {new.recist_band_px:g}, matting (no deblur)"] = (dice(a_new >= 0.5, t), _area(a_new >= 0.5, t))
    d_new = np.where(reg, deblur_soft_mask(case.image_hu, a_new, new), 0.0)
    out[f"new: RECIST band {new.recist_band_px:g}, deblurred {new.deblur_iterations} steps (the new label)"] = (
        dice(d_new >= 0.5, t), _area(d_new >= 0.5, t))
    return out


def sigma_table(crops, new: LabelParams) -> str:
    """The blur estimate the pipeline makes (on HU, across the new RECIST alpha's 0.5 contour)
    against the rendering's PSF sigma (crop px): median ratio [quartiles] and the share of crops
    where nothing could be measured (the fallback sigma is used)."""
    from softmask_builder.labelling.blur import MIN_EDGE_CONTRAST_HU, estimate_psf_sigma_px

    ratios = []
    for c in crops:
        im = window_hu(c.image_hu, level_hu=new.window_level_hu, width_hu=new.window_width_hu)
        gc = mask_from_recist(im, c.recist, iterations=new.grabcut_iterations)
        a = closed_form_alpha(im, trimap_from_recist_mask(gc, c.recist, band_px=new.recist_band_px),
                              eps=new.eps, radius=new.radius)
        est = estimate_psf_sigma_px(c.image_hu, a >= 0.5, min_contrast=MIN_EDGE_CONTRAST_HU)
        ratios.append(est / c.psf_sigma_px)
    lines = ["| group | n | estimate / rendering sigma: median [quartiles] | no estimate (fallback) |", "|---|---|---|---|"]
    groups = GROUPS + tuple((t, lambda c, t=t: c.texture == t) for t in bh.TEXTURES)
    for name, pred in groups:
        v = np.array([r for r, c in zip(ratios, crops) if pred(c)], dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        q = np.percentile(v[ok], [25, 50, 75])
        lines.append(f"| {name} | {len(v)} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] | {100 * (1 - ok.mean()):.0f} % |")
    return "\n".join(lines)


def table(crops, old, new) -> str:
    rows = [stage_rows(c, old, new) for c in crops]
    keys = list(rows[0])
    groups = [(name, [r for r, c in zip(rows, crops) if pred(c)]) for name, pred in GROUPS]
    lines = ["| stage (Dice with T / area ratio, unless named) | " + " | ".join(
        f"{name} (n={len(g)})" for name, g in groups) + " |", "|" + "---|" * (len(groups) + 1)]
    for k in keys:
        cells = []
        for _, g in groups:
            if not g:
                cells.append("-")
                continue
            v = np.array([r[k] for r in g], dtype=np.float64)
            cells.append(f"{v[:, 0].mean():.3f} / {v[:, 1].mean():.3f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-cell", type=int, default=20)
    ap.add_argument("--backgrounds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--natural", type=int, default=300, help="cases of the natural mix (0 = skip)")
    ap.add_argument("--shapes-cache", type=Path, default=Path("build/cache/hybrid_shapes.pkl"))
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    old, new = bh.PREVIOUS_DEFAULTS, LabelParams()
    print(f"# Stage by stage against the truth (seed {args.seed})\n\nprevious defaults: {old.to_json()}\n"
          f"defaults: {new.to_json()}\n")
    report = bh.load_shapes_cached(args.shapes_cache)
    crops, _, _ = bh.build_cases(report.shapes, n_per_cell=args.n_per_cell, n_backgrounds=args.backgrounds,
                                 seed=args.seed, log=log)
    held = [c for c in crops if c.part == "held_out"]
    print(f"## Held-out cells ({args.n_per_cell} per cell, {len(held)} crops)\n")
    print(table(held, old, new))
    print("\nThe blur estimate of the pipeline (held-out cells):\n")
    print(sigma_table(held, new))
    if args.natural:
        nat = [c for c in bh.natural_cases(args.natural, seed=args.seed, log=log) if c.part == "held_out"]
        print(f"\n## Natural mix of `make lnsm N={args.natural}`, held-out patients ({len(nat)} crops)\n")
        print(table(nat, old, new))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
