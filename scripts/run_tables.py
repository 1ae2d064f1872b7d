"""Regenerate Tables III, IV and V: train every (row, seed), evaluate it, and write the tables.

    python scripts/run_tables.py --data build/lnsm1500 --teacher runs/sr-sr_tiny/teacher.pt \
        --out runs/tables [--seeds 3 --extra-seeds 2] [--rows unet,backbone,...] [-s optim.epochs=30]
        [--nnunet runs/nnunet/eval/run0-nnUNetTrainer_5epochs ...]

Finished runs are skipped: a (row, seed) whose ``OUT/<row>-s<seed>/eval-test/metrics.json`` exists
is not trained again, so the tables can be built in several sittings (re-run the same command).

Statistics (written to ``OUT/TABLES.md`` and ``OUT/tables.json``):

* per row, the test Dice at 0.5 of ``best.pt`` (the trainer's selection rule: the best mean
  validation Dice over ``loop.select_k`` consecutive validations), **mean ± std over seeds**
  (std with ddof 1; one seed gives no std);
* **paired per-crop differences** against the U-Net row and against the backbone row: for each
  test crop, the row's Dice averaged over its seeds minus the reference's, then the mean over
  crops with a **95 % t confidence interval** (n crops - 1 degrees of freedom). The pairing is
  over crops (the same pixels), so crop difficulty cancels out; seed noise is averaged first;
* **Dice by nodule size**: the test crops split at the median ground-truth area (pixels) into a
  small and a large half; mean Dice of each half (over crops, after averaging seeds);
* the wall time of every run (the CPU budget spent).

External rows (``--nnunet``: ``dsnet evaluate --predictions`` report folders, one per repeated
nnU-Net run standing in for a seed) join the same tables when their crops are the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

TABLE_III = ["unet", "backbone", "sr_input", "drtm", "drtm_soft", "dsnet"]
TABLE_IV = ["dsnet_binary", "dsnet_kats", "dsnet_softseg"]
TABLE_V = ["dsnet_no_detail", "dsnet_no_fusion"]
CORE = {"unet", "backbone", "drtm", "drtm_soft", "dsnet"}  # >= 3 seeds (issue 12); others >= 2


def _read_per_crop(eval_dir: Path) -> dict[str, tuple[float, int]]:
    with open(eval_dir / "per_crop.csv", newline="", encoding="utf-8") as fh:
        return {r["sample_id"]: (float(r["dice"]), int(r["gt_px"])) for r in csv.DictReader(fh)}


def t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided ``level`` t confidence interval of ``diffs`` (n - 1 degrees of freedom)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.size
    mean = float(diffs.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def summarise(runs: dict[str, list[Path]]) -> dict:
    """Statistics of the evaluated runs ``{row: [eval folders, one per seed]}`` (see the module doc)."""
    per_row: dict[str, dict[str, float]] = {}   # row -> crop -> Dice averaged over seeds
    seed_means: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    for row, folders in runs.items():
        crops = [_read_per_crop(f) for f in folders]
        ids = set(crops[0])
        if any(set(c) != ids for c in crops):
            raise SystemExit(f"row {row}: its seeds were evaluated on different crops")
        seed_means[row] = [float(np.mean([c[i][0] for i in ids])) for c in crops]
        per_row[row] = {i: float(np.mean([c[i][0] for c in crops])) for i in ids}
        for c in crops:
            sizes.update({i: v[1] for i, v in c.items()})
    ids = sorted(sizes)
    for row, d in per_row.items():
        if set(d) != set(ids):
            raise SystemExit(f"row {row} was evaluated on other crops than the others")
    area = np.array([sizes[i] for i in ids])
    median = float(np.median(area))
    small = area <= median
    out: dict = {"n_crops": len(ids), "median_gt_px": median, "n_small": int(small.sum()),
                 "n_large": int((~small).sum()), "rows": {}}
    for row, d in per_row.items():
        dice = np.array([d[i] for i in ids])
        sm = seed_means[row]
        entry = {"n_seeds": len(sm), "dice_seed_means": sm, "dice_mean": float(np.mean(sm)),
                 "dice_std": float(np.std(sm, ddof=1)) if len(sm) > 1 else None,
                 "dice_small": float(dice[small].mean()) if small.any() else None,
                 "dice_large": float(dice[~small].mean()) if (~small).any() else None}
        for ref in ("unet", "backbone"):
            if ref in per_row and ref != row:
                diff = dice - np.array([per_row[ref][i] for i in ids])
                m, lo, hi = t_interval(diff)
                entry[f"vs_{ref}"] = {"mean": m, "ci95": [lo, hi], "n_better": int((diff > 0).sum()),
                                      "n_worse": int((diff < 0).sum())}
        out["rows"][row] = entry
    return out


def _pp(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def format_tables(stats: dict, times: dict[str, float]) -> str:
    lines = [f"Test crops: {stats['n_crops']} (small half: gt area <= {stats['median_gt_px']:.0f} px, "
             f"{stats['n_small']} crops; large half: {stats['n_large']} crops). Dice at threshold 0.5 of best.pt, "
             "in %. Paired differences: per test crop, row minus reference (each averaged over its seeds), "
             "mean over crops with a 95 % t interval; better/worse = crops where the row's Dice is higher/lower.", ""]
    groups = [("Table III (components)", TABLE_III), ("Table IV (soft labels)", ["dsnet", *TABLE_IV]),
              ("Table V (DRTM ablations)", ["dsnet", *TABLE_V])]
    extra = [r for r in stats["rows"] if r not in set(TABLE_III + TABLE_IV + TABLE_V)]
    if extra:
        groups.append(("External baselines", ["unet", *extra]))
    for title, rows in groups:
        rows = [r for r in rows if r in stats["rows"]]
        if not rows:
            continue
        lines += [f"### {title}", "", "| row | seeds | Dice mean ± std over seeds | vs U-Net (95 % CI) | "
                  "better/worse | vs backbone (95 % CI) | Dice small half | Dice large half |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            e = stats["rows"][r]
            std = "-" if e["dice_std"] is None else _pp(e["dice_std"])
            cells = []
            for ref in ("unet", "backbone"):
                v = e.get(f"vs_{ref}")
                cells.append("-" if v is None else
                             f"{_pp(v['mean'], True)} [{_pp(v['ci95'][0], True)}, {_pp(v['ci95'][1], True)}]")
            u = e.get("vs_unet")
            bw = "-" if u is None else f"{u['n_better']}/{u['n_worse']}"
            lines.append(f"| {r} | {e['n_seeds']} | {_pp(e['dice_mean'])} ± {std} | {cells[0]} | {bw} | {cells[1]} | "
                         f"{_pp(e['dice_small'])} | {_pp(e['dice_large'])} |")
        lines.append("")
    total = sum(times.values())
    lines.append(f"Wall time of the runs measured in this folder: {total / 3600:.2f} h over {len(times)} runs "
                 "(runs skipped as finished keep the time recorded when they ran).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="sample build (make lnsm N=1500 for the LNSM-size tables)")
    ap.add_argument("--teacher", default="", help="SR teacher.pt (needed by every DRTM row)")
    ap.add_argument("--out", required=True, help="folder of the runs and tables")
    ap.add_argument("--config", default="seg_tiny")
    ap.add_argument("--rows", default=",".join(TABLE_III + TABLE_IV + TABLE_V))
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the core rows (U-Net ... DSNet)")
    ap.add_argument("--extra-seeds", type=int, default=2, help="seeds of the other rows")
    ap.add_argument("-s", "--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--nnunet", action="append", default=[], help="`dsnet evaluate --predictions` report folder")
    ap.add_argument("--no-verify", action="store_true", help="skip the dataset check")
    args = ap.parse_args(argv)

    from dsnet_trainer.config import load_config
    from dsnet_trainer.dataset_check import check_dataset
    from dsnet_trainer.evaluate import evaluate_checkpoint
    from dsnet_trainer.train_seg import SegConfig, train_seg

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_verify:
        for note in check_dataset(args.data, kind="samples").notes:
            print(note, file=sys.stderr)
    times_path = out / "times.json"
    times: dict[str, float] = json.loads(times_path.read_text()) if times_path.is_file() else {}
    runs: dict[str, list[Path]] = {}
    for row in [r for r in args.rows.split(",") if r]:
        n_seeds = args.seeds if row in CORE else args.extra_seeds
        for seed in range(n_seeds):
            name = f"{row}-s{seed}"
            run_dir = out / name
            eval_dir = run_dir / "eval-test"
            if not (eval_dir / "metrics.json").is_file():
                print(f"[tables] {name}: training", file=sys.stderr)
                t0 = time.monotonic()
                overrides = [f"model.variant={row}", f"data.root={args.data}", f"out={run_dir}",
                             f"loop.seed={seed}", "loop.progress=false", *args.sets]
                if args.teacher:
                    overrides.append(f"model.teacher={args.teacher}")
                cfg = load_config(SegConfig, args.config, overrides)
                train_seg(cfg, command=" ".join(sys.argv), log=lambda m: print(f"[tables] {name}: {m}",
                                                                                  file=sys.stderr))
                evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", out=eval_dir, data=args.data, name=name,
                                    n_preview=2)
                times[name] = time.monotonic() - t0
                times_path.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
            else:
                print(f"[tables] {name}: finished, skipped", file=sys.stderr)
            runs.setdefault(row, []).append(eval_dir)
    for folder in args.nnunet:
        runs.setdefault("nnunet_2d", []).append(Path(folder))
    stats = summarise(runs)
    stats["times_s"] = times
    (out / "tables.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    md = format_tables(stats, {k: v for k, v in times.items() if k.rsplit("-s", 1)[0] in runs})
    (out / "TABLES.md").write_text(md)
    print(md)
    print(f"[tables] written {out / 'TABLES.md'} and tables.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
