"""Every option of every ``softmask`` and ``dsnet`` command says what it does (non-empty help),
and the build commands' default output folders are the make targets'."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from dsnet_trainer.cli import main as dsnet_main
from softmask_builder.cli import main as softmask_main

ROOT = Path(__file__).resolve().parents[2]


def walk(group: click.Command, path: tuple[str, ...]):
    yield path, group
    if isinstance(group, click.Group):
        for name, sub in sorted(group.commands.items()):
            yield from walk(sub, path + (name,))


COMMANDS = [p for cli, name in ((softmask_main, "softmask"), (dsnet_main, "dsnet")) for p in walk(cli, (name,))]


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help(path, command):
    assert (command.help or command.short_help or "").strip(), f"{' '.join(path)} has no help text"
    missing = [p.opts[0] for p in command.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, f"{' '.join(path)}: options without help: {missing}"


def test_the_walk_finds_options_without_help():
    @click.command()
    @click.option("--x", default=1)
    def bare(x):
        """Doc."""

    with pytest.raises(AssertionError, match="--x"):
        test_every_option_has_help(("bare",), bare)


def test_recipe_help_names_every_bundled_recipe():
    build = softmask_main.commands["build"]
    for kind, sub in build.commands.items():
        recipe = next(p for p in sub.params if p.name == "recipe_name")
        for path in (ROOT / "manifests").glob("*.yaml"):
            assert path.stem in recipe.help, f"build {kind} --recipe help omits {path.stem}"


def _make_target_out(target: str, **variables: str) -> str:
    """The --out a make target passes to softmask, read from `make -n` (nothing is run)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    args = ["make", "-n", "-s", "-C", str(ROOT), target, "VENV=/nonexistent-venv", "STAMP="]
    args += [f"{k}={v}" for k, v in variables.items()]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    m = re.search(r'softmask (?:build \w+|make-lnsm)\b.*?--out "([^"]+)"', text)
    assert m, text
    return m.group(1)


@pytest.mark.parametrize("kind,target,variables", [
    ("deeplesion", "lnsm", {"DEEPLESION": "/d"}),
    ("lidc", "lidc", {"LIDC_DICOM": "/d"}),
    ("masks", "masks", {"MASKS": "/d"}),
    ("slices", "slices", {"DEEPLESION": "/d"}),
])
def test_build_default_out_is_the_make_targets(kind, target, variables):
    from softmask_builder.cli import DEFAULT_OUT

    assert str(DEFAULT_OUT[kind]) == _make_target_out(target, **variables)
