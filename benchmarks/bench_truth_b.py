"""Pilot timing of the truth study's arms and the measurement behind its teacher-output cache
(docs/TRAINING.md, "The truth study"), side by side in one process.

    python benchmarks/bench_truth_b.py [--data BUILD] [--teacher-x2 runs/sr-x2/teacher.pt]
        [--config seg_tiny] [--steps 10] [--rounds 3] [-s KEY=VALUE]

One step = what ``dsnet train`` does per batch for the arm: forward, the arm's losses (0.5 Dice,
+ lambda2 L1 through the soft head for ``unet_soft``; A0 has lambda2 = 0, as in
``scripts/run_tables.py``'s TRUTH_ARMS), backward and Adam; batch ``loop.batch_size`` of the
config's crops (seg_tiny: 8 crops of 64 px, widths 8-16-32-64), float32 on CPU,
``torch.set_num_threads(1)`` and the trainer's malloc settings. The crops are real crops of
``--data``'s train split when given (else uniform noise: speed does not depend on content).

Rows (medians of ``--rounds`` x ``--steps`` steps, the arms interleaved round by round so that a
shared machine's load hits them alike): the CPU time of the step's thread (``time.thread_time``:
with one torch thread, what the step costs an idle core; little moved by other processes) and the
wall time (what it took here):

* A0 ``unet_soft``; B0 ``backbone`` at ``data.input_shrink=2``; B1/B2 ``drtm`` at
  ``input_shrink=2`` with the x2 teacher of ``sr_tiny_x2`` (``--teacher-x2``'s file, else that
  architecture at random init: B2's network, and B1's step time: the weights do not change it);
  B3 ``backbone`` on the crop;
* ``B1, teacher cached``: the same step with the teacher's outputs for the batch precomputed in
  memory (the most a per-crop cache could save; a cache read from disk costs more);
* ``teacher forward only``: the frozen teacher on the batch's 32-px crops.

The last lines give the teacher's share of a B1 step, (recomputed - cached) / recomputed, against
the design's rule (cache only if it saves more than 20 % of a run's wall time; a run also
validates and evaluates, so the share of a step is an upper bound of the share of a run).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

ARMS = {  # arm -> config overrides (scripts/run_tables.py's TRUTH_ARMS / TRUTH_B_ARMS)
    "A0": ["model.variant=unet_soft", "optim.l1_weight=0"],
    "B0": ["model.variant=backbone", "data.input_shrink=2"],
    "B1/B2": ["model.variant=drtm", "data.input_shrink=2", "model.teacher_mode=upscale"],
    "B3": ["model.variant=backbone"],
}


class _Cached(nn.Module):
    """Stands in for the frozen teacher: returns the outputs computed beforehand for this batch."""

    def __init__(self, sr: torch.Tensor, feats: torch.Tensor):
        super().__init__()
        self.sr, self.feats = sr, feats

    def forward(self, lr: torch.Tensor):
        return self.sr, self.feats


def _teacher(path: str, cfg):
    from dsnet_trainer.config import load_config
    from dsnet_trainer.models.teacher import load_teacher, teacher_from_arch
    from dsnet_trainer.sr.config import SRConfig

    if path:
        return load_teacher(path)
    sr = load_config(SRConfig, "sr_tiny_x2")
    torch.manual_seed(0)
    return teacher_from_arch({"model": {"name": sr.generator.name, "kwargs": sr.generator_kwargs()},
                              "data": {"scale": sr.data.scale, "window_level_hu": cfg.data.level_hu,
                                       "window_width_hu": cfg.data.width_hu, "downsample": sr.data.downsample}})


def _batch(data: str, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = cfg.loop.batch_size, cfg.data.crop_px
    if not data:
        g = torch.Generator().manual_seed(0)
        return torch.rand(b, 1, c, c, generator=g) * 2 - 1, (torch.rand(b, 1, c, c, generator=g) > 0.7).float()
    from dsnet_trainer.data import SampleShardDataset

    ds = SampleShardDataset(data, split=cfg.data.train_split, augment=False, level_hu=cfg.data.level_hu,
                            width_hu=cfg.data.width_hu, image_size_px=c, option="--data")
    items = [ds[i] for i in range(min(b, len(ds)))]
    while len(items) < b:
        items += items[:b - len(items)]
    return torch.stack([i["image"] for i in items]), torch.stack([i["binary_mask"] for i in items]).float()


class _Arm:
    """One arm's network, optimiser and step."""

    def __init__(self, overrides: list[str], args, x: torch.Tensor, m: torch.Tensor, teacher=None):
        from dsnet_trainer.config import load_config
        from dsnet_trainer.models.dsnet import get_variant
        from dsnet_trainer.models.loading import build_from_config
        from dsnet_trainer.seg_config import SegConfig

        cfg = load_config(SegConfig, args.config, [*overrides, *args.sets])
        torch.manual_seed(0)
        self.net, _, _ = build_from_config(cfg.model, data_cfg=cfg.data, teacher=teacher)
        self.net.train()
        self.soft = get_variant(cfg.model.variant).soft_head
        self.w = cfg.optim
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                    betas=cfg.optim.betas)
        self.x, self.m = x, m
        self.times: list[tuple[float, float]] = []     # (wall s, CPU s of this thread) per step

    def step(self) -> tuple[float, float]:
        from dsnet_trainer.losses import dice_loss, soft_l1_loss, total_loss

        t0, c0 = time.perf_counter(), time.thread_time()
        prob, soft = self.net(self.x)
        l1 = soft_l1_loss(soft, 2 * self.m - 1) if self.soft else None
        loss = total_loss(dice=dice_loss(prob, self.m), l1=l1, dice_weight=self.w.dice_weight,
                          l1_weight=self.w.l1_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0, time.thread_time() - c0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="", help="sample build (its train crops are the batch)")
    ap.add_argument("--teacher-x2", default="", help="B1's teacher file (default: the sr_tiny_x2 architecture)")
    ap.add_argument("--config", default="seg_tiny")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-s", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)

    from softmask_builder.core.executor import TRAINING_MALLOC_TUNING, keep_freed_memory

    keep_freed_memory(**TRAINING_MALLOC_TUNING)   # what every `dsnet` command does
    torch.set_num_threads(1)
    from dsnet_trainer.config import load_config
    from dsnet_trainer.models.dsnet import shrink_by_area
    from dsnet_trainer.seg_config import SegConfig

    cfg = load_config(SegConfig, args.config, args.sets)
    x, m = _batch(args.data, cfg)
    teacher = _teacher(args.teacher_x2, cfg)
    arms = {name: _Arm(o, args, x, m, teacher if "B1" in name else None) for name, o in ARMS.items()}
    cached = _Arm(ARMS["B1/B2"], args, x, m, teacher)
    with torch.no_grad():
        cached.net.teacher = _Cached(*arms["B1/B2"].net.teacher(shrink_by_area(x, 2)))
    arms["B1, teacher cached"] = cached
    frozen = arms["B1/B2"].net.teacher
    teacher_times: list[tuple[float, float]] = []
    for arm in arms.values():          # warm-up
        for _ in range(2):
            arm.step()
    for _ in range(args.rounds):
        for arm in arms.values():
            arm.times += [arm.step() for _ in range(args.steps)]
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.thread_time()
            with torch.no_grad():
                frozen(shrink_by_area(x, 2))
            teacher_times.append((time.perf_counter() - t0, time.thread_time() - c0))

    def med(v: list[tuple[float, float]], k: int = 1) -> float:   # k = 1: CPU time, 0: wall time (ms)
        return 1000 * sorted(t[k] for t in v)[len(v) // 2]

    src = f"{args.data} train crops" if args.data else "noise crops"
    print(f"config {args.config} {' '.join(args.sets)}: batch {cfg.loop.batch_size} x {cfg.data.crop_px} px ({src}), "
          f"widths {list(cfg.model.widths)}, one thread; teacher {args.teacher_x2 or 'sr_tiny_x2 architecture'} "
          f"({sum(p.numel() for p in teacher.parameters())} parameters); median of {args.rounds} x {args.steps} steps")
    print("| arm | CPU ms per gradient step (median) | wall ms per step (median) | CPU vs A0 |")
    print("|---|---|---|---|")
    a0 = med(arms["A0"].times)
    for name, arm in arms.items():
        print(f"| {name} | {med(arm.times):.1f} | {med(arm.times, 0):.1f} | {med(arm.times) / a0:.2f} |")
    print(f"| teacher forward only (no grad) | {med(teacher_times):.1f} | {med(teacher_times, 0):.1f} | "
          f"{med(teacher_times) / a0:.2f} |")
    full, fast = med(arms["B1/B2"].times), med(cached.times)      # CPU time
    share = (full - fast) / full
    alone = med(teacher_times) / full
    print(f"\nteacher's share of a B1 step: {100 * share:.1f} % (recomputed {full:.1f} ms, outputs precomputed "
          f"{fast:.1f} ms; the teacher's forward alone: {100 * alone:.1f} %); the design caches only above 20 % "
          f"of a run's wall time: {'cache pays' if max(share, alone) > 0.20 else 'no cache (recompute)'}")


if __name__ == "__main__":
    main()
