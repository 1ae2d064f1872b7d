"""Shared fixtures. Real fixtures live outside the repository (``../shared/data``, or the folder
named by ``$SOFTMASK_SHARED_DATA``); tests that need them skip with the reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_root() -> Path | None:
    root = Path(os.environ.get("SOFTMASK_SHARED_DATA", _DEFAULT_SHARED))
    return root if (root / "README.md").exists() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real fixtures absent: set SOFTMASK_SHARED_DATA or place them at ../shared/data")
    return root


@pytest.fixture(scope="session")
def deeplesion_root(shared_data: Path) -> Path:
    root = shared_data / "deeplesion"
    if not (root / "DL_info.csv").exists():
        pytest.skip(f"DeepLesion fixture absent at {root}")
    return root


@pytest.fixture(scope="session")
def lidc_root(shared_data: Path) -> Path:
    root = shared_data / "lidc"
    if not root.exists():
        pytest.skip(f"LIDC fixture absent at {root}")
    return root


@pytest.fixture(autouse=True, scope="session")
def _softmask_cache_in_tmp(tmp_path_factory):
    """Caches the toolkit keeps outside a source (DeepLesion zip index, LIDC header scan and plan)
    go to the test session's temporary folder, never to the user's ``~/.cache``. Session-scoped,
    so module fixtures that plan a source see it too; subprocesses inherit the variable."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SOFTMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "softmask-cache"))
    yield
    mp.undo()
