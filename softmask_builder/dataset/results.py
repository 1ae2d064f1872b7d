"""What a build produced: :class:`ShardResult` per shard and :class:`BuildResult` for the build.

These types sit below both :mod:`softmask_builder.dataset.build` (which makes them) and
:mod:`softmask_builder.dataset.release` (which writes the release files from them), and above
:mod:`softmask_builder.dataset.plan`, so the import graph reads top to bottom:
``build`` -> ``release`` -> ``results`` -> ``plan``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softmask_builder.dataset import counting
from softmask_builder.formats.recipes import SPLITS
from softmask_builder.sources.base import Reject

if TYPE_CHECKING:  # pragma: no cover
    from softmask_builder.dataset.plan import BuildPlan

__all__ = ["ShardResult", "BuildResult"]


@dataclass(frozen=True)
class ShardResult:
    """What one shard job produced (or what a finished shard holds, when skipped)."""

    name: str
    split: str
    index: int
    count: int
    n_planned: int
    n_samples: int
    sha256: str
    bytes: int
    rejects: tuple[Reject, ...]
    patients: tuple[str, ...]
    skipped: bool = False



@dataclass(frozen=True)
class BuildResult:
    out: Path
    plan: "BuildPlan"
    shards: tuple[ShardResult, ...]
    #: wall seconds of the build's phases ("build": first chunk submitted -> last shard written,
    #: "release"); not part of any output file.
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def rejects(self) -> list[Reject]:
        rows = list(self.plan.plan_rejects)
        for s in self.shards:
            rows.extend(s.rejects)
        return sorted(rows, key=lambda r: (r.sample_id, r.stage, r.reason))

    @property
    def n_samples(self) -> int:
        return sum(s.n_samples for s in self.shards)

    def split_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            members = [s for s in self.shards if s.split == split]
            if not members:
                continue
            out[split] = {
                "n_samples": sum(s.n_samples for s in members),
                "n_planned": sum(s.n_planned for s in members),
                "n_patients": len({p for s in members for p in s.patients}),
                "n_shards": len(members),
            }
        return out

    def summary(self) -> dict[str, Any]:
        rejects = self.rejects
        return {
            "dataset": self.plan.recipe.dataset,
            "out": str(self.out),
            "n_samples": self.n_samples,
            "n_planned": self.plan.n_planned,
            "n_shards": len(self.shards),
            "n_shards_built": sum(not s.skipped for s in self.shards),
            "n_shards_skipped": sum(s.skipped for s in self.shards),
            "splits": self.split_counts(),
            "n_rejects": len(rejects),
            "rejects_by_stage": dict(sorted(Counter(r.stage for r in rejects).items())),
            "n_unselected": self.plan.n_unselected,
            "unselected_by_filter": counting.by_filter(self.plan.unselected),
            "warnings": self.warnings,
        }

    @property
    def warnings(self) -> list[str]:
        """Empty splits the recipe asks for, and shards whose every sample was rejected."""
        counts = {k: v["n_samples"] for k, v in self.split_counts().items()}
        return (counting.empty_split_warnings(dataclasses.asdict(self.plan.recipe.split), counts, self.plan.targets)
                + counting.empty_shard_warnings(self.shards))
