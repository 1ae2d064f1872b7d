"""The build plan: everything decided before any pixel is read.

The recipe's source adapter lists :class:`~softmask_builder.sources.base.SampleRef` rows
(``plan_*``); :func:`make_plan` applies ``limit``, splits by patient (:func:`split_refs`) and cuts
each split into shards of ``samples_per_shard`` refs, so every shard's name
(``{dataset}-{split}-{i:05d}-of-{n:05d}.h5``) and content list are fixed before any pixel is read.
:class:`BuildPlan` is what :mod:`softmask_builder.dataset.build` executes and what
:mod:`softmask_builder.dataset.results` and :mod:`softmask_builder.dataset.release` describe; it sits
below all three. Pure except :func:`plan_build`, which asks the source adapter to read its indexes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from softmask_builder.dataset import counting
from softmask_builder.errors import InputError, SourceError
from softmask_builder.formats.recipes import SOURCES, SPLITS, Recipe, SplitSpec
from softmask_builder.formats.shards import SAMPLE_META_DTYPE, shard_name
from softmask_builder.sources.base import Reject, SampleRef
from softmask_builder.sources.relpaths import relative_rejects

__all__ = ["ShardPlan", "BuildPlan", "split_refs", "make_plan", "source_functions", "plan_build"]


@dataclass(frozen=True)
class ShardPlan:
    """One shard to build: its name, position and the refs it will hold (sorted by sample_id)."""

    name: str
    split: str
    index: int
    count: int
    refs: tuple[SampleRef, ...]
    plan_sha256: str


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before any pixel is read.

    shards : in order split (train, val, test) then index.
    plan_rejects : rows already rejected while planning (stage "plan").
    n_unselected : rows left out by a selection filter of the source, the split targets or
        ``limit``; ``unselected`` lists them (``unselected.csv``: sample id, filter, detail).
    targets : target sample count per split ({} for the official split).
    """

    recipe: Recipe
    source: str
    shards: tuple[ShardPlan, ...]
    plan_rejects: tuple[Reject, ...]
    n_unselected: int
    targets: dict[str, int]
    unselected: tuple[Reject, ...] = ()

    @property
    def n_planned(self) -> int:
        return sum(len(s.refs) for s in self.shards)

    def split_counts(self) -> dict[str, int]:
        counts = Counter()
        for s in self.shards:
            counts[s.split] += len(s.refs)
        return {k: counts[k] for k in SPLITS if k in counts}

    def record(self) -> dict[str, Any]:
        """The JSON content of ``.plan.json`` (what a rerun compares against)."""
        return {
            "dataset": self.recipe.dataset,
            "recipe_sha256": self.recipe.sha256(),
            "shards": [{"name": s.name, "plan_sha256": s.plan_sha256, "n_planned": len(s.refs)}
                       for s in self.shards],
        }

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.recipe.dataset,
            "recipe_sha256": self.recipe.sha256(),
            "n_planned": self.n_planned,
            "n_shards": len(self.shards),
            "splits": self.split_counts(),
            "targets": dict(self.targets),
            "n_plan_rejects": len(self.plan_rejects),
            "n_unselected": self.n_unselected,
            "unselected_by_filter": counting.by_filter(self.unselected),
            "warnings": counting.empty_split_warnings(dataclasses.asdict(self.recipe.split), self.split_counts(), self.targets),
        }


def _stable_key(seed: int, patient: str) -> str:
    # A hash, not a numpy Generator: the order must not change with the numpy version.
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def _targets_from_fractions(fractions: Mapping[str, float], n: int) -> dict[str, int]:
    """Largest-remainder rounding of ``fractions * n`` (sums to n exactly)."""
    raw = {k: fractions[k] * n for k in SPLITS if k in fractions}
    out = {k: int(math.floor(v)) for k, v in raw.items()}
    left = n - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), SPLITS.index(k)))[:left]:
        out[k] += 1
    return out


def split_refs(refs: Sequence[SampleRef], spec: SplitSpec) -> tuple[dict[str, list[SampleRef]],
                                                                    list[SampleRef], list[Reject], dict[str, int]]:
    """Split refs into train/val/test, never putting one patient in two splits.

    Method "patient": patients are ordered by ``sha256(f"{seed}:{patient}")`` (independent of the
    input order and of library versions) and assigned one by one, each to the split that is
    furthest behind its target:

    * ``counts`` (exact targets): the split with the smallest filled fraction among those still
      below target takes the patient's refs (in sample_id order) up to its remaining need; a
      patient's refs that do not fit are left out (unselected), never moved to another split.
      When fewer samples exist than the targets ask for, the splits fill in proportion.
    * ``fractions``: targets are ``fractions * len(refs)`` (largest-remainder rounding); whole
      patients go to the split with the largest remaining deficit, so every ref is used and the
      splits match the fractions up to one patient's worth of samples.

    Method "official": ``ref.split`` is used; refs without one are rejected (stage "plan").

    Returns
    -------
    splits : split name -> refs sorted by sample_id (only splits with refs).
    unselected : refs left out.
    rejects : plan-stage rejects.
    targets : target count per split ({} for "official").
    """
    splits: dict[str, list[SampleRef]] = defaultdict(list)
    unselected: list[SampleRef] = []
    rejects: list[Reject] = []
    if spec.method == "official":
        for ref in refs:
            if ref.split in SPLITS:
                splits[ref.split].append(ref)
            else:
                rejects.append(Reject(ref.sample_id, "plan", f"no official split (got {ref.split!r})"))
        return {k: sorted(splits[k], key=_sid) for k in SPLITS if splits[k]}, unselected, rejects, {}

    by_patient: dict[str, list[SampleRef]] = defaultdict(list)
    for ref in refs:
        by_patient[ref.patient].append(ref)
    order = sorted(by_patient, key=lambda p: (_stable_key(spec.seed, p), p))
    if spec.counts is not None:
        targets = {k: int(spec.counts[k]) for k in SPLITS if k in spec.counts}
    else:
        targets = _targets_from_fractions(spec.fractions, len(refs))
    filled = dict.fromkeys(targets, 0)
    for patient in order:
        group = sorted(by_patient[patient], key=_sid)
        if spec.counts is not None:
            open_splits = [k for k in targets if filled[k] < targets[k]]
            if not open_splits:
                unselected.extend(group)
                continue
            k = min(open_splits, key=lambda k: (filled[k] / targets[k], SPLITS.index(k)))
            take = min(len(group), targets[k] - filled[k])
            splits[k].extend(group[:take])
            unselected.extend(group[take:])
            filled[k] += take
        else:
            live = [k for k in targets if targets[k] > 0]
            k = max(live, key=lambda k: (targets[k] - filled[k], -SPLITS.index(k)))
            splits[k].extend(group)
            filled[k] += len(group)
    return ({k: sorted(splits[k], key=_sid) for k in SPLITS if splits[k]}, sorted(unselected, key=_sid),
            rejects, targets)


def _sid(ref: SampleRef) -> str:
    return ref.sample_id


_META_LIMITS = {name: SAMPLE_META_DTYPE[name].itemsize for name in ("sample_id", "source_key", "patient")}


def _plan_digest(recipe_sha: str, name: str, refs: Sequence[SampleRef]) -> str:
    payload = json.dumps({"recipe_sha256": recipe_sha, "name": name,
                          "refs": [[r.sample_id, r.source_key, r.patient] for r in refs]},
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def make_plan(recipe: Recipe, refs: Iterable[SampleRef], rejects: Iterable[Reject] = (), *,
              source: str = "", limit: int | None = None, unselected: Iterable[Reject] = ()) -> BuildPlan:
    """Turn planned refs into a :class:`BuildPlan` (pure: no file is read).

    ``limit`` keeps the first ``limit`` refs by sample_id (a trial build). Refs whose ids do not
    fit the schema's fixed-length fields are rejected (stage "plan"); duplicate sample ids are an
    error of the source (:class:`SourceError`).
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    refs = sorted(refs, key=_sid)
    plan_rejects, left_out = counting.split_unselected(rejects)
    left_out += list(unselected)
    seen = set()
    for ref in refs:
        if ref.sample_id in seen:
            raise SourceError(f"duplicate sample_id {ref.sample_id!r} in the plan of source {recipe.source!r}")
        seen.add(ref.sample_id)
    kept = []
    for ref in refs:
        too_long = [f for f, size in _META_LIMITS.items() if len(str(getattr(ref, f)).encode()) > size]
        if too_long:
            plan_rejects.append(Reject(ref.sample_id, "plan",
                                       f"{', '.join(too_long)} longer than the schema allows"))
        else:
            kept.append(ref)
    if limit is not None and len(kept) > limit:
        left_out += counting.limit_rows(kept[limit:], limit)
        kept = kept[:limit]
    splits, beyond_targets, split_rejects, targets = split_refs(kept, recipe.split)
    plan_rejects.extend(split_rejects)
    left_out += counting.target_rows(beyond_targets)
    left_out.sort(key=lambda r: (r.sample_id, r.reason))
    n_unselected = len(left_out)

    recipe_sha = recipe.sha256()
    per = recipe.samples_per_shard
    shards = []
    for split in SPLITS:
        members = splits.get(split, [])
        count = math.ceil(len(members) / per)
        for i in range(count):
            chunk = tuple(members[i * per:(i + 1) * per])
            name = shard_name(recipe.dataset, split, i, count, kind=recipe.kind)
            shards.append(ShardPlan(name, split, i, count, chunk, _plan_digest(recipe_sha, name, chunk)))
    plan_rejects.sort(key=lambda r: (r.sample_id, r.stage, r.reason))
    return BuildPlan(recipe, str(source), tuple(shards), tuple(plan_rejects), n_unselected, targets,
                     tuple(left_out))


def source_functions(source: str) -> tuple[Callable, Callable]:
    """The ``(plan, load)`` functions of a source adapter named in :data:`recipes.SOURCES`."""
    spec = SOURCES[source]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise InputError(f"source adapter {spec.module} is not available: {exc}") from None
    return getattr(module, spec.plan), getattr(module, spec.load)


def plan_build(recipe: Recipe, source: str | Path, *, limit: int | None = None) -> BuildPlan:
    """Plan a build of ``recipe`` from the ``source`` folder (reads only the source's indexes).

    The build sets the crop of the adapter's plan function: ``crop_px`` for a sample source,
    ``crop_zrc`` (the recipe's ``volume.crop_zrc``) for a volume source."""
    plan_fn, _ = source_functions(recipe.source)
    kwargs = dataclasses.asdict(recipe.source_options)
    if recipe.kind == "samples":
        kwargs["crop_px"] = recipe.crop_px
    elif recipe.kind == "volumes":
        kwargs["crop_zrc"] = tuple(recipe.volume.crop_zrc)
    unselected: list[Reject] = []
    if "unselected" in inspect.signature(plan_fn).parameters:
        kwargs["unselected"] = unselected
    refs, rejects = plan_fn(source, **kwargs)
    rejects = relative_rejects(rejects, source)  # no local path in released files
    return make_plan(recipe, refs, rejects, source=str(source), limit=limit, unselected=unselected)
