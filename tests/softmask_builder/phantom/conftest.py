"""Shared phantom fixtures."""

from __future__ import annotations

import pytest

from softmask_builder.phantom.cases import generate_cases

SMALL = dict(shape=(256, 256))


@pytest.fixture(scope="package")
def small_cases():
    # one case of every kind, small slices and nodules so the modules stay fast
    return generate_cases(6, seed=7, diameter_range_mm=(3.0, 12.0), **SMALL)
