"""What a build left out and what came out empty: ``unselected.csv`` rows, their counts by filter,
and the warnings for empty splits and empty shards (printed in the summary, on stderr by the CLI,
and in the dataset card).

Pure functions on the plan's rows and counts; :mod:`softmask_builder.dataset.build` and :mod:`softmask_builder.dataset.release` call them.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Iterable, Mapping

from softmask_builder.formats.release_folder import UNSELECTED_HEADER
from softmask_builder.sources.base import UNSELECTED, Reject, unselected_row



def filter_of(row: Reject) -> str:
    """The filter name of an unselected row (its reason up to the first ``:``)."""
    return row.reason.split(":", 1)[0]


def split_unselected(rejects: Iterable[Reject]) -> tuple[list[Reject], list[Reject]]:
    """(true rejects, unselected rows) of a plan function's rows."""
    rejects = list(rejects)
    return [r for r in rejects if r.stage != UNSELECTED], [r for r in rejects if r.stage == UNSELECTED]


def limit_rows(refs, limit: int) -> list[Reject]:
    return [unselected_row(r.sample_id, "limit", f"beyond --limit {limit} (by sample_id)") for r in refs]


def target_rows(refs) -> list[Reject]:
    return [unselected_row(r.sample_id, "split", "beyond the split targets (split.counts)") for r in refs]


def by_filter(rows: Iterable[Reject]) -> dict[str, int]:
    """Filter name -> number of rows it left out (sorted by name)."""
    return dict(sorted(Counter(filter_of(r) for r in rows).items()))


def unselected_csv_text(rows: Iterable[Reject]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(UNSELECTED_HEADER)
    for r in sorted(rows, key=lambda r: (r.sample_id, r.reason)):
        name, _, detail = r.reason.partition(":")
        writer.writerow([r.sample_id, name, detail.strip()])
    return buf.getvalue()


def empty_split_warnings(split: Mapping, samples_per_split: Mapping[str, int],
                         targets: Mapping[str, int] | None = None) -> list[str]:
    """One warning per split the recipe asks for that holds no sample.

    ``split`` is the recipe's split section as a dict (``method``, ``counts``/``fractions``): the
    splits asked for are the keys of its table (all three for ``method: official``)."""
    from softmask_builder.formats.recipes import SPLITS

    if split.get("method") == "official":
        wanted = list(SPLITS)
    else:
        table = split.get("counts") if split.get("counts") is not None else split.get("fractions") or {}
        wanted = [k for k in SPLITS if k in table]
    out = []
    for k in wanted:
        if samples_per_split.get(k, 0) == 0:
            target = (targets or {}).get(k)
            why = f" (target {target})" if target is not None else ""
            out.append(f"split {k} is empty: 0 samples{why}")
    return out


def empty_shard_warnings(shards) -> list[str]:
    """One warning per shard that holds no sample although samples were planned for it."""
    return [f"shard {s.name} holds 0 samples (all {s.n_planned} planned samples were rejected)"
            for s in shards if s.n_samples == 0 and s.n_planned > 0]
