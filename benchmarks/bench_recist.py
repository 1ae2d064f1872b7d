"""Time and score the RECIST strategy against its previous version, side by side in one run.

On the phantom crops of ``bench_accuracy.py`` (same generator, same seed), each lesion is labelled
by the current :func:`softmask_builder.labelling.recist.mask_from_recist` and by ``reference_mask``, a
frozen copy of the previous version (GrabCut on a window of twice the axes' ellipse, small lesions
up-sampled to a 16-px long axis, output limited to the ellipse scaled by 1.5 plus 1 px), the two
calls interleaved so that machine load hits both alike. Printed: GrabCut ms/lesion (median and
mean) of each and the speed-up; the Dice with the true mask of each GrabCut mask and of each
binarized Soft Mask (current: :func:`~softmask_builder.labelling.recist.trimap_from_recist_mask`; previous:
:func:`~softmask_builder.labelling.trimap.trimap_from_mask`), overall and per kind.

    .venv/bin/python benchmarks/bench_recist.py [--seed 0] [--n 60] [--iterations 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import make_crops  # noqa: E402

from softmask_builder.phantom import cases as phantom  # noqa: E402
from softmask_builder.labelling.matting import closed_form_alpha  # noqa: E402
from softmask_builder.labelling.metrics import dice  # noqa: E402
from softmask_builder.labelling.pipeline import LabelParams  # noqa: E402
from softmask_builder.labelling.recist import (Recist, mask_from_recist, trimap_from_recist_mask,  # noqa: E402
                                     validate_recist)
from softmask_builder.labelling.trimap import band_footprint, trimap_from_mask  # noqa: E402
from softmask_builder.labelling.window import window_hu  # noqa: E402


# ---- the previous version, frozen (helpers included, so later edits of recist.py cannot leak in) --

class _Frame:
    """Oblique frame of the mark and its four quarter-ellipses (level <= 1 inside)."""

    def __init__(self, rec: Recist):
        a, b = np.array(rec.long_a), np.array(rec.long_b)
        c_, d = np.array(rec.short_a), np.array(rec.short_b)
        self.center = np.array(rec.center_rc)
        e_long, e_short = (b - a) / np.hypot(*(b - a)), (d - c_) / np.hypot(*(d - c_))
        self.inv = np.linalg.inv(np.column_stack([e_long, e_short]))
        self.half = tuple(max(float(np.hypot(*(p - self.center))), 0.25) for p in (a, b, c_, d))

    def level_at(self, rr, cc, *, scale=1.0, margin=0.0):
        dr, dc = rr - self.center[0], cc - self.center[1]
        s = self.inv[0, 0] * dr + self.inv[0, 1] * dc
        t = self.inv[1, 0] * dr + self.inv[1, 1] * dc
        ha, hb, hc, hd = (scale * h + margin for h in self.half)
        return np.sqrt((s / np.where(s >= 0, hb, ha)) ** 2 + (t / np.where(t >= 0, hd, hc)) ** 2)


def _seed_lines(rec: Recist, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    center = np.array(rec.center_rc)
    for end in (rec.long_a, rec.long_b, rec.short_a, rec.short_b):
        vec = np.array(end) - center
        length = float(np.hypot(*vec))
        stop = center + vec * ((1.0 - 0.2) if length > 0 else 0.0)
        p0 = (int(round(center[1] * 16)), int(round(center[0] * 16)))
        p1 = (int(round(stop[1] * 16)), int(round(stop[0] * 16)))
        cv2.line(out, p0, p1, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
    r, c = (int(round(v)) for v in center)
    if 0 <= r < shape[0] and 0 <= c < shape[1]:
        out[r, c] = 1
    return out


def _keep_component(mask: np.ndarray, center) -> np.ndarray:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    r = min(max(int(round(center[0])), 0), mask.shape[0] - 1)
    c = min(max(int(round(center[1])), 0), mask.shape[1] - 1)
    lab = labels[r, c]
    if lab == 0:
        rr, cc = np.nonzero(labels)
        k = int(np.argmin((rr - center[0]) ** 2 + (cc - center[1]) ** 2))
        lab = labels[rr[k], cc[k]]
    return labels == lab


def reference_mask(image, rec: Recist, *, iterations: int) -> np.ndarray:
    """The previous ``mask_from_recist`` (frozen; inputs assumed valid)."""
    rows, cols = image.shape
    frame = _Frame(rec)
    reach = 2.0 * max(frame.half) + 3.0
    cr, cc = frame.center
    r0, r1 = int(math.floor(cr - reach)), int(math.ceil(cr + reach)) + 1
    c0, c1 = int(math.floor(cc - reach)), int(math.ceil(cc + reach)) + 1
    window = image[np.ix_(np.clip(np.arange(r0, r1), 0, rows - 1), np.clip(np.arange(c0, c1), 0, cols - 1))]
    inside_r = (np.arange(r0, r1) >= 0) & (np.arange(r0, r1) < rows)
    inside_c = (np.arange(c0, c1) >= 0) & (np.arange(c0, c1) < cols)
    factor = int(min(8, max(1, math.ceil(16.0 / max(rec.long_px, rec.short_px)))))
    win_rec = rec.shifted(-r0, -c0)
    if factor > 1:
        work = cv2.resize(window.astype(np.float32), None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        work_rec = win_rec.shifted(0.5, 0.5).scaled(factor).shifted(-0.5, -0.5)
        work_inside = np.outer(np.repeat(inside_r, factor), np.repeat(inside_c, factor))
    else:
        work, work_rec, work_inside = window, win_rec, np.outer(inside_r, inside_c)
    wr, wc = np.mgrid[0:work.shape[0], 0:work.shape[1]].astype(np.float64)
    level = _Frame(work_rec).level_at(wr, wc)
    gc = np.full(work.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    gc[(level > 2.0) & work_inside] = cv2.GC_BGD
    gc[level <= 1.0] = cv2.GC_PR_FGD
    gc[_seed_lines(work_rec, work.shape).astype(bool)] = cv2.GC_FGD
    win_frame = _Frame(win_rec)
    rr, cc_ = np.mgrid[0:window.shape[0], 0:window.shape[1]].astype(np.float64)
    ellipse = win_frame.level_at(rr, cc_) <= 1.0
    n_fg = int(np.count_nonzero((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)))
    if n_fg >= 16 and gc.size - n_fg >= 16:
        img8 = np.ascontiguousarray(np.repeat(np.rint(np.clip(work, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, 2))
        cv2.setRNGSeed(0)
        cv2.grabCut(img8, gc, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations, cv2.GC_INIT_WITH_MASK)
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
        if factor > 1:
            fg = cv2.resize(fg, (window.shape[1], window.shape[0]), interpolation=cv2.INTER_AREA)
        fg = fg >= 0.5
    else:
        fg = ellipse.copy()
    fg &= win_frame.level_at(rr, cc_, scale=1.5, margin=1.0) <= 1.0
    fg &= np.outer(inside_r, inside_c)
    radius = min(3, int(math.floor(min(rec.long_px, rec.short_px) / 8.0)))
    if radius > 0 and fg.any():
        fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, band_footprint(float(radius))).astype(bool)
    if fg.any():
        fg = ndimage.binary_fill_holes(_keep_component(fg, win_frame.center))
    out = np.zeros(image.shape, dtype=bool)
    sub = (slice(max(r0, 0), min(r1, rows)), slice(max(c0, 0), min(c1, cols)))
    win_sub = (slice(sub[0].start - r0, sub[0].stop - r0), slice(sub[1].start - c0, sub[1].stop - c0))
    out[sub] = fg[win_sub]
    if not out.any():
        out[sub] = (ellipse & np.outer(inside_r, inside_c))[win_sub]
    if not out.any():
        out[min(max(int(round(cr)), 0), rows - 1), min(max(int(round(cc)), 0), cols - 1)] = True
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=LabelParams().grabcut_iterations)
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per lesion and version (min is kept)")
    args = ap.parse_args(argv)
    params = LabelParams()
    crops = make_crops(args.n, args.seed)
    rows = []
    for case in crops:
        image01 = window_hu(case.image_hu, level_hu=params.window_level_hu, width_hu=params.window_width_hu)
        rec = validate_recist(case.recist, image01.shape)
        t_new, t_ref = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            new = mask_from_recist(image01, rec, iterations=args.iterations)
            t1 = time.perf_counter()
            ref = reference_mask(image01, rec, iterations=args.iterations)
            t2 = time.perf_counter()
            t_new.append(t1 - t0)
            t_ref.append(t2 - t1)
        a_new = closed_form_alpha(image01, trimap_from_recist_mask(new, rec, band_px=params.band_px),
                                  eps=params.eps, radius=params.radius)
        a_ref = closed_form_alpha(image01, trimap_from_mask(ref, band_px=params.band_px),
                                  eps=params.eps, radius=params.radius)
        rows.append({"kind": case.kind, "t_new": min(t_new), "t_ref": min(t_ref),
                     "gc_new": dice(new, case.mask), "gc_ref": dice(ref, case.mask),
                     "soft_new": dice(a_new >= 0.5, case.mask), "soft_ref": dice(a_ref >= 0.5, case.mask)})

    def mean(key, sel=rows):
        return float(np.mean([r[key] for r in sel]))

    med_new = statistics.median(r["t_new"] for r in rows) * 1e3
    med_ref = statistics.median(r["t_ref"] for r in rows) * 1e3
    print(f"# RECIST strategy, current vs previous, {len(rows)} phantom nodules (seed {args.seed}), "
          f"{args.iterations} GrabCut iterations\n")
    print("| version | GrabCut ms/lesion (median) | (mean) | (max) | Dice GrabCut | Dice Soft Mask |")
    print("|---|---|---|---|---|---|")
    for name, k in (("previous (reference)", "ref"), ("current", "new")):
        print(f"| {name} | {statistics.median(r['t_' + k] for r in rows) * 1e3:.2f} | {mean('t_' + k) * 1e3:.2f} | "
              f"{max(r['t_' + k] for r in rows) * 1e3:.2f} | {mean('gc_' + k):.4f} | {mean('soft_' + k):.4f} |")
    print(f"\nspeed-up: {med_ref / med_new:.1f}x (median), {mean('t_ref') / mean('t_new'):.1f}x (mean)\n")
    print("| kind | n | Dice GrabCut previous / current | Dice Soft Mask previous / current |")
    print("|---|---|---|---|")
    for kind in phantom.KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            print(f"| {kind} | {len(sel)} | {mean('gc_ref', sel):.4f} / {mean('gc_new', sel):.4f} | "
                  f"{mean('soft_ref', sel):.4f} / {mean('soft_new', sel):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
