"""Calibration against real data: the LIDC slices of the shared fixtures that >= 3 readers marked.

    PYTHONPATH=. .venv/bin/python benchmarks/calibrate_real.py [--data ../shared/data] [--json out.json]

Per slice (``plan_lidc(min_readers=3, slices="all")``, the 64x64 crop of the build, only slices
where >= 3 readers drew a contour):

* Dice against the readers' 50 % consensus (all readers of the nodule; an absent contour votes
  "no"), of the binarized Soft Mask (alpha >= 0.5) of strategy 1 (``mask``: the consensus itself
  as the binary mask), strategy 2 (``readers``), strategy 3 with a RECIST mark measured on the
  consensus (``phantom.recist_from_mask``, as a radiologist draws it) by the ``region`` method and
  by the ULS23 recipe (``uls23``), and of the GrabCut masks those two start from; beside each
  reader against the 50 % consensus of the *other* readers (``reader_vs_others``, one value per
  reader who drew on the slice);
* image statistics (:mod:`softmask_builder.reports.image_stats`): noise std and autocorrelation HWHM in
  soft-tissue patches (16 px, all pixels in [-200, 200] HU) of the full slice; the 10-90 % edge
  width across the consensus boundary; the HU percentiles inside the consensus (eroded 1 px).

Summaries: mean over slices with a 95 % percentile-bootstrap interval over slices (seed 0, 2000
resamples). The slices are neighbours of one or two nodules, so they are not independent: the
intervals are lower bounds on the uncertainty. :func:`real_cases` and :func:`score_case` are
reused by ``benchmarks/bench_accuracy_hybrid.py`` to score hybrid cases the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from softmask_builder.reports import image_stats
from softmask_builder.labelling.metrics import dice
from softmask_builder.phantom.recist_marks import recist_from_mask
from softmask_builder.labelling.pipeline import LabelParams, label_from_mask, label_from_readers, label_from_recist
from softmask_builder.labelling.recist import mask_from_recist, mask_from_recist_uls23
from softmask_builder.labelling.trimap import consensus_mask
from softmask_builder.labelling.window import window_hu

DICE_KEYS = ("mask", "readers", "recist_region", "recist_uls23", "grabcut_region", "grabcut_uls23")
AREA_KEYS = tuple(k + "_area" for k in DICE_KEYS) + ("reader_area",)
STAT_KEYS = ("noise_std_hu", "noise_acf_hwhm_mm", "edge_width_mm", "lesion_p50_hu", "lesion_iqr_hu")
N_BOOT = 2000
#: The label defaults before issue 27 (the Soft Mask = the matting's alpha, no deblurring).
PREVIOUS_DEFAULTS = LabelParams(band_px=1.0, recist_band_px=1.0, eps=1e-3, deblur_iterations=0,
                                window_level_hu=-600.0, window_width_hu=1500.0)


@dataclass
class CalibCase:
    """One slice: a crop with its readers, the full slice for the noise, the geometry."""

    sample_id: str
    image_hu: np.ndarray        # float (S, S) crop
    readers: np.ndarray         # bool (R, S, S), readers who drew on this slice
    all_readers: np.ndarray     # bool (R_all, S, S), every reader of the nodule (empty = "no")
    spacing_mm: tuple[float, float]
    slice_hu: np.ndarray | None = None   # the full slice (noise statistics)
    exclude: np.ndarray | None = None    # bool, full-slice pixels not to use for noise (lesion)


def real_cases(data_root: Path, *, min_readers: int = 3, crop_px: int = 64) -> list[CalibCase]:
    """The fixture slices with >= ``min_readers`` contours, loaded as the build loads them."""
    from softmask_builder.sources.lidc import _read_slice, load_lidc, plan_lidc

    refs, _ = plan_lidc(data_root / "lidc", min_readers=min_readers, slices="all", crop_px=crop_px)
    cases = []
    for ref in refs:
        rec = load_lidc(ref)
        prior = np.asarray(rec.prior)
        drawn = prior[prior.any(axis=(1, 2))]
        if len(drawn) < min_readers:
            continue
        full, _, _ = _read_slice(ref.payload["dicom_path"], ref.sample_id)
        exclude = np.zeros(full.shape, dtype=bool)
        r0, c0 = (int(math.floor(v)) for v in rec.origin_px)
        extent = int(math.ceil(crop_px / rec.scale))
        exclude[max(r0, 0):r0 + extent, max(c0, 0):c0 + extent] = True
        cases.append(CalibCase(ref.sample_id, np.asarray(rec.image_hu, dtype=np.float64), drawn, prior,
                               rec.spacing_mm, np.asarray(full, dtype=np.float64), exclude))
    return cases


def _centroid_z_mm(shape) -> float:
    """Absolute z (mm, scan coordinates) of a database shape's centroid: its contour planes'
    absolute z (``source["plane_z_mm"]``) minus their centroid-relative z (``plane_z_mm`` without
    the two virtual cap planes)."""
    z_abs = np.asarray(shape.source["plane_z_mm"], dtype=np.float64)
    z_rel = np.asarray(shape.plane_z_mm, dtype=np.float64)[1:-1]
    if z_abs.shape != z_rel.shape:
        raise ValueError(f"{shape.shape_id}: {len(z_abs)} contour planes but {len(z_rel)} inner grid planes")
    return float(np.median(z_abs - z_rel))


def hybrid_cases(data_root: Path, real: list[CalibCase], *, seed: int = 0, placement: str = "pleura",
                 crop_px: int = 64) -> tuple[list[CalibCase], list[np.ndarray], list]:
    """Hybrid cases built from the real nodules' outlines in the same slice geometry.

    For each real slice: the nodule's database shape (same annotation ids), rendered by
    :func:`softmask_builder.phantom.hybrid.render_case` at the slice's z relative to the shape's centroid,
    without rotation, touching the pleura as the fixture's nodule does (``placement``), into a synthetic background of the scan's pixel spacing and slice thickness
    (its own seed per slice, noise and PSF drawn as in the benchmark), with the hybrid's 4
    simulated readers; cropped as the benchmark crops. Returns (cases, true fractions, renders).
    """
    from softmask_builder.labelling.crop import crop_image, crop_plan
    from softmask_builder.phantom.hybrid import render_case, synthetic_background
    from softmask_builder.phantom.shapes import load_shapes
    from softmask_builder.sources.lidc import plan_lidc
    import pydicom

    refs, _ = plan_lidc(data_root / "lidc", min_readers=3, slices="all", crop_px=crop_px)
    by_id = {r.sample_id: r for r in refs}
    patients = sorted({by_id[c.sample_id].patient for c in real})
    shapes = {tuple(s.source["annotation_ids"]): s for s in load_shapes(patients=patients).shapes}
    cases, truths, renders = [], [], []
    for i, c in enumerate(real):
        ref = by_id[c.sample_id]
        shape = shapes[tuple(sorted(ref.payload["annotation_ids"]))]
        ds = pydicom.dcmread(ref.payload["dicom_path"], stop_before_pixels=True)
        thickness = float(ds.get("SliceThickness", 2.5))
        bg = synthetic_background(np.random.SeedSequence([seed, i, 5]), shape=c.slice_hu.shape,
                                  spacing_mm=float(ds.PixelSpacing[0]), slice_thickness_mm=thickness,
                                  n_neighbors=0, background_id=f"calib-bg{i}")
        z_rel = float(ref.payload["z_mm"]) - _centroid_z_mm(shape)
        case = render_case(shape, bg, np.random.SeedSequence([seed, i, 6]), placement=placement,
                           z_offset_mm=z_rel, rotation_deg=0.0)
        pts = case.recist.as_array()
        centre = tuple((pts.min(axis=0) + pts.max(axis=0)) / 2.0)
        origin, scale = crop_plan(centre, size_px=crop_px, extent_px=case.recist.long_px)
        image = crop_image(case.image_hu.astype(np.float32), origin, scale, size_px=crop_px)
        frac = np.clip(crop_image(case.true_fraction, origin, scale, size_px=crop_px), 0.0, 1.0)
        readers = np.stack([crop_image(r.astype(np.uint8), origin, scale, size_px=crop_px,
                                       interpolation=cv2.INTER_NEAREST) > 0 for r in case.reader_masks])
        exclude = np.zeros(case.image_hu.shape, dtype=bool)
        r0, c0 = (int(math.floor(v)) for v in origin)
        extent = int(math.ceil(crop_px / scale))
        exclude[max(r0, 0):r0 + extent, max(c0, 0):c0 + extent] = True
        sp = float(case.spacing_mm[0]) / scale
        drawn = readers[readers.any(axis=(1, 2))]
        cases.append(CalibCase(f"hybrid:{c.sample_id}", np.asarray(image, dtype=np.float64), drawn, readers,
                               (sp, sp), np.asarray(case.image_hu, dtype=np.float64), exclude))
        truths.append(frac)
        renders.append(case)
    return cases, truths, renders


def realism_figure(real: list[CalibCase], hybrid: list[CalibCase], path: Path, key_path: Path, *,
                   n: int = 4, seed: int = 0, level_hu: float = -600.0, width_hu: float = 1500.0) -> dict:
    """``n`` real and ``n`` hybrid crops (the same slices' positions) in one lung window, in a
    shuffled order (``numpy.random.default_rng(seed)``); the key (panel -> source) goes to
    ``key_path`` as JSON. Returns the key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.linspace(0, len(real) - 1, n).round().astype(int)
    items = [("real", real[i]) for i in picks] + [("hybrid", hybrid[i]) for i in picks]
    order = np.random.default_rng(seed).permutation(len(items))
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.3))
    key = {}
    for k, (ax, idx) in enumerate(zip(axes.ravel(), order)):
        kind, case = items[idx]
        label = chr(ord("A") + k)
        ax.imshow(window_hu(case.image_hu, level_hu=level_hu, width_hu=width_hu), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=9)
        key[label] = {"kind": kind, "sample_id": case.sample_id}
    fig.suptitle(f"Real LIDC-IDRI and hybrid nodules, shuffled (window {level_hu:g}/{width_hu:g} HU); "
                 "key in the text", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    key_path.write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
    return key


def reader_vs_others(readers: np.ndarray) -> list[float]:
    """Dice of each reader against the 50 % consensus of the others (R >= 3)."""
    out = []
    for i in range(len(readers)):
        others = np.delete(readers, i, axis=0)
        out.append(dice(readers[i], others.mean(axis=0) >= 0.5))
    return out


def score_case(case: CalibCase, params: LabelParams = LabelParams(), *, truth_fraction=None,
               stats: bool = True) -> dict:
    """Dice of every pipeline against the readers' consensus, and the image statistics.

    With ``truth_fraction`` (hybrid cases) the Dice against the truth (fraction >= 0.5) is added
    under ``<key>_vs_truth``.
    """
    image = case.image_hu
    cons = consensus_mask(case.all_readers, level=0.5)
    out: dict = {"sample_id": case.sample_id, "n_readers": int(len(case.readers))}
    refs = {"": cons}
    if truth_fraction is not None:
        refs["_vs_truth"] = np.asarray(truth_fraction) >= 0.5
    if cons.sum() < 3:
        return out
    rec = recist_from_mask(cons, sample_id=case.sample_id)
    image01 = window_hu(image, level_hu=params.window_level_hu, width_hu=params.window_width_hu)
    binaries = {
        "mask": label_from_mask(image, cons, params).binary_mask if cons.any() else None,
        "readers": label_from_readers(image, case.readers, params).soft_mask >= 0.5,
        "recist_region": label_from_recist(image, rec, params).binary_mask,
        "recist_uls23": label_from_recist(image, rec, LabelParams(**{**params.__dict__,
                                                                     "recist_method": "uls23"})).binary_mask,
        "grabcut_region": mask_from_recist(image01, rec, iterations=params.grabcut_iterations),
        "grabcut_uls23": mask_from_recist_uls23(image, rec),
    }
    # Strategy 1's binary mask is the consensus; its Soft Mask is binarized here.
    binaries["mask"] = label_from_mask(image, cons, params).soft_mask >= 0.5
    for key, m in binaries.items():
        for suffix, ref in refs.items():
            out[key + suffix] = dice(m, ref)
            # Area of the label over the reference's (issue 27: the RECIST label was 0.84 of it).
            out[key + "_area" + suffix] = float(np.count_nonzero(m)) / float(np.count_nonzero(ref))
    out["reader_vs_others"] = reader_vs_others(case.readers) if len(case.readers) >= 3 else []
    out["reader_area"] = [float(np.count_nonzero(r)) / float(np.count_nonzero(cons)) for r in case.readers]
    if truth_fraction is not None:
        out["reader_vs_truth"] = [dice(r, refs["_vs_truth"]) for r in case.readers]
        out["consensus_vs_truth"] = dice(cons, refs["_vs_truth"])
    if not stats:
        return out
    # Image statistics.
    if case.slice_hu is not None:
        noise = image_stats.noise_stats(case.slice_hu, case.spacing_mm, exclude=case.exclude, n_boot=200)
        out["noise_std_hu"], out["noise_acf_hwhm_mm"] = noise["std_hu"], noise["acf_hwhm_mm"]
        out["noise_patches"] = noise["n_patches"]
    edge = image_stats.edge_width(image, cons, case.spacing_mm, n_boot=50)
    out["edge_width_mm"], out["edge_profiles"] = edge["width_mm"], edge["n_profiles"]
    hist = image_stats.hu_histogram(image, cons, n_boot=50)
    out["lesion_p50_hu"], out["lesion_iqr_hu"] = hist["p50"], hist["p75"] - hist["p25"]
    out["lesion_p5_hu"], out["lesion_p95_hu"] = hist["p5"], hist["p95"]
    return out


def summarize(rows: list[dict], keys) -> dict:
    """{key: (n, mean, lo, hi)} over the rows that have a finite value (lists are pooled)."""
    out = {}
    for key in keys:
        vals = []
        for r in rows:
            v = r.get(key)
            if isinstance(v, list):
                vals += [x for x in v if math.isfinite(x)]
            elif v is not None and math.isfinite(v):
                vals.append(v)
        vals = np.asarray(vals, dtype=np.float64)
        if len(vals) == 0:
            out[key] = (0, math.nan, math.nan, math.nan)
            continue
        lo, hi = image_stats.bootstrap_ci(vals, n_boot=N_BOOT, seed=0)
        out[key] = (len(vals), float(vals.mean()), lo, hi)
    return out


def fmt(entry, digits: int = 3) -> str:
    n, mean, lo, hi = entry
    if n == 0:
        return "-"
    if n == 1 or not math.isfinite(lo):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (n={n})"


def label_table(cases: list[CalibCase], params_by_name: dict) -> tuple[str, dict]:
    """Issue 27's real-data check: per label setting, the Dice and the area ratio (label area /
    consensus area) against the readers' 50 % consensus of strategies 1-3 (RECIST: region and
    ULS23), means with 95 % bootstrap intervals over slices; beside them each reader's own area
    ratio (one value per reader and slice)."""
    keys = ("recist_region", "recist_uls23", "mask", "readers")
    lines = ["| label parameters | slices | " + " | ".join(f"{k}: Dice / area ratio" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 2)]
    out = {}
    for name, params in params_by_name.items():
        rows = [score_case(c, params, stats=False) for c in cases]
        summ = summarize(rows, tuple(keys) + tuple(k + "_area" for k in keys) + ("reader_area",))
        out[name] = {"params": json.loads(params.to_json()), "summary": summ}
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(f"{fmt(summ[k])} / {fmt(summ[k + '_area'])}"
                                                              for k in keys) + " |")
    lines.append(f"\neach reader's own outline / consensus area: {fmt(summ['reader_area'])}")
    return "\n".join(lines), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SOFTMASK_SHARED_DATA", "../shared/data")))
    ap.add_argument("--json", type=Path, default=None, help="write the per-slice rows here")
    ap.add_argument("--hybrid", action="store_true", help="also build and score hybrid cases from the same outlines")
    ap.add_argument("--figure", type=Path, default=Path("docs/img/realism_shuffled.png"),
                    help="realism picture (with --hybrid); its key goes next to it as .key.json")
    args = ap.parse_args()
    if not (args.data / "lidc").is_dir():
        print(f"calibrate_real: no LIDC fixtures under {args.data} (set --data or SOFTMASK_SHARED_DATA)",
              file=sys.stderr)
        return 2
    print("## RECIST -> Soft Mask against the readers' consensus (issue 27)\n")
    for min_readers in (3, 2):
        sel = real_cases(args.data, min_readers=min_readers)
        table, lab = label_table(sel, {"previous defaults (no deblurring)": PREVIOUS_DEFAULTS,
                                       "defaults": LabelParams()})
        print(f"slices with >= {min_readers} readers:\n\n{table}\n")
    cases = real_cases(args.data)
    rows = [score_case(c) for c in cases]
    keys = DICE_KEYS + ("reader_vs_others",) + STAT_KEYS
    summary = summarize(rows, keys)
    print(f"real LIDC slices with >= 3 readers: {len(rows)} (nodules {', '.join(sorted({r['sample_id'].split('_z')[0] for r in rows}))})")
    out = {"rows": rows, "summary": summary}
    if not args.hybrid:
        print("| quantity | real: mean [95 % CI] (n) |")
        print("|---|---|")
        for key, entry in summary.items():
            print(f"| {key} | {fmt(entry)} |")
    else:
        hyb, truths, _ = hybrid_cases(args.data, cases)
        hrows = [score_case(c, truth_fraction=t) for c, t in zip(hyb, truths)]
        vs_truth = tuple(k + "_vs_truth" for k in DICE_KEYS) + ("reader_vs_truth", "consensus_vs_truth")
        hsum = summarize(hrows, keys + vs_truth)
        print("| quantity | real: mean [95 % CI] (n) | hybrid: mean [95 % CI] (n) |")
        print("|---|---|---|")
        for key in keys:
            print(f"| {key} | {fmt(summary[key])} | {fmt(hsum[key])} |")
        for key in vs_truth:
            print(f"| {key} | - | {fmt(hsum[key])} |")
        key_map = realism_figure(cases, hyb, args.figure, args.figure.with_suffix(".key.json"))
        print(f"wrote {args.figure} (key: {args.figure.with_suffix('.key.json')}: "
              + ", ".join(f"{k}={v['kind']}" for k, v in sorted(key_map.items())) + ")")
        out.update(hybrid_rows=hrows, hybrid_summary=hsum)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, sort_keys=True, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
