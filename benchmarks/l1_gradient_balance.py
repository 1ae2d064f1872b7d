"""Why lambda2 and the L1 reduction matter: the gradient each loss term sends into the shared trunk.

    python benchmarks/l1_gradient_balance.py --data build/lnsm1500 --teacher runs/sr-sr_tiny/teacher.pt \
        [--checkpoint runs/.../best.pt ...] [--batches 8] [--mode native]

For ``drtm_soft`` (seg_tiny), on the same ``--batches`` training batches of 8 crops (unaugmented,
fixed order), it measures the L2 norm of the gradient of each Eq. 19 term with respect to the
backbone's parameters (the trunk both heads share): ``0.5 * Dice`` and ``L1`` under both
reductions (``pixel_mean`` and ``crop_band``), and prints the ratio ``lambda2 * |grad L1| /
|grad 0.5 Dice|`` for lambda2 = 1, 10, 100 (a ratio of 100 means the Soft Mask term steers the
trunk 100 times as hard as the Dice term). It also splits the L1 gradient by where the error is:
the share that comes from the crops of the small half of the batch's nodules (area at or under
the median of the training split). At initialisation (random weights, seed 0) and, with
``--checkpoint``, at each trained checkpoint. Means over batches.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch


def _trunk_grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(net, batches, params) -> dict[str, float]:
    from dsnet_trainer.losses import dice_loss, soft_l1_loss

    rows: dict[str, list[float]] = {}
    for batch, small in batches:
        prob, soft = net(batch["image"])
        g_dice = _trunk_grad_norm(0.5 * dice_loss(prob, batch["binary_mask"]), params)
        rows.setdefault("dice", []).append(g_dice)
        for red in ("pixel_mean", "crop_band"):
            l1 = soft_l1_loss(soft, batch["soft_target"], reduction=red, region=batch["trimap"])
            rows.setdefault(red, []).append(_trunk_grad_norm(l1, params))
            if small.any() and (~small).any():
                # share of the L1 gradient (norm of the per-half losses' gradients) from the small half
                per = [soft_l1_loss(soft[m], batch["soft_target"][m], reduction=red, region=batch["trimap"][m])
                       * m.sum() / len(m) for m in (small, ~small)]
                gs, gl = (_trunk_grad_norm(p, params) for p in per)
                rows.setdefault(f"{red}_small_share", []).append(gs / (gs + gl))
    return {k: statistics.mean(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--checkpoint", action="append", default=[])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--mode", choices=["native", "upscale"], default="native")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dsnet_trainer.config import load_config
    from dsnet_trainer.data import SampleShardDataset
    from dsnet_trainer.models.loading import build_from_config, load_seg_model
    from dsnet_trainer.seg_config import SegConfig
    from dsnet_trainer.train_seg import SoftTargetDataset

    cfg = load_config(SegConfig, "seg_tiny", ["model.variant=drtm_soft", f"model.teacher={args.teacher}",
                                              f"model.teacher_mode={args.mode}", f"data.root={args.data}"])
    ds = SoftTargetDataset(SampleShardDataset(args.data, split="train", level_hu=cfg.data.level_hu,
                                              width_hu=cfg.data.width_hu, image_size_px=cfg.data.crop_px),
                           soft_label="soft_mask")
    areas = np.array([float(ds[i]["binary_mask"].sum()) for i in range(len(ds))])
    median = float(np.median(areas))
    batches = []
    order = np.random.default_rng(0).permutation(len(ds))[: 8 * args.batches]
    for b in range(args.batches):
        items = [ds[int(i)] for i in order[8 * b: 8 * b + 8]]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "binary_mask", "soft_target", "trimap")}
        batches.append((batch, torch.tensor([areas[int(i)] <= median for i in order[8 * b: 8 * b + 8]])))
    models = []
    torch.manual_seed(0)
    net, _, _ = build_from_config(cfg.model, data_cfg=cfg.data)
    models.append(("initialisation (seed 0)", net))
    for ck in args.checkpoint:
        models.append((ck, load_seg_model(ck)[0]))
    print(f"drtm_soft, seg_tiny, teacher_mode {args.mode}; {args.batches} training batches of 8 crops "
          f"(median nodule area {median:.0f} px); gradient norms on the backbone, means over batches")
    print("| model | reduction | lambda2 * grad L1 / grad 0.5 Dice: lambda2 = 1 | 10 | 100 | "
          "small-half share of the L1 gradient |")
    print("|---|---|---|---|---|---|")
    for label, net in models:
        net.train()
        params = [p for p in net.backbone.parameters() if p.requires_grad]
        m = measure(net, batches, params)
        for red in ("pixel_mean", "crop_band"):
            r = m[red] / m["dice"]
            share = m.get(f"{red}_small_share")
            print(f"| {label} | {red} | {r:.2f} | {10 * r:.1f} | {100 * r:.0f} | "
                  f"{'-' if share is None else f'{100 * share:.0f} %'} |", flush=True)


if __name__ == "__main__":
    main()
