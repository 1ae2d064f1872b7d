"""The segmentation training loop: determinism, frozen teacher, resume, NaN stop, bad inputs,
soft targets (Table IV) and the poly schedule. (Model building: ``test_loading.py``; the config:
``test_seg_config.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsnet_trainer.checkpoint import load_checkpoint
from dsnet_trainer.data import SampleShardDataset, dihedral
from dsnet_trainer.engine import read_metrics
from dsnet_trainer.errors import ConfigError, ShardError
from dsnet_trainer.models.loading import load_seg_model
from dsnet_trainer.train_seg import NonFiniteLossError, SoftTargetDataset, soft_target, train_seg
from softmask_builder.labelling.soft_labels import kats_soft_label, softseg_soft_label

from .seg_helpers import tiny_config, write_sample_dataset, write_sample_shard, write_tiny_teacher


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    return write_sample_dataset(tmp / "data"), write_tiny_teacher(tmp / "teacher.pt")


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["modules"]


def test_dsnet_run_is_deterministic_and_the_teacher_stays_frozen(assets, tmp_path):
    data, teacher = assets
    runs = [train_seg(tiny_config(data, tmp_path / f"r{i}", teacher=teacher)) for i in range(2)]
    a, b = _weights(runs[0]), _weights(runs[1])
    assert set(a) == {"model", "disc"}
    for group in a:
        for k in a[group]:
            torch.testing.assert_close(a[group][k], b[group][k], rtol=0, atol=0)
    # the teacher's weights inside the seg checkpoint are those of the teacher file
    gen = torch.load(teacher, weights_only=True)["generator"]
    inside = {k.split("teacher.net.generator.", 1)[1]: v for k, v in a["model"].items()
              if k.startswith("teacher.net.generator.")}
    assert set(inside) == set(gen)
    for k in gen:
        torch.testing.assert_close(inside[k], gen[k], rtol=0, atol=0)
    rows = [r for r in read_metrics(runs[0] / "metrics.jsonl") if r["phase"] == "epoch"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["val_dice"] <= 1 and r["loss_disc"] > 0 and r["gan"] > 0 for r in rows)
    assert (runs[0] / "config.yaml").is_file() and (runs[0] / "curves.png").is_file()


def test_poly_schedule_and_lr_variant_modules(assets, tmp_path):
    data, _ = assets
    run = train_seg(tiny_config(data, tmp_path / "unet", variant="unet", epochs=3, steps=1))
    assert set(_weights(run)) == {"model"}  # no discriminator for a Dice-only row
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r["phase"] == "epoch"]
    # lr after epoch e (scheduler stepped e times) = 1e-3 * (1 - e/3) ** 0.9
    np.testing.assert_allclose([r["lr_model"] for r in rows], [1e-3 * (1 - e / 3) ** 0.9 for e in (1, 2, 3)],
                               rtol=1e-9)
    assert "l1" not in rows[0] and "gan" not in rows[0]
    net, info = load_seg_model(run / "checkpoints" / "best.pt")
    assert info["variant"] == "unet" and net.teacher is None


def test_resume_replays_the_uninterrupted_run(assets, tmp_path):
    data, teacher = assets
    straight = train_seg(tiny_config(data, tmp_path / "straight", teacher=teacher, epochs=2))
    cut = train_seg(tiny_config(data, tmp_path / "cut", teacher=teacher, epochs=1))
    resumed = train_seg(tiny_config(data, cut, teacher=teacher, epochs=2))
    a, b = _weights(straight), _weights(resumed)
    for group in a:
        for k in a[group]:
            torch.testing.assert_close(a[group][k], b[group][k], rtol=0, atol=0)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(assets, tmp_path):
    data, teacher = assets
    run = train_seg(tiny_config(data, tmp_path / "run", variant="drtm_soft", teacher=teacher, epochs=1))
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "val"):
        write_sample_shard(bad / f"bad-{split}-00000-of-00001.h5", split=split, n=4, crop_px=32)
    import h5py
    with h5py.File(bad / "bad-train-00000-of-00001.h5", "r+") as fh:
        fh["soft_mask"][:, 3, 3] = np.nan
    cfg = tiny_config(bad, run, variant="drtm_soft", teacher=teacher, epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2.*l1=nan.*last good checkpoint: .*last\.pt"):
        train_seg(cfg)
    assert last.read_bytes() == before


def test_wrong_crop_size_is_refused(assets, tmp_path):
    data, _ = assets
    with pytest.raises(ShardError, match=r"holds 32x32 crops but the model expects 48x48"):
        train_seg(tiny_config(data, tmp_path / "x", variant="unet", crop_px=48))


@pytest.mark.parametrize("label", ["soft_mask", "binary", "kats", "softseg"])
def test_soft_targets_follow_the_augmentation(assets, label):
    data, _ = assets
    base = SampleShardDataset(data, split="train", augment=True)
    ds = SoftTargetDataset(base, soft_label=label, kats_ring_px=2.0, kats_p=0.5, softseg_factor=4)
    plain = SampleShardDataset(data, split="train")[3]
    key = (3, 0, 5)
    rng = np.random.default_rng([0, 5, 3])
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    mask = plain["binary_mask"][0].numpy()
    expected01 = {"soft_mask": (plain["soft_mask"][0].numpy() + 1) / 2, "binary": mask,
                  "kats": kats_soft_label(mask != 0, ring_px=2.0, p=0.5),
                  "softseg": softseg_soft_label(mask != 0, factor=4)}[label]
    got = ds[key]["soft_target"][0].numpy()
    if label == "softseg":
        # SoftSeg's resampling grid is not symmetric under flips: compute it on the augmented mask
        expected01 = softseg_soft_label(dihedral(mask, k=k, flip=flip) != 0, factor=4)
        np.testing.assert_allclose(got, 2 * expected01 - 1, atol=1e-6)
    else:
        np.testing.assert_allclose(got, dihedral(2 * expected01 - 1, k=k, flip=flip), atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1


def test_unknown_soft_label():
    with pytest.raises(ConfigError, match="unknown soft label 'fuzzy'"):
        soft_target("fuzzy", soft_mask=np.zeros((2, 2)), binary_mask=np.zeros((2, 2)))


# ---- truth-study arms (issue 25): training targets from the phantom's truth -----------------
@pytest.fixture(scope="module")
def truth_data(assets, tmp_path_factory):
    """The assets' dataset with a true fraction that differs from the label (alpha shifted)."""
    import shutil

    import h5py

    data, _ = assets
    out = tmp_path_factory.mktemp("truth") / "data"
    shutil.copytree(data, out)
    for path in sorted(out.glob("*.h5")):
        with h5py.File(path, "r+") as f:
            truth = np.clip(f["soft_mask"][()] - 0.3, 0, 1).astype(np.float32)
            f.create_dataset("true_fraction", data=truth, chunks=(1, *truth.shape[1:]), compression="gzip",
                             shuffle=True)
            f.attrs["schema_version"] = 3
    return out


@pytest.mark.parametrize("target", ["true_fraction", "true_mask"])
def test_train_targets_from_the_truth_follow_the_augmentation(truth_data, target):
    import h5py

    with h5py.File(next(truth_data.glob("*-train-*.h5")), "r") as f:
        truth = f["true_fraction"][3]
        label = f["binary_mask"][3]
    ds = SoftTargetDataset(SampleShardDataset(truth_data, split="train", augment=True), soft_label="binary",
                           train_target=target)
    rng = np.random.default_rng([0, 5, 3])  # the symmetry key (3, 0, 5) draws, as above
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    item = ds[(3, 0, 5)]
    assert ((truth >= 0.5) != (label != 0)).any()  # the truth differs from the label here
    if target == "true_fraction":  # A3: L1 target = truth in [-1, 1]; Dice target stays the label
        np.testing.assert_allclose(item["soft_target"][0].numpy(), dihedral(2 * truth - 1, k=k, flip=flip), atol=1e-6)
        np.testing.assert_array_equal(item["binary_mask"][0].numpy(), dihedral(label != 0, k=k, flip=flip))
    else:  # A4: Dice target = true mask, and the binary soft label made from it
        true_mask = dihedral(truth >= 0.5, k=k, flip=flip).astype(np.float32)
        np.testing.assert_array_equal(item["binary_mask"][0].numpy(), true_mask)
        np.testing.assert_array_equal(item["soft_target"][0].numpy(), 2 * true_mask - 1)


def test_truth_targets_need_a_build_with_the_truth(assets, truth_data, tmp_path):
    data, _ = assets
    with pytest.raises(ConfigError, match="data.train_target=true_mask needs a build that carries the phantom's truth"):
        SoftTargetDataset(SampleShardDataset(data, split="train"), soft_label="binary", train_target="true_mask")
    from dataclasses import replace

    from dsnet_trainer.seg_config import SegDataConfig

    with pytest.raises(ConfigError, match="data.train_target"):
        SegDataConfig(train_target="oracle")
    cfg = tiny_config(truth_data, tmp_path / "a4", variant="unet", epochs=1, steps=1)
    run = train_seg(replace(cfg, data=replace(cfg.data, train_target="true_mask")))
    assert load_seg_model(run / "checkpoints" / "last.pt")[1]["config"]["data"]["train_target"] == "true_mask"


# ---- truth-study arms A0-A2 (issue 25): the U-Net with the soft head, the binary soft target ----
def test_binary_train_target_is_the_label_mask_mapped_to_plus_minus_one(assets):
    """Arm A2: whatever the variant's soft label (here the Soft Mask), the soft head's target is
    2 * binary - 1 of the (augmented) label, on a build without the truth."""
    data, _ = assets
    plain = SampleShardDataset(data, split="train")[3]
    rng = np.random.default_rng([0, 5, 3])  # the symmetry key (3, 0, 5) draws, as above
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    ds = SoftTargetDataset(SampleShardDataset(data, split="train", augment=True), soft_label="soft_mask",
                           train_target="binary")
    item = ds[(3, 0, 5)]
    mask = plain["binary_mask"][0].numpy() != 0
    expected = dihedral(np.where(mask, 1.0, -1.0), k=k, flip=flip)
    np.testing.assert_array_equal(item["soft_target"][0].numpy(), expected)
    np.testing.assert_array_equal(item["binary_mask"][0].numpy(), dihedral(mask, k=k, flip=flip))
    # the Soft Mask itself is not binary here, so the test tells the two targets apart
    assert not np.isin(plain["soft_mask"][0].numpy(), (-1.0, 1.0)).all()


def test_unet_soft_is_the_unet_plus_a_soft_head_trained_without_a_discriminator(assets, tmp_path):
    from dataclasses import replace

    from dsnet_trainer.models.dsnet import build_seg_model
    from dsnet_trainer.models.unet import UNet

    soft, plain = build_seg_model("unet_soft", widths=(4, 8)), build_seg_model("unet", widths=(4, 8))
    assert isinstance(soft.backbone, UNet) and soft.teacher is None and soft.soft_head
    # the same network as the U-Net row but for the head's second output channel
    n_soft = sum(p.numel() for p in soft.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    head = soft.backbone.head
    assert head.out_channels == 2 and n_soft - n_plain == head.in_channels * head.kernel_size[0] ** 2 + 1
    data, _ = assets
    a1 = train_seg(tiny_config(data, tmp_path / "a1", variant="unet_soft", epochs=1, steps=2))
    assert set(_weights(a1)) == {"model"}  # no discriminator
    steps = [r for r in read_metrics(a1 / "metrics.jsonl") if r["phase"] == "train"]
    assert all(r["l1"] > 0 and "gan" not in r and "loss_disc" not in r for r in steps)
    # arm A1: Eq. 19 without the GAN term, at the optimiser defaults: loss = 0.5 Dice + 100 L1
    for r in steps:
        assert r["loss"] == pytest.approx(0.5 * r["dice_loss"] + 100.0 * r["l1"], rel=1e-5)
    cfg = tiny_config(data, tmp_path / "a0", variant="unet_soft", epochs=1, steps=2)
    a0 = train_seg(replace(cfg, optim=replace(cfg.optim, l1_weight=0.0)))   # arm A0: Dice only, head present
    for r in (r for r in read_metrics(a0 / "metrics.jsonl") if r["phase"] == "train"):
        assert r["loss"] == pytest.approx(0.5 * r["dice_loss"], rel=1e-6) and r["l1"] > 0


def test_an_untrained_soft_head_is_not_scored_its_probability_map_is(assets, tmp_path):
    """Arms A0/A4 (unet_soft, lambda2 = 0): no loss reaches the soft head, so its output is its random
    init; reloaded for inference, the model's soft map is its probability map (2 p - 1), while A1's
    trained head is kept. Without this, SAD against the truth compared A1 with a random A0 head."""
    from dataclasses import replace

    from dsnet_trainer.evaluate import evaluate_checkpoint
    from dsnet_trainer.models.loading import soft_head_trained

    data, _ = assets
    cfg0 = tiny_config(data, tmp_path / "a0", variant="unet_soft", epochs=1, steps=1)
    cfg0 = replace(cfg0, optim=replace(cfg0.optim, l1_weight=0.0))
    cfg1 = tiny_config(data, tmp_path / "a1", variant="unet_soft", epochs=1, steps=1)
    assert not soft_head_trained(cfg0) and soft_head_trained(cfg1)
    x = torch.linspace(-1, 1, 64 * 64).reshape(1, 1, 64, 64)
    for cfg, trained in ((cfg0, False), (cfg1, True)):
        run = train_seg(cfg)
        net, info = load_seg_model(run / "checkpoints" / "last.pt")
        assert info["soft_head_trained"] is trained and net.soft_head is trained
        with torch.no_grad():
            prob, soft = net(x)
            head = net.backbone(x).float()
        if trained:
            torch.testing.assert_close(soft, torch.tanh(head[:, 1:2]))
        else:
            torch.testing.assert_close(soft, 2.0 * prob - 1.0)
            assert not torch.allclose(torch.tanh(head[:, 1:2]), 2.0 * prob - 1.0)  # the raw head differs
        report = evaluate_checkpoint(run / "checkpoints" / "last.pt", data=data, out=tmp_path / f"ev{trained}")
        assert report["soft_head"] is trained


def test_input_shrink_trains_and_the_checkpoint_keeps_it(assets, tmp_path):
    """Arm B0: data.input_shrink=2 travels in the run's config, so the reloaded network (what
    `dsnet evaluate` and `dsnet predict` use) shrinks its input too; teacher variants are refused."""
    from dataclasses import replace

    from dsnet_trainer.models.dsnet import shrink_then_bicubic
    from dsnet_trainer.seg_config import SegDataConfig

    data, teacher = assets
    cfg = tiny_config(data, tmp_path / "b0", variant="unet_soft", epochs=1, steps=1)
    run = train_seg(replace(cfg, data=replace(cfg.data, input_shrink=2)))
    net, info = load_seg_model(run / "checkpoints" / "last.pt")
    assert info["config"]["data"]["input_shrink"] == 2 and net.input_shrink == 2
    seen = {}
    net.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    x = SampleShardDataset(data, split="test")[1]["image"][None]
    with torch.no_grad():
        assert net(x)[0].shape == x.shape
    torch.testing.assert_close(seen["x"], shrink_then_bicubic(x, 2))
    with pytest.raises(ConfigError, match="data.input_shrink"):
        SegDataConfig(input_shrink=3)
    with pytest.raises(ConfigError, match="data.crop_px"):
        SegDataConfig(crop_px=33, input_shrink=2)


def test_input_shrink_with_a_x2_teacher_trains_and_inference_applies_the_same_stage(assets, tmp_path):
    """Arms B1/B2: DRTM over a x2 teacher fed the crop shrunk x2 trains; the checkpoint (format
    unchanged) rebuilds the same network, so `dsnet evaluate`/`predict` feed the teacher the 2x2
    block means too; a x4 teacher is refused with one line naming both numbers."""
    from dataclasses import replace

    from dsnet_trainer.evaluate import evaluate_checkpoint
    from dsnet_trainer.models.teacher import load_teacher

    data, teacher4 = assets
    teacher2 = write_tiny_teacher(tmp_path / "teacher2.pt", scale=2)
    cfg = tiny_config(data, tmp_path / "b1", variant="drtm", teacher=teacher2, teacher_mode="upscale",
                      epochs=1, steps=1)
    run = train_seg(replace(cfg, data=replace(cfg.data, input_shrink=2)))
    net, info = load_seg_model(run / "checkpoints" / "last.pt")
    assert info["config"]["data"]["input_shrink"] == 2 and net.input_shrink == 2 and net.scale == 1
    seen = {}
    net.teacher.register_forward_pre_hook(lambda m, args: seen.setdefault("lr", args[0]))
    x = SampleShardDataset(data, split="test")[1]["image"][None]
    with torch.no_grad():
        prob, _ = net(x)
    assert prob.shape == x.shape == (1, 1, 32, 32)
    blocks = x.numpy().reshape(1, 1, 16, 2, 16, 2).mean(axis=(3, 5))       # 2x2 block means by hand
    np.testing.assert_allclose(seen["lr"].numpy(), blocks, atol=1e-6)
    # the frozen teacher inside is the file's: same SR image for the same LR input
    with torch.no_grad():
        want = load_teacher(teacher2)(torch.from_numpy(blocks)).sr
        torch.testing.assert_close(net.teacher(torch.from_numpy(blocks))[0], want)
    report = evaluate_checkpoint(run / "checkpoints" / "last.pt", out=tmp_path / "eval", data=data, n_preview=0)
    assert (tmp_path / "eval" / "per_crop.csv").is_file() and report is not None
    cfg4 = tiny_config(data, tmp_path / "b1x4", variant="drtm", teacher=teacher4, teacher_mode="upscale",
                       epochs=1, steps=1)
    with pytest.raises(ConfigError, match=r"data.input_shrink=2 and model.teacher .*x4.*needs a x2 SR teacher"):
        train_seg(replace(cfg4, data=replace(cfg4.data, input_shrink=2)))
