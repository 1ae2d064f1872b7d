"""``dsnet pretrain-sr`` as a function: both stages, the validation report (bicubic vs SRResNet vs
SRGAN) and the export of the frozen teacher file; resumable at either stage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softmask_builder.core import atomic

from ..checkpoint import load_checkpoint
from ..engine import prepare_run_dir
from ..models.teacher import export_teacher
from ..runtime import (DistContext, Precision, barrier, init_distributed, seed_everything,
                       shutdown_distributed)
from ..sampling import EvalShardSampler, make_loader
from .config import SRConfig
from .data import SRData, build_sr_datasets
from .evaluation import evaluate_sr, format_report
from .stages import SRHooks, build_generator, run_stage1, run_stage2

__all__ = ["SRRunResult", "pretrain_sr"]


@dataclass
class SRRunResult:
    """What :func:`pretrain_sr` produced: the run folder, the teacher file and the report."""

    out: Path
    teacher_path: Path | None
    report: dict[str, Any]
    generator: nn.Module | None = None
    discriminator: nn.Module | None = None


def _resolve_resume(out: Path, resume: str | Path | None) -> tuple[int, Path | None]:
    """(stage to start at, checkpoint to resume it from)."""
    if resume is None or str(resume).strip().lower() in ("", "none", "no", "false"):
        return 1, None
    if str(resume).strip().lower() == "auto":
        s2 = out / "srgan" / "checkpoints" / "last.pt"
        s1 = out / "srresnet" / "checkpoints" / "last.pt"
        if s2.is_file():
            return 2, s2
        return (1, s1) if s1.is_file() else (1, None)
    path = Path(resume)
    ck = load_checkpoint(path, expect_kind=("sr-srresnet", "sr-srgan"))
    return (2 if ck["kind"] == "sr-srgan" else 1), path


def pretrain_sr(cfg: SRConfig, *, data: str | Path | Sequence[str | Path], out: str | Path,
                resume: str | Path | None = None, val_data: str | Path | Sequence[str | Path] | None = None,
                ctx: DistContext | None = None, hooks: SRHooks | None = None, command: str = "") -> SRRunResult:
    """Train the SR teacher (stage 1 SRResNet, stage 2 SRGAN), report PSNR/SSIM vs bicubic and
    export the frozen teacher to ``out/teacher.pt``.

    ``stage1.epochs=0``, ``stage2.epochs=0`` and ``export_from=srresnet`` export the generator's
    seeded random init (``loop.seed``), untrained, in the same file format: its ``stage`` (and the
    report's ``teacher``) is ``"untrained"`` (the truth study's arm B2).

    Parameters
    ----------
    cfg : SRConfig
    data : folder, file or list
        Slice shards (``kind="slices"``) -- see :func:`build_sr_datasets` for the splits used.
    out : folder
        Run folder (created). Rank 0 writes everything; other ranks only train.
    resume : ``None``, ``"auto"`` or a checkpoint path
        ``auto``: continue from ``out/srgan/checkpoints/last.pt`` if present, else from
        ``out/srresnet/checkpoints/last.pt`` if present, else start afresh. A path: a stage-1 or
        stage-2 checkpoint (its kind says which stage resumes).
    val_data : optional
        Validation slice shards (any split) instead of ``data``'s ``val`` split.
    ctx : DistContext, optional
        Made from the environment (``torchrun``) with ``cfg.loop.device`` when absent.
    hooks : SRHooks, optional

    Returns
    -------
    SRRunResult
        ``report``: ``{"bicubic": {psnr, ssim}, "srresnet": {...}, "srgan": {...}, "teacher": stage,
        "n_val_slices", "val_source", "scale", "shave_px"}`` (dB; SSIM in [0, 1]).

    Raises
    ------
    ShardError, ConfigError, CheckpointError, DeviceError
        Bad data, config, checkpoint or device (the message names the file or option).
    """
    own_ctx = ctx is None
    if ctx is None:
        ctx = init_distributed(cfg.loop.device)
    hooks = hooks or SRHooks()
    out = Path(out)
    try:
        if cfg.loop.num_threads:
            torch.set_num_threads(cfg.loop.num_threads)
        seed_everything(cfg.loop.seed)
        prec = Precision(cfg.loop.amp, ctx.device)
        data_sets = build_sr_datasets(cfg, data, val_data)
        start_stage, resume_path = _resolve_resume(out, resume)
        prepare_run_dir(out, cfg, ctx=ctx, seed=cfg.loop.seed, command=command,
                               extra={"precision": prec.name, "resume": str(resume_path) if resume_path else None,
                                      "val_source": data_sets.val_source,
                                      "n_train_slices": len(data_sets.train.slice_indices),
                                      "n_val_slices": len(data_sets.val)})
        gen1 = None
        if start_stage == 1:
            gen1 = run_stage1(cfg, data_sets, out, ctx, prec, hooks, resume_path)
        gen2 = disc = None
        if cfg.stage2.epochs > 0:
            gen2, disc = run_stage2(cfg, data_sets, out, ctx, prec, hooks, resume_path if start_stage == 2 else None)
        if gen1 is None:  # resumed into stage 2: reload stage 1's generator for the report
            gen1 = build_generator(cfg, ctx.device)
            src = out / "srresnet" / "checkpoints" / ("best.pt" if cfg.stage2.init_from == "best" else "last.pt")
            if src.is_file():
                ck = load_checkpoint(src, map_location=ctx.device, expect_kind="sr-srresnet")
                gen1.load_state_dict(ck["modules"]["generator"])
            else:
                gen1 = None
        report = _final_report(cfg, data_sets, ctx, prec, gen1, gen2)
        teacher_gen = gen2 if (cfg.export_from == "srgan" and gen2 is not None) else gen1
        teacher_stage = "srgan" if teacher_gen is gen2 and gen2 is not None else "srresnet"
        if cfg.stage1.epochs == 0 and teacher_stage == "srresnet" and start_stage == 1:
            # a seeded random init, never trained (the truth study's arm B2: the capacity control)
            teacher_stage = "untrained"
        report["teacher"] = teacher_stage
        teacher_path = None
        if ctx.is_main:
            from ..provenance import data_provenance, shard_patients

            train_patients = shard_patients([sh.path for sh in data_sets.train.shards],
                                            indices=data_sets.train.slice_indices)
            # What the slices are made of (a phantom's record, None for real data): `dsnet train`
            # warns when a phantom teacher meets a real-source dataset.
            provs = [data_provenance(Path(sh.path).parent) for sh in data_sets.train.shards]
            figures = report.get("srresnet" if teacher_stage == "untrained" else teacher_stage, {})
            teacher_path = export_teacher(teacher_gen, cfg, out / "teacher.pt", stage=teacher_stage,
                                          metrics=figures, train_patients=train_patients,
                                          data_provenance=next((p for p in provs if p), None))
            atomic.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
            atomic.write_text(out / "report.md", format_report(report))
        barrier(ctx)
        return SRRunResult(out=out, teacher_path=teacher_path if ctx.is_main else out / "teacher.pt",
                           report=report, generator=teacher_gen, discriminator=disc)
    finally:
        if own_ctx:
            shutdown_distributed(ctx)


def _final_report(cfg: SRConfig, data_sets: SRData, ctx: DistContext, prec: Precision,
                  gen1: nn.Module | None, gen2: nn.Module | None) -> dict[str, Any]:
    loader = make_loader(data_sets.val, EvalShardSampler(len(data_sets.val), ctx=ctx),
                                batch_size=cfg.eval.val_batch_size, num_workers=0)
    report: dict[str, Any] = {"scale": cfg.data.scale, "shave_px": cfg.shave_px, "downsample": cfg.data.downsample,
                              "val_source": data_sets.val_source}
    base = evaluate_sr(None, loader, ctx=ctx, precision=prec, scale=cfg.data.scale, shave_px=cfg.shave_px)
    report["n_val_slices"] = int(base["n"])
    report["bicubic"] = {"psnr": base["psnr_bicubic"], "ssim": base["ssim_bicubic"]}
    for name, gen in (("srresnet", gen1), ("srgan", gen2)):
        if gen is not None:
            m = evaluate_sr(gen, loader, ctx=ctx, precision=prec, scale=cfg.data.scale, shave_px=cfg.shave_px)
            report[name] = {"psnr": m["psnr"], "ssim": m["ssim"]}
    return report
