"""Evaluation of a trained segmentation checkpoint and comparison of several runs (Table I layout).

:func:`evaluate_checkpoint` predicts a split of sample shards at the crop's native resolution and
writes, into ``out``:

* ``metrics.json`` -- everything below, machine-readable;
* ``per_crop.csv`` -- one row per crop (one nodule per crop): areas, Dice/SEN/PPV at 0.5 and at
  the validation threshold, the authors' smoothed ratios, Soft Mask SAD/MSE;
* ``summary.md`` -- a Table I style markdown table (mean +- std in percent);
* ``predictions.png`` -- a few crops with the ground-truth (green) and predicted (red) contours,
  and the predicted vs ground-truth Soft Mask.

Protocol (see :mod:`dsnet_trainer.metrics` for the definitions and the empty-mask rule):

1. Dice, SEN, PPV per crop at the fixed threshold 0.5, mean and population std over crops.
2. The same at a threshold chosen on the **validation split only** (the best mean Dice over
   0.05, 0.10, ..., 0.95), never on the evaluated split; absent when there is no validation split.
3. The authors' protocol, labelled as such: per-crop ratios with +1 smoothing at 0.5.
4. Soft Mask SAD and MSE of the predicted alpha ((soft + 1) / 2) against the ground-truth Soft
   Mask. For variants without a Soft Mask head the "Soft Mask" is the probability map.

:func:`compare_runs` reads several ``metrics.json`` and writes one table (``compare.md``, ``.csv``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .metrics import (DEFAULT_THRESHOLDS, choose_threshold, mean_std, segmentation_metrics,
                      soft_mask_errors)

__all__ = ["EVAL_FORMAT", "summarise_predictions", "evaluate_checkpoint", "predict_dataset", "write_report",
           "save_overlay_png", "compare_runs", "format_table"]

EVAL_FORMAT = "dsnet-eval"
FIXED_THRESHOLD = 0.5


# ============================================================================================
# Pure part: arrays -> report
# ============================================================================================
def _stats(values: np.ndarray) -> dict[str, float]:
    m, s = mean_std(values)
    return {"mean": m, "std": s}


def summarise_predictions(prob: np.ndarray, gt: np.ndarray, soft01: np.ndarray, soft_gt01: np.ndarray, *,
                          sample_ids: Sequence[str], prob_val: np.ndarray | None = None,
                          gt_val: np.ndarray | None = None,
                          thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[dict[str, Any], list[dict]]:
    """Metrics of one evaluated split.

    Parameters
    ----------
    prob : (n, H, W) float probabilities of the evaluated split.
    gt : (n, H, W) binary ground truth.
    soft01, soft_gt01 : (n, H, W) predicted and ground-truth Soft Masks as alpha in [0, 1].
    sample_ids : n crop ids (CSV rows).
    prob_val, gt_val : the validation split's probabilities and ground truth, used only to pick
        the threshold; None -> only the fixed 0.5 is reported.

    Returns
    -------
    (summary, rows) : ``summary`` is the ``metrics`` part of ``metrics.json``; ``rows`` the
    per-crop CSV rows.
    """
    prob = np.asarray(prob, dtype=np.float64)
    gt = np.asarray(gt).astype(bool)
    n = prob.shape[0]
    if prob.ndim != 3 or gt.shape != prob.shape or len(sample_ids) != n:
        raise InputError(f"prob {prob.shape}, gt {gt.shape} and {len(sample_ids)} ids must describe the same crops")
    fixed = segmentation_metrics(prob, gt, threshold=FIXED_THRESHOLD)
    errors = soft_mask_errors(soft01, soft_gt01)
    summary: dict[str, Any] = {
        "n_crops": int(n),
        "n_empty_gt": int(np.count_nonzero(~gt.any(axis=(1, 2)))),
        "threshold_fixed": FIXED_THRESHOLD,
        "threshold_val": None,
        "threshold_val_mean_dice": None,
        "at_fixed": {k: _stats(fixed[k]) for k in ("dice", "sen", "ppv")},
        "at_val_threshold": None,
        "authors_protocol": {k: _stats(fixed[k]) for k in ("dice_smooth", "sen_smooth", "ppv_smooth")},
        "soft_mask": {k: _stats(v) for k, v in errors.items()},
    }
    tuned = None
    if prob_val is not None and gt_val is not None and len(prob_val):
        t, score = choose_threshold(prob_val, gt_val, thresholds=thresholds)
        tuned = segmentation_metrics(prob, gt, threshold=t)
        summary.update(threshold_val=t, threshold_val_mean_dice=score, n_val_crops=int(len(prob_val)),
                       at_val_threshold={k: _stats(tuned[k]) for k in ("dice", "sen", "ppv")})
    rows = []
    for i, sid in enumerate(sample_ids):
        row = {"sample_id": sid, "gt_px": int(gt[i].sum()), "pred_px": int((prob[i] >= FIXED_THRESHOLD).sum()),
               "dice": fixed["dice"][i], "sen": fixed["sen"][i], "ppv": fixed["ppv"][i]}
        if tuned is not None:
            row.update(dice_tval=tuned["dice"][i], sen_tval=tuned["sen"][i], ppv_tval=tuned["ppv"][i])
        row.update(dice_smooth=fixed["dice_smooth"][i], sen_smooth=fixed["sen_smooth"][i],
                   ppv_smooth=fixed["ppv_smooth"][i], sad=errors["sad"][i], mse=errors["mse"][i])
        rows.append(row)
    return summary, rows


def _pct(stat: dict[str, float] | None) -> str:
    if not stat:
        return "-"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def format_table(reports: Sequence[dict[str, Any]], *, names: Sequence[str] | None = None) -> str:
    """Markdown table (Table I layout: mean ± std in %) of one or more ``metrics.json`` reports."""
    names = list(names) if names is not None else [r.get("name") or r.get("variant", "?") for r in reports]
    head = ("| method | crops | Dice @0.5 | SEN @0.5 | PPV @0.5 | val thr | Dice @val thr | SEN @val thr | "
            "PPV @val thr | Dice (authors, +1) | SAD | MSE |")
    lines = [head, "|" + "|".join(["---"] * 12) + "|"]
    for name, r in zip(names, reports):
        m = r["metrics"]
        fx, tv = m["at_fixed"], m.get("at_val_threshold") or {}
        thr = "-" if m.get("threshold_val") is None else f"{m['threshold_val']:.2f}"
        lines.append(
            f"| {name} | {m['n_crops']} | {_pct(fx['dice'])} | {_pct(fx['sen'])} | {_pct(fx['ppv'])} | {thr} | "
            f"{_pct(tv.get('dice'))} | {_pct(tv.get('sen'))} | {_pct(tv.get('ppv'))} | "
            f"{_pct(m['authors_protocol']['dice_smooth'])} | {m['soft_mask']['sad']['mean']:.2f} | "
            f"{m['soft_mask']['mse']['mean']:.5f} |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_report(report: dict[str, Any], rows: Sequence[dict[str, Any]], out: str | Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_crop.csv`` and ``summary.md`` into ``out`` (atomically)."""
    out = Path(out)
    paths = {"json": out / "metrics.json", "csv": out / "per_crop.csv", "md": out / "summary.md"}
    _atomic_write(paths["json"], json.dumps(_json_clean(report), indent=2) + "\n")
    _atomic_write(paths["csv"], _csv_text(rows))
    m = report["metrics"]
    notes = [f"# Evaluation: {report.get('name', '')} ({report.get('variant', '')})", "",
             f"checkpoint `{report.get('checkpoint', '')}`, data `{report.get('data', '')}`, split "
             f"`{report.get('split', '')}`: {m['n_crops']} crops ({m['n_empty_gt']} with an empty ground truth).", "",
             format_table([report], names=[report.get("name") or report.get("variant", "?")]),
             "Mean ± population std over crops, in %. Threshold 0.5 is fixed; `val thr` was chosen on the "
             f"`{report.get('val_split') or '-'}` split only (best mean Dice). `authors, +1` is the per-image Dice "
             "with +1 smoothing (the authors' protocol), reported for comparison only. SAD is in alpha units "
             "summed over the crop; MSE is per pixel. Empty masks: a 0/0 ratio counts 1 when both masks are "
             "empty, else 0.", ""]
    if not report.get("soft_head", True):
        notes.append("This variant has no Soft Mask head: SAD/MSE compare its probability map with the Soft Mask.\n")
    _atomic_write(paths["md"], "\n".join(notes))
    return paths


# ============================================================================================
# Figure
# ============================================================================================
def save_overlay_png(path: str | Path, *, image: np.ndarray, gt: np.ndarray, prob: np.ndarray,
                     soft01: np.ndarray, soft_gt01: np.ndarray, sample_ids: Sequence[str],
                     threshold: float = FIXED_THRESHOLD, n_show: int = 6, title: str = "") -> Path:
    """A grid of ``n_show`` crops, evenly spread over the split: row 1 the image in [-1, 1] with the
    ground-truth (green) and predicted (red, ``prob >= threshold``) contours; row 2 the predicted
    Soft Mask; row 3 the ground-truth Soft Mask. Deterministic bytes (no timestamp metadata)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(sample_ids)
    k = max(1, min(n_show, n))
    idx = np.unique(np.linspace(0, n - 1, k).round().astype(int))
    fig, axes = plt.subplots(3, len(idx), figsize=(2.0 * len(idx), 6.4), squeeze=False)
    for col, i in enumerate(idx):
        ax = axes[0, col]
        ax.imshow(image[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        if gt[i].any() and not gt[i].all():
            ax.contour(gt[i].astype(float), levels=[0.5], colors="lime", linewidths=1.0)
        pred = prob[i] >= threshold
        if pred.any() and not pred.all():
            ax.contour(pred.astype(float), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(str(sample_ids[i])[-18:], fontsize=7)
        axes[1, col].imshow(soft01[i], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        axes[2, col].imshow(soft_gt01[i], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for r in range(3):
            axes[r, col].set_xticks([])
            axes[r, col].set_yticks([])
    axes[0, 0].set_ylabel("GT green / pred red", fontsize=7)
    axes[1, 0].set_ylabel("predicted Soft Mask", fontsize=7)
    axes[2, 0].set_ylabel("ground-truth Soft Mask", fontsize=7)
    from .engine import save_figure

    return save_figure(fig, path, title=title, dpi=90)


# ============================================================================================
# Prediction over shards
# ============================================================================================
def predict_dataset(net, dataset, *, batch_size: int = 32, device: str = "cpu") -> dict[str, Any]:
    """Run ``net`` over every item of a :class:`~dsnet_trainer.data.SampleShardDataset` (no
    augmentation), in order. Returns numpy arrays (n, H, W): ``image`` ([-1, 1]), ``prob``,
    ``soft01`` (predicted alpha), ``gt`` (bool), ``soft_gt01``; and ``sample_id`` (list)."""
    import torch
    from torch.utils.data import DataLoader, SequentialSampler

    dev = torch.device(device)
    net = net.to(dev).eval()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=SequentialSampler(range(len(dataset))))
    out: dict[str, list] = {k: [] for k in ("image", "prob", "soft01", "gt", "soft_gt01", "sample_id")}
    with torch.no_grad():
        for batch in loader:
            prob, soft = net(batch["image"].to(dev))
            out["image"].append(batch["image"][:, 0].numpy())
            out["prob"].append(prob.float().cpu()[:, 0].numpy())
            out["soft01"].append(((soft.float().cpu()[:, 0] + 1.0) / 2.0).clamp(0, 1).numpy())
            out["gt"].append(batch["binary_mask"][:, 0].numpy() != 0)
            out["soft_gt01"].append(((batch["soft_mask"][:, 0] + 1.0) / 2.0).numpy())
            out["sample_id"].extend(batch["sample_id"])
    arrays = {k: np.concatenate(v) for k, v in out.items() if k != "sample_id"}
    arrays["sample_id"] = out["sample_id"]
    return arrays


def evaluate_checkpoint(checkpoint: str | Path, *, out: str | Path, data: str | Path | None = None,
                        split: str = "test", val_split: str | None = None, batch_size: int = 32,
                        device: str = "cpu", n_preview: int = 6, name: str | None = None) -> dict[str, Any]:
    """Evaluate a seg checkpoint on ``split`` of ``data`` and write the report files into ``out``.

    Parameters
    ----------
    checkpoint : ``best.pt``/``last.pt`` of ``dsnet train``.
    data : shard folder; default the run's ``data.root``.
    split : evaluated split (``test``).
    val_split : split used only to choose the threshold; default the run's ``data.val_split``;
        ``""`` disables it. Must differ from ``split``.
    name : label of the run in tables (default: the run folder's name).

    Returns the report (the content of ``metrics.json``).

    Raises
    ------
    CheckpointError, ShardError, InputError : unreadable checkpoint, missing shards or split,
        crops of another size than the model's, ``val_split == split``.
    """
    from .data import SampleShardDataset, find_shards
    from .engine import select_device
    from .models.dsnet import get_variant
    from .train_seg import load_seg_model

    checkpoint = Path(checkpoint)
    dev = select_device(device, option="--device")
    net, info = load_seg_model(checkpoint)
    cfg = info["config"]
    data = Path(data) if data is not None else Path(cfg["data"]["root"])
    if val_split is None:
        val_split = cfg["data"]["val_split"]
    if val_split and val_split == split:
        raise InputError(f"--val-split {val_split!r} must differ from --split {split!r}: the threshold is never "
                         "chosen on the evaluated split")
    kw = dict(level_hu=info["level_hu"], width_hu=info["width_hu"], image_size_px=info["crop_px"], option="--data")
    test = predict_dataset(net, SampleShardDataset(data, split=split, **kw), batch_size=batch_size, device=str(dev))
    val = None
    available = {s.split for s in find_shards(data, kind="samples", option="--data")}
    if val_split and val_split in available:
        val = predict_dataset(net, SampleShardDataset(data, split=val_split, **kw), batch_size=batch_size,
                              device=str(dev))
    summary, rows = summarise_predictions(test["prob"], test["gt"], test["soft01"], test["soft_gt01"],
                                          sample_ids=test["sample_id"],
                                          prob_val=None if val is None else val["prob"],
                                          gt_val=None if val is None else val["gt"])
    variant = get_variant(info["variant"])
    run_name = name or (checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints"
                        else checkpoint.stem)
    report = {"format": EVAL_FORMAT, "version": 1, "name": run_name, "variant": variant.name, "row": variant.row,
              "soft_head": variant.soft_head, "checkpoint": str(checkpoint), "epoch": info["epoch"],
              "data": str(data), "split": split, "val_split": val_split if val is not None else None,
              "crop_px": info["crop_px"], "metrics": summary}
    out = Path(out)
    write_report(report, rows, out)
    save_overlay_png(out / "predictions.png", image=test["image"], gt=test["gt"], prob=test["prob"],
                     soft01=test["soft01"], soft_gt01=test["soft_gt01"], sample_ids=test["sample_id"],
                     n_show=n_preview, title=f"{run_name} ({variant.name}), split {split}")
    return _json_clean(report)


# ============================================================================================
# Comparison of runs
# ============================================================================================
def _read_report(path: Path) -> dict[str, Any]:
    p = path / "metrics.json" if path.is_dir() else path
    if not p.is_file():
        raise InputError(f"no evaluation report at {path} (expected metrics.json of `dsnet evaluate`)")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read evaluation report {p}: {exc}") from exc
    if not isinstance(report, dict) or report.get("format") != EVAL_FORMAT:
        raise InputError(f"{p} is not a `dsnet evaluate` report (format {EVAL_FORMAT!r})")
    return report


def compare_runs(reports: Sequence[str | Path], *, out: str | Path | None = None,
                 names: Sequence[str] | None = None) -> str:
    """One markdown table of several evaluation reports (folders or ``metrics.json`` files).

    Writes ``compare.md`` and ``compare.csv`` into ``out`` when given; returns the markdown.
    Raises :class:`InputError` for a missing/foreign report, or reports of different splits or
    data (which would not compare on the same pixels).
    """
    if not reports:
        raise InputError("compare needs at least one evaluation report")
    loaded = [_read_report(Path(r)) for r in reports]
    keys = {(r.get("data"), r.get("split"), r["metrics"]["n_crops"]) for r in loaded}
    if len(keys) > 1:
        raise InputError("reports were computed on different data/splits and do not compare: "
                         + "; ".join(f"{Path(p)}: {r.get('data')} [{r.get('split')}] n={r['metrics']['n_crops']}"
                                     for p, r in zip(reports, loaded)))
    if names is not None and len(names) != len(loaded):
        raise InputError(f"{len(names)} names for {len(loaded)} reports")
    names = list(names) if names is not None else [r.get("name") or r.get("variant") for r in loaded]
    table = format_table(loaded, names=names)
    d, s, n = next(iter(keys))
    md = (f"# Comparison on `{d}` split `{s}` ({n} crops)\n\n" + table + "\nRows: "
          + "; ".join(f"{nm} = {r.get('variant')} ({r.get('row')})" for nm, r in zip(names, loaded)) + "\n")
    if out is not None:
        out = Path(out)
        rows = []
        for nm, r in zip(names, loaded):
            m = r["metrics"]
            row = {"name": nm, "variant": r.get("variant"), "row": r.get("row"), "n_crops": m["n_crops"]}
            for k in ("dice", "sen", "ppv"):
                row[f"{k}_mean"], row[f"{k}_std"] = m["at_fixed"][k]["mean"], m["at_fixed"][k]["std"]
            row["threshold_val"] = m.get("threshold_val")
            tv = m.get("at_val_threshold") or {}
            for k in ("dice", "sen", "ppv"):
                row[f"{k}_tval_mean"] = tv.get(k, {}).get("mean")
            row["dice_smooth_mean"] = m["authors_protocol"]["dice_smooth"]["mean"]
            row["sad_mean"], row["mse_mean"] = m["soft_mask"]["sad"]["mean"], m["soft_mask"]["mse"]["mean"]
            rows.append(row)
        _atomic_write(out / "compare.md", md)
        _atomic_write(out / "compare.csv", _csv_text(rows))
    return md
