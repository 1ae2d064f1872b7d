"""Adversarial corpus, trainer side: corrupt datasets, checkpoints, teachers and predictions given
to `dsnet` must end in a one-line error with the shared exit code (2 bad input, 3 verification
failed), never a traceback, and never be trained or evaluated on silently.

The dataset is a real builder output (a 6-case phantom built with the ``sample`` recipe, one job),
so the manifest, SHA256SUMS and verify logic are the production ones. ``XDG_CACHE_HOME`` points
into ``tmp_path`` so the verification cache never touches the user's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dsnet_trainer.cli import main

EXIT_INPUT, EXIT_VERIFY = 2, 3  # softmask_builder/exitcodes.py (the shared table)
QUICK = ["--config", "seg_tiny", "--variant", "unet", "--no-progress", "-s", "optim.epochs=1",
         "-s", "loop.max_steps_per_epoch=1", "-s", "model.widths=[4,8]", "-s", "loop.batch_size=2",
         "-s", "data.val_split=", "--resume", "none"]


@pytest.fixture(scope="module")
def built_sample(tmp_path_factory) -> Path:
    """A real `softmask build` output: 6 phantom cases, recipe ``sample`` (train + test splits)."""
    from softmask_builder.cli import main as softmask

    root = tmp_path_factory.mktemp("trainer_adv")
    runner = CliRunner()
    res = runner.invoke(softmask, ["phantom", "--out", str(root / "src"), "--n", "6", "--seed", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(softmask, ["build", "deeplesion", str(root / "src"), "--recipe", "sample",
                                   "--out", str(root / "ds"), "--jobs", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "ds"


@pytest.fixture
def ds(built_sample, tmp_path, monkeypatch) -> Path:
    """A private copy of the built sample; the verification cache under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dst = tmp_path / "ds"
    shutil.copytree(built_sample, dst)
    return dst


def _train(ds: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "--data", str(ds), "--out", str(out), *QUICK, *extra])


def _one_line_error(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), res.stderr
    for f in fragments:
        assert f in last, last
    return last


def _shard(ds: Path, split: str = "train") -> Path:
    return next(ds.glob(f"*-{split}-*.h5"))


def _restate_size(ds: Path, shard: Path) -> None:
    """Make the manifest claim the edited shard's new size, as a careless tool would: only the
    full verification (hashes, value domains) can then see the damage."""
    m = json.loads((ds / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == shard.name:
            e["bytes"] = shard.stat().st_size
    (ds / "manifest.json").write_text(json.dumps(m, indent=2))


def _edit(shard: Path, name: str, fn) -> None:
    with h5py.File(shard, "r+") as f:
        data = f[name][()]
        f[name][...] = fn(data)


# ---------------------------------------------------------------------------- datasets
def test_clean_dataset_is_verified_once_then_cached(ds, tmp_path, monkeypatch):
    before = sorted(p.name for p in ds.iterdir())
    first = _train(ds, tmp_path / "run1")
    assert first.exit_code == 0, first.output
    assert "verified" in first.stderr and "cached in" in first.stderr
    markers = list((tmp_path / "cache" / "softmask" / "verified").glob("*.json"))
    assert len(markers) == 1
    assert sorted(p.name for p in ds.iterdir()) == before  # nothing written into the dataset
    import softmask_builder.dataset.release as release

    def no_second_hashing(root):
        raise AssertionError("verify() called again on an unchanged dataset")

    monkeypatch.setattr(release, "verify", no_second_hashing)
    second = _train(ds, tmp_path / "run2")
    assert second.exit_code == 0, second.output
    assert "dataset check:" not in second.stderr
    # a changed file (new mtime and size) is verified again
    with open(ds / "rejects.csv", "a") as fh:
        fh.write("")
    import os
    os.utime(ds / "rejects.csv", ns=(1, 1))
    third = _train(ds, tmp_path / "run3")
    assert third.exit_code == 1 and "verify() called again" in str(third.exception)


def test_deleted_shard(ds, tmp_path):
    _shard(ds, "test").unlink()
    _one_line_error(_train(ds, tmp_path / "run"), EXIT_INPUT, "is missing")


def test_duplicated_shard(ds, tmp_path):
    src = _shard(ds)
    shutil.copy(src, ds / src.name.replace("-00000-of-00001", "-00000-of-00001-copy"))
    _one_line_error(_train(ds, tmp_path / "run"), EXIT_INPUT, "not in the manifest")


def test_shard_of_another_kind(ds, tmp_path):
    shard = _shard(ds)
    with h5py.File(shard, "r+") as f:
        f.attrs["kind"] = "slices"
    _restate_size(ds, shard)
    _one_line_error(_train(ds, tmp_path / "run"), EXIT_INPUT, "'slices'", "expected 'samples'")


def test_shard_resized_behind_the_manifest(ds, tmp_path):
    with open(_shard(ds), "ab") as fh:
        fh.write(b"\0" * 10)
    _one_line_error(_train(ds, tmp_path / "run"), EXIT_INPUT, "bytes, manifest says")


def test_binary_mask_of_seven_fails_verification(ds, tmp_path):
    shard = _shard(ds)
    _edit(shard, "binary_mask", lambda a: np.where(a > 0, 7, a).astype(a.dtype))
    _restate_size(ds, shard)
    _one_line_error(_train(ds, tmp_path / "run"), EXIT_VERIFY, "fails verification")


def test_nan_soft_mask_fails_verification(ds, tmp_path):
    shard = _shard(ds)
    _edit(shard, "soft_mask", lambda a: np.full_like(a, np.nan))
    _restate_size(ds, shard)
    _one_line_error(_train(ds, tmp_path / "run"), EXIT_VERIFY, "fails verification")


def test_no_verify_skips_with_a_stderr_message(ds, tmp_path):
    shard = _shard(ds)
    _edit(shard, "binary_mask", lambda a: np.where(a > 0, 7, a).astype(a.dtype))
    _restate_size(ds, shard)
    res = _train(ds, tmp_path / "run", "--no-verify")
    assert res.exit_code == 0, res.output
    assert "dataset check skipped (--no-verify)" in res.stderr
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------- checkpoints
@pytest.fixture
def trained(ds, tmp_path) -> Path:
    res = _train(ds, tmp_path / "run")
    assert res.exit_code == 0, res.output
    return tmp_path / "run" / "checkpoints" / "last.pt"


def _evaluate(ckpt: Path, ds: Path, *extra: str):
    return CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--data", str(ds), "--val-split", "",
                                     *extra])


def _weight_bytes_offset(path: Path) -> int:
    """File offset of the largest model weight's bytes (torch stores tensors uncompressed)."""
    obj = torch.load(path, weights_only=True)
    t = max((v for v in obj["modules"]["model"].values() if v.is_floating_point()), key=lambda v: v.numel())
    raw = path.read_bytes()
    offset = raw.find(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert offset > 0
    return offset


def test_flipped_weight_byte(trained, ds, tmp_path):
    bad = tmp_path / "flipped.pt"
    raw = bytearray(trained.read_bytes())
    raw[_weight_bytes_offset(trained) + 3] ^= 0xFF
    bad.write_bytes(bytes(raw))
    _one_line_error(_evaluate(bad, ds), EXIT_INPUT, "flipped.pt")


def test_edited_weight_does_not_match_its_digest(trained, ds, tmp_path):
    obj = torch.load(trained, weights_only=True)
    key = next(k for k, v in obj["modules"]["model"].items() if v.is_floating_point() and v.numel() > 1)
    obj["modules"]["model"][key].view(-1)[0] = -9.4e37
    torch.save(obj, tmp_path / "edited.pt")
    _one_line_error(_evaluate(tmp_path / "edited.pt", ds), EXIT_INPUT, "edited.pt", "sha256 digest")
    # resuming from it is refused the same way
    res = _train(ds, tmp_path / "run2", "--resume", str(tmp_path / "edited.pt"))
    _one_line_error(res, EXIT_INPUT, "sha256 digest")


def test_all_nan_checkpoint(trained, ds, tmp_path):
    from dsnet_trainer.digest import weights_sha256

    obj = torch.load(trained, weights_only=True)
    for v in obj["modules"]["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    obj["weights_sha256"] = weights_sha256(obj["modules"])  # a run that diverged, saved consistently
    from dsnet_trainer.checkpoint import state_sha256

    obj["state_sha256"] = state_sha256(obj)
    torch.save(obj, tmp_path / "nan.pt")
    _one_line_error(_evaluate(tmp_path / "nan.pt", ds), EXIT_INPUT, "nan.pt", "NaN or infinite weights")


def test_format_table_survives_nan_metrics():
    from dsnet_trainer.evaluate import format_table

    nan = {"mean": None, "std": None}
    m = {"n_crops": 3, "at_fixed": {"dice": nan, "sen": nan, "ppv": nan}, "threshold_val": None,
         "at_val_threshold": None, "authors_protocol": {"dice_smooth": nan},
         "soft_mask": {"sad": nan, "mse": {"mean": float("nan"), "std": 0.0}}}
    row = format_table([{"name": "diverged", "metrics": m}]).splitlines()[-1]
    assert row.startswith("| diverged | 3 | n/a |") and row.count("n/a") == 6


@pytest.mark.parametrize("content, fragment", [(b"", "empty (0 bytes)"),
                                               (b"epoch: 3\nweights: none\n", "not a checkpoint file")])
def test_empty_and_text_checkpoints(ds, tmp_path, content, fragment):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    _one_line_error(_evaluate(bad, ds), EXIT_INPUT, "bad.pt", fragment)


def test_old_checkpoint_version(trained, ds, tmp_path):
    obj = torch.load(trained, weights_only=True)
    obj["version"] = 1
    del obj["weights_sha256"]
    torch.save(obj, tmp_path / "v1.pt")
    _one_line_error(_evaluate(tmp_path / "v1.pt", ds), EXIT_INPUT, "version 1", "retrain")


# ---------------------------------------------------------------------------- SR teacher
def _teacher(path: Path, patients: dict[str, list[str]] | None) -> Path:
    from dsnet_trainer.models import build_model
    from dsnet_trainer.models.teacher import export_teacher
    from dsnet_trainer.sr.config import GeneratorConfig, SRConfig

    cfg = SRConfig(generator=GeneratorConfig(n_channels=4, n_blocks=1))
    gen = build_model("srresnet", **cfg.generator_kwargs())
    return export_teacher(gen, cfg, path, train_patients=patients)


def _patients(ds: Path, split: str) -> list[str]:
    from softmask_builder.formats.shards import open_shard

    with open_shard(_shard(ds, split)) as shard:
        return sorted({str(p) for p in shard.meta_column("patient")})


def test_teacher_that_saw_a_test_patient_is_refused(ds, tmp_path):
    leaky = _teacher(tmp_path / "leaky.pt", {"deeplesion": _patients(ds, "train") + _patients(ds, "test")[:1]})
    args = ["--variant", "drtm", "--teacher", str(leaky), "-s", "model.teacher_mode=native"]
    res = CliRunner().invoke(main, ["train", "--data", str(ds), "--out", str(tmp_path / "run"), *QUICK, *args])
    _one_line_error(res, EXIT_INPUT, "leaky.pt", "1 patient(s) of the test", "retrain")
    ok = CliRunner().invoke(main, ["train", "--data", str(ds), "--out", str(tmp_path / "run"), *QUICK, *args,
                                   "--allow-teacher-overlap"])
    assert ok.exit_code == 0, ok.output
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["teacher_check"]["allow_teacher_overlap"] and info["teacher_check"]["n_overlap"] == 1
    # the evaluation of that run says the same (the run's setting is carried in the checkpoint)
    ev = _evaluate(tmp_path / "run" / "checkpoints" / "last.pt", ds)
    assert ev.exit_code == 0, ev.output
    report = json.loads((tmp_path / "run" / "eval-test" / "metrics.json").read_text())
    assert report["teacher_check"]["n_overlap"] == 1


def test_clean_teacher_is_accepted(ds, tmp_path):
    clean = _teacher(tmp_path / "clean.pt", {"deeplesion": _patients(ds, "train")})
    res = CliRunner().invoke(main, ["train", "--data", str(ds), "--out", str(tmp_path / "run"), *QUICK,
                                    "--variant", "drtm", "--teacher", str(clean), "-s", "model.teacher_mode=native"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["teacher_check"]["n_overlap"] == 0


def test_old_teacher_without_patient_list(ds, tmp_path):
    path = _teacher(tmp_path / "old.pt", None)
    obj = torch.load(path, weights_only=True)
    obj["version"] = 1
    del obj["train_patients"]
    torch.save(obj, path)
    res = CliRunner().invoke(main, ["train", "--data", str(ds), "--out", str(tmp_path / "run"), *QUICK,
                                    "--variant", "drtm", "--teacher", str(path)])
    _one_line_error(res, EXIT_INPUT, "old.pt", "version 1", "pretrain-sr")


# ---------------------------------------------------------------------------- external predictions
def test_predictions_folder_missing_a_crop(ds, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    res = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--data", str(ds)])
    _one_line_error(res, EXIT_INPUT, "no prediction for crop")


def test_predictions_of_the_wrong_shape(ds, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    from softmask_builder.formats.shards import open_shard

    with open_shard(_shard(ds, "test")) as shard:
        ids = shard.sample_ids
    for sid in ids:
        np.savez(pred / f"{sid}.npz", probabilities=np.zeros((2, 1, 32, 32), np.float32))
    res = CliRunner().invoke(main, ["evaluate", "--predictions", str(pred), "--data", str(ds)])
    _one_line_error(res, EXIT_INPUT, "(32, 32)")


def test_checkpoint_and_predictions_together_is_a_usage_error(ds, tmp_path):
    res = CliRunner().invoke(main, ["evaluate", "--predictions", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt"),
                                    "--data", str(ds)])
    _one_line_error(res, EXIT_INPUT, "exactly one of")


# ---------------------------------------------------------------------------- issue 23: state digest
def _flip_first_float(tree) -> bool:
    """Flip one bit of the first non-empty floating tensor found in ``tree`` (in place)."""
    if isinstance(tree, dict):
        return any(_flip_first_float(tree[k]) for k in sorted(tree, key=str))
    if isinstance(tree, (list, tuple)):
        return any(_flip_first_float(v) for v in tree)
    if isinstance(tree, torch.Tensor) and tree.is_floating_point() and tree.numel():
        tree.view(-1)[:1].view(torch.uint8)[0] ^= 1
        return True
    return False


@pytest.mark.parametrize("part", ["optimizers", "rng", "epoch"])
def test_flipped_training_state_is_refused_for_evaluation_and_resume(part, trained, ds, tmp_path):
    obj = torch.load(trained, weights_only=True)
    if part == "epoch":
        obj["epoch"] += 1
    elif part == "rng":
        rng = obj["rng"]
        key = next(k for k in sorted(rng) if isinstance(rng[k], torch.Tensor))
        rng[key] = rng[key].clone()
        rng[key][0] ^= 1
    else:
        assert _flip_first_float(obj["optimizers"])
    torch.save(obj, tmp_path / "flipped.pt")
    _one_line_error(_evaluate(tmp_path / "flipped.pt", ds), EXIT_INPUT, "flipped.pt", "training state")
    res = _train(ds, tmp_path / "run3", "--resume", str(tmp_path / "flipped.pt"))
    _one_line_error(res, EXIT_INPUT, "training state")


def test_version_2_checkpoint_is_refused_with_the_retrain_line(trained, ds, tmp_path):
    obj = torch.load(trained, weights_only=True)
    obj["version"] = 2
    del obj["state_sha256"]
    torch.save(obj, tmp_path / "v2.pt")
    _one_line_error(_evaluate(tmp_path / "v2.pt", ds), EXIT_INPUT, "version 2", "retrain")
