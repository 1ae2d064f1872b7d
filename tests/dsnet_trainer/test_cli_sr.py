"""`dsnet pretrain-sr`: a tiny run through click, and one-line errors naming the file/option."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from dsnet_trainer.cli import main

QUICK = ["--config", "sr_tiny", "--no-progress", "-s", "stage1.epochs=1", "-s", "stage2.epochs=1",
         "-s", "data.patches_per_slice=4", "-s", "loop.batch_size=4", "-s", "data.val_max_slices=1"]


def _run(args):
    return CliRunner().invoke(main, ["pretrain-sr", *args])


def test_tiny_run_prints_the_report(tmp_path, slice_shards):
    res = _run(["--data", str(slice_shards), "--out", str(tmp_path / "run"), *QUICK])
    assert res.exit_code == 0, res.output
    assert "| bicubic |" in res.stdout and "| + adversarial fine-tuning (stage 2) |" in res.stdout
    assert f"teacher: {tmp_path / 'run' / 'teacher.pt'}" in res.stdout
    from softmask_builder.cli.summaries import tool

    assert f"next: {tool('dsnet')} train" in res.stderr.splitlines()[-1]  # the closing human summary, pasteable
    again = _run(["--data", str(slice_shards), "--out", str(tmp_path / "run"), "--resume", "auto", *QUICK])
    assert again.exit_code == 0, again.output  # everything done: resume trains nothing, same report
    assert again.stdout == res.stdout


@pytest.mark.parametrize("extra, message", [
    (["--data", "{tmp}/nowhere"], "nowhere: no such file or folder"),
    (["-s", "stage1.epochz=3"], "unknown config key 'stage1.epochz'"),
    (["-s", "data.hr_patch_px=30"], "data.hr_patch_px"),
    (["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    (["--resume", "{tmp}/ghost.pt"], "ghost.pt"),
    (["--resume", "{tmp}/corrupt.pt"], "corrupt.pt"),
    (["--amp", "bf16", "--device", "cpu"], "amp=bf16 needs a CUDA device"),
])
def test_errors_are_one_line_and_name_the_culprit(tmp_path, slice_shards, extra, message):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    extra = [x.replace("{tmp}", str(tmp_path)) for x in extra]
    args = ["--data", str(slice_shards), "--out", str(tmp_path / "run"), *QUICK]
    res = _run(args + extra if extra[0] != "--data" else extra + args[2:])
    assert res.exit_code == 2, res.output
    last = res.stderr.strip().splitlines()[-1]  # notes (e.g. the dataset check) may come before
    assert last.startswith("Error: ") and message.replace("{tmp}", str(tmp_path)) in last
    assert "Traceback" not in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda(tmp_path, slice_shards):
    res = _run(["--data", str(slice_shards), "--out", str(tmp_path / "run"), "--device", "cuda", *QUICK])
    assert res.exit_code == 2 and "loop.device='cuda' asks for CUDA" in res.output


def test_light_modules_do_not_import_torch():
    code = ("import sys, dsnet_trainer.cli, dsnet_trainer.config, dsnet_trainer.models, dsnet_trainer.errors, "
            "dsnet_trainer.seg_config, dsnet_trainer.models.loading, dsnet_trainer.provenance; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_teacher_info(tmp_path, slice_shards):
    import json

    res = _run(["--data", str(slice_shards), "--out", str(tmp_path / "run"), *QUICK, "-s", "stage2.epochs=0",
                "-s", "export_from=srresnet"])
    assert res.exit_code == 0, res.output
    info = CliRunner().invoke(main, ["teacher-info", str(tmp_path / "run" / "teacher.pt")])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert summary["metrics"] == report["srresnet"] and summary["scale"] == 4
    assert summary["feature_channels"] == 16 and summary["window_level_hu"] == -600.0
    bad = CliRunner().invoke(main, ["teacher-info", str(tmp_path / "none.pt")])
    assert bad.exit_code == 2 and "none.pt" in bad.output


def test_every_dsnet_option_has_help():
    import click

    missing = []
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help:
                missing.append(f"dsnet {name} {p.opts[0]}")
    assert not missing, missing
