"""The deterministic dataset build: plan -> split by patient -> shards -> parallel shard jobs.

Phases
------
1. **plan** (:mod:`softmask_builder.dataset.plan`; parent process, cheap): the recipe's source
   adapter lists :class:`SampleRef` rows (``plan_*``); :func:`make_plan` applies ``limit``, splits by patient (:func:`split_refs`) and cuts
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

Kinds: a recipe's source decides what a shard holds (``recipe.kind``): "samples" (2-D crops labelled by
:func:`label_record`), "slices" (full slices, no labels) or "volumes" (issue 26: one (Z, H, W) crop per
lesion from a 3-D adapter's :class:`~softmask_builder.sources.base.VolumeRecord`, labelled by
:func:`label_volume_record` with the recipe's ``volume.isotropic``, checked against ``volume.crop_zrc``).

Resume: the plan is recorded in ``<out>/.plan.json``; a shard whose final file exists and carries
the plan's ``plan_sha256`` attribute is finished and skipped on a rerun. Leftover temporary files of
a killed build are removed; release files are deleted before any shard is written and rewritten
at the end, so a killed build never looks finished (``verify`` fails on it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from softmask_builder import __version__
from softmask_builder.errors import InputError, SoftMaskError
from softmask_builder.core import atomic
from softmask_builder.core.executor import TaskRunner
from softmask_builder.dataset.locking import out_lock
from softmask_builder.labelling.pipeline import LabelParams, Labels, label_from_mask, label_from_readers, label_from_recist
from softmask_builder.formats.recipes import Recipe
from softmask_builder.sources.relpaths import RootRelativeLoader
from softmask_builder.dataset.plan import (BuildPlan, ShardPlan, make_plan, plan_build,  # noqa: F401 (build API)
                                           source_functions, split_refs)
from softmask_builder.formats.release_folder import PLAN_FILE, RELEASE_FILES
from softmask_builder.formats.shards import (SCHEMA_VERSION, encode_meta, is_temp_name, layout, open_shard,
                                             optional_arrays, parse_shard_name, sha256_file, write_shard)
from softmask_builder.dataset.release import write_release
from softmask_builder.dataset.results import BuildResult, ShardResult
from softmask_builder.sources.base import Reject, SampleRecord, SampleRef, SliceRecord, VolumeRecord

Loader = Callable[[SampleRef], Any]
Labeller = Callable[[SampleRecord, LabelParams], Labels]


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


def label_volume_record(record: VolumeRecord, params: LabelParams, *, isotropic: bool) -> Labels:
    """Label one loaded 3-D sample (issue 26): the readers' strategy
    (:func:`~softmask_builder.labelling.pipeline3d.label_volume_from_readers`) or the mask's
    (``label_volume_from_mask``), on the original grid or on near-isotropic voxels (``isotropic``,
    the recipe's ``volume.isotropic``). Arrays of the result are (Z, H, W)."""
    from softmask_builder.labelling.pipeline3d import label_volume_from_mask, label_volume_from_readers

    sid = record.ref.sample_id
    if record.prior_kind == "readers":
        return label_volume_from_readers(record.image_hu, record.prior, record.spacing_mm, params,
                                         isotropic=isotropic, sample_id=sid)
    if record.prior_kind == "mask":
        return label_volume_from_mask(record.image_hu, record.prior, record.spacing_mm, params,
                                      isotropic=isotropic, sample_id=sid)
    raise InputError(f"unknown volume prior_kind {record.prior_kind!r} (readers or mask)", sample_id=sid,
                     stage="label")


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
        # One line whatever the library wrote (cv2.error messages span several lines).
        reason, own = " ".join(f"{type(exc).__name__}: {exc}".split()), None
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


def _labelled_arrays(record, labels: Labels, crop_shape: tuple[int, ...], *, unit: str) -> dict[str, np.ndarray]:
    """The arrays of one labelled sample (2-D ``crop_shape`` (H, W), or 3-D (Z, H, W) for volumes),
    checked against the recipe's crop: image and labels of that shape and finite, the Soft Mask
    clipped to [0, 1] (solver round-off), a phantom source's truth as ``true_fraction`` (schema 3)."""
    sid = record.ref.sample_id
    image = np.asarray(record.image_hu)
    if image.shape != tuple(crop_shape):
        asked = f"({crop_shape[0]}, {crop_shape[1]})" if len(crop_shape) == 2 else f"{tuple(crop_shape)}"
        raise InputError(f"crop shape {image.shape}, the recipe asks for {asked}", sample_id=sid, stage="load")
    if not np.isfinite(image).all():
        raise InputError(f"image_hu has NaN/inf {unit}", sample_id=sid, stage="load")
    for name in ("trimap", "soft_mask", "binary_mask"):
        if np.shape(getattr(labels, name)) != image.shape:
            raise InputError(f"label {name} shape {np.shape(getattr(labels, name))} != crop {image.shape}",
                             sample_id=sid, stage="label")
    alpha = np.asarray(labels.soft_mask, dtype=np.float32)
    if not np.isfinite(alpha).all():
        raise InputError("soft_mask has NaN/inf values", sample_id=sid, stage="label")
    arrays = {
        "image_hu": _to_int16(image),
        # Clipping guards the schema's [0, 1] range against solver round-off.
        "soft_mask": np.clip(alpha, 0.0, 1.0),
        "binary_mask": np.asarray(labels.binary_mask).astype(bool).astype(np.uint8),
        "trimap": np.asarray(labels.trimap).astype(np.uint8),
    }
    if record.true_fraction is not None:  # a phantom source's truth (schema 3's optional array)
        truth = np.asarray(record.true_fraction, dtype=np.float32)
        if truth.shape != image.shape or not np.isfinite(truth).all():
            raise InputError(f"true_fraction shape {truth.shape} != crop {image.shape} or not finite",
                             sample_id=sid, stage="load")
        arrays["true_fraction"] = np.clip(truth, 0.0, 1.0)
    return arrays


def _sample_row(record: SampleRecord, labels: Labels, crop_px: int, split: str):
    arrays = _labelled_arrays(record, labels, (crop_px, crop_px), unit="pixels")
    recist = _recist_px(record.prior) if record.prior_kind == "recist" else None
    meta = {
        "sample_id": record.ref.sample_id, "source_key": record.ref.source_key, "patient": record.ref.patient,
        "split": split, "spacing_mm": record.spacing_mm, "origin_px": record.origin_px, "scale": record.scale,
        "recist_px": recist, "n_readers": record.n_readers, "lesion_type": record.lesion_type,
    }
    return arrays, meta


def _volume_row(record: VolumeRecord, labels: Labels, crop_zrc: tuple[int, int, int], split: str):
    """The arrays and meta row of one volume sample (kind ``volumes``), checked against the recipe's crop."""
    sid = record.ref.sample_id
    if not isinstance(record, VolumeRecord):
        raise InputError(f"a volume build needs a VolumeRecord from its loader, got {type(record).__name__}",
                         sample_id=sid, stage="load")
    arrays = _labelled_arrays(record, labels, tuple(crop_zrc), unit="voxels")
    meta = {
        "sample_id": sid, "source_key": record.ref.source_key, "patient": record.ref.patient, "split": split,
        "spacing_mm": tuple(record.spacing_mm), "origin_px": tuple(record.origin_px), "scale": tuple(record.scale),
        "n_readers": record.n_readers, "lesion_type": record.lesion_type,  # key_z -1, recist_px NaN: no RECIST in 3-D
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


# Errors that reject one sample: every Exception (a cv2.error from a hostile file, a KeyError
# from a library's corner case, a MemoryError from one huge input) becomes a rejects row naming
# the sample, the stage and the exception type, and the build goes on. KeyboardInterrupt and
# SystemExit (BaseException, not Exception) still stop it.
_SAMPLE_ERRORS = (Exception,)


def _build_one(ref: SampleRef, split: str, recipe: Recipe, loader: Loader, labeller: Labeller | None):
    """Load (and label) one sample: ``(arrays, meta)`` or a :class:`Reject`."""
    phase = "load"
    try:
        record = loader(ref)
        if record.ref.sample_id != ref.sample_id:
            raise InputError(f"loader returned sample {record.ref.sample_id!r}", sample_id=ref.sample_id)
        if recipe.kind == "slices":
            arrays, meta = _slice_row(record, split, None)
        elif recipe.kind == "volumes":
            phase = "label"
            labels = (labeller(record, recipe.label) if labeller is not None else
                      label_volume_record(record, recipe.label, isotropic=recipe.volume.isotropic))
            phase = "write"
            arrays, meta = _volume_row(record, labels, tuple(recipe.volume.crop_zrc), split)
        else:
            phase = "label"
            labels = labeller(record, recipe.label)
            phase = "write"
            arrays, meta = _sample_row(record, labels, recipe.crop_px, split)
        encode_meta([meta], recipe.kind)  # fails here (one sample) rather than for the shard
    except _SAMPLE_ERRORS as exc:
        return _reject(ref, exc, phase)
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

    if recipe.kind != "volumes":  # a volume build labels with label_volume_record unless told
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
    # The optional true_fraction travels when the samples carry it (a phantom source: all or none).
    with_truth = sorted({name for a in arrays_list for name in a} - set(specs))
    for name in with_truth:
        if not all(name in a for a in arrays_list):
            raise RuntimeError(f"{shard.name}: some samples carry {name} and some do not")
    specs = {**specs, **{name: optional_arrays(kind)[name] for name in with_truth}}
    hw = ((recipe.crop_px, recipe.crop_px) if kind == "samples" else tuple(recipe.volume.crop_zrc)
          if kind == "volumes" else (slice_shape or (1, 1)))
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
    atomic.write_text(plan_path, json.dumps(plan.record(), indent=1, sort_keys=True) + "\n")


#: Samples per chunk (the unit of parallel work) when ``run_build`` is not told.
DEFAULT_CHUNK_SAMPLES = {"samples": 8, "slices": 4, "volumes": 1}


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
