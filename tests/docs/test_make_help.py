"""`make help` lists every target of the Makefile, and only those."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def makefile_targets(text: str) -> set[str]:
    """Rule names of a Makefile: `name:` at a line start, not `:=` assignments, not special targets."""
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z0-9-]*)\s*:(?!=)", text, re.M)}


def test_makefile_targets_parser():
    assert makefile_targets("a: b\n\tcmd\nX := 1\nb-c:\n.PHONY: a\nv ?= w\nd := e\n") == {"a", "b-c"}


def test_make_help_lists_every_target():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    listed = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert names == makefile_targets((ROOT / "Makefile").read_text())
