"""The 3-D truth table (issue 26): 3-D Soft Masks, 2-D Soft Masks stacked and the readers' binary mask against
the phantom's true 3-D fraction.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. nice -n 10 \\
        .venv/bin/python benchmarks/bench_truth3d.py --n 120 --seed 0 --record docs/results/truth3d
    .venv/bin/python benchmarks/bench_truth3d.py --from-record docs/results/truth3d    # the table again, no run

Nodules: ``--n`` 3-D hybrid nodules (:func:`softmask_builder.phantom.volumes.iter_hybrid_volumes`: the
hybrid phantom's LIDC shapes from :func:`softmask_builder.phantom.hybrid.sample_patients`, backgrounds of
1.25 and 2.5 mm slices in turn, pixels 0.6-0.8 mm, placements free / pleura / vessel in turn, four
simulated readers per nodule outlining every slice). Methods, all with the default ``LabelParams``:

* ``3d``       :func:`~softmask_builder.labelling.pipeline3d.label_volume_from_readers`, ``isotropic=False``;
* ``3d_iso``   the same, ``isotropic=True`` (matted on z-sub-slices, averaged back);
* ``2d_stack`` :func:`~softmask_builder.labelling.pipeline.label_from_readers` on each slice, stacked; a slice
  that no reader marks is 0, a slice the 2-D stage refuses (fewer than two readers mark it, or no two of
  them overlap) gets the readers' 50 % consensus there (counted in the record, ``n_fallback``);
* ``binary``   the readers' 50 % consensus volume (:func:`~softmask_builder.labelling.trimap.consensus_mask_volume`).

Per nodule and method, against the true fraction ``T`` (``alpha`` the method's Soft Mask or mask):
``dice`` of ``alpha >= 0.5`` with ``T >= 0.5``; ``sad_pct`` = ``100 sum|alpha - T| / sum T`` (the SAD
normalised by the true volume: voxel volumes cancel, so nodules of any size and spacing compare);
``vol_err_pct`` = ``100 (sum alpha - sum T) / sum T`` (signed; for the binary mask its voxel count);
``time_s`` (wall, one call, one core). A nodule a method cannot label (an ``InputError``) is listed
with the reason and left out of every comparison. Means with 95 % t-intervals over nodules, paired
differences the same way (per nodule, then the interval of the differences); groups: all nodules,
each slice thickness, small / large half by true volume (split at the median of all nodules).
Times are the only part of the record that changes between runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("3d", "3d_iso", "2d_stack", "binary")
METRICS = ("dice", "sad_pct", "vol_err_pct", "time_s")
RECORD_NAME = "records.csv"
TABLE_NAME = "TABLE.md"
#: The written rule for ISOTROPIC_DEFAULT (docs/RESULTS.md, 2026-12-07): see isotropic_decision.
RULE_MIN_GAIN = 0.05
RULE_MIN_DICE_DIFF = -0.01
RULE_MAX_EXTRA_S = 0.5


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval ``mean -+ t_{(1+level)/2, n-1} s / sqrt(n)`` (s: the sample standard
    deviation, ddof 1). One value: (x, nan, nan); none: (nan, nan, nan)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size == 1:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2.0, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def paired_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """:func:`mean_ci` of the per-item differences ``a - b`` (same length, same order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {a.shape} and {b.shape}")
    return mean_ci(a - b, level)


# --------------------------------------------------------------------------------------------
# Scoring one nodule
# --------------------------------------------------------------------------------------------

def score(alpha, truth) -> dict:
    """dice, sad_pct, vol_err_pct of ``alpha`` against the true fraction (see the module doc)."""
    from softmask_builder.labelling.metrics import dice, sad

    a = np.asarray(alpha, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    total = float(t.sum())
    return {"dice": dice(a >= 0.5, t >= 0.5), "sad_pct": 100.0 * sad(a, t) / total,
            "vol_err_pct": 100.0 * (float(a.sum()) - total) / total}


def stack_2d(image_hu, reader_masks, params) -> tuple[np.ndarray, int]:
    """2-D Soft Masks slice by slice (the ``2d_stack`` method): float32 (Z, H, W) and the number of
    slices given the consensus because the 2-D stage refused them."""
    from softmask_builder.errors import InputError
    from softmask_builder.labelling.pipeline import label_from_readers
    from softmask_builder.labelling.trimap import consensus_mask

    readers = np.asarray(reader_masks, dtype=bool)
    out = np.zeros(image_hu.shape, np.float32)
    n_fallback = 0
    for z in range(image_hu.shape[0]):
        sl = readers[:, z]
        if not sl.any():
            continue
        try:
            out[z] = label_from_readers(image_hu[z], list(sl), params).soft_mask
        except InputError:
            out[z] = consensus_mask(list(sl), level=params.consensus)
            n_fallback += 1
    return out, n_fallback


def label_all(vol, params) -> dict:
    """Each method's labels of one :class:`~softmask_builder.phantom.volumes.HybridVolume`:
    ``{method: (alpha or None, time_s, reason or "")}``, plus ``"n_fallback"``."""
    from softmask_builder.errors import InputError
    from softmask_builder.labelling.pipeline3d import label_volume_from_readers
    from softmask_builder.labelling.trimap import consensus_mask_volume

    out = {}
    for name, iso in (("3d", False), ("3d_iso", True)):
        t0 = time.perf_counter()
        try:
            a = label_volume_from_readers(vol.image_hu, vol.reader_masks, vol.spacing_mm, params,
                                          isotropic=iso, sample_id=vol.shape_id).soft_mask
            out[name] = (a, time.perf_counter() - t0, "")
        except InputError as exc:
            out[name] = (None, math.nan, exc.reason)
    t0 = time.perf_counter()
    a, n_fb = stack_2d(vol.image_hu, vol.reader_masks, params)
    out["2d_stack"] = (a, time.perf_counter() - t0, "")
    out["n_fallback"] = n_fb
    t0 = time.perf_counter()
    try:
        b = consensus_mask_volume(vol.reader_masks, level=params.consensus).astype(np.float32)
        out["binary"] = (b, time.perf_counter() - t0, "")
    except InputError as exc:
        out["binary"] = (None, math.nan, exc.reason)
    return out


def measure(n: int, *, seed: int = 0, thicknesses=(1.25, 2.5), shapes=None, background_shape=(512, 512),
            progress=None) -> list[dict]:
    """Render ``n`` nodules and score every method: one flat dict per nodule (the record's rows).
    ``shapes``: None = the hybrid phantom's (``load_shapes`` on ``sample_patients(max(n, 60))``)."""
    from softmask_builder.labelling.pipeline import LabelParams
    from softmask_builder.phantom.hybrid import sample_patients
    from softmask_builder.phantom.shapes import load_shapes
    from softmask_builder.phantom.volumes import iter_hybrid_volumes

    params = LabelParams()
    if shapes is None:
        shapes = load_shapes(patients=sample_patients(max(n, 60))).shapes
    rows = []
    vols = iter_hybrid_volumes(n, shapes=shapes, seed=seed, slice_thicknesses_mm=thicknesses,
                               background_shape=background_shape)
    for i, vol in enumerate(vols):
        if i == 0:
            label_all(vol, params)   # warm-up: numba's compile or cache load stays out of the times
        labels = label_all(vol, params)
        row = {"nodule": i, "shape_id": vol.shape_id, "texture": vol.texture_class, "placement": vol.placement,
               "thickness_mm": vol.spacing_mm[0], "pixel_mm": vol.spacing_mm[1],
               "crop": "x".join(str(s) for s in vol.image_hu.shape), "diameter_mm": round(vol.diameter_mm, 4),
               "true_volume_mm3": round(vol.true_volume_mm3, 4), "n_fallback": labels["n_fallback"]}
        errors = []
        for m in METHODS:
            alpha, dt, reason = labels[m]
            sc = score(alpha, vol.true_fraction) if alpha is not None else dict.fromkeys(METRICS[:3], math.nan)
            for k, v in sc.items():
                row[f"{m}.{k}"] = round(float(v), 6)
            row[f"{m}.time_s"] = round(float(dt), 4)
            if reason:
                errors.append(f"{m}: {reason}")
        row["error"] = "; ".join(errors)
        rows.append(row)
        if progress is not None:
            progress(i, row)
    return rows


# --------------------------------------------------------------------------------------------
# Record and table
# --------------------------------------------------------------------------------------------

def write_record(rows: list[dict], folder: Path) -> Path:
    from softmask_builder.core.atomic import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    folder.mkdir(parents=True, exist_ok=True)
    return write_text(folder / RECORD_NAME, buf.getvalue())


def read_record(folder: Path) -> list[dict]:
    with open(Path(folder) / RECORD_NAME, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if k in ("shape_id", "texture", "placement", "crop", "error"):
                d[k] = v
            elif k in ("nodule", "n_fallback"):
                d[k] = int(v)
            else:
                d[k] = float(v)
        out.append(d)
    return out


def _complete(rows):
    return [r for r in rows if not r["error"]]


def _groups(rows):
    ok = _complete(rows)
    med = float(np.median([r["true_volume_mm3"] for r in ok])) if ok else math.nan
    groups = [("all", ok)]
    for t in sorted({r["thickness_mm"] for r in ok}):
        groups.append((f"{t:g} mm slices", [r for r in ok if r["thickness_mm"] == t]))
    groups.append((f"small (< {med:.0f} mm³)", [r for r in ok if r["true_volume_mm3"] < med]))
    groups.append((f"large (≥ {med:.0f} mm³)", [r for r in ok if r["true_volume_mm3"] >= med]))
    return groups


def _fmt(ci, digits):
    m, lo, hi = ci
    if math.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def isotropic_decision(rows) -> tuple[bool, dict]:
    """The written rule (docs/RESULTS.md, "3-D Soft Masks against the phantom's 3-D truth") applied to the
    record's complete nodules: (isotropic on?, the numbers it looked at)."""
    ok = _complete(rows)
    orig = np.array([r["3d.sad_pct"] for r in ok])
    iso = np.array([r["3d_iso.sad_pct"] for r in ok])
    gain = paired_ci(orig, iso)
    rel_gain = gain[0] / float(orig.mean())
    strata = {}
    for t in sorted({r["thickness_mm"] for r in ok}):
        sub = [r for r in ok if r["thickness_mm"] == t]
        strata[t] = paired_ci([r["3d.sad_pct"] for r in sub], [r["3d_iso.sad_pct"] for r in sub])
    dice = paired_ci([r["3d_iso.dice"] for r in ok], [r["3d.dice"] for r in ok])
    extra = float(np.median([r["3d_iso.time_s"] - r["3d.time_s"] for r in ok]))
    checks = {"gain": rel_gain >= RULE_MIN_GAIN and gain[1] > 0,
              "no_harm": all(not hi < 0 for _, _, hi in strata.values()) and dice[1] >= RULE_MIN_DICE_DIFF,
              "cost": extra <= RULE_MAX_EXTRA_S}
    info = {"sad_gain_pct_points": gain, "relative_gain": rel_gain, "strata": strata, "dice_diff": dice,
            "median_extra_s": extra, "checks": checks, "n": len(ok)}
    return all(checks.values()), info


def table(rows) -> str:
    """The markdown table of a record (what docs/RESULTS.md quotes)."""
    ok = _complete(rows)
    lines = [f"{len(rows)} nodules, {len(ok)} labelled by every method"
             + (f" (left out: {'; '.join(r['shape_id'] + ' ' + r['error'] for r in rows if r['error'])})"
                if len(ok) < len(rows) else "") + "; "
             + f"2-D slices given the consensus (the 2-D stage refused them): {sum(r['n_fallback'] for r in ok)}.",
             "", "Means over nodules with 95 % t-intervals. Dice of alpha >= 0.5 with truth >= 0.5; SAD % = "
             "100 sum|alpha - truth| / sum(truth); volume error % signed (|volume error| in brackets below is "
             "the mean absolute); time per nodule in s (median).", ""]
    lines += ["| nodules | n | method | Dice | SAD % | volume error % | mean abs. volume error % | time s (median) |",
              "|---|---|---|---|---|---|---|---|"]
    names = {"3d": "3-D Soft Mask", "3d_iso": "3-D Soft Mask, isotropic", "2d_stack": "2-D Soft Masks stacked",
             "binary": "binary (readers' 50 % consensus)"}
    for gname, g in _groups(rows):
        for m in METHODS:
            col = lambda k: [r[f"{m}.{k}"] for r in g]  # noqa: E731
            lines.append(f"| {gname} | {len(g)} | {names[m]} | {_fmt(mean_ci(col('dice')), 3)} | "
                         f"{_fmt(mean_ci(col('sad_pct')), 1)} | {_fmt(mean_ci(col('vol_err_pct')), 1)} | "
                         f"{_fmt(mean_ci(np.abs(col('vol_err_pct'))), 1)} | {float(np.median(col('time_s'))):.3f} |")
    lines += ["", "Paired per-nodule differences (mean [95 % t-interval]); Dice: higher is better, SAD and |volume "
              "error|: lower is better.", "",
              "| nodules | n | difference | Dice | SAD % | abs. volume error % |", "|---|---|---|---|---|---|"]
    pairs = (("3d", "2d_stack", "3-D − 2-D stacked"), ("3d_iso", "2d_stack", "3-D isotropic − 2-D stacked"),
             ("3d_iso", "3d", "3-D isotropic − 3-D"), ("3d", "binary", "3-D − binary"),
             ("2d_stack", "binary", "2-D stacked − binary"))
    for gname, g in _groups(rows):
        for a, b, label in pairs:
            d = paired_ci([r[f"{a}.dice"] for r in g], [r[f"{b}.dice"] for r in g])
            s = paired_ci([r[f"{a}.sad_pct"] for r in g], [r[f"{b}.sad_pct"] for r in g])
            v = paired_ci(np.abs([r[f"{a}.vol_err_pct"] for r in g]), np.abs([r[f"{b}.vol_err_pct"] for r in g]))
            lines.append(f"| {gname} | {len(g)} | {label} | {_fmt(d, 3)} | {_fmt(s, 1)} | {_fmt(v, 1)} |")
    on, info = isotropic_decision(rows)
    g = info["sad_gain_pct_points"]
    strata = ", ".join(f"{t:g} mm {_fmt(ci, 2)}" for t, ci in info["strata"].items())
    lines += ["", f"`ISOTROPIC_DEFAULT` by the written rule: **{on}**. SAD % gain of isotropic (original − "
              f"isotropic, points) {_fmt(g, 2)} = {100 * info['relative_gain']:.1f} % of the original's mean "
              f"(needs ≥ {100 * RULE_MIN_GAIN:g} % and the interval above 0: {info['checks']['gain']}); by "
              f"thickness {strata}; Dice isotropic − original {_fmt(info['dice_diff'], 4)} (no harm: "
              f"{info['checks']['no_harm']}); median extra time {info['median_extra_s']:.3f} s per nodule "
              f"(≤ {RULE_MAX_EXTRA_S:g} s: {info['checks']['cost']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120, help="nodules (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thicknesses", type=float, nargs="+", default=[1.25, 2.5], help="slice thicknesses, mm")
    ap.add_argument("--record", type=Path, default=None, help="folder to write records.csv and TABLE.md into")
    ap.add_argument("--from-record", type=Path, default=None,
                    help="rebuild TABLE.md from this folder's records.csv (no rendering, no labelling)")
    args = ap.parse_args(argv)
    from softmask_builder.core.atomic import write_text

    if args.from_record is not None:
        if not (args.from_record / RECORD_NAME).is_file():
            print(f"error: --from-record: no {RECORD_NAME} in {args.from_record}", file=sys.stderr)
            return 2
        rows = read_record(args.from_record)
        text = table(rows)
        write_text(args.from_record / TABLE_NAME, text)
        print(text, end="")
        return 0
    if args.n < 2:
        print(f"error: --n must be >= 2, got {args.n}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def progress(i, row):
        print(f"{i + 1}/{args.n} {row['shape_id']} {row['thickness_mm']:g} mm {row['crop']} "
              f"3d {row['3d.time_s']:.2f}s iso {row['3d_iso.time_s']:.2f}s 2d {row['2d_stack.time_s']:.2f}s "
              f"[{time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)

    rows = measure(args.n, seed=args.seed, thicknesses=tuple(args.thicknesses), progress=progress)
    if args.record is not None:
        write_record(rows, args.record)
        rows = read_record(args.record)   # the table comes from the record, as --from-record makes it
        write_text(args.record / TABLE_NAME, table(rows))
    print(table(rows), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
