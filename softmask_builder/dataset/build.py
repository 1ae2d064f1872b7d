"""The deterministic dataset build: plan -> split by patient -> shards -> parallel shard jobs.

Phases
------
1. **plan** (parent process, cheap): the recipe's source adapter lists :class:`SampleRef` rows
   (``plan_*``); :func:`make_plan` applies ``limit``, splits by patient (:func:`split_refs`) and cuts
   each split into shards of ``samples_per_shard`` refs, so every shard's name
   (``{dataset}-{split}-{i:05d}-of-{n:05d}.h5``) and content list are fixed before any pixel is
   read.
2. **build** (:func:`run_build`): one job per shard loads and labels its samples (failures become
   rejects rows, the rest goes on) and writes the shard atomically. Jobs run through
   ``joblib.Parallel`` with no backend chosen here: the caller picks one with
   ``joblib.parallel_config`` (the CLI does; without one, jobs run one after another in-process).
   A shard depends only on its refs and the recipe, so the bytes do not depend on the number of
   jobs or the backend.
3. **release** (:mod:`softmask_builder.dataset.release`): ``manifest.json``, ``rejects.csv``, ``DATASET_CARD.md``,
   ``SHA256SUMS``.

Resume: the plan is recorded in ``<out>/.plan.json``; a shard whose final file exists and carries
the plan's ``plan_sha256`` attribute is finished and skipped on a rerun. Leftover temporary files of
a killed build are removed; release files are deleted before any shard is written and rewritten
at the end, so a killed build never looks finished (``verify`` fails on it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import os
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from softmask_builder import __version__
from softmask_builder.dataset import counting
from softmask_builder.errors import InputError, SoftMaskError, SourceError
from softmask_builder.core.executor import TaskRunner
from softmask_builder.dataset.locking import out_lock
from softmask_builder.labelling.pipeline import LabelParams, Labels, label_from_mask, label_from_readers, label_from_recist
from softmask_builder.formats.recipes import SOURCES, SPLITS, Recipe, SplitSpec
from softmask_builder.sources.relpaths import RootRelativeLoader, relative_rejects
from softmask_builder.formats.shards import (SAMPLE_META_DTYPE, SCHEMA_VERSION, encode_meta, is_temp_name, layout, open_shard,
                     parse_shard_name, sha256_file, shard_name, write_shard)
from softmask_builder.dataset.release import write_release
from softmask_builder.dataset.results import BuildResult, ShardResult
from softmask_builder.sources.base import Reject, SampleRecord, SampleRef, SliceRecord

PLAN_FILE = ".plan.json"
RELEASE_FILES = ("manifest.json", "SHA256SUMS", "rejects.csv", "DATASET_CARD.md", "unselected.csv")

Loader = Callable[[SampleRef], Any]
Labeller = Callable[[SampleRecord, LabelParams], Labels]


# --- plan -------------------------------------------------------------------------------------

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
    """Plan a build of ``recipe`` from the ``source`` folder (reads only the source's indexes)."""
    plan_fn, _ = source_functions(recipe.source)
    kwargs = dataclasses.asdict(recipe.source_options)
    if recipe.kind == "samples":
        kwargs["crop_px"] = recipe.crop_px
    unselected: list[Reject] = []
    if "unselected" in inspect.signature(plan_fn).parameters:
        kwargs["unselected"] = unselected
    refs, rejects = plan_fn(source, **kwargs)
    rejects = relative_rejects(rejects, source)  # no local path in released files
    return make_plan(recipe, refs, rejects, source=str(source), limit=limit, unselected=unselected)


# --- shard jobs -------------------------------------------------------------------------------

def label_record(record: SampleRecord, params: LabelParams) -> Labels:
    """Label one loaded sample with the pipeline strategy of its prior kind."""
    sid = record.ref.sample_id
    if record.prior_kind == "recist":
        return label_from_recist(record.image_hu, record.prior, params, sample_id=sid)
    if record.prior_kind == "readers":
        return label_from_readers(record.image_hu, list(record.prior), params, sample_id=sid)
    if record.prior_kind == "mask":
        return label_from_mask(record.image_hu, record.prior, params, sample_id=sid)
    raise InputError(f"unknown prior_kind {record.prior_kind!r}", sample_id=sid, stage="label")


@contextmanager
def _single_threaded():
    """One thread per job for OpenCV and numba (the jobs are the parallelism); restored after,
    since a sequential build runs in the caller's process. BLAS threads in loky workers are
    already limited by joblib, and dask's nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1."""
    import cv2

    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    numba = sys.modules.get("numba")
    nb_threads = numba.get_num_threads() if numba is not None else None
    if numba is not None:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(cv_threads)
        if numba is not None:
            numba.set_num_threads(nb_threads)


def _reject(ref: SampleRef, exc: BaseException, phase: str) -> Reject:
    """A rejects row for ``exc`` raised in ``phase``. Errors raised while labelling are stage
    "label" (the labelling stage that raised, if it says, prefixes the reason); otherwise the
    error's own stage wins over the phase."""
    if isinstance(exc, SoftMaskError):
        reason, own = exc.reason, exc.stage
    else:
        reason, own = f"{type(exc).__name__}: {exc}", None
    if phase == "label":
        return Reject(ref.sample_id, "label", f"{own}: {reason}" if own and own != "label" else reason)
    return Reject(ref.sample_id, own or phase, reason)


def _recist_px(prior) -> np.ndarray | None:
    """RECIST endpoints as a (4, 2) (row, col) array: long a, long b, short a, short b."""
    for attrs in (("long_a", "long_b", "short_a", "short_b"),):
        if all(hasattr(prior, a) for a in attrs):
            return np.array([np.asarray(getattr(prior, a), dtype=np.float64) for a in attrs])
    if hasattr(prior, "as_array"):
        return np.asarray(prior.as_array(), dtype=np.float64).reshape(4, 2)
    arr = np.asarray(prior, dtype=np.float64)
    return arr.reshape(4, 2) if arr.size == 8 else None


def _to_int16(image_hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image_hu), -32768, 32767).astype(np.int16)


def _sample_row(record: SampleRecord, labels: Labels, crop_px: int, split: str):
    sid = record.ref.sample_id
    image = np.asarray(record.image_hu)
    if image.shape != (crop_px, crop_px):
        raise InputError(f"crop shape {image.shape}, the recipe asks for ({crop_px}, {crop_px})",
                         sample_id=sid, stage="load")
    if not np.isfinite(image).all():
        raise InputError("image_hu has NaN/inf pixels", sample_id=sid, stage="load")
    for name in ("trimap", "soft_mask", "binary_mask"):
        if np.shape(getattr(labels, name)) != image.shape:
            raise InputError(f"label {name} shape {np.shape(getattr(labels, name))} != crop {image.shape}",
                             sample_id=sid, stage="label")
    alpha = np.asarray(labels.soft_mask, dtype=np.float32)
    if not np.isfinite(alpha).all():
        raise InputError("soft_mask has NaN/inf values", sample_id=sid, stage="label")
    recist = _recist_px(record.prior) if record.prior_kind == "recist" else None
    meta = {
        "sample_id": sid, "source_key": record.ref.source_key, "patient": record.ref.patient, "split": split,
        "spacing_mm": record.spacing_mm, "origin_px": record.origin_px, "scale": record.scale,
        "recist_px": recist, "n_readers": record.n_readers, "lesion_type": record.lesion_type,
    }
    arrays = {
        "image_hu": _to_int16(image),
        # Clipping guards the schema's [0, 1] range against solver round-off.
        "soft_mask": np.clip(alpha, 0.0, 1.0),
        "binary_mask": np.asarray(labels.binary_mask).astype(bool).astype(np.uint8),
        "trimap": np.asarray(labels.trimap).astype(np.uint8),
    }
    return arrays, meta


def _slice_row(record: SliceRecord, split: str, shape: tuple[int, int] | None):
    sid = record.ref.sample_id
    image = np.asarray(record.image_hu)
    if image.ndim != 2:
        raise InputError(f"slice must be 2-D, got shape {image.shape}", sample_id=sid, stage="load")
    if shape is not None and image.shape != shape:
        raise InputError(f"slice shape {image.shape} differs from this shard's {shape}", sample_id=sid, stage="load")
    if not np.isfinite(image).all():
        raise InputError("image_hu has NaN/inf pixels", sample_id=sid, stage="load")
    meta = {"sample_id": sid, "source_key": record.ref.source_key, "patient": record.ref.patient,
            "split": split, "spacing_mm": record.spacing_mm}
    return {"image_hu": _to_int16(image)}, meta


# Errors that reject one sample; anything else is a bug and stops the build with the sample id.
_SAMPLE_ERRORS = (SoftMaskError, ValueError, OSError, ArithmeticError)


def _build_one(ref: SampleRef, split: str, recipe: Recipe, loader: Loader, labeller: Labeller):
    """Load (and label) one sample: ``(arrays, meta)`` or a :class:`Reject`."""
    phase = "load"
    try:
        record = loader(ref)
        if record.ref.sample_id != ref.sample_id:
            raise InputError(f"loader returned sample {record.ref.sample_id!r}", sample_id=ref.sample_id)
        if recipe.kind == "slices":
            arrays, meta = _slice_row(record, split, None)
        else:
            phase = "label"
            labels = labeller(record, recipe.label)
            phase = "write"
            arrays, meta = _sample_row(record, labels, recipe.crop_px, split)
        encode_meta([meta], recipe.kind)  # fails here (one sample) rather than for the shard
    except _SAMPLE_ERRORS as exc:
        return _reject(ref, exc, phase)
    except Exception as exc:  # a bug: stop, but say which sample triggered it
        raise RuntimeError(f"building sample {ref.sample_id} ({split}) failed in {phase}: "
                           f"{type(exc).__name__}: {exc}") from exc
    return arrays, meta


def build_chunk(refs: Sequence[SampleRef], split: str, recipe: Recipe, loader: Loader,
                labeller: Labeller | None = None) -> list:
    """The worker's task: load and label ``refs`` (one chunk of one shard), in order.

    Returns one entry per ref: ``(arrays, meta)`` (the schema's uint8/int16/float32 arrays of
    one sample, uncompressed, and its meta row as a dict) or a :class:`Reject`. Nothing is
    written: the main process assembles and writes the shard (:func:`assemble_shard`). Runs
    single-threaded (see :func:`_single_threaded`).
    """
    from softmask_builder.core.executor import keep_freed_memory

    labeller = labeller or label_record
    keep_freed_memory()  # every process that labels, whatever started it (a no-op after the first call)
    with _single_threaded():
        return [_build_one(ref, split, recipe, loader, labeller) for ref in refs]


def assemble_shard(shard: ShardPlan, outcomes: Sequence, out_dir: str | Path, recipe: Recipe) -> ShardResult:
    """Write ``shard`` from the per-sample ``outcomes`` of :func:`build_chunk` (in the shard's ref
    order) to ``out_dir/shard.name``, atomically, and return its :class:`ShardResult`.

    The bytes depend only on the outcomes, never on how the refs were chunked or where they ran.
    A slice whose shape differs from the shard's first slice is rejected here (stage "load").
    """
    if len(outcomes) != len(shard.refs):
        raise RuntimeError(f"{shard.name}: {len(outcomes)} outcomes for {len(shard.refs)} refs")
    kind = recipe.kind
    arrays_list: list[dict[str, np.ndarray]] = []
    metas: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    slice_shape = None
    for ref, outcome in zip(shard.refs, outcomes):
        if isinstance(outcome, Reject):
            rejects.append(outcome)
            continue
        arrays, meta = outcome
        if kind == "slices":
            shape = arrays["image_hu"].shape
            if slice_shape is not None and shape != slice_shape:
                rejects.append(Reject(ref.sample_id, "load",
                                      f"slice shape {shape} differs from this shard's {slice_shape}"))
                continue
            slice_shape = shape
        arrays_list.append(arrays)
        metas.append(meta)

    specs, _ = layout(kind)
    hw = (recipe.crop_px, recipe.crop_px) if kind == "samples" else (slice_shape or (1, 1))
    stacked = {name: (np.stack([a[name] for a in arrays_list]) if arrays_list
                      else np.zeros((0, *hw), dtype=dtype)) for name, dtype in specs.items()}
    attrs = {
        "dataset": recipe.dataset,
        "dataset_version": recipe.version,
        "builder_version": __version__,
        "split": shard.split,
        "recipe_json": recipe.to_json(),
        "recipe_sha256": recipe.sha256(),
        "label_params_json": recipe.label.to_json(),
        "label_params_sha256": recipe.label.sha256(),
        "n_planned": len(shard.refs),
        "plan_sha256": shard.plan_sha256,
        "rejects_json": json.dumps([dataclasses.asdict(r) for r in rejects], sort_keys=True),
        "shard_index": shard.index,
        "shard_count": shard.count,
    }
    path = Path(out_dir) / shard.name
    digest = write_shard(path, arrays=stacked, meta=encode_meta(metas, kind), attrs=attrs, kind=kind)
    return ShardResult(shard.name, shard.split, shard.index, shard.count, len(shard.refs), len(metas), digest,
                       path.stat().st_size, tuple(rejects), tuple(sorted({m["patient"] for m in metas})))


def build_shard(shard: ShardPlan, out_dir: str | Path, recipe: Recipe, *, loader: Loader,
                labeller: Labeller | None = None) -> ShardResult:
    """Load (and label) every sample of ``shard`` in this process and write it to
    ``out_dir/shard.name`` (:func:`build_chunk` on all refs, then :func:`assemble_shard`).

    A sample whose load or labelling raises a project error (or ValueError/OSError) becomes a
    reject with stage "load"/"label" (or the error's own stage); the shard holds the rest, in
    sample_id order.
    """
    return assemble_shard(shard, build_chunk(shard.refs, shard.split, recipe, loader, labeller), out_dir, recipe)


def read_finished(path: Path, shard: ShardPlan) -> ShardResult | None:
    """The result of an already-built shard at ``path``, or None when it is absent, unreadable or
    built from a different plan (``plan_sha256`` attribute) or another schema version."""
    if not path.is_file():
        return None
    try:
        with open_shard(path) as f:
            # a shard of an older schema version is rebuilt, so that a build holds one version
            if f.attrs.get("plan_sha256") != shard.plan_sha256 or f.schema_version != SCHEMA_VERSION:
                return None
            n = f.n_samples
            rejects = tuple(Reject(**r) for r in f.rejects())
            patients = tuple(sorted(set(f.meta_column("patient"))))
    except (SoftMaskError, OSError, KeyError, ValueError, TypeError):
        return None
    return ShardResult(shard.name, shard.split, shard.index, shard.count, len(shard.refs), n, sha256_file(path),
                       path.stat().st_size, rejects, patients, skipped=True)


# --- the build --------------------------------------------------------------------------------

def _our_files(out: Path, dataset: str) -> tuple[list[Path], list[Path], list[Path]]:
    shards, temps, release = [], [], []
    for p in sorted(out.iterdir()):
        parsed = parse_shard_name(p.name)
        if parsed is not None and parsed.dataset == dataset:
            shards.append(p)
        elif is_temp_name(p.name) and _is_ours(p.name[1:].rsplit(".", 2)[0], dataset):
            temps.append(p)
        elif p.name in RELEASE_FILES or p.name == PLAN_FILE:
            release.append(p)
    return shards, temps, release


def _is_ours(name: str, dataset: str) -> bool:
    parsed = parse_shard_name(name)
    return (parsed is not None and parsed.dataset == dataset) or name in RELEASE_FILES or name == PLAN_FILE


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _prepare_out(out: Path, plan: BuildPlan, overwrite: bool) -> None:
    """Make ``out`` ready: refuse a different build unless ``overwrite``; drop leftovers."""
    out.mkdir(parents=True, exist_ok=True)
    shards, temps, release = _our_files(out, plan.recipe.dataset)
    plan_path = out / PLAN_FILE
    previous = None
    if plan_path.exists():
        try:
            previous = json.loads(plan_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
    if not overwrite:
        if previous is not None and previous != plan.record():
            now = plan.recipe.sha256()
            if previous.get("recipe_sha256") != now:
                why = f"another recipe: sha256 {str(previous.get('recipe_sha256'))[:12]}, now {now[:12]}"
            else:
                why = "the same recipe on a changed source: other samples or shards were planned"
            raise InputError(f"{out} holds a build of a different plan ({why}); pass --overwrite to rebuild it "
                             f"or choose another output folder")
        if previous is None and (shards or any(p.name in RELEASE_FILES for p in release)):
            raise InputError(f"{out} already holds {plan.recipe.dataset} shards or release files with no "
                             f"{PLAN_FILE}; pass --overwrite or choose another output folder")
    # Release files first: from here until the end of the build nothing looks finished.
    for p in temps + release:
        p.unlink(missing_ok=True)
    if overwrite:
        for p in shards:
            p.unlink(missing_ok=True)
    _write_json_atomic(plan_path, plan.record())


#: Samples per chunk (the unit of parallel work) when ``run_build`` is not told.
DEFAULT_CHUNK_SAMPLES = {"samples": 8, "slices": 4}


@dataclass(frozen=True)
class _Chunk:
    shard: int  # index into the todo list
    start: int  # first ref of the shard in this chunk
    stop: int


def warm_worker() -> None:
    """Import the labelling stages and load their compiled kernels by labelling a tiny synthetic
    disk; run in each worker before the first chunk (:func:`softmask_builder.core.executor.prestart`) and in the main
    process of a sequential or forked build."""
    from softmask_builder.labelling.pipeline import LabelParams, label_from_mask

    rr, cc = np.mgrid[:24, :24]
    mask = (rr - 12) ** 2 + (cc - 12) ** 2 < 36
    with _single_threaded():
        label_from_mask(np.where(mask, 40.0, -800.0).astype(np.float32), mask, LabelParams())


def plan_chunks(shards: Sequence[ShardPlan], chunk_samples: int) -> list[_Chunk]:
    """Cut each shard's refs into consecutive chunks of at most ``chunk_samples`` refs, in plan
    order (chunks never span two shards; an empty shard gets no chunk)."""
    return [_Chunk(i, start, min(start + chunk_samples, len(s.refs)))
            for i, s in enumerate(shards) for start in range(0, len(s.refs), chunk_samples)]


def run_build(plan: BuildPlan, out: str | Path, *, overwrite: bool = False, loader: Loader | None = None,
              labeller: Labeller | None = None, progress: Callable[[ShardResult], None] | None = None,
              write_release_files: bool = True, chunk_samples: int | None = None,
              max_chunks_in_flight: int | None = None) -> BuildResult:
    """Build every shard of ``plan`` into ``out`` and write the release files.

    Parameters
    ----------
    plan : from :func:`plan_build` or :func:`make_plan`.
    out : output folder (created). A folder holding a different plan is refused unless
        ``overwrite``. The folder is locked (:func:`softmask_builder.dataset.locking.out_lock`) for the whole build: a
        second build into it raises :class:`~softmask_builder.dataset.locking.OutLockedError`.
    overwrite : rebuild every shard (default: shards already finished for this plan are skipped).
    loader : ``SampleRef -> SampleRecord/SliceRecord``; default: the recipe source's ``load_*``.
        Must be picklable (a module-level function) for process backends.
    labeller : ``(SampleRecord, LabelParams) -> Labels``; default :func:`label_record`.
    progress : called in this process with each :class:`ShardResult` as it completes.
    chunk_samples : samples per task (default :data:`DEFAULT_CHUNK_SAMPLES` of the recipe's kind).
    max_chunks_in_flight : tasks submitted and not yet returned (default 2 per worker).

    Parallelism and memory
    ----------------------
    The unit of parallel work is a chunk of consecutive samples of one shard
    (:func:`plan_chunks`), not a shard. Chunks are submitted in plan order to the workers of the
    caller's ``joblib.parallel_config`` (:class:`softmask_builder.core.executor.TaskRunner`); workers load and label
    and return the uncompressed arrays; this process keeps each shard's outcomes until its last
    chunk is back, then compresses and writes the shard (:func:`assemble_shard`). At most
    ``max_chunks_in_flight`` chunks are submitted and not yet returned, and at most
    ``max_chunks_in_flight + chunks of the largest shard`` chunks are held here at any time,
    whatever the size of the build. The shard bytes depend only on the plan: not on the number
    of workers, the chunk size or the backend.

    ``BuildResult.seconds`` gives ``workers`` (start the workers; for a sequential or forked
    build, load the labelling kernels here first: :func:`warm_worker`), ``build`` (first chunk
    submitted -> last shard written: the parallel phase) and ``release`` times.
    """
    import time

    out = Path(out)
    if loader is None:
        _, loader = source_functions(plan.recipe.source)
    if plan.source:
        loader = RootRelativeLoader(loader, plan.source)  # reasons name paths relative to the source
    recipe = plan.recipe
    chunk_samples = chunk_samples or DEFAULT_CHUNK_SAMPLES[recipe.kind]
    if chunk_samples < 1:
        raise InputError(f"chunk_samples must be >= 1, got {chunk_samples}")
    with out_lock(out):
        _prepare_out(out, plan, overwrite)
        results: dict[str, ShardResult] = {}
        todo: list[ShardPlan] = []
        for shard in plan.shards:
            done = None if overwrite else read_finished(out / shard.name, shard)
            if done is None:
                todo.append(shard)
            else:
                results[shard.name] = done
                if progress is not None:
                    progress(done)
        t_start = time.perf_counter()
        # Workers are started (forked after this process loaded the labelling kernels, or
        # prestarted and warmed while we planned) before the parallel phase's clock starts: like
        # the imports, this is a fixed cost that does not grow with the build.
        with TaskRunner(warm=warm_worker) if todo else contextlib.nullcontext() as runner:
            t0 = time.perf_counter()
            for result in _build_shards(todo, out, recipe, loader, labeller, chunk_samples, max_chunks_in_flight,
                                        runner):
                results[result.name] = result
                if progress is not None:
                    progress(result)
            t1 = time.perf_counter()
        ordered = tuple(results[s.name] for s in plan.shards)
        result = BuildResult(out, plan, ordered)
        if write_release_files:
            write_release(result)
        result.seconds.update(workers=round(t0 - t_start, 3), build=round(t1 - t0, 3),
                              release=round(time.perf_counter() - t1, 3))
    return result


def _build_shards(todo: Sequence[ShardPlan], out: Path, recipe: Recipe, loader: Loader,
                  labeller: Labeller | None, chunk_samples: int, max_in_flight: int | None,
                  runner: TaskRunner | None):
    """Yield the :class:`ShardResult` of every shard of ``todo`` as it is written (on ``runner``'s
    workers)."""
    if not todo:
        return
    chunks = plan_chunks(todo, chunk_samples)
    outcomes: list[list | None] = [[None] * len(s.refs) for s in todo]
    missing = [len(s.refs) for s in todo]
    for i, s in enumerate(todo):
        if not s.refs:  # every sample of the shard was planned away: an empty shard
            yield assemble_shard(s, [], out, recipe)
    max_in_flight = max_in_flight or 2 * runner.n_workers
    per_shard = max(math.ceil(len(s.refs) / chunk_samples) for s in todo)
    max_held = max_in_flight + per_shard
    pending: dict = {}
    held = 0  # chunks submitted whose shard is not yet written
    next_chunk = 0
    while next_chunk < len(chunks) or pending:
        while next_chunk < len(chunks) and len(pending) < max_in_flight and held < max_held:
            c = chunks[next_chunk]
            shard = todo[c.shard]
            fut = runner.submit(build_chunk, shard.refs[c.start:c.stop], shard.split, recipe, loader, labeller)
            pending[fut] = c
            held += 1
            next_chunk += 1
        for fut in runner.wait_any(pending):
            c = pending.pop(fut)
            outcomes[c.shard][c.start:c.stop] = fut.result()
            missing[c.shard] -= c.stop - c.start
            if missing[c.shard] == 0:
                shard = todo[c.shard]
                held -= math.ceil(len(shard.refs) / chunk_samples)
                result = assemble_shard(shard, outcomes[c.shard], out, recipe)
                outcomes[c.shard] = None  # free the arrays
                yield result


def build_dataset(recipe: Recipe, source: str | Path, out: str | Path, *, limit: int | None = None,
                  overwrite: bool = False, progress: Callable[[ShardResult], None] | None = None) -> BuildResult:
    """Plan and build ``recipe`` from ``source`` into ``out`` (see :func:`plan_build`, :func:`run_build`)."""
    return run_build(plan_build(recipe, source, limit=limit), out, overwrite=overwrite, progress=progress)
