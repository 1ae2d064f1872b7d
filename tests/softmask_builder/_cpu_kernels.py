"""Shared by the tests that a result does not depend on the CPU's BLAS kernel: random lesion masks
on the pixel grid (their RECIST marks have many equal-length chords) and a runner that executes
code in a fresh interpreter under each OpenBLAS kernel."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: default (SkylakeX on an AVX-512 CPU, Haswell/Zen on AVX2), the SSE3 generic kernel, AVX2
KERNELS = (None, "Prescott", "Haswell")
needs_x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                               reason="OPENBLAS_CORETYPE names x86 kernels")


def random_ellipses(n, seed, radius_px=(1.5, 6.0), size=24, center_jitter_px=3.0):
    """``n`` bool (size, size) ellipse masks at random angles, >= 3 pixels, no full row or column."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    while len(out) < n:
        cy, cx = rng.uniform(size / 2 - center_jitter_px, size / 2 + center_jitter_px, 2)
        ry, rx = rng.uniform(*radius_px, 2)
        th = rng.uniform(0, math.pi)
        c, s = math.cos(th), math.sin(th)
        u, v = c * (xx - cx) + s * (yy - cy), -s * (xx - cx) + c * (yy - cy)
        m = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        if m.sum() >= 3 and not (m.all(axis=0).any() or m.all(axis=1).any()):
            out.append(m)
    return out


def stdout_under_each_kernel(code: str, *args: str) -> list[str]:
    """``python -c code args`` once per OpenBLAS kernel (KERNELS), run from the repository root;
    their standard outputs."""
    outs = []
    for core in KERNELS:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if core:
            env["OPENBLAS_CORETYPE"] = core
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True,
                              text=True, cwd=ROOT)
        outs.append(done.stdout)
    return outs
