"""Shared fixtures of the adversarial corpus (``tests/adversarial/``).

Every case feeds the toolkit one hostile input or fault and asserts a clear outcome: a one-line
error with the documented exit code, or a ``rejects.csv`` row with a reason, and nothing lost
(the good samples still built, no file half-written under a final name). Builds run in-process
at one job on 1-3-sample sources.

Fixtures here are shared by every ``test_*.py`` of this folder (builder, scale-out and trainer
corpora): keep them small and source-agnostic.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.adversarial.kit import synthetic_ct


@pytest.fixture(scope="session")
def phantom3(tmp_path_factory) -> Path:
    """A 3-case phantom source in the DeepLesion layout (3 patients, key slice + 2 neighbours
    each). Read-only: copy it (``dl_source``) before changing anything."""
    from softmask_builder.phantom.deeplesion_writer import write_sample

    root = tmp_path_factory.mktemp("phantom3")
    write_sample(root, n=3, seed=0)
    return root


@pytest.fixture
def dl_source(phantom3, tmp_path) -> Path:
    """A private, writable copy of :func:`phantom3`."""
    dst = tmp_path / "src"
    shutil.copytree(phantom3, dst)
    return dst


@pytest.fixture
def masks_source(tmp_path) -> Path:
    """Two image/mask pairs side by side (``case1_a.npy`` + ``case1_a_mask.png``, ...), images in
    HU as float32 ``.npy``."""
    root = tmp_path / "masks"
    root.mkdir()
    for i, name in enumerate(("case1_a", "case2_a")):
        image, mask = synthetic_ct(seed=i)
        np.save(root / f"{name}.npy", image)
        assert cv2.imwrite(str(root / f"{name}_mask.png"), mask.astype(np.uint8) * 255)
    return root
