"""Training-step time of DSNet-family rows with the SR teacher in the paper's ``upscale`` mode vs
``native`` (seg_tiny sizes; a randomly initialised sr_tiny teacher: speed only), side by side.

    python benchmarks/bench_teacher_mode.py [--config seg_tiny] [--variants drtm,dsnet] [--steps 10] [--sweep]
        [-s model.widths=[4,8,16,32]]

One step = forward, losses of the variant (Eq. 19), backward and Adam, batch ``loop.batch_size``
of 64x64 crops, float32 on CPU, ``torch.set_num_threads(1)``. Prints ms/step per mode and the
ratio upscale / native.

``--sweep`` times the upscale step of one variant over backbone widths x teacher feature
channels (the SR generator's ``n_channels``, which is also DRTM's C), each next to seg_tiny's
own sizes in the same process, and projects the CPU-hours of one run (``--epochs`` x
``ceil(--train-crops / batch)`` steps) and of every DSNet-family row of Tables III-V at the
seed counts of ``scripts/run_tables.py`` (21 runs): what "shrink widths, not the mode" can buy.

``--malloc both`` instead times the upscale step in two fresh processes side by side, one with
glibc's malloc defaults and one after ``keep_freed_memory(**TRAINING_MALLOC_TUNING)`` (what
every `dsnet` command does), and prints the ratio (malloc settings are per process and sticky).
"""

from __future__ import annotations

import argparse
import time

import torch


def step_ms(variant: str, mode: str, config: str, overrides: list[str], steps: int,
            teacher_overrides: tuple[str, ...] = ()) -> float:
    from dsnet_trainer.config import load_config
    from dsnet_trainer.losses import dice_loss, gan_generator_loss, soft_l1_loss, total_loss
    from dsnet_trainer.models import build_model
    from dsnet_trainer.models.dsnet import get_variant
    from dsnet_trainer.models.loading import build_from_config
    from dsnet_trainer.models.teacher import SRTeacher
    from dsnet_trainer.seg_config import SegConfig
    from dsnet_trainer.sr.config import SRConfig

    cfg = load_config(SegConfig, config, [f"model.variant={variant}", f"model.teacher_mode={mode}", *overrides])
    sr = load_config(SRConfig, "sr_tiny", list(teacher_overrides))
    torch.manual_seed(0)
    teacher = SRTeacher(build_model("srresnet", **sr.generator_kwargs()), scale=sr.data.scale,
                        feature_channels=sr.generator.n_channels, window_level_hu=cfg.data.level_hu,
                        window_width_hu=cfg.data.width_hu, downsample=sr.data.downsample)
    net, disc, _ = build_from_config(cfg.model, data_cfg=cfg.data, teacher=teacher)
    v = get_variant(variant)
    params = [p for p in net.parameters() if p.requires_grad] + (list(disc.parameters()) if disc else [])
    opt = torch.optim.Adam(params, lr=1e-4)
    b, c = cfg.loop.batch_size, cfg.data.crop_px
    x = torch.rand(b, 1, c, c) * 2 - 1
    m = (torch.rand(b, 1, c, c) > 0.7).float()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        prob, soft = net(x)
        gan = gan_generator_loss(disc(x, soft)) if disc is not None else None
        loss = total_loss(dice=dice_loss(prob, m), l1=soft_l1_loss(soft, 2 * m - 1) if v.soft_head else None, gan=gan)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def _malloc_side_by_side(args) -> None:
    import subprocess
    import sys

    print(f"config {args.config}, upscale mode, median ms per training step: glibc malloc defaults vs "
          "keep_freed_memory(**TRAINING_MALLOC_TUNING), each in a fresh process, alternating")
    print("| variant | defaults (ms) | kept freed memory (ms) | speed-up |")
    print("|---|---|---|---|")
    for v in args.variants.split(","):
        ms = {}
        for mode in ("default", "tuned", "default", "tuned"):
            cmd = [sys.executable, __file__, "--config", args.config, "--variants", v, "--steps", str(args.steps),
                   "--malloc", mode, "--upscale-only", *[x for s in args.sets for x in ("-s", s)]]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            ms.setdefault(mode, []).append(float(out[-1]))
        d, t = min(ms["default"]), min(ms["tuned"])
        print(f"| {v} | {d:.1f} | {t:.1f} | {d / t:.2f}x |", flush=True)


SWEEP_WIDTHS = ("[8,16,32,64]", "[4,8,16,32]")
SWEEP_TEACHER_CHANNELS = (16, 8, 4)
# DSNet-family runs of Tables III-V at run_tables.py's seed counts: Table III sr_input x2, drtm,
# drtm_soft, dsnet x3; Table IV three rows x2; Table V two rows x2.
TABLE_DSNET_RUNS = 2 + 3 * 3 + 3 * 2 + 2 * 2


def _sweep(args) -> None:
    import math

    steps_per_run = args.epochs * math.ceil(args.train_crops / 8)
    print(f"config {args.config}, variant {args.variants}, upscale mode, median ms per training step "
          f"(batch 8, one thread); a run = {args.epochs} epochs x {math.ceil(args.train_crops / 8)} steps; "
          f"the table = {TABLE_DSNET_RUNS} DSNet-family runs")
    print("| backbone widths | teacher channels (= DRTM C) | ms/step | vs seg_tiny | CPU-h per run "
          "| CPU-h for the table |")
    print("|---|---|---|---|---|---|")
    ref = None
    for w in SWEEP_WIDTHS:
        for c in SWEEP_TEACHER_CHANNELS:
            ms = step_ms(args.variants.split(",")[0], "upscale", args.config, [*args.sets, f"model.widths={w}"],
                         args.steps, (f"generator.n_channels={c}",))
            ref = ms if ref is None else ref
            h = ms * steps_per_run / 3.6e6
            print(f"| {w} | {c} | {ms:.0f} | {ms / ref:.2f} | {h:.2f} | {h * TABLE_DSNET_RUNS:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="seg_tiny")
    ap.add_argument("--variants", default="drtm,dsnet")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("-s", dest="sets", action="append", default=[])
    ap.add_argument("--malloc", choices=["default", "tuned", "both"], default="default",
                    help="both: side by side in fresh processes (see the module docstring)")
    ap.add_argument("--upscale-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help="upscale step over widths x teacher channels")
    ap.add_argument("--epochs", type=int, default=30, help="--sweep: epochs of a projected run")
    ap.add_argument("--train-crops", type=int, default=1001, help="--sweep: training crops of a run")
    args = ap.parse_args()
    if args.malloc == "both":
        return _malloc_side_by_side(args)
    if args.malloc == "tuned":
        from softmask_builder.core.executor import TRAINING_MALLOC_TUNING, keep_freed_memory

        assert keep_freed_memory(**TRAINING_MALLOC_TUNING)
    torch.set_num_threads(1)
    if args.sweep:
        return _sweep(args)
    if args.upscale_only:
        print(f"{step_ms(args.variants, 'upscale', args.config, args.sets, args.steps):.1f}")
        return
    print(f"config {args.config} {' '.join(args.sets)}; median ms per training step (batch from config)")
    print("| variant | native (ms) | upscale (ms) | upscale / native |")
    print("|---|---|---|---|")
    for v in args.variants.split(","):
        n = step_ms(v, "native", args.config, args.sets, args.steps)
        u = step_ms(v, "upscale", args.config, args.sets, args.steps)
        print(f"| {v} | {n:.1f} | {u:.1f} | {u / n:.1f} |", flush=True)


if __name__ == "__main__":
    main()
