"""CPU cost of one nnU-Net v2 ``2d`` gradient step at the plans' batch size and at the U-Net row's.

Why: the truth study's nnU-Net row (docs/TRAINING.md) is to run the U-Net row's number of gradient
steps (2500). nnU-Net plans a 2d batch for a GPU (on the study's build: 285 crops of 64 px, its cap
of 5 % of the dataset), so this script measures what a step costs on this machine's CPU at both
batch sizes, side by side in one run, to state the budget the row can have.

What is timed: nnU-Net's own ``nnUNetTrainer.train_step`` (forward with deep supervision, its
Dice + CE loss, backward, gradient clipping, SGD step) on synthetic batches of the plans' patch size,
the trainer built from the build's plans exactly as ``nnUNetv2_train`` builds it. Not timed: data
loading and augmentation (nnU-Net's batchgenerators pipeline, done in the main process with
``nnUNet_n_proc_DA=0``), the per-epoch pseudo-validation, the final validation and prediction:
the figures are lower bounds of a step's cost in a real run. CPU time of the calling thread
(``time.thread_time``) with torch held to one thread, medians over rounds interleaved batch by batch.

Run it with nnU-Net's venv (``make nnunet-baseline`` installs it)::

    nnUNet_preprocessed=runs/nnunet-truth1/nnUNet_preprocessed nnUNet_results=/tmp/nnbench \\
    OMP_NUM_THREADS=1 .venv-nnunet/bin/python benchmarks/bench_nnunet_step.py --dataset 502 \\
        --batch 8 --batch 285 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="502", help="nnU-Net dataset id or DatasetXXX_NAME (preprocessed)")
    ap.add_argument("--configuration", default="2d")
    ap.add_argument("--batch", type=int, action="append", default=[], help="batch size (repeat); default 8 and the plans'")
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per batch size (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not os.environ.get("nnUNet_preprocessed"):
        raise SystemExit("set nnUNet_preprocessed (and nnUNet_results) as for nnUNetv2_train")
    try:
        import torch
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    except ImportError as exc:
        raise SystemExit(f"needs nnunetv2 (run it with .venv-nnunet/bin/python): {exc}") from None

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = maybe_convert_to_dataset_name(int(args.dataset) if args.dataset.isdigit() else args.dataset)
    base = os.path.join(os.environ["nnUNet_preprocessed"], name)
    with open(os.path.join(base, "nnUNetPlans.json")) as fh:
        plans = json.load(fh)
    with open(os.path.join(base, "dataset.json")) as fh:
        dataset_json = json.load(fh)
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans=plans, configuration=args.configuration, fold=0, dataset_json=dataset_json,
                            device=torch.device("cpu"))
    trainer.initialize()
    planned = int(trainer.configuration_manager.batch_size)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    batches = args.batch or [8, planned]
    scales = trainer._get_deep_supervision_scales() or [[1.0] * len(patch)]

    def batch_of(n: int) -> dict:
        data = torch.randn(n, trainer.num_input_channels, *patch)
        full = (torch.rand(n, 1, *patch) > 0.9).float()
        target = [torch.nn.functional.interpolate(full, scale_factor=tuple(s), mode="nearest") if any(x != 1 for x in s)
                  else full for s in scales]
        return {"data": data, "target": target if trainer.enable_deep_supervision else target[0]}

    inputs = {n: batch_of(n) for n in batches}
    for n in batches:                                    # warm-up (allocator, first-call costs)
        trainer.train_step(inputs[n])
    times: dict[int, list[float]] = {n: [] for n in batches}
    for _ in range(args.rounds):
        for n in batches:
            t0 = time.thread_time()
            trainer.train_step(inputs[n])
            times[n].append(time.thread_time() - t0)
    print(f"nnU-Net v2 {args.configuration} on {name}: patch {patch}, plans' batch {planned}, "
          f"{args.threads} thread(s), median of {args.rounds} steps (CPU s of the thread)")
    print("| batch | CPU s per step | CPU ms per crop | 2500 steps, CPU h (steps only) | vs batch "
          f"{batches[0]} |")
    print("|---|---|---|---|---|")
    ref = statistics.median(times[batches[0]])
    for n in batches:
        med = statistics.median(times[n])
        print(f"| {n} | {med:.3f} | {1000 * med / n:.1f} | {2500 * med / 3600:.2f} | {med / ref:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
