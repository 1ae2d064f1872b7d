"""`dsnet` command line: thin wrappers over the typed API.

torch is imported inside each command, so ``dsnet --help`` stays fast. Every error the toolkit
raises on purpose (bad file, option, config key, checkpoint, device) becomes a one-line
``Error: ...`` with the shared exit-code table's status (2 bad input, 3 dataset fails
verification, 5 I/O error, 1 other), never a traceback.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dsnet")
def main() -> None:
    """Train, evaluate and run DSNet and its SR teacher (SRResNet + adversarial fine-tuning) on Soft Mask shards.

    Exit status: 0 ok, 1 internal error, 2 usage or bad input, 3 dataset fails verification,
    5 I/O error."""
    from softmask_builder.core.executor import TRAINING_MALLOC_TUNING, keep_freed_memory

    # Reuse freed activations instead of faulting in fresh pages every step (1.1-1.2x a CPU step:
    # benchmarks/bench_teacher_mode.py --malloc both).
    keep_freed_memory(**TRAINING_MALLOC_TUNING)


def _overrides(sets: tuple[str, ...], **options: object) -> list[str]:
    """``--set`` strings followed by dedicated options (which win), as ``key=value`` strings."""
    out = list(sets)
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"{key}={value}")
    return out


@main.command("pretrain-sr")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(),
              help="Slice-shard folder or file (repeatable). Uses its 'train' split; 'val' split for validation.")
@click.option("--val-data", multiple=True, type=click.Path(),
              help="Validation slice shards (any split) instead of --data's 'val' split.")
@click.option("--out", required=True, type=click.Path(), help="Run folder (created).")
@click.option("--config", "config", default="sr_tiny", show_default=True,
              help="YAML/JSON file, or a packaged config: sr_tiny (CPU: 67 s for `make pretrain-sr` on the sample, "
                   "2 vCPUs), sr_tiny_x2 (the truth study's x2 teacher, arm B1: 787 s on one shared core), "
                   "sr_paper (GPU).")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE",
              help="Config override, e.g. -s stage1.epochs=5 -s data.hr_patch_px=64 (repeatable; never evaluated).")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="auto: continue from the run folder's last checkpoint if any; or a checkpoint file.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (overrides loop.device).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None,
              help="Mixed precision on CUDA (overrides loop.amp).")
@click.option("--workers", type=int, default=None, help="DataLoader workers (overrides loop.num_workers).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (overrides loop.num_threads).")
@click.option("--seed", type=int, default=None, help="RNG seed (loop.seed).")
@click.option("--progress/--no-progress", default=None, help="Per-step progress bar (loop.progress).")
@click.option("--train-patients-from", default=None, type=click.Path(),
              help="Sample-shard folder (LNSM): train only on slices of patients of its train split, so the "
                   "teacher never sees a segmentation val/test patient (data.train_patients_from).")
@click.option("--no-verify", is_flag=True, default=False,
              help="Skip the dataset check of --data folders (manifest; hashes on first use); says so on stderr.")
def pretrain_sr_cmd(data, val_data, out, config, sets, resume, device, amp, workers, threads, seed, progress,
                    train_patients_from, no_verify):
    """Train the x4 SR teacher on CT slice shards: SRResNet + adversarial fine-tuning, no VGG content loss.

    Stage 1 trains an SRResNet with a pixel loss; stage 2 fine-tunes it against a discriminator
    (pixel + adversarial loss; the paper's SRGAN VGG content loss needs a pretrained VGG, which is
    not used here). Writes OUT/teacher.pt (frozen generator for DSNet's DRTM, with the list of its
    training patients), OUT/report.md (PSNR/SSIM vs bicubic), per-stage checkpoints, metrics,
    curves and sample images. Run under `torchrun --nproc_per_node=N -m dsnet_trainer.cli
    pretrain-sr ...` for several GPUs.
    """
    import time

    from .cli_seg import check_data, echo_err, friendly

    @friendly
    def run():
        from .config import load_config
        from .sr import SRConfig, pretrain_sr

        overrides = _overrides(sets, **{"loop.device": device, "loop.amp": amp, "loop.num_workers": workers,
                                        "loop.num_threads": threads, "loop.seed": seed, "loop.progress": progress,
                                        "data.train_patients_from": train_patients_from})
        cfg = load_config(SRConfig, config, overrides)
        if int(os.environ.get("RANK", "0")) == 0:
            for d in list(data) + list(val_data or ()):
                check_data(d, kind="slices", no_verify=no_verify)
            if cfg.data.train_patients_from:
                check_data(cfg.data.train_patients_from, kind="samples", no_verify=no_verify,
                           option="--train-patients-from")
        return pretrain_sr(cfg, data=list(data), out=out, resume=resume,
                           val_data=list(val_data) if val_data else None, command=" ".join(sys.argv))

    from .sr import format_report

    t0 = time.monotonic()
    result = run()
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(format_report(result.report), nl=False)
        click.echo(f"teacher: {result.teacher_path}")
        click.echo(f"run folder: {result.out}")
        from softmask_builder.cli.summaries import hints_on, tool

        nxt = (f"; next: {tool('dsnet')} train --teacher {result.teacher_path} --data build/lnsm" if hints_on() else "")
        echo_err(f"done in {time.monotonic() - t0:.0f} s: teacher {result.teacher_path}{nxt}")


@main.command("teacher-info")
@click.argument("teacher", type=click.Path())
def teacher_info_cmd(teacher):
    """Print what an exported SR teacher file holds (scale, HU window, feature channels, metrics,
    number of training patients per source) as JSON."""
    import json

    from .cli_seg import friendly
    from .models.teacher import teacher_summary

    click.echo(json.dumps(friendly(teacher_summary)(teacher), indent=1, sort_keys=True))


# DSNet commands (train, evaluate, compare, predict, export) live in cli_seg.py.
from .cli_seg import register as _register_seg  # noqa: E402

_register_seg(main)


if __name__ == "__main__":  # pragma: no cover
    main()
