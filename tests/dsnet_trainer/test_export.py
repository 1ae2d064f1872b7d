"""Export: the exported module (HU in) matches the eager network fed by the training-time window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsnet_trainer.data import SampleShardDataset
from dsnet_trainer.errors import InputError
from dsnet_trainer.export import ExportMismatchError, export_checkpoint, load_exported
from dsnet_trainer.models.loading import load_seg_model

from .seg_helpers import trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("exprun"), variant="dsnet")


def _check_against_eager(path, data, ckpt):
    module = load_exported(path)
    net, _ = load_seg_model(ckpt)
    ds = SampleShardDataset(data, split="test")
    hu = np.stack([ds.reader.read(*ds.reader.locate(i), "image_hu") for i in range(len(ds))]).astype(np.float32)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])  # windowed by the data loader
    with torch.no_grad():
        prob, alpha = module(torch.from_numpy(hu)[:, None])
        prob_ref, soft_ref = net(x)
    torch.testing.assert_close(prob, prob_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, (soft_ref + 1) / 2, rtol=0, atol=1e-5)


def test_torchscript_export_matches_eager(run, tmp_path):
    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    info = export_checkpoint(ckpt, tmp_path / "dsnet.pt", data=data)
    assert info["max_abs_diff"] <= 1e-5 and info["checked_batches"][:2] == [1, 3]
    _check_against_eager(tmp_path / "dsnet.pt", data, ckpt)


@pytest.mark.slow
def test_torch_export_matches_eager(run, tmp_path):
    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    export_checkpoint(ckpt, tmp_path / "dsnet.pt2", fmt="exported")
    _check_against_eager(tmp_path / "dsnet.pt2", data, ckpt)


def test_mismatch_leaves_no_file_and_bad_options(run, tmp_path):
    _, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    with pytest.raises(ExportMismatchError, match="differ from eager outputs"):
        export_checkpoint(ckpt, tmp_path / "m.pt", atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=".pt2"):
        export_checkpoint(ckpt, tmp_path / "m.pt", fmt="exported")
    with pytest.raises(InputError, match="--format"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", fmt="onnx")


def test_exported_module_is_frozen_and_checks_its_input(run, tmp_path):
    data, _, run_dir = run
    info = export_checkpoint(run_dir / "checkpoints" / "best.pt", tmp_path / "dsnet.pt")
    crop = info["crop_px"]
    module = load_exported(tmp_path / "dsnet.pt")
    assert not module.training
    assert all(not p.requires_grad for p in module.parameters()) and len(list(module.parameters())) > 0
    prob, alpha = module(torch.full((2, 1, crop, crop), -600.0))
    assert prob.numpy().shape == alpha.numpy().shape == (2, 1, crop, crop)  # .numpy() needs no .detach()
    for bad in [(crop, crop), (1, crop, crop), (2, 3, crop, crop), (1, 1, crop, crop + 1)]:
        with pytest.raises(Exception, match=rf"expected image_hu of shape \(B, 1, {crop}, {crop}\).*got shape"):
            module(torch.zeros(bad))


def test_torchscript_loads_in_an_isolated_interpreter_without_the_packages(run, tmp_path):
    """`python -I` from an empty folder (no PYTHONPATH, no cwd on sys.path): the file needs torch only."""
    import json
    import os
    import subprocess
    import sys

    data, _, run_dir = run
    info = export_checkpoint(run_dir / "checkpoints" / "best.pt", tmp_path / "dsnet.pt")
    work = tmp_path / "empty"
    work.mkdir()
    script = (
        "import json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import torch\n"
        f"m = torch.jit.load({str(tmp_path / 'dsnet.pt')!r})\n"
        f"prob, alpha = m(torch.full((3, 1, {info['crop_px']}, {info['crop_px']}), -600.0))\n"
        "print(json.dumps({'shape': list(prob.shape), 'alpha_max': float(alpha.numpy().max()),\n"
        "  'loaded': sorted(k for k in sys.modules if k.split('.')[0] in ('softmask_builder', 'dsnet_trainer'))}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [3, 1, info["crop_px"], info["crop_px"]] and 0.0 <= out["alpha_max"] <= 1.0
    assert out["loaded"] == []
