"""`dsnet train | evaluate | compare | predict | export`: thin wrappers over the segmentation API.

Wire into the ``dsnet`` group with ``register(main)``. Each command parses options, calls one
typed function (:func:`~dsnet_trainer.train_seg.train_seg`, :func:`~dsnet_trainer.evaluate.evaluate_checkpoint`,
:func:`~dsnet_trainer.evaluate.compare_runs`, :mod:`~dsnet_trainer.predict`,
:func:`~dsnet_trainer.export.export_checkpoint`) and prints a summary. Project errors become a
one-line ``Error: ...`` and the shared exit-code table's status (no traceback): 2 for bad input
(option, config, file, checkpoint, dataset that does not match its manifest), 3 for a dataset that
fails verification, 5 for an I/O error, 1 for other trainer errors (e.g. a diverged run).
Machine-readable output goes to stdout; progress and the closing human summary to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from softmask_builder.errors import SoftMaskError
from softmask_builder.exitcodes import EXIT_INPUT, EXIT_INTERNAL, EXIT_IO, EXIT_OK, EXIT_VERIFY  # noqa: F401 (one table for both CLIs)

__all__ = ["register"]

#: The dataset check's opt-out, shared by every command that reads shards.
_no_verify_option = click.option(
    "--no-verify", is_flag=True, default=False,
    help="Skip the dataset check (manifest counts and sizes; hashes on first use); says so on stderr.")


class CliError(click.ClickException):
    """A one-line ``Error: ...`` with an exit code of the shared table."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_for(exc: BaseException) -> int:
    """Exit status of the shared table for an error raised by the toolkit."""
    from softmask_builder.errors import InputError

    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, (InputError, ValueError)):
        return EXIT_INPUT
    if isinstance(exc, OSError):
        return EXIT_IO
    return EXIT_INTERNAL


def friendly(fn):
    """Decorator: toolkit errors and I/O errors become one-line messages with the table's codes."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SoftMaskError as exc:
            raise CliError(str(exc), exit_code_for(exc)) from exc
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise CliError(f"I/O error on{where}: {exc.strerror or exc}", EXIT_IO) from exc
    return wrapper


_friendly = friendly


def echo_err(message: str) -> None:
    """A human line on stderr (progress, notes, the closing summary)."""
    click.echo(message, err=True)


def check_data(root, *, kind: str, no_verify: bool, option: str = "--data") -> None:
    """Run :func:`~dsnet_trainer.dataset_check.check_dataset` (or say on stderr that it was skipped)."""
    if no_verify:
        echo_err(f"dataset check skipped (--no-verify): {root} is used as found, unverified")
        return
    from .dataset_check import check_dataset

    for note in check_dataset(root, kind=kind, option=option).notes:
        echo_err(note)


def check_teacher(cfg, variant) -> None:
    """The SR teacher is named explicitly (``--teacher`` / ``model.teacher``), never found in the
    current folder by a default; a missing file names the folder it was looked for in. A teacher
    trained on phantom slices used on a real-source dataset gets a loud warning on stderr."""
    from .provenance import phantom_teacher_warning

    if not variant.uses_teacher:
        return
    hint = ("`make pretrain-sr` writes runs/sr-sr_tiny/teacher.pt, `dsnet pretrain-sr --out DIR` writes "
            "DIR/teacher.pt; or train a variant without a teacher (--variant unet)")
    if not cfg.model.teacher:
        raise CliError(f"variant {variant.name} needs an SR teacher: pass --teacher PATH ({hint})", EXIT_INPUT)
    path = Path(cfg.model.teacher)
    if not path.is_file():
        raise CliError(f"--teacher {path}: no such file (looked for {path.resolve()}); {hint}", EXIT_INPUT)
    warning = phantom_teacher_warning(path, cfg.data.root)
    if warning:
        echo_err(warning)


@click.command("train")
@click.option("--config", "config", default="seg_tiny", show_default=True,
              help="YAML/JSON file or packaged name (seg_tiny: CPU, 3 min 40 s for `make train` on the sample, 2 vCPUs; seg_paper: GPU).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set model.variant=unet --set optim.epochs=3 (repeatable).")
@click.option("--variant", default=None, help="Table row to train (shortcut for --set model.variant=NAME).")
@click.option("--data", default=None, help="Sample-shard folder (shortcut for --set data.root=PATH).")
@click.option("--teacher", default=None,
              help="SR teacher.pt of `dsnet pretrain-sr` (shortcut for --set model.teacher=PATH); needed by the "
                   "variants that use one (`make pretrain-sr` writes runs/sr-sr_tiny/teacher.pt). Never guessed.")
@click.option("--out", default=None, help="Run folder (shortcut for --set out=DIR).")
@click.option("--resume", default=None, help="auto (the configs' default: continue from last.pt), none, or a checkpoint path.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (shortcut for --set loop.device=DEV).")
@click.option("--seed", type=int, default=None, help="RNG seed of weights, order and augmentation (loop.seed).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (loop.num_threads; 0 = torch's default).")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes (loop.num_workers).")
@click.option("--progress/--no-progress", default=None, help="Per-step progress bar (loop.progress).")
@_no_verify_option
@click.option("--allow-teacher-overlap", is_flag=True, default=False,
              help="Accept an SR teacher that saw validation/test patients (the paper's setting; recorded in "
                   "run_info.json). Sets model.allow_teacher_overlap=true.")
@friendly
def train_cmd(config, overrides, variant, data, teacher, out, resume, device, seed, threads, workers, progress,
              no_verify, allow_teacher_overlap):
    """Train DSNet, the U-Net baseline or an ablation (model.variant) on sample shards.

    Prints one line per epoch on stderr (validation Dice, the selected epoch so far, elapsed and
    remaining time) and a closing summary; the run folder's path goes to stdout.
    """
    import time

    from .config import load_config
    from .models.dsnet import get_variant
    from .train_seg import SegConfig, train_seg

    extra = [f"{k}={v}" for k, v in (("model.variant", variant), ("data.root", data), ("model.teacher", teacher),
                                      ("out", out), ("resume", resume), ("loop.device", device),
                                      ("loop.seed", seed), ("loop.num_threads", threads),
                                      ("loop.num_workers", workers)) if v is not None]
    if progress is not None:
        extra.append(f"loop.progress={'true' if progress else 'false'}")
    if allow_teacher_overlap:
        extra.append("model.allow_teacher_overlap=true")
    cfg = load_config(SegConfig, config, list(overrides) + extra)
    check_data(cfg.data.root, kind="samples", no_verify=no_verify, option="data.root")
    v = get_variant(cfg.model.variant)
    check_teacher(cfg, v)
    echo_err(f"training {v.name} ({v.row}) on {cfg.data.root} -> {cfg.out}")
    t0 = time.monotonic()
    run = train_seg(cfg, command=" ".join(sys.argv), log=echo_err)
    click.echo(str(run))
    from softmask_builder.cli.summaries import hints_on, tool

    nxt = f"; next: {tool('dsnet')} evaluate --checkpoint {run}/checkpoints/best.pt" if hints_on() else ""
    echo_err(f"done in {time.monotonic() - t0:.0f} s: {run} (checkpoints/best.pt, metrics.csv, curves.png){nxt}")


@click.command("evaluate")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="best.pt / last.pt of a `dsnet train` run (or use --predictions).")
@click.option("--predictions", default=None, type=click.Path(file_okay=False),
              help="Instead of a checkpoint: a folder of probability maps made by another tool (nnU-Net v2 "
                   "--save_probabilities .npz, or <sample_id>.npy), scored on the same crops. Needs --data.")
@click.option("--cases", default=None, type=click.Path(dir_okay=False),
              help="With --predictions: the export's cases.csv mapping case ids to sample ids "
                   "(default: PREDICTIONS/cases.csv if present).")
@click.option("--data", default=None, help="Shard folder (default: the run's data.root).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--val-split", default=None,
              help="Split used only to choose the threshold (default: the run's data.val_split; '' = none).")
@click.option("--out", default=None, help="Report folder (default: <run>/eval-<split>; <predictions>/eval-<split>).")
@click.option("--name", default=None, help="Label of the run in tables (default: the run folder's name).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Crops per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--n-preview", default=6, show_default=True, type=click.IntRange(min=1),
              help="Crops shown in predictions.png.")
@_no_verify_option
@click.option("--allow-teacher-overlap", is_flag=True, default=None,
              help="Accept a teacher that saw patients of --split (the paper's setting; recorded in metrics.json). "
                   "Default: the run's model.allow_teacher_overlap.")
@friendly
def evaluate_cmd(checkpoint, predictions, cases, data, split, val_split, out, name, batch_size, device, n_preview,
                 no_verify, allow_teacher_overlap):
    """Dice / SEN / PPV per crop (mean ± std) at 0.5 and at a validation-chosen threshold, the
    authors' +1 protocol, Soft Mask SAD/MSE; JSON + CSV + markdown + PNG.

    The table goes to stdout, the closing summary to stderr."""
    from .errors import InputError
    from .evaluate import evaluate_checkpoint, evaluate_predictions, format_table, format_truth_table

    if (checkpoint is None) == (predictions is None):
        raise InputError("give exactly one of --checkpoint (a trained run) or --predictions (a folder of "
                         "probability maps)")
    if predictions is not None:
        if data is None:
            raise InputError("--predictions needs --data (the shard folder the predictions were made from)")
        check_data(data, kind="samples", no_verify=no_verify)
        pred = Path(predictions)
        out = out or pred / f"eval-{split}"
        report = evaluate_predictions(pred, data=data, out=out, split=split,
                                      val_split="val" if val_split is None else val_split, cases=cases,
                                      name=name or pred.name, n_preview=n_preview)
    else:
        ckpt = Path(checkpoint)
        if out is None:
            run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
            out = run / f"eval-{split}"
        if data is not None:
            check_data(data, kind="samples", no_verify=no_verify)
        report = evaluate_checkpoint(ckpt, out=out, data=data, split=split, val_split=val_split,
                                     batch_size=batch_size, device=device, n_preview=n_preview, name=name,
                                     allow_teacher_overlap=allow_teacher_overlap,
                                     verify=None if data is not None else (
                                         lambda root: check_data(root, kind="samples", no_verify=no_verify,
                                                                 option="data.root")))
    click.echo(format_table([report]), nl=False)
    truth_table = format_truth_table([report])  # only for builds that carry a phantom's truth
    if truth_table:
        click.echo("\nScored against the phantom's truth (true_fraction >= 0.5):\n" + truth_table, nl=False)
    m = report["metrics"]["at_fixed"]["dice"]["mean"]
    dice = "n/a" if m is None else f"{100 * m:.2f}"
    echo_err(f"evaluated {report['name']} on {report['metrics']['n_crops']} {split} crops: Dice@0.5 {dice} %; "
             f"written: {out}/metrics.json, per_crop.csv, summary.md, predictions.png")


@click.command("compare")
@click.argument("reports", nargs=-1, required=True)
@click.option("--name", "names", multiple=True, help="Row label per report, in order (default: run names).")
@click.option("--out", default=None, help="Folder for compare.md and compare.csv.")
@_friendly
def compare_cmd(reports, names, out):
    """One table from several `dsnet evaluate` reports (folders or metrics.json files)."""
    from .evaluate import compare_runs

    md = compare_runs(list(reports), out=out, names=list(names) if names else None)
    click.echo(md)


@click.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="best.pt / last.pt of a run.")
@click.option("--input", "inputs", required=True, multiple=True,
              help="Sample shards (files or a folder of .h5) or a folder of .npy/.png/.dcm crops.")
@click.option("--out", required=True, help="Output folder.")
@click.option("--split", default=None, help="With shards: only this split.")
@click.option("--threshold", default=0.5, show_default=True, type=float, help="Binary mask threshold.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Crops per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_friendly
def predict_cmd(checkpoint, inputs, out, split, threshold, batch_size, device):
    """Soft Mask and binary mask for every crop of shards or of a folder of crop files."""
    from .predict import predict_folder, predict_shards

    paths = [Path(p) for p in inputs]
    crop_folder = len(paths) == 1 and paths[0].is_dir() and not any(paths[0].glob("*.h5"))
    if crop_folder:
        written = predict_folder(checkpoint, paths[0], out, threshold=threshold, batch_size=batch_size, device=device)
    else:
        written = predict_shards(checkpoint, paths, out, split=split, threshold=threshold, batch_size=batch_size,
                                 device=device)
    click.echo(f"wrote {len(written)} files to {out}")


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="best.pt / last.pt of a run.")
@click.option("--out", required=True, help="Output file (.pt for torchscript, .pt2 for exported).")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "exported"]), default="torchscript",
              show_default=True, help="torchscript (.pt, torch.jit.load) or exported (.pt2, torch.export.load).")
@click.option("--data", default=None, help="Shards whose crops are added to the eager-vs-exported check.")
@click.option("--atol", default=1e-5, show_default=True, type=float,
              help="Largest allowed |eager - exported| difference in the check.")
@_friendly
def export_cmd(checkpoint, out, fmt, data, atol):
    """TorchScript (or torch.export) module: HU crop in, (prob, Soft Mask) out; checked against eager."""
    from .export import export_checkpoint

    info = export_checkpoint(checkpoint, out, fmt=fmt, data=data, atol=atol)
    click.echo(json.dumps(info, indent=2))


def register(main: click.Group) -> None:
    """Add the segmentation commands to the ``dsnet`` group."""
    for cmd in (train_cmd, evaluate_cmd, compare_cmd, predict_cmd, export_cmd):
        main.add_command(cmd)
