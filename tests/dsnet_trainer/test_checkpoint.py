"""The checkpoint file (:mod:`dsnet_trainer.checkpoint`): round trip through
``torch.load(weights_only=True)``, errors naming the file, the layout and bytes every checkpoint so
far has."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from dsnet_trainer import checkpoint
from dsnet_trainer.checkpoint import load_checkpoint, save_checkpoint
from dsnet_trainer.digest import weights_sha256
from dsnet_trainer.engine import TrainState
from dsnet_trainer.errors import CheckpointError
from dsnet_trainer.runtime import Precision


def _toy_state(kind="toy", hidden=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.5)
    state = TrainState(kind, modules={"model": model}, optimizers={"model": opt}, schedulers={"model": sched},
                       precision=Precision("off", torch.device("cpu")), compat={"hidden": hidden})
    return state, model, opt, sched


def test_checkpoint_roundtrip_weights_only(tmp_path):
    state, model, opt, sched = _toy_state()
    x = torch.randn(8, 3)
    for _ in range(3):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    state.epoch, state.step, state.best_metric = 3, 30, 0.75
    path = save_checkpoint(state.state_dict(), tmp_path / "ck" / "last.pt")
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp file left
    # weights_only=True is what load_checkpoint uses; MultiStepLR's Counter must pass it.
    ck = load_checkpoint(path, expect_kind="toy")
    fresh, fmodel, fopt, fsched = _toy_state()
    fresh.load_state_dict(ck, source=path)
    assert (fresh.epoch, fresh.step, fresh.best_metric) == (3, 30, 0.75)
    for a, b in zip(model.state_dict().values(), fmodel.state_dict().values()):
        assert torch.equal(a, b)
    assert fsched.state_dict() == sched.state_dict()
    assert fopt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip archive at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    state, *_ = _toy_state()
    good = save_checkpoint(state.state_dict(), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="plain.pt.*not a dsnet_trainer checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="good.pt.*'toy'.*expected other"):
        load_checkpoint(good, expect_kind="other")


class _Evil:
    pass


def test_pickled_code_is_refused(tmp_path):
    # weights_only=True refuses arbitrary objects: a checkpoint carrying one is rejected.
    bad = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "version": checkpoint.CHECKPOINT_VERSION, "obj": _Evil()}, bad)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(bad)


# ---------------------------------------------------------------------------- layout and bytes
# The keys of every checkpoint file so far, in their order (docs of dsnet_trainer.checkpoint).
LAYOUT = ["format", "version", "weights_sha256", "state_sha256", "kind", "epoch", "step", "best_metric", "compat",
          "modules", "optimizers", "schedulers", "scaler", "rng", "extra"]


def test_layout_and_digest_are_those_of_version_3(tmp_path):
    state, model, *_ = _toy_state()
    ck = load_checkpoint(save_checkpoint(state.state_dict(), tmp_path / "last.pt"))
    assert list(ck) == LAYOUT
    assert (ck["format"], ck["version"]) == ("dsnet-trainer-checkpoint", 3)
    assert ck["weights_sha256"] == weights_sha256({"model": model.state_dict()})
    assert set(ck["modules"]["model"]) == set(model.state_dict())


_SAVE = """
import sys, torch
from dsnet_trainer.checkpoint import save_checkpoint
save_checkpoint({"format": "x", "weights": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, sys.argv[1])
"""


def test_bytes_do_not_depend_on_the_process(tmp_path):
    # torch.save names the zip's inner folder after the file it writes: the temporary must not
    # put the pid into the bytes. Every checkpoint so far has the folder ".<final name>".
    paths = [tmp_path / d / "last.pt" for d in ("a", "b")]
    for path in paths:
        subprocess.run([sys.executable, "-c", _SAVE, str(path)], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert {n.split("/")[0] for n in zipfile.ZipFile(paths[0]).namelist()} == {".last.pt"}
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["last.pt"]  # no temporary left


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(AttributeError, match="pickle"):
        save_checkpoint({"bad": lambda: 0}, tmp_path / "ck" / "last.pt")  # a lambda cannot be pickled
    assert list((tmp_path / "ck").iterdir()) == []
