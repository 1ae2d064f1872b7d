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
5. Only when the build carries a phantom's truth (shard schema 3 ``true_fraction``): the same
   model scored against the truth (:func:`truth_metrics`: Dice against ``true_fraction >= 0.5``
   at 0.5, at the val threshold chosen against the label and, apart, against the truth; SAD/MSE
   of the soft map against the true fraction; HD95 and surface Dice at 1 px), in
   ``metrics.json["metrics"]["truth"]``, the CSV's ``*_true``/``hd95_px``/``surface_dice_1px``
   columns and a second table of ``summary.md``. Builds without truth get exactly the report of
   items 1-4.

:func:`compare_runs` reads several ``metrics.json`` and writes one table (``compare.md``, ``.csv``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from softmask_builder.core import atomic

from .errors import InputError
from .metrics import (DEFAULT_THRESHOLDS, boundary_metrics, choose_threshold, dice_sen_ppv, mean_std,
                      segmentation_metrics, soft_mask_errors)
from .predict import predict_dataset

__all__ = ["EVAL_FORMAT", "summarise_predictions", "evaluate_checkpoint", "evaluate_predictions",
           "load_probability_maps", "predict_dataset", "write_report",
           "save_overlay_png", "compare_runs", "format_table", "truth_metrics", "format_truth_table"]

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
                          thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                          true_fraction: np.ndarray | None = None,
                          true_fraction_val: np.ndarray | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Metrics of one evaluated split.

    Parameters
    ----------
    prob : (n, H, W) float probabilities of the evaluated split.
    gt : (n, H, W) binary ground truth.
    soft01, soft_gt01 : (n, H, W) predicted and ground-truth Soft Masks as alpha in [0, 1].
    sample_ids : n crop ids (CSV rows).
    prob_val, gt_val : the validation split's probabilities and ground truth, used only to pick
        the threshold; None -> only the fixed 0.5 is reported.
    true_fraction, true_fraction_val : (n, H, W) the phantom's true fraction in [0, 1] of the
        evaluated and validation crops (builds of a phantom source, schema 3), or None. When
        given, ``summary["truth"]`` and the CSV's ``*_true`` columns score against the truth
        (:func:`truth_metrics`); when None the report is exactly the label-scored one.

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
    if true_fraction is not None:
        truth, truth_rows = truth_metrics(prob, soft01, true_fraction, gt_label=gt,
                                          threshold_label=summary["threshold_val"], prob_val=prob_val,
                                          true_fraction_val=true_fraction_val, thresholds=thresholds)
        summary["truth"] = truth
        for row, extra in zip(rows, truth_rows):
            row.update(extra)
    return summary, rows


#: Tolerance of the surface Dice against the truth (pixels).
SURFACE_TOLERANCE_PX = 1.0


def truth_metrics(prob: np.ndarray, soft01: np.ndarray, true_fraction: np.ndarray, *, gt_label: np.ndarray,
                  threshold_label: float | None, prob_val: np.ndarray | None = None,
                  true_fraction_val: np.ndarray | None = None,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[dict[str, Any], list[dict]]:
    """Scores against a phantom's truth (issue 25): ``(summary, per-crop columns)``.

    The true mask is ``true_fraction >= 0.5``. Reported: Dice/SEN/PPV of ``prob >= 0.5``; Dice
    at ``threshold_label`` (the threshold chosen on val against the *label*, the realistic
    setting; None when no val split); Dice at a threshold chosen on val against the *true mask*
    (``prob_val``/``true_fraction_val``; reported apart: an oracle choice); SAD and MSE of the
    predicted soft map ``soft01`` (alpha in [0, 1]) against ``true_fraction``; HD95 (px) and
    surface Dice at :data:`SURFACE_TOLERANCE_PX` of ``prob >= 0.5`` against the true mask
    (:func:`~dsnet_trainer.metrics.boundary_metrics`; HD95 aggregates skip its NaN crops and
    count them); and the label's own Dice against the true mask (the label's ceiling).
    """
    true_fraction = np.asarray(true_fraction, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    if true_fraction.shape != prob.shape:
        raise InputError(f"true_fraction {true_fraction.shape} and prob {prob.shape} must describe the same crops")
    true_mask = true_fraction >= 0.5
    fixed = dice_sen_ppv(prob >= FIXED_THRESHOLD, true_mask)
    errors = soft_mask_errors(soft01, true_fraction)
    edges = boundary_metrics(prob >= FIXED_THRESHOLD, true_mask, tolerance_px=SURFACE_TOLERANCE_PX)
    label = dice_sen_ppv(gt_label, true_mask)
    hd = edges["hd95"]
    finite = hd[np.isfinite(hd)]
    out: dict[str, Any] = {
        "true_mask": "true_fraction >= 0.5",
        "n_empty_true_mask": int(np.count_nonzero(~true_mask.any(axis=(1, 2)))),
        "at_fixed": {k: _stats(fixed[k]) for k in ("dice", "sen", "ppv")},
        "threshold_label_val": threshold_label,
        "at_label_val_threshold": None,
        "threshold_truth_val": None,
        "threshold_truth_val_mean_dice": None,
        "at_truth_val_threshold": None,
        "soft_vs_truth": {k: _stats(v) for k, v in errors.items()},
        "hd95_px": {**_stats(finite), "n_undefined": int(hd.size - finite.size)},
        "surface_dice_tolerance_px": SURFACE_TOLERANCE_PX,
        "surface_dice": _stats(edges["surface_dice"]),
        "label_vs_truth": {k: _stats(label[k]) for k in ("dice", "sen", "ppv")},
    }
    at_label = at_truth = None
    if threshold_label is not None:
        at_label = dice_sen_ppv(prob >= threshold_label, true_mask)["dice"]
        out["at_label_val_threshold"] = {"dice": _stats(at_label)}
    if prob_val is not None and true_fraction_val is not None and len(prob_val):
        t, score = choose_threshold(prob_val, np.asarray(true_fraction_val) >= 0.5, thresholds=thresholds)
        at_truth = dice_sen_ppv(prob >= t, true_mask)["dice"]
        out.update(threshold_truth_val=t, threshold_truth_val_mean_dice=score,
                   at_truth_val_threshold={"dice": _stats(at_truth)})
    rows = []
    for i in range(prob.shape[0]):
        row = {"true_px": int(true_mask[i].sum()), "dice_true": fixed["dice"][i], "sen_true": fixed["sen"][i],
               "ppv_true": fixed["ppv"][i]}
        if at_label is not None:
            row["dice_true_tval"] = at_label[i]
        if at_truth is not None:
            row["dice_true_ttrue"] = at_truth[i]
        row.update(sad_true=errors["sad"][i], mse_true=errors["mse"][i], hd95_px=hd[i],
                   surface_dice_1px=edges["surface_dice"][i], label_dice_true=label["dice"][i])
        rows.append(row)
    return out, rows


def format_truth_table(reports: Sequence[dict[str, Any]], *, names: Sequence[str] | None = None) -> str:
    """Markdown table of the truth-scored figures of reports that have them ("" when none has)."""
    names = list(names) if names is not None else [r.get("name") or r.get("variant", "?") for r in reports]
    lines = []
    for name, r in zip(names, reports):
        t = r["metrics"].get("truth")
        if not t:
            continue
        lab = (t.get("at_label_val_threshold") or {}).get("dice")
        tru = (t.get("at_truth_val_threshold") or {}).get("dice")
        hd = t["hd95_px"]
        hd_text = f"{_num(hd['mean'], '.2f')} ({hd['n_undefined']} undef.)" if hd["n_undefined"] else _num(hd["mean"], ".2f")
        lines.append(f"| {name} | {_pct(t['at_fixed']['dice'])} | {_pct(lab)} | {_pct(tru)} | "
                     f"{_num(t['soft_vs_truth']['sad']['mean'], '.2f')} | {_num(t['soft_vs_truth']['mse']['mean'], '.5f')} | "
                     f"{hd_text} | {_pct(t['surface_dice'])} | {_pct(t['label_vs_truth']['dice'])} |")
    if not lines:
        return ""
    head = ("| method | Dice(true) @0.5 | Dice(true) @val thr (label) | Dice(true) @val thr (truth, oracle) | "
            "SAD(true) | MSE(true) | HD95 px | surface Dice @1 px | label Dice(true) |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(lines) + "\n"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating)) and bool(np.isfinite(v))


def _pct(stat: dict[str, float] | None) -> str:
    """``mean ± std`` in percent; ``n/a`` for a missing or non-finite value (e.g. a NaN model)."""
    if not stat:
        return "-"
    m, s = stat.get("mean"), stat.get("std")
    if not _finite(m):
        return "n/a"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if _finite(s) else f"{100 * m:.2f} ± n/a"


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if _finite(v) else "n/a"


def format_table(reports: Sequence[dict[str, Any]], *, names: Sequence[str] | None = None) -> str:
    """Markdown table (Table I layout: mean ± std in %) of one or more ``metrics.json`` reports."""
    names = list(names) if names is not None else [r.get("name") or r.get("variant", "?") for r in reports]
    head = ("| method | crops | Dice @0.5 | SEN @0.5 | PPV @0.5 | val thr | Dice @val thr | SEN @val thr | "
            "PPV @val thr | Dice (authors, +1) | SAD | MSE |")
    lines = [head, "|" + "|".join(["---"] * 12) + "|"]
    for name, r in zip(names, reports):
        m = r["metrics"]
        fx, tv = m["at_fixed"], m.get("at_val_threshold") or {}
        thr = "-" if m.get("threshold_val") is None else _num(m["threshold_val"], ".2f")
        lines.append(
            f"| {name} | {m['n_crops']} | {_pct(fx['dice'])} | {_pct(fx['sen'])} | {_pct(fx['ppv'])} | {thr} | "
            f"{_pct(tv.get('dice'))} | {_pct(tv.get('sen'))} | {_pct(tv.get('ppv'))} | "
            f"{_pct(m['authors_protocol']['dice_smooth'])} | {_num(m['soft_mask']['sad']['mean'], '.2f')} | "
            f"{_num(m['soft_mask']['mse']['mean'], '.5f')} |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (:mod:`softmask_builder.core.atomic`), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


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
        notes.append("This model has no trained Soft Mask head (the variant has none, or no loss reached it: "
                     "lambda2 = 0 without a GAN): SAD/MSE compare its probability map with the Soft Mask.\n")
    truth_table = format_truth_table([report], names=[report.get("name") or report.get("variant", "?")])
    if truth_table:
        notes += ["## Scored against the phantom's truth", "",
                  "The build carries the phantom's true partial-volume fraction: the true mask is "
                  "`true_fraction >= 0.5`. `val thr (label)` is the threshold chosen on val against the label "
                  "(the realistic setting); `val thr (truth, oracle)` is chosen on val against the true mask. "
                  "SAD/MSE compare the predicted soft map with the true fraction; HD95 and surface Dice use "
                  "the 0.5 mask. `label Dice(true)` is the label's own Dice against the truth (its ceiling).", "",
                  truth_table]
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
    from .figures import save_figure

    return save_figure(fig, path, title=title, dpi=90)


# ============================================================================================
# Evaluation of a checkpoint
# ============================================================================================
def evaluate_checkpoint(checkpoint: str | Path, *, out: str | Path, data: str | Path | None = None,
                        split: str = "test", val_split: str | None = None, batch_size: int = 32,
                        device: str = "cpu", n_preview: int = 6, name: str | None = None,
                        allow_teacher_overlap: bool | None = None, verify=None) -> dict[str, Any]:
    """Evaluate a seg checkpoint on ``split`` of ``data`` and write the report files into ``out``.

    The checkpoint's SR teacher (DRTM rows) must not have been trained on a patient of ``split``
    (:func:`~dsnet_trainer.provenance.teacher_leak_check`); ``allow_teacher_overlap`` (default:
    the run's ``model.allow_teacher_overlap``) reproduces the paper's setting and is recorded in
    ``metrics.json`` (``teacher_check``). ``verify``: called with the data folder once it is
    known (the CLI's dataset check, :func:`~dsnet_trainer.dataset_check.check_dataset`).

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
    from .models.dsnet import get_variant
    from .models.loading import load_seg_model
    from .provenance import teacher_leak_check
    from .runtime import select_device

    checkpoint = Path(checkpoint)
    dev = select_device(device, option="--device")
    net, info = load_seg_model(checkpoint)
    cfg = info["config"]
    data = Path(data) if data is not None else Path(cfg["data"]["root"])
    if verify is not None:
        verify(data)
    if val_split is None:
        val_split = cfg["data"]["val_split"]
    if val_split and val_split == split:
        raise InputError(f"--val-split {val_split!r} must differ from --split {split!r}: the threshold is never "
                         "chosen on the evaluated split")
    from dataclasses import replace

    seg_cfg = info["seg_config"]
    if allow_teacher_overlap is not None:
        seg_cfg = replace(seg_cfg, model=replace(seg_cfg.model, allow_teacher_overlap=bool(allow_teacher_overlap)))
    teacher_check = teacher_leak_check(seg_cfg, info["teacher_arch"], root=data, splits=(split,),
                                       teacher_name=f"inside {checkpoint}")
    kw = dict(level_hu=info["level_hu"], width_hu=info["width_hu"], image_size_px=info["crop_px"], option="--data")
    test = predict_dataset(net, SampleShardDataset(data, split=split, **kw), batch_size=batch_size, device=str(dev))
    val = None
    available = {s.split for s in find_shards(data, kind="samples", option="--data")}
    if val_split and val_split in available:
        val = predict_dataset(net, SampleShardDataset(data, split=val_split, **kw), batch_size=batch_size,
                              device=str(dev))
    test_ds = SampleShardDataset(data, split=split, **kw)
    truth = _truth_of(test_ds, test["sample_id"])
    truth_val = None
    if truth is not None and val is not None:
        truth_val = _truth_of(SampleShardDataset(data, split=val_split, **kw), val["sample_id"])
    summary, rows = summarise_predictions(test["prob"], test["gt"], test["soft01"], test["soft_gt01"],
                                          sample_ids=test["sample_id"],
                                          prob_val=None if val is None else val["prob"],
                                          gt_val=None if val is None else val["gt"],
                                          true_fraction=truth, true_fraction_val=truth_val)
    variant = get_variant(info["variant"])
    run_name = name or (checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints"
                        else checkpoint.stem)
    report = {"format": EVAL_FORMAT, "version": 1, "name": run_name, "variant": variant.name, "row": variant.row,
              "soft_head": bool(net.soft_head), "checkpoint": str(checkpoint), "epoch": info["epoch"],
              "data": str(data), "split": split, "val_split": val_split if val is not None else None,
              "crop_px": info["crop_px"], "teacher_check": teacher_check, "metrics": summary}
    return _finish(report, rows, out, test, soft01=test["soft01"], n_preview=n_preview,
                   title=f"{run_name} ({variant.name}), split {split}")


def _truth_of(dataset, sample_ids: Sequence[str]) -> np.ndarray | None:
    """The (n, H, W) true fractions of ``dataset``'s crops in order (None when the build carries
    no truth), checked against the ``sample_ids`` the predictions were made for."""
    if not getattr(dataset, "has_truth", False):
        return None
    out, ids = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        out.append(item["true_fraction"][0].numpy())
        ids.append(item["sample_id"])
    if list(ids) != list(sample_ids):  # a bug: the truth would be paired with other crops
        raise RuntimeError("true_fraction read in another crop order than the predictions")
    return np.stack(out).astype(np.float64)


# ============================================================================================
# External predictions (nnU-Net and others)
# ============================================================================================
def _read_cases(path: Path) -> dict[str, str]:
    """sample_id -> case id from an export's ``cases.csv`` (``case_id,sample_id,...``)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(f"--cases {path}: cannot read ({exc.strerror})") from exc
    if not rows or not {"case_id", "sample_id"} <= set(rows[0]):
        raise InputError(f"--cases {path}: expected a CSV with columns case_id, sample_id (the nnU-Net export's "
                         "cases.csv)")
    return {r["sample_id"]: r["case_id"] for r in rows}


def _load_prob(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One crop's foreground probability (rows, cols) from an ``.npz``/``.npy`` file.

    ``.npz`` as nnU-Net v2 ``--save_probabilities`` writes it: ``probabilities`` of shape
    (classes, 1, rows, cols) (nnU-Net's (z, y, x) order for our (col, row, 1) NIfTI crops read by
    SimpleITK), class 1 = nodule. ``.npy``: a (rows, cols) probability map.
    """
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "probabilities" not in z:
                    raise InputError(f"{path}: no 'probabilities' array (an nnU-Net --save_probabilities .npz?)")
                p = np.asarray(z["probabilities"], dtype=np.float64)
            if p.ndim == 4 and p.shape[1] == 1:
                p = p[:, 0]
            if p.ndim != 3 or p.shape[0] < 2:
                raise InputError(f"{path}: probabilities of shape {p.shape}, expected (classes, 1, rows, cols)")
            p = p[1]
        else:
            p = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable probability file ({exc})") from exc
    if p.shape != shape:
        raise InputError(f"{path}: probability map of shape {p.shape}, the crop is {shape} (rows, cols)")
    if not np.isfinite(p).all() or p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise InputError(f"{path}: probabilities must be finite and in [0, 1]")
    return np.clip(p, 0.0, 1.0)


def load_probability_maps(pred_dir: str | Path, sample_ids: Sequence[str], *, shape: tuple[int, int],
                          cases: dict[str, str] | None = None, required: bool = True) -> np.ndarray | None:
    """Stack the probability maps of ``sample_ids`` found in ``pred_dir`` as (n, rows, cols).

    A crop's file is ``<case>.npz`` (``cases`` maps sample ids to case ids, e.g. nnU-Net's) or
    ``<sample_id>.npz`` / ``<sample_id>.npy``. With ``required=False`` a missing file returns None.

    Raises
    ------
    InputError : a missing file (``required``), a malformed file, a wrong shape.
    """
    pred_dir = Path(pred_dir)
    out = []
    for sid in sample_ids:
        stems = ([cases[sid]] if cases and sid in cases else []) + [sid]
        found = next((pred_dir / f"{st}{ext}" for st in stems for ext in (".npz", ".npy")
                      if (pred_dir / f"{st}{ext}").is_file()), None)
        if found is None:
            if not required:
                return None
            raise InputError(f"--predictions {pred_dir}: no prediction for crop {sid!r} (looked for "
                             f"{', '.join(st + '.npz' for st in stems)})")
        out.append(_load_prob(found, shape))
    return np.stack(out) if out else np.zeros((0, *shape))


def evaluate_predictions(pred_dir: str | Path, *, data: str | Path, out: str | Path, split: str = "test",
                         val_split: str | None = "val", cases: str | Path | None = None, name: str = "external",
                         n_preview: int = 6) -> dict[str, Any]:
    """Score probability maps made by another tool (e.g. nnU-Net v2) on ``split`` of ``data``, with
    exactly the metrics and report files of :func:`evaluate_checkpoint`.

    ``cases``: the export's ``cases.csv`` (default ``pred_dir/cases.csv`` if present). The
    threshold is chosen on ``val_split`` only when a prediction exists for every crop of it; the
    "Soft Mask" errors compare the probability map with the Soft Mask (no soft head).
    """
    from .data import SampleShardDataset, find_shards

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"--predictions {pred_dir}: no such folder")
    if cases is None and (pred_dir / "cases.csv").is_file():
        cases = pred_dir / "cases.csv"
    case_map = _read_cases(Path(cases)) if cases is not None else None

    def gather(split_name: str, required: bool):
        ds = SampleShardDataset(data, split=split_name, option="--data")
        gt, soft_gt, image, ids, truth = [], [], [], [], []
        for i in range(len(ds)):
            item = ds[i]
            gt.append(item["binary_mask"][0].numpy() != 0)
            soft_gt.append(((item["soft_mask"][0] + 1.0) / 2.0).numpy())
            image.append(item["image"][0].numpy())
            ids.append(item["sample_id"])
            if ds.has_truth:
                truth.append(item["true_fraction"][0].numpy())
        shape = gt[0].shape
        prob = load_probability_maps(pred_dir, ids, shape=shape, cases=case_map, required=required)
        return {"gt": np.stack(gt), "soft_gt01": np.stack(soft_gt), "image": np.stack(image), "sample_id": ids,
                "prob": prob, "true_fraction": np.stack(truth).astype(np.float64) if truth else None}

    test = gather(split, True)
    val = None
    available = {s.split for s in find_shards(data, kind="samples", option="--data")}
    if val_split and val_split != split and val_split in available:
        val = gather(val_split, False)
        if val["prob"] is None:
            val = None
    summary, rows = summarise_predictions(test["prob"], test["gt"], test["prob"], test["soft_gt01"],
                                          sample_ids=test["sample_id"],
                                          prob_val=None if val is None else val["prob"],
                                          gt_val=None if val is None else val["gt"],
                                          true_fraction=test["true_fraction"],
                                          true_fraction_val=None if val is None else val["true_fraction"])
    report = {"format": EVAL_FORMAT, "version": 1, "name": name, "variant": "external", "row": "external predictions",
              "soft_head": False, "checkpoint": None, "predictions": str(pred_dir), "epoch": None,
              "data": str(data), "split": split, "val_split": val_split if val is not None else None,
              "crop_px": int(test["gt"].shape[-1]), "metrics": summary}
    # External predictions have no Soft Mask head: the probability map stands in for it.
    return _finish(report, rows, out, test, soft01=test["prob"], n_preview=n_preview,
                   title=f"{name} (external predictions), split {split}")


def _finish(report: dict, rows, out, test: dict, *, soft01, n_preview: int, title: str) -> dict:
    """Write the report files (metrics.json, per_crop.csv, summary.md) and predictions.png."""
    out = Path(out)
    write_report(report, rows, out)
    save_overlay_png(out / "predictions.png", image=test["image"], gt=test["gt"], prob=test["prob"],
                     soft01=soft01, soft_gt01=test["soft_gt01"], sample_ids=test["sample_id"],
                     n_show=n_preview, title=title)
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
