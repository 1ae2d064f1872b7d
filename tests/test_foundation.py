"""The two distributions' entry points import and answer --help."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.mark.parametrize("module", ["softmask_builder.cli", "dsnet_trainer.cli"])
def test_cli_help(module):
    mod = __import__(module, fromlist=["main"])
    result = CliRunner().invoke(mod.main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("module, name", [("softmask_builder.cli", "softmask"), ("dsnet_trainer.cli", "dsnet")])
def test_python_dash_m_runs_each_cli(module, name):
    """``python -m softmask_builder.cli`` (scripts/gpu_tables.sh) and ``torchrun -m dsnet_trainer.cli``."""
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=True)
    assert name in out.stdout


def test_console_scripts_installed():
    bindir = Path(sys.executable).parent
    for name in ("softmask", "dsnet"):
        out = subprocess.run([str(bindir / name), "--version"], capture_output=True, text=True, check=True)
        assert name in out.stdout


def test_trainer_import_does_not_import_torch():
    code = "import sys, dsnet_trainer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
