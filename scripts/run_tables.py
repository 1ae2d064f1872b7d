"""Regenerate Tables III, IV and V (and the Soft Mask L1 study): train every (row, seed), evaluate it,
and write the tables.

    python scripts/run_tables.py --data build/lnsm1500 --teacher runs/sr-sr_tiny/teacher.pt \
        --out runs/tables [--seeds 3 --extra-seeds 2] [--rows unet,backbone,...] [--study l1]
        [--study truth] [--study truth-b --teacher-x2 T2 --teacher-untrained T0 --seeds-b 4]
        [-s optim.epochs=30] [--jobs 2] [--record docs/results/NAME] [--no-train]
        [--nnunet runs/nnunet/eval/run0-nnUNetTrainer_5epochs ...]

When every run was evaluated on a build that carries the phantom's truth (shard schema 3), the
tables end with the truth study's table (docs/TRAINING.md): Dice against the true mask and SAD
against the true fraction per row, collapsed runs on their own lines, paired differences to the
U-Net row with 95 % intervals clustered by background patient (:func:`summarise_truth`).
``--study truth`` adds the truth study's arms A0-A4 (:data:`TRUTH_ARMS`: the ``unet_soft`` variant
with the design's lambda2 and training target, ``--seeds`` seeds each; ``-s`` on the keys they set
is refused) and the tables then end with the design's comparisons (:data:`TRUTH_PAIRS`: A1 - A0,
A1 - A2 decide, A3 - A1 and A4 - A1 are bounds) with clustered per-crop intervals, intervals on the
seed means and the decision words of one build (:func:`truth_verdict`). ``--study truth-b`` adds
its arms B0-B3 (:data:`TRUTH_B_ARMS`: the crop shrunk x2; B0 the backbone on the bicubic-up-sampled
input, B1 DRTM with the x2 teacher of ``--teacher-x2``, B2 the same with the untrained teacher of
``--teacher-untrained``, B3 the backbone on the crop itself; both teacher files checked first) and
the comparisons :data:`TRUTH_B_PAIRS` (B1 - B0, B1 - B2 decide claim (b), B3 - B0 a bound).

Rows are ``model.variant`` names, or Soft Mask L1 study cells ``VARIANT.l1wW.REDUCTION`` (e.g.
``drtm_soft.l1w10.crop_band`` = the variant with ``optim.l1_weight=10`` and
``optim.l1_reduction=crop_band``); ``--study l1`` adds the six ``drtm_soft`` cells (lambda2 1, 10,
100 x pixel_mean, crop_band) with ``--extra-seeds`` seeds each.

Runs go seed by seed (seed 0 of every row, then seed 1, ...), so a partial build has every row.
``--jobs N`` trains N runs at once in separate processes (give each ``-s loop.num_threads=K``).
Finished runs are skipped: a (row, seed) whose ``OUT/<row>-s<seed>/eval-test/metrics.json`` (or,
with ``--record``, whose record) exists is not trained again, so the tables can be built in
several sittings (re-run the same command). Every run writes ``table_run.json`` (row, seed, the
``-s`` overrides, wall time, the validation history and the selected epoch, versions); a call
whose resolved config (paths, seed, threads and logging aside) differs from a finished run's is
refused, naming the keys, so one table never mixes schedules. Runs also record the sample build
(``data_manifest_sha256``) and, for DRTM rows, the SR teacher's weights digest
(``teacher_weights_sha256``); a finished run of another build or teacher is refused the same way,
the tables list the teacher digests with their runs, and runs whose per-crop ground-truth areas
disagree (different builds, also for runs that recorded no digest) are never put in one table.
``--record DIR`` copies each finished run's small files (``per_crop.csv``, ``metrics.json``,
``table_run.json``) and the tables into DIR, a folder meant to be committed: the tables can be
rebuilt from it alone (``--no-train`` only summarises what is finished and lists what is not).

Statistics (written to ``TABLES.md`` and ``tables.json``):

* per row, the test Dice at 0.5 of ``best.pt`` (the trainer's selection rule: the best mean
  validation Dice over ``loop.select_k`` consecutive validations; a run with fewer validations
  is taken at its last epoch), **mean ± std over seeds** (std with ddof 1; one seed gives no std),
  and the selection's mean validation Dice (what the L1 study's rule reads; never test);
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
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

TABLE_III = ["unet", "backbone", "sr_input", "drtm", "drtm_soft", "dsnet"]
TABLE_IV = ["dsnet_binary", "dsnet_kats", "dsnet_softseg"]
TABLE_V = ["dsnet_no_detail", "dsnet_no_fusion"]
CORE = {"unet", "backbone", "drtm", "drtm_soft", "dsnet"}  # >= 3 seeds (issue 12); others >= 2
L1_STUDY = [f"drtm_soft.l1w{w}.{r}" for r in ("pixel_mean", "crop_band") for w in (1, 10, 100)]
PAPER_L1_CELL = "drtm_soft.l1w100.pixel_mean"       # the paper's lambda2 = 100 with pix2pix's pixel mean
_CELL = re.compile(r"^(?P<variant>[a-z_]+)\.l1w(?P<weight>[0-9]+(?:\.[0-9]+)?)\.(?P<reduction>pixel_mean|crop_band)$")
# overrides that do not change what a run computes (a finished run is not refused over them)
_NEUTRAL = ("loop.num_threads=", "loop.progress=", "loop.num_workers=")
RECORD_FILES = ("per_crop.csv", "metrics.json", "table_run.json")
#: The truth study's arms A (docs/TRAINING.md, "The truth study"): arm -> its config overrides. All
#: are the U-Net with the Soft Mask head and no GAN (``unet_soft``); lambda2 of A1-A3 is the config's
#: ``optim.l1_weight`` (seg_tiny: 1), which is why ``--study truth`` refuses ``-s`` on the keys set here.
TRUTH_ARMS = {
    "A0": ["model.variant=unet_soft", "optim.l1_weight=0"],                     # Dice only (head present)
    "A1": ["model.variant=unet_soft"],                                          # + L1 on the Soft Mask
    "A2": ["model.variant=unet_soft", "data.train_target=binary"],              # + L1 on the binary label, +-1
    "A3": ["model.variant=unet_soft", "data.train_target=true_fraction"],       # + L1 on the true fraction
    "A4": ["model.variant=unet_soft", "optim.l1_weight=0", "data.train_target=true_mask"],  # Dice on truth
}
#: The design's comparisons (arm, reference, role): the first two decide claim (a), the others are bounds.
TRUTH_PAIRS = (("A1", "A0", "decides (a): Soft Mask supervision helps"),
               ("A1", "A2", "decides (a): soft targets, not the head"),
               ("A3", "A1", "bound: oracle soft label"),
               ("A4", "A1", "bound: clean labels"))
#: The truth study's arms B (docs/TRAINING.md): input that lost detail (the 64-px crop shrunk x2 by
#: block means), output and truth on the 64-px grid. B1 and B2 are the same network (DRTM over a x2
#: teacher fed the 32-px crop) and differ only in their teacher's weights: each takes its teacher
#: file from its own option (:data:`B_TEACHER_OPTIONS`), never from ``--teacher``.
TRUTH_B_ARMS = {
    "B0": ["model.variant=backbone", "data.input_shrink=2"],                               # bicubic x2 in
    "B1": ["model.variant=drtm", "data.input_shrink=2", "model.teacher_mode=upscale"],     # trained x2 teacher
    "B2": ["model.variant=drtm", "data.input_shrink=2", "model.teacher_mode=upscale"],     # untrained teacher
    "B3": ["model.variant=backbone", "data.input_shrink=1"],                               # the 64-px crop
}
#: B arm -> (``args`` attribute, option) of its teacher file; its file's recorded ``stage``
#: must be "untrained" for B2 and anything else for B1.
B_TEACHER_OPTIONS = {"B1": ("teacher_x2", "--teacher-x2"), "B2": ("teacher_untrained", "--teacher-untrained")}
#: The design's comparisons of the arms B: the first two decide claim (b), the last is a bound.
TRUTH_B_PAIRS = (("B1", "B0", "decides (b): detail transfer from an SR teacher helps"),
                 ("B1", "B2", "decides (b): the trained teacher, not DRTM's capacity"),
                 ("B3", "B0", "bound: the 64-px crop"))
#: Every arm of the truth study (A and B): arm -> its config overrides.
STUDY_ARMS = {**TRUTH_ARMS, **TRUTH_B_ARMS}
#: The decision rule's practical margin: 1 Dice point.
DECISION_MARGIN = 0.01
RECORD_COLUMNS = ("sample_id", "gt_px", "pred_px", "dice", "sen", "ppv", "sad",  # per_crop.csv as recorded
                  # scored against a phantom's truth (issue 25; only in evaluations of builds that carry it)
                  "true_px", "dice_true", "dice_true_tval", "dice_true_ttrue", "sad_true", "hd95_px",
                  "surface_dice_1px", "label_dice_true")


def row_overrides(row: str) -> list[str]:
    """Config overrides of a table row: ``model.variant=row``, for a study cell
    ``VARIANT.l1wW.REDUCTION`` the variant plus ``optim.l1_weight`` and ``optim.l1_reduction``, for
    a truth-study arm (``A0``-``A4``, ``B0``-``B3``) its :data:`STUDY_ARMS` entry."""
    if row in STUDY_ARMS:
        return list(STUDY_ARMS[row])
    m = _CELL.match(row)
    if m:
        return [f"model.variant={m['variant']}", f"optim.l1_weight={m['weight']}",
                f"optim.l1_reduction={m['reduction']}"]
    if not re.fullmatch(r"[a-z_]+", row):
        raise SystemExit(f"--rows: {row!r} is neither a variant name, a study cell VARIANT.l1wW.REDUCTION "
                         f"nor a truth-study arm ({', '.join(STUDY_ARMS)})")
    return [f"model.variant={row}"]


def plan_runs(rows: list[str], seeds: int, extra_seeds: int, b_seeds: int | None = None) -> list[tuple[str, int]]:
    """(row, seed) pairs, seed-major: seed 0 of every row first, then seed 1, ... The core rows and
    the truth-study arms get ``seeds`` seeds, the others ``extra_seeds``; the arms B ``b_seeds``
    when given (the design: 5 seeds of A, 4 of B, in one call)."""
    n = {r: (seeds if r in CORE or r in STUDY_ARMS else extra_seeds) for r in rows}
    if b_seeds is not None:
        n.update({r: b_seeds for r in rows if r in TRUTH_B_ARMS})
    return [(r, s) for s in range(max(n.values(), default=0)) for r in rows if s < n[r]]


def _significant(sets: list[str]) -> list[str]:
    return sorted(x for x in sets if not x.startswith(_NEUTRAL))


# config keys that name where things are or how a run is executed, not what it computes
_PLACE_KEYS = {("out",), ("resume",), ("data", "root"), ("model", "teacher"), ("loop", "seed"),
               ("loop", "num_threads"), ("loop", "progress"), ("loop", "num_workers"), ("loop", "log_every_steps"),
               ("loop", "tensorboard")}


def effective_config(cfg_dict: dict) -> dict:
    """A run's resolved config without the keys of :data:`_PLACE_KEYS` (paths, seed, threads,
    logging): two runs of one table row must agree on everything else."""
    out = {}
    for k, v in cfg_dict.items():
        if (k,) in _PLACE_KEYS:
            continue
        out[k] = {kk: vv for kk, vv in v.items() if (k, kk) not in _PLACE_KEYS} if isinstance(v, dict) else v
    return json.loads(json.dumps(out, sort_keys=True))


#: Config keys added after records were made, with their defaults (see :func:`relevant`).
_ADDED_DEFAULTS = {("data", "train_target"): "label", ("data", "input_shrink"): 1}


def relevant(effective: dict) -> dict:
    """``effective`` without the keys its variant never reads (a U-Net does not read lambda2, a
    variant without a GAN no discriminator setting), so a changed default of such a key does not
    make its finished runs look different."""
    from dsnet_trainer.models.dsnet import get_variant

    v = get_variant(effective["model"]["variant"])
    drop = set()
    # Keys added after runs were recorded: at their default they change nothing, so a record that
    # predates them (no key) and a run at the default compare equal (data.train_target: issue 25).
    for (section, key), default in _ADDED_DEFAULTS.items():
        if effective.get(section, {}).get(key, default) == default:
            drop.add((section, key))
    if not v.soft_head:
        drop |= {("optim", "l1_weight"), ("optim", "l1_reduction"), ("data", "kats_ring_px"), ("data", "kats_p"),
                 ("data", "softseg_factor")}
    if not v.gan:
        drop |= {("optim", "gan_weight"), ("optim", "disc_lr"), ("model", "disc_ndf")}
    if not v.uses_teacher:
        drop |= {("model", "teacher_mode"), ("model", "drtm_fc"), ("model", "allow_teacher_overlap")}
    if v.backbone == "unet":
        drop |= {("model", "cbam_reduction"), ("model", "cbam_spatial_kernel")}
    return {k: ({kk: vv for kk, vv in val.items() if (k, kk) not in drop} if isinstance(val, dict) else val)
            for k, val in effective.items()}


def _row_effective(row: str, config: str, sets: list[str]) -> dict:
    from dsnet_trainer.config import load_config, to_dict
    from dsnet_trainer.seg_config import SegConfig

    return effective_config(to_dict(load_config(SegConfig, config, [*row_overrides(row), *sets])))


def _run_effective(run_dir: Path, info: dict | None) -> dict | None:
    """The effective config a finished run was trained with: from its table_run.json, else from
    its config.yaml (runs of an earlier version of this script); None when neither is there."""
    if info is not None and info.get("effective") is not None:
        return info["effective"]
    if (run_dir / "config.yaml").is_file():
        from dsnet_trainer.config import load_config, to_dict
        from dsnet_trainer.seg_config import SegConfig

        return effective_config(to_dict(load_config(SegConfig, run_dir / "config.yaml")))
    return None


def teacher_digest(path: str) -> str | None:
    """The teacher file's recorded weights digest (``weights_sha256``, checked against the weights
    whenever the file is loaded), or None without a teacher file."""
    if not path or not Path(path).is_file():
        return None
    from dsnet_trainer.models.teacher import read_teacher_file

    return read_teacher_file(Path(path)).get("weights_sha256")


def data_digest(root: str) -> str | None:
    """sha256 of the sample build's manifest (it lists every shard's checksum, and a build is
    byte-reproducible; the exports record the same digest), or None without one: the identity of
    the data a run saw."""
    from softmask_builder.formats.release_folder import MANIFEST
    from softmask_builder.formats.shards import sha256_file

    path = Path(root) / MANIFEST
    return sha256_file(path) if path.is_file() else None


def row_variant(row: str) -> str:
    """The ``model.variant`` a table row trains."""
    return next(o.split("=", 1)[1] for o in row_overrides(row) if o.startswith("model.variant="))


def _uses_teacher(row: str) -> bool:
    from dsnet_trainer.models.dsnet import get_variant

    return get_variant(row_variant(row)).uses_teacher


def row_teacher(row: str, teachers: dict) -> str:
    """The SR teacher file a row trains with: B1/B2 their own option's (:data:`B_TEACHER_OPTIONS`),
    every other teacher row ``--teacher``; ``teachers`` maps ``teacher`` and the
    B_TEACHER_OPTIONS attributes to paths."""
    if row in B_TEACHER_OPTIONS:
        return teachers.get(B_TEACHER_OPTIONS[row][0]) or ""
    return teachers.get("teacher") or ""


def check_b_teachers(rows: list[str], teachers: dict) -> None:
    """Refuse a B1/B2 row without its teacher file, or with one that does not fit the design: a
    x2 teacher trained on the arms' degradation (``data.downsample: windowed_area``), recorded
    ``stage`` "untrained" for B2 and a trained stage for B1. One line naming the option."""
    for row in rows:
        if row not in B_TEACHER_OPTIONS:
            continue
        attr, option = B_TEACHER_OPTIONS[row]
        path = teachers.get(attr) or ""
        if not path:
            untrained = " -s stage1.epochs=0 -s stage2.epochs=0 -s export_from=srresnet" if row == "B2" else ""
            raise SystemExit(f"arm {row} needs {option} (a teacher file of dsnet pretrain-sr --config sr_tiny_x2"
                             f"{untrained})")
        if not Path(path).is_file():
            raise SystemExit(f"{option} {path}: no such file")
        from dsnet_trainer.errors import TrainerError
        from dsnet_trainer.models.teacher import read_teacher_file

        try:
            obj = read_teacher_file(Path(path))
        except TrainerError as exc:
            raise SystemExit(f"{option}: {exc}") from None
        scale, how, stage = obj["data"]["scale"], obj["data"].get("downsample"), obj.get("stage")
        if scale != 2 or how != "windowed_area":
            raise SystemExit(f"{option} {path}: arm {row} needs a x2 teacher trained on windowed 2x2 block means "
                             f"(data.scale 2, data.downsample windowed_area), got scale {scale}, downsample {how}")
        if (stage == "untrained") != (row == "B2"):
            raise SystemExit(f"{option} {path}: arm {row} needs {'an untrained' if row == 'B2' else 'a trained'} "
                             f"teacher, the file's stage is {stage!r}")


def check_truth_sets(rows: list[str], sets: list[str]) -> None:
    """Refuse ``-s`` overrides of the keys the truth-study arms set themselves (they come after
    the row's overrides and would silently turn one arm into another)."""
    keys = {o.split("=", 1)[0] for r in rows if r in STUDY_ARMS for o in STUDY_ARMS[r]}
    if any(r in B_TEACHER_OPTIONS for r in rows):
        keys.add("model.teacher")      # B1/B2 take theirs from --teacher-x2 / --teacher-untrained
    bad = sorted({x.split("=", 1)[0] for x in sets} & keys)
    if bad:
        raise SystemExit(f"-s {', '.join(bad)}: set by the truth-study arms themselves (STUDY_ARMS); "
                         "give lambda2 through --config, run other rows in another call")


def _refusal(name: str, row: str, info: dict | None, done: dict | None, want: dict,
             data: str | None, teacher: str | None) -> str | None:
    """Why the finished run ``name`` cannot stand in one table with this call (another resolved
    config, sample build or SR teacher), or None. A digest the run did not record is not compared."""
    diff = [] if done is None else _differences(relevant(done), relevant(want))
    info = info or {}
    had_data, had_teacher = info.get("data_manifest_sha256"), info.get("teacher_weights_sha256")
    if had_data and data and had_data != data:
        diff.append(f"sample build (manifest sha256): {had_data[:12]}... there, {data[:12]}... here")
    if _uses_teacher(row) and had_teacher and teacher and had_teacher != teacher:
        diff.append(f"SR teacher (weights sha256): {had_teacher[:12]}... there, {teacher[:12]}... here")
    if not diff:
        return None
    return (f"run {name} was trained with another config than this call gives ({'; '.join(diff[:3])}"
            f"{'; ...' if len(diff) > 3 else ''}): use another --out (and --record) for another schedule, "
            "build or teacher, so one table never mixes them")


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} here")
    return out


def _validation_summary(run_dir: Path) -> dict:
    """From a run's metrics.jsonl: the validation Dice history, the selection score of best.pt
    (the best window score: the trainer keeps the maximum) and its epoch."""
    epochs = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
              if r.get("phase") == "epoch"]
    scores = [r["select_score"] for r in epochs if r.get("select_score") is not None]
    return {"val_dice_history": [[r["epoch"], r["val_dice"]] for r in epochs if r.get("val_dice") is not None],
            "select_score": max(scores) if scores else None,
            "selected_epoch": epochs[-1].get("selected_epoch") if epochs else None}


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


def clustered_interval(diffs, clusters, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired per-crop ``diffs`` and its two-sided ``level`` interval with crops
    clustered (by background patient, the truth study of docs/TRAINING.md): the cluster-robust
    (CR1) standard error of a mean, ``mean = sum(d_c) / sum(n_c)``,
    ``var = G / (G - 1) * sum((d_c - mean * n_c)^2) / sum(n_c)^2`` over the G clusters (d_c the sum
    of cluster c's differences, n_c its size), and a t quantile with G - 1 degrees of freedom.
    With one crop per cluster it is the plain t interval; with equal cluster sizes, the t interval
    of the cluster means. Fewer than 2 clusters: (mean, nan, nan). Raises ValueError when the
    lengths differ or a difference is not finite."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    c = np.asarray(clusters)
    if d.ndim != 1 or c.shape != d.shape:
        raise ValueError(f"diffs {d.shape} and clusters {c.shape} must be two 1-D arrays of one length")
    if not np.isfinite(d).all():
        raise ValueError("diffs must be finite")
    if d.size == 0:
        return math.nan, math.nan, math.nan
    _, index = np.unique(c, return_inverse=True)
    sums = np.bincount(index, weights=d)
    sizes = np.bincount(index).astype(np.float64)
    g = sums.size
    mean = float(sums.sum() / sizes.sum())
    if g < 2:
        return mean, math.nan, math.nan
    var = g / (g - 1) * float(((sums - mean * sizes) ** 2).sum()) / float(sizes.sum()) ** 2
    half = float(stats.t.ppf(0.5 + level / 2, g - 1) * math.sqrt(var))
    return mean, mean - half, mean + half


#: The collapse rule of the truth study (docs/TRAINING.md): a run whose selected validation Dice is
#: below COLLAPSE_FLOOR, or more than COLLAPSE_MARGIN below the median of its arm's other seeds.
COLLAPSE_FLOOR = 0.80
COLLAPSE_MARGIN = 0.05


def collapsed_runs(select: dict[str, dict[str, float]], *, floor: float = COLLAPSE_FLOOR,
                   margin: float = COLLAPSE_MARGIN) -> dict[str, list[str]]:
    """``{arm: [collapsed run names]}`` for ``select`` = ``{arm: {run name: selected val Dice}}``.

    A run has collapsed when its selected validation Dice is below ``floor`` or more than
    ``margin`` below the median of the *other* seeds of its arm (an arm of one run is judged by the
    floor alone); a missing (None/NaN) score counts as collapsed. Such runs are reported on their
    own line and left out of the arm's means, never averaged in silently."""
    out: dict[str, list[str]] = {}
    for arm, runs in select.items():
        bad = []
        for name, score in runs.items():
            v = math.nan if score is None else float(score)
            others = [float(x) for n, x in runs.items() if n != name and x is not None and math.isfinite(float(x))]
            if not math.isfinite(v) or v < floor or (others and v < float(np.median(others)) - margin):
                bad.append(name)
        if bad:
            out[arm] = sorted(bad)
    return out


def summarise(runs: dict[str, list[Path]], select: dict[str, list[float]] | None = None) -> dict:
    """Statistics of the evaluated runs ``{row: [eval folders, one per seed]}`` (see the module doc);
    ``select``: per row, each seed's selection score (mean validation Dice of its selection window)."""
    per_row: dict[str, dict[str, float]] = {}   # row -> crop -> Dice averaged over seeds
    seed_means: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    seen: dict[str, Path] = {}   # crop -> the first folder that gave its ground-truth area
    for row, folders in runs.items():
        crops = [_read_per_crop(f) for f in folders]
        ids = sorted(crops[0])   # sorted: sums in one order, so the tables are byte-identical on rebuild
        if any(set(c) != set(ids) for c in crops):
            raise SystemExit(f"row {row}: its seeds were evaluated on different crops")
        seed_means[row] = [float(np.mean([c[i][0] for i in ids])) for c in crops]
        per_row[row] = {i: float(np.mean([c[i][0] for c in crops])) for i in ids}
        for folder, c in zip(folders, crops):
            for i, v in c.items():
                if i in sizes and sizes[i] != v[1]:
                    raise SystemExit(
                        f"{folder} and {seen[i]} were evaluated on different ground truth (crop {i}: "
                        f"{v[1]} vs {sizes[i]} px): runs of different sample builds; keep each build in its own "
                        "--out and --record")
                sizes[i], seen[i] = v[1], folder
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
        sel = [v for v in (select or {}).get(row, []) if v is not None]
        entry = {"n_seeds": len(sm), "dice_seed_means": sm, "dice_mean": float(np.mean(sm)),
                 "val_select_mean": float(np.mean(sel)) if sel else None,
                 "val_select_std": float(np.std(sel, ddof=1)) if len(sel) > 1 else None,
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


#: Truth-scored per-crop columns the truth tables read (dsnet evaluate on a build with the truth).
TRUTH_PRIMARY, TRUTH_SECONDARY = "dice_true_tval", "sad_true"


def _read_truth_columns(eval_dir: Path) -> dict[str, tuple[float, float]] | None:
    """sample_id -> (primary, secondary) truth scores of one evaluation; None when its CSV has no
    truth columns (a build without the phantom's truth, or no val threshold)."""
    with open(eval_dir / "per_crop.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {TRUTH_PRIMARY, TRUTH_SECONDARY} <= set(reader.fieldnames or []):
            return None
        return {r["sample_id"]: (float(r[TRUTH_PRIMARY]), float(r[TRUTH_SECONDARY])) for r in reader}


def _seed_of(name: str) -> int:
    """The seed index of a run named ``ROW-sSEED``."""
    return int(name.rsplit("-s", 1)[1])


def truth_verdict(mean: float, lo: float, hi: float, *, margin: float = DECISION_MARGIN) -> str:
    """The design's decision words for one build's clustered interval of a paired difference
    (docs/TRAINING.md): "confirmed" when the mean is >= ``margin`` and the interval lies above 0,
    "refuted" when the interval lies within [-margin, +margin], else "undecided" (also without an
    interval). One build only: the claim's decision also needs the replication build."""
    if not all(math.isfinite(x) for x in (mean, lo, hi)):
        return "undecided"
    if mean >= margin and lo > 0:
        return "confirmed"
    if lo >= -margin and hi <= margin:
        return "refuted"
    return "undecided"


def summarise_truth(runs: dict[str, list[Path]], names: dict[str, list[str]], select: dict[str, list[float]],
                    patients: dict[str, str], *, reference: str = "unet",
                    pairs: tuple[tuple[str, str, str], ...] = TRUTH_PAIRS + TRUTH_B_PAIRS,
                    external: dict[str, str] | None = None) -> dict | None:
    """The truth study's statistics (docs/TRAINING.md), or None unless every run's evaluation has
    the truth columns: per row, the collapsed runs (:func:`collapsed_runs` on the selection
    scores) apart; over the others, the seed means of the primary endpoint (Dice against the true
    mask at the label-chosen val threshold) and of SAD against the true fraction; and, per row,
    the paired per-crop difference to ``reference`` (each averaged over its kept seeds) with the
    95 % interval clustered by background patient (:func:`clustered_interval`; ``patients``:
    sample_id -> patient).

    ``pairs``: the design's comparisons ``(arm, reference, role)`` (:data:`TRUTH_PAIRS`,
    :data:`TRUTH_B_PAIRS`), each
    made when both rows are there, into ``out["comparisons"]``: the paired per-crop difference of
    both endpoints with the clustered interval, the 95 % t interval on the seed means (arms paired
    by seed index, kept seeds of both only) and, for the deciding pairs, :func:`truth_verdict` on
    the primary endpoint ("unstable" when either arm has more than one collapsed seed).

    ``external``: rows made by another tool (the nnU-Net row: ``dsnet evaluate --predictions``
    reports, one per repeated run) -> the row it is compared with (``"peer (reported)"``, never a
    verdict). An external row is part of the truth tables only when its reports have the truth
    columns (else it is left out of them, the other rows unchanged); it has no seeds to pair and no
    selection score, so it is never judged by the collapse rule, and its comparison has the
    clustered per-crop interval only."""
    external = {row: ref for row, ref in (external or {}).items() if row in runs}
    for row in list(external):
        if any(_read_truth_columns(f) is None for f in runs[row]):
            runs = {r: v for r, v in runs.items() if r != row}
            del external[row]
    names = {**names, **{row: [f"{row} run {k}" for k in range(len(runs[row]))] for row in external}}
    cols = {row: [_read_truth_columns(f) for f in folders] for row, folders in runs.items()}
    if not cols or any(c is None for v in cols.values() for c in v):
        return None
    gone = collapsed_runs({row: dict(zip(names[row], select.get(row, [None] * len(names[row]))))
                           for row in runs if row not in external}, floor=COLLAPSE_FLOOR, margin=COLLAPSE_MARGIN)
    per_row: dict[str, dict[str, tuple[float, float]]] = {}
    seed_means: dict[str, dict[int, float]] = {}
    out: dict = {"primary": TRUTH_PRIMARY, "secondary": TRUTH_SECONDARY, "reference": reference,
                 "collapsed": gone, "rows": {}}
    for row, crops in cols.items():
        kept = [c for n, c in zip(names[row], crops) if n not in gone.get(row, [])]
        entry = {"n_seeds": len(crops), "n_kept": len(kept)}
        if kept:
            ids = sorted(kept[0])
            entry["primary_seed_means"] = [float(np.mean([c[i][0] for i in ids])) for c in kept]
            entry["secondary_seed_means"] = [float(np.mean([c[i][1] for i in ids])) for c in kept]
            kept_names = [n for n in names[row] if n not in gone.get(row, [])]
            if row not in external:
                seed_means[row] = {_seed_of(n): m for n, m in zip(kept_names, entry["primary_seed_means"])}
            else:
                entry["external"] = True
            per_row[row] = {i: (float(np.mean([c[i][0] for c in kept])), float(np.mean([c[i][1] for c in kept])))
                            for i in ids}
        out["rows"][row] = entry
    if reference in per_row:
        ids = sorted(per_row[reference])
        missing = sorted(i for i in ids if i not in patients)
        if missing:
            raise SystemExit(f"no patient for test crops {missing[:3]} in --data: evaluated on another build?")
        groups = [patients[i] for i in ids]
        for row, d in per_row.items():
            if row == reference or set(d) != set(ids):
                continue
            for k, key in ((0, "primary_vs_ref"), (1, "secondary_vs_ref")):
                diff = np.array([d[i][k] - per_row[reference][i][k] for i in ids])
                m, lo, hi = clustered_interval(diff, groups)
                out["rows"][row][key] = {"mean": m, "ci95": [lo, hi], "n_clusters": len(set(groups))}
    out["comparisons"] = []
    peer_role = "peer: another tool at its stated budget"
    for arm, ref, role in tuple(pairs) + tuple((row, ref, peer_role) for row, ref in external.items()):
        if arm not in out["rows"] or ref not in out["rows"]:
            continue
        comp: dict = {"arm": arm, "reference": ref, "role": role}
        if len(gone.get(arm, [])) > 1 or len(gone.get(ref, [])) > 1:
            comp["verdict"] = "unstable"   # the design: more than one collapsed seed gets no decision
        if arm in per_row and ref in per_row and set(per_row[arm]) == set(per_row[ref]):
            ids = sorted(per_row[ref])
            missing = sorted(i for i in ids if i not in patients)
            if missing:
                raise SystemExit(f"no patient for test crops {missing[:3]} in --data: evaluated on another build?")
            groups = [patients[i] for i in ids]
            for k, key in ((0, "primary"), (1, "secondary")):
                m, lo, hi = clustered_interval([per_row[arm][i][k] - per_row[ref][i][k] for i in ids], groups)
                comp[key] = {"mean": m, "ci95": [lo, hi], "n_clusters": len(set(groups))}
            if arm in seed_means and ref in seed_means:   # an external row has no seeds to pair
                common = sorted(set(seed_means[arm]) & set(seed_means[ref]))
                m, lo, hi = t_interval(np.array([seed_means[arm][s] - seed_means[ref][s] for s in common]))
                comp["seed_means"] = {"mean": m, "ci95": [lo, hi], "seeds": common}
            if role.startswith("decides") and "verdict" not in comp:
                comp["verdict"] = truth_verdict(*[comp["primary"]["mean"], *comp["primary"]["ci95"]])
        comp.setdefault("verdict", "undecided" if role.startswith("decides")
                        else "peer (reported)" if role == peer_role else "bound (reported)")
        out["comparisons"].append(comp)
    return out


def format_truth_tables(truth: dict) -> str:
    """Markdown of :func:`summarise_truth`: one line per row, collapsed runs on their own lines."""
    lines = ["### Scored against the phantom's truth", "",
             f"Primary: Dice against the true mask at the val threshold chosen against the label (`{truth['primary']}`); "
             f"secondary: SAD against the true fraction (`{truth['secondary']}`). Differences: per test crop, row minus "
             f"{truth['reference']} (each averaged over its kept seeds), 95 % interval clustered by background patient.",
             "", "| row | seeds kept | Dice(true) mean over seeds | vs reference (95 % CI, clustered) | SAD(true), px per crop | "
             "SAD vs reference (95 % CI) |", "|---|---|---|---|---|---|"]
    for row, e in truth["rows"].items():
        if not e["n_kept"]:
            lines.append(f"| {row} | 0/{e['n_seeds']} | - | - | - | - |")
            continue
        if e.get("external"):
            seeds = f"{e['n_seeds']} run{'s' if e['n_seeds'] > 1 else ''} (no seeds)"
        else:
            seeds = f"{e['n_kept']}/{e['n_seeds']}"
        cells = []
        for key, signed in (("primary_vs_ref", True), ("secondary_vs_ref", False)):
            v = e.get(key)
            fmt = (lambda x: _pp(x, True)) if signed else (lambda x: f"{x:+.2f}")
            cells.append("-" if v is None else f"{fmt(v['mean'])} [{fmt(v['ci95'][0])}, {fmt(v['ci95'][1])}]")
        lines.append(f"| {row} | {seeds} | {_pp(float(np.mean(e['primary_seed_means'])))} | "
                     f"{cells[0]} | {float(np.mean(e['secondary_seed_means'])):.2f} | {cells[1]} |")
    lines.append("")
    for row, runs in sorted(truth["collapsed"].items()):
        lines.append(f"Collapsed (left out of {row}'s means by the written rule): {', '.join(runs)}.")
    if truth["collapsed"]:
        lines.append("")
    if truth.get("comparisons"):
        lines += ["#### The design's comparisons (docs/TRAINING.md)", "",
                  "Per test crop, arm minus reference (each averaged over its kept seeds), 95 % interval clustered "
                  "by background patient; beside it the 95 % t interval on the seed means (paired by seed index). "
                  f"Verdict on this build alone (confirmed: >= +{100 * DECISION_MARGIN:.0f} Dice and the interval "
                  f"above 0; refuted: the interval within ±{100 * DECISION_MARGIN:.0f}); a claim also needs the "
                  "replication build.", "",
                  "| comparison | role | Dice(true) diff (95 % CI, clustered) | seed means diff (95 % CI, seeds) | "
                  "SAD(true) diff, px (95 % CI) | verdict (this build) |", "|---|---|---|---|---|---|"]
        for c in truth["comparisons"]:
            cells = []
            for key, fmt in (("primary", lambda x: _pp(x, True)), ("seed_means", lambda x: _pp(x, True)),
                             ("secondary", lambda x: f"{x:+.2f}" if math.isfinite(x) else "-")):
                v = c.get(key)
                cell = "-" if v is None else f"{fmt(v['mean'])} [{fmt(v['ci95'][0])}, {fmt(v['ci95'][1])}]"
                if key == "seed_means" and v is not None:
                    cell += f" ({len(v['seeds'])})"
                cells.append(cell)
            lines.append(f"| {c['arm']} − {c['reference']} | {c['role']} | {cells[0]} | {cells[1]} | {cells[2]} | "
                         f"{c['verdict']} |")
        lines.append("")
    return "\n".join(lines)


#: The record's copy of the test crops' background patients (the truth table's clusters), so that
#: ``--no-train`` rebuilds the truth table from the committed record alone, without the build.
PATIENTS_FILE = "crop_patients.csv"


def crop_patients(data: str, record: Path | None = None) -> dict[str, str]:
    """sample_id -> patient of every test-split sample shard under ``data`` (the clusters of the truth study).
    With a ``record`` folder the map is also written there (``crop_patients.csv``, sorted, only when
    it changed) and read back from it when ``data`` holds no shards (a record rebuilt alone)."""
    import csv
    import io

    from softmask_builder.core import atomic
    from softmask_builder.formats.shards import open_shard, parse_shard_name

    out: dict[str, str] = {}
    for path in sorted(Path(data).glob("*.h5")):
        name = parse_shard_name(path.name)
        if name is None or name.split != "test":  # the tables score the test split only
            continue
        with open_shard(path) as shard:
            if shard.kind == "samples":
                out.update(zip(shard.sample_ids, (str(p) for p in shard.meta_column("patient"))))
    if record is None:
        return out
    saved = Path(record) / PATIENTS_FILE
    if not out:
        if saved.is_file():
            with saved.open(newline="", encoding="utf-8") as fh:
                return {r["sample_id"]: r["patient"] for r in csv.DictReader(fh)}
        return out
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sample_id", "patient"])
    w.writerows(sorted(out.items()))
    if not saved.is_file() or saved.read_text(encoding="utf-8") != buf.getvalue():
        atomic.write_text(saved, buf.getvalue())
    return out


def choose_l1_default(stats: dict) -> dict | None:
    """The written rule for the Soft Mask L1 default (docs/TRAINING.md): among the study cells,
    the highest mean validation Dice of the selection (never test); cells within one seed std of
    that best cell count as ties, and a tie goes to the paper's lambda2 = 100, pixel_mean."""
    cells = {r: e for r, e in stats["rows"].items() if _CELL.match(r) and e.get("val_select_mean") is not None}
    if not cells:
        return None
    best = max(cells, key=lambda r: cells[r]["val_select_mean"])
    margin = cells[best].get("val_select_std") or 0.0
    ties = sorted(r for r, e in cells.items() if e["val_select_mean"] >= cells[best]["val_select_mean"] - margin)
    chosen = PAPER_L1_CELL if PAPER_L1_CELL in ties else best
    return {"chosen": chosen, "best": best, "ties": ties, "margin": margin,
            "rule": "highest mean validation Dice; within one seed std of it = tie; a tie goes to "
                    "lambda2 = 100, pixel_mean"}


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
    cells = [r for r in stats["rows"] if _CELL.match(r)]
    if cells:
        groups.append(("Soft Mask L1 study (lambda2 x reduction)", ["drtm", *cells]))
    arms = [r for r in TRUTH_ARMS if r in stats["rows"]]
    if arms:
        groups.append(("Truth study arms A (scored against the label; the truth table below decides)", ["unet", *arms]))
    arms_b = [r for r in TRUTH_B_ARMS if r in stats["rows"]]
    if arms_b:
        groups.append(("Truth study arms B (input shrunk x2; scored against the label; the truth table below decides)",
                       ["unet", *arms_b]))
    extra = [r for r in stats["rows"] if r not in set(TABLE_III + TABLE_IV + TABLE_V) and not _CELL.match(r)
             and r not in STUDY_ARMS]
    if extra:
        groups.append(("External baselines", ["unet", *extra]))
    for title, rows in groups:
        rows = [r for r in rows if r in stats["rows"]]
        if not rows:
            continue
        lines += [f"### {title}", "", "| row | seeds | Dice mean ± std over seeds | vs U-Net (95 % CI) | "
                  "better/worse | vs backbone (95 % CI) | Dice small half | Dice large half | val Dice (selection) |",
                  "|---|---|---|---|---|---|---|---|---|"]
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
            vs = e.get("val_select_mean")
            val = "-" if vs is None else (_pp(vs) + ("" if e.get("val_select_std") is None
                                                     else f" ± {_pp(e['val_select_std'])}"))
            lines.append(f"| {r} | {e['n_seeds']} | {_pp(e['dice_mean'])} ± {std} | {cells[0]} | {bw} | {cells[1]} | "
                         f"{_pp(e['dice_small'])} | {_pp(e['dice_large'])} | {val} |")
        lines.append("")
        if title.startswith("Soft Mask L1") and stats.get("l1_default"):
            d = stats["l1_default"]
            lines += [f"Default by the written rule ({d['rule']}): **{d['chosen']}** (best on validation: "
                      f"{d['best']}; ties: {', '.join(d['ties'])}).", ""]
    for digest, names in sorted(stats.get("teachers", {}).items()):
        what = ("SR teacher not recorded (trained before runs recorded the teacher's weights digest)"
                if digest == "not recorded" else f"SR teacher weights sha256 {digest}")
        lines.append(f"{what}: {len(names)} runs ({', '.join(names)}).")
    if stats.get("teachers"):
        lines.append("")
    total = sum(times.values())
    lines.append(f"Wall time of the runs measured in this folder: {total / 3600:.2f} h over {len(times)} runs "
                 "(runs skipped as finished keep the time recorded when they ran).")
    return "\n".join(lines) + "\n"


def _finished(run_dir: Path, record: Path | None, name: str) -> Path | None:
    """The folder holding a finished run's per_crop.csv and metrics.json, or None."""
    if (run_dir / "eval-test" / "metrics.json").is_file():
        return run_dir / "eval-test"
    if record is not None and (record / name / "metrics.json").is_file():
        return record / name
    return None


def _run_info(run_dir: Path, record: Path | None, name: str) -> dict | None:
    for folder in (run_dir, None if record is None else record / name):
        if folder is not None and (folder / "table_run.json").is_file():
            return json.loads((folder / "table_run.json").read_text(encoding="utf-8"))
    return None


def train_and_evaluate(name: str, row: str, seed: int, args_dict: dict) -> dict:
    """Train and evaluate one (row, seed) into ``OUT/name``; write ``table_run.json``; return it.
    A module-level function so that ``--jobs`` can run it in a spawned process."""
    from dsnet_trainer.config import load_config
    from dsnet_trainer.evaluate import evaluate_checkpoint
    from dsnet_trainer.seg_config import SegConfig
    from dsnet_trainer.train_seg import train_seg

    out = Path(args_dict["out"])
    run_dir = out / name
    t0 = time.monotonic()
    overrides = [*row_overrides(row), f"data.root={args_dict['data']}", f"out={run_dir}",
                 f"loop.seed={seed}", "loop.progress=false", *args_dict["sets"]]
    teacher = row_teacher(row, args_dict)
    if teacher:
        overrides.append(f"model.teacher={teacher}")
    cfg = load_config(SegConfig, args_dict["config"], overrides)
    print(f"[tables] {name}: training", file=sys.stderr, flush=True)
    train_seg(cfg, command=" ".join(args_dict["argv"]),
              log=lambda m: print(f"[tables] {name}: {m}", file=sys.stderr, flush=True))
    evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", out=run_dir / "eval-test", data=args_dict["data"],
                        name=name, n_preview=2)
    from dsnet_trainer.config import to_dict

    info = {"row": row, "seed": seed, "config": args_dict["config"], "sets": _significant(args_dict["sets"]),
            "effective": effective_config(to_dict(cfg)),
            "wall_s": round(time.monotonic() - t0, 1), **_validation_summary(run_dir)}
    info["data_manifest_sha256"] = data_digest(args_dict["data"])
    if _uses_teacher(row):
        info["teacher_weights_sha256"] = teacher_digest(teacher)
    _write_run_info(run_dir, info)
    return info


def _write_run_info(run_dir: Path, info: dict) -> None:
    prov = run_dir / "run_info.json"
    if prov.is_file():
        p = json.loads(prov.read_text(encoding="utf-8"))
        info.update({k: p.get(k) for k in ("git_commit", "git_dirty", "versions", "started_utc")})
    tmp = run_dir / "table_run.json.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "table_run.json")


def _record(run_dir: Path, record: Path, name: str) -> None:
    dest = record / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        src = (run_dir / "eval-test" / f) if f != "table_run.json" else (run_dir / f)
        if not src.is_file():
            continue
        tmp = dest / (f + ".tmp")
        if f == "per_crop.csv":   # the columns the tables and a reader need, not the whole report
            with open(src, newline="", encoding="utf-8") as fi, open(tmp, "w", newline="", encoding="utf-8") as fo:
                reader = csv.DictReader(fi)
                cols = [c for c in RECORD_COLUMNS if c in (reader.fieldnames or [])]
                writer = csv.DictWriter(fo, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
                writer.writeheader()
                writer.writerows(reader)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest / f)


def _run_parallel(todo: list[tuple[str, str, int]], jobs: int, argv: list[str], out: Path,
                  record: Path | None, deadline: float = math.inf) -> None:
    """Train ``todo`` with ``jobs`` child processes of this script (``--one ROW@SEED``), in order."""
    import subprocess

    base = [sys.executable, str(Path(__file__).resolve()), *argv, "--no-verify"]
    pending, running, failed = list(todo), {}, []
    while pending or running:
        if pending and time.monotonic() > deadline:
            print(f"[tables] --stop-after reached: {len(pending)} runs not started", file=sys.stderr)
            pending = []
        while pending and len(running) < jobs:
            name, row, seed = pending.pop(0)
            running[name] = subprocess.Popen([*base, "--one", f"{row}@{seed}"])
        time.sleep(0.2)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                failed.append(name)
            elif record is not None:
                _record(out / name, record, name)
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)} (their logs are above; finished runs are kept)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="sample build (make lnsm N=1500 for the LNSM-size tables)")
    ap.add_argument("--teacher", default="", help="SR teacher.pt (needed by every DRTM row)")
    ap.add_argument("--out", required=True, help="folder of the runs and tables")
    ap.add_argument("--config", default="seg_tiny")
    ap.add_argument("--rows", default=",".join(TABLE_III + TABLE_IV + TABLE_V),
                    help="comma-separated variants and study cells VARIANT.l1wW.REDUCTION")
    ap.add_argument("--teacher-x2", default="",
                    help="arm B1's x2 SR teacher.pt (dsnet pretrain-sr --config sr_tiny_x2)")
    ap.add_argument("--teacher-untrained", default="",
                    help="arm B2's untrained x2 teacher.pt (the same, -s stage1.epochs=0 -s stage2.epochs=0 "
                         "-s export_from=srresnet)")
    ap.add_argument("--study", choices=["l1", "truth", "truth-b"], action="append", default=[],
                    help="add a study's rows (l1: drtm_soft x lambda2 1, 10, 100 x pixel_mean, crop_band; "
                         "truth: the truth study's arms A0-A4; truth-b: its arms B0-B3 (B1 needs --teacher-x2, "
                         "B2 --teacher-untrained); --seeds seeds each arm)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the core rows (U-Net ... DSNet)")
    ap.add_argument("--extra-seeds", type=int, default=2, help="seeds of the other rows and study cells")
    ap.add_argument("--seeds-b", type=int, default=None, help="seeds of the truth study's arms B (default: --seeds)")
    ap.add_argument("-s", "--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (separate processes)")
    ap.add_argument("--record", default="", help="folder (to commit) for each finished run's small files and the tables")
    ap.add_argument("--no-train", action="store_true", help="only summarise finished runs; list the missing ones")
    ap.add_argument("--nnunet", action="append", default=[], help="`dsnet evaluate --predictions` report folder")
    ap.add_argument("--nnunet-label", default="nnunet_2d",
                    help="row name of the --nnunet reports in the tables, e.g. one that states its budget: "
                         "'nnunet_2d 3810 steps (1.5 %% of default)'")
    ap.add_argument("--no-verify", action="store_true", help="skip the dataset check")
    ap.add_argument("--stop-after", type=float, default=0.0,
                    help="start no new run after this many seconds (runs in flight finish; 0 = no limit)")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: one ROW@SEED of --jobs
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = Path(args.record) if args.record else None
    if args.one:
        row, seed = args.one.rsplit("@", 1)
        train_and_evaluate(f"{row}-s{seed}", row, int(seed), {
            "out": str(out), "data": args.data, "teacher": args.teacher, "teacher_x2": args.teacher_x2,
            "teacher_untrained": args.teacher_untrained, "config": args.config,
            "sets": list(args.sets), "argv": ["scripts/run_tables.py", *argv]})
        return 0
    rows = [r for r in args.rows.split(",") if r]
    for study in args.study:
        more = {"l1": L1_STUDY, "truth": list(TRUTH_ARMS), "truth-b": list(TRUTH_B_ARMS)}[study]
        rows += [c for c in more if c not in rows]
    for r in rows:
        row_overrides(r)
    check_truth_sets(rows, args.sets)
    teacher_files = {"teacher": args.teacher, "teacher_x2": args.teacher_x2,
                     "teacher_untrained": args.teacher_untrained}
    if not args.no_train:  # summarising finished runs needs no teacher file
        check_b_teachers(rows, teacher_files)
    plan = plan_runs(rows, args.seeds, args.extra_seeds, args.seeds_b)
    sets = _significant(args.sets)
    todo: list[tuple[str, str, int]] = []
    my_teachers = {row: teacher_digest(row_teacher(row, teacher_files)) for row in rows if _uses_teacher(row)}
    my_data = data_digest(args.data)
    for row, seed in plan:
        name = f"{row}-s{seed}"
        info = _run_info(out / name, record, name)
        if _finished(out / name, record, name) is None:
            todo.append((name, row, seed))
        else:
            why = _refusal(name, row, info, _run_effective(out / name, info),
                           _row_effective(row, args.config, args.sets), my_data, my_teachers.get(row))
            if why:
                raise SystemExit(why)
            print(f"[tables] {name}: finished, skipped", file=sys.stderr)
    if todo and args.no_train:
        print(f"[tables] not finished ({len(todo)}): {', '.join(t[0] for t in todo)}", file=sys.stderr)
        todo = []
    if todo and not args.no_verify:
        from dsnet_trainer.dataset_check import check_dataset

        for note in check_dataset(args.data, kind="samples").notes:
            print(note, file=sys.stderr)
    args_dict = {"out": str(out), "data": args.data, **teacher_files, "config": args.config,
                 "sets": list(args.sets), "argv": ["scripts/run_tables.py", *argv]}
    deadline = time.monotonic() + args.stop_after if args.stop_after > 0 else math.inf
    if args.jobs == 1:
        for name, row, seed in todo:
            if time.monotonic() > deadline:
                print(f"[tables] --stop-after reached: {name} and later runs not started", file=sys.stderr)
                break
            train_and_evaluate(name, row, seed, args_dict)
            if record is not None:
                _record(out / name, record, name)
    elif todo:
        _run_parallel(todo, args.jobs, argv, out, record, deadline)
    runs: dict[str, list[Path]] = {}
    select: dict[str, list[float]] = {}
    names: dict[str, list[str]] = {}
    times: dict[str, float] = {}
    teachers: dict[str, list[str]] = {}
    legacy = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    for row, seed in plan:
        name = f"{row}-s{seed}"
        folder = _finished(out / name, record, name)
        if folder is None:
            continue
        if record is not None and folder.parent == out / name:
            _record(out / name, record, name)
        info = _run_info(out / name, record, name)
        if info is None and (out / name / "metrics.jsonl").is_file():
            # a run of an earlier version of this script: its overrides are taken to be this call's
            info = {"row": row, "seed": seed, "config": args.config, "sets": sets, "sets_assumed": True,
                    "effective": _run_effective(out / name, None),
                    "wall_s": legacy.get(name), **_validation_summary(out / name)}
            _write_run_info(out / name, info)
            if record is not None:
                _record(out / name, record, name)
        info = info or {}
        if _uses_teacher(row):
            teachers.setdefault(info.get("teacher_weights_sha256") or "not recorded", []).append(name)
        runs.setdefault(row, []).append(folder)
        names.setdefault(row, []).append(name)
        select.setdefault(row, []).append(info.get("select_score"))
        wall = info.get("wall_s") if info.get("wall_s") is not None else legacy.get(name)
        if wall is not None:
            times[name] = float(wall)
    for folder in args.nnunet:
        runs.setdefault(args.nnunet_label, []).append(Path(folder))
    if not runs:
        print("[tables] no finished run yet", file=sys.stderr)
        return 0
    stats = summarise(runs, select)
    stats["times_s"] = times
    stats["teachers"] = teachers
    stats["sets"] = sets
    stats["l1_default"] = choose_l1_default(stats)
    if args.nnunet:   # the external row's name (it may state its budget), so a record rebuilds under it
        stats["nnunet_label"] = args.nnunet_label
    md = format_tables(stats, times)
    own = {row: v for row, v in runs.items() if row in names}  # external rows (nnU-Net) have no seeds
    has_truth = bool(own) and all(_read_truth_columns(f) is not None for v in own.values() for f in v)
    # the nnU-Net row is compared with the U-Net row, or with A0 (the same U-Net, Dice only) without one
    peer_ref = "unet" if "unet" in own else "A0" if "A0" in own else None
    external = {args.nnunet_label: peer_ref} if args.nnunet and peer_ref else {}
    truth_runs = {**own, **{row: runs[row] for row in external}}
    truth = (summarise_truth(truth_runs, names, select, crop_patients(args.data, record), external=external)
             if has_truth else None)
    if truth is not None and any(row not in truth["rows"] for row in external):
        print(f"[tables] {args.nnunet_label}: left out of the truth table (its reports have no truth columns: "
              "another build, or no val predictions)", file=sys.stderr)
    if truth is not None:  # only when every run was evaluated on a build with the phantom's truth
        stats["truth"] = truth
        md += "\n" + format_truth_tables(truth)
    for folder in [out] + ([record] if record is not None else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tables.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
        (folder / "TABLES.md").write_text(md)
    print(md)
    print(f"[tables] written {out / 'TABLES.md'} and tables.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
