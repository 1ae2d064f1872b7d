"""`dsnet train | evaluate | compare | predict | export`: thin wrappers over the segmentation API.

Wire into the ``dsnet`` group with ``register(main)``. Each command parses options, calls one
typed function (:func:`~dsnet_trainer.train_seg.train_seg`, :func:`~dsnet_trainer.evaluate.evaluate_checkpoint`,
:func:`~dsnet_trainer.evaluate.compare_runs`, :mod:`~dsnet_trainer.predict`,
:func:`~dsnet_trainer.export.export_checkpoint`) and prints a summary. Project errors become a
one-line ``Error: ...`` and exit status 1 (no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from softmask_builder.errors import SoftMaskError

__all__ = ["register"]


def _friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SoftMaskError as exc:
            raise click.ClickException(str(exc)) from exc
    return wrapper


@click.command("train")
@click.option("--config", "config", default="seg_tiny", show_default=True,
              help="YAML/JSON file or packaged name (seg_tiny, seg_paper).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set model.variant=unet --set optim.epochs=3 (repeatable).")
@click.option("--variant", default=None, help="Shortcut for --set model.variant=NAME.")
@click.option("--data", default=None, help="Shortcut for --set data.root=PATH.")
@click.option("--teacher", default=None, help="Shortcut for --set model.teacher=PATH (SR teacher.pt).")
@click.option("--out", default=None, help="Shortcut for --set out=DIR.")
@click.option("--resume", default=None, help="auto (default in configs), none, or a checkpoint path.")
@click.option("--device", default=None, help="Shortcut for --set loop.device=DEV (auto, cpu, cuda, cuda:N).")
@_friendly
def train_cmd(config, overrides, variant, data, teacher, out, resume, device):
    """Train DSNet, the U-Net baseline or an ablation (model.variant) on sample shards."""
    from .config import load_config
    from .models.dsnet import get_variant
    from .train_seg import SegConfig, train_seg

    extra = [f"{k}={v}" for k, v in (("model.variant", variant), ("data.root", data), ("model.teacher", teacher),
                                      ("out", out), ("resume", resume), ("loop.device", device)) if v is not None]
    cfg = load_config(SegConfig, config, list(overrides) + extra)
    v = get_variant(cfg.model.variant)
    click.echo(f"training {v.name} ({v.row}) on {cfg.data.root} -> {cfg.out}")
    run = train_seg(cfg, command=" ".join(sys.argv))
    click.echo(f"done: {run} (checkpoints/best.pt, metrics.csv, curves.png)")


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="best.pt / last.pt of a run.")
@click.option("--data", default=None, help="Shard folder (default: the run's data.root).")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--val-split", default=None,
              help="Split used only to choose the threshold (default: the run's data.val_split; '' = none).")
@click.option("--out", default=None, help="Report folder (default: <run>/eval-<split>).")
@click.option("--name", default=None, help="Label of the run in tables (default: the run folder's name).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Crops per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--n-preview", default=6, show_default=True, type=click.IntRange(min=1),
              help="Crops shown in predictions.png.")
@_friendly
def evaluate_cmd(checkpoint, data, split, val_split, out, name, batch_size, device, n_preview):
    """Dice / SEN / PPV per crop (mean ± std) at 0.5 and at a validation-chosen threshold, the
    authors' +1 protocol, Soft Mask SAD/MSE; JSON + CSV + markdown + PNG."""
    from .evaluate import evaluate_checkpoint, format_table

    ckpt = Path(checkpoint)
    if out is None:
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        out = run / f"eval-{split}"
    report = evaluate_checkpoint(ckpt, out=out, data=data, split=split, val_split=val_split, batch_size=batch_size,
                                 device=device, n_preview=n_preview, name=name)
    click.echo(format_table([report]))
    click.echo(f"written: {out}/metrics.json, per_crop.csv, summary.md, predictions.png")


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
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
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
