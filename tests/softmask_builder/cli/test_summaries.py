"""cli.summaries: the human line suggests `dsnet train` only when the build can train."""

from __future__ import annotations

import pytest

from softmask_builder.cli.summaries import build_line


def _summary(train: int, val: int, test: int) -> dict:
    splits = {k: {"n_samples": n, "n_patients": n, "n_shards": 1 if n else 0, "n_planned": n}
              for k, n in (("train", train), ("val", val), ("test", test)) if n}
    return {"out": "build/x", "dataset": "x", "n_samples": train + val + test, "n_shards": len(splits),
            "n_rejects": 0, "rejects_by_stage": {}, "n_unselected": 0, "splits": splits}


@pytest.mark.parametrize("train, val, test, suggested, why", [
    (3, 1, 0, True, None),
    (3, 0, 1, False, "the val split is empty"),
    (0, 2, 2, False, "the train split is empty"),
    (0, 0, 4, False, "the train and val splits are empty"),
])
def test_train_is_suggested_only_when_train_and_val_have_samples(train, val, test, suggested, why):
    line = build_line(_summary(train, val, test))
    assert ("train --data build/x" in line) == suggested
    if why:
        assert why in line
    assert line.startswith(f"built {train + val + test} samples of x into build/x")
