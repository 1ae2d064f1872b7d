"""Which patients a model has seen: patient ids namespaced by source, and the teacher-leak check.

An SR teacher trained on slices of a patient that the segmentation network is later evaluated on
has seen that patient's anatomy: its features leak test information into every DRTM row. The
teacher file therefore records its training patients (:func:`shard_patients` over its training
slices), and ``dsnet train`` / ``dsnet evaluate`` compare them with the evaluated splits
(:func:`teacher_leak_check`, through :func:`check_teacher_patients`).

Patient ids are namespaced by *source family*, not by dataset name: LNSM crops (dataset ``lnsm``,
source ``deeplesion``) and DeepLesion full slices (dataset ``dl_slices``, source
``deeplesion_slices``) share DeepLesion's ``Patient_index``, so both live under ``deeplesion``.
The family is the recipe's ``source`` with a trailing ``_slices`` removed; a shard without a
recipe (hand-made test shards) falls back to its ``dataset`` attribute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["data_provenance", "teacher_data_provenance", "phantom_teacher_warning", "source_family", "shard_namespace", "patients_per_sample", "shard_patients", "check_teacher_patients",
           "teacher_leak_check", "TeacherLeakError"]


class TeacherLeakError(CheckpointError):
    """The SR teacher saw evaluation patients, or does not say which patients it saw."""


def source_family(source: str) -> str:
    """``deeplesion_slices`` -> ``deeplesion``, ``lidc_slices`` -> ``lidc``, others unchanged."""
    source = str(source)
    return source[: -len("_slices")] if source.endswith("_slices") else source


def shard_namespace(attrs: Mapping) -> str:
    """The patient namespace of a shard from its root attributes (decoded strings)."""
    try:
        recipe = json.loads(attrs.get("recipe_json") or "{}")
    except (TypeError, ValueError):
        recipe = {}
    source = recipe.get("source") if isinstance(recipe, dict) else None
    return source_family(source) if source else str(attrs.get("dataset", ""))


def patients_per_sample(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """``(namespace, patient id)`` of every sample of ``paths``, in order (global positions).

    Fields are read with :func:`softmask_builder.formats.shards.read_meta_column` (either schema
    version); the file is opened by :func:`softmask_builder.formats.shards.open_for_reading`
    (``locking=False``) like the trainer's datasets (:mod:`.data`), which may hold the same files
    open in this process: HDF5 refuses a second handle with other locking flags."""
    from softmask_builder.formats import shards as shard_format

    out: list[tuple[str, str]] = []
    for p in paths:
        with shard_format.open_for_reading(p) as fh:
            ns = shard_namespace(shard_format.root_attrs(fh))
            patients = shard_format.read_meta_column(fh, "patient")  # either schema version
        out.extend((ns, str(pid)) for pid in patients)
    return out


def shard_patients(paths: Iterable[str | Path], *, indices: Sequence[int] | None = None) -> dict[str, list[str]]:
    """``{namespace: sorted patient ids}`` of the samples of ``paths``. ``indices``: global sample
    positions (over the shards in order) to keep; None keeps all."""
    per = patients_per_sample(paths)
    chosen = per if indices is None else [per[int(i)] for i in indices]
    out: dict[str, set[str]] = {}
    for ns, pid in chosen:
        out.setdefault(ns, set()).add(pid)
    return {ns: sorted(v) for ns, v in sorted(out.items())}


def check_teacher_patients(teacher_patients: Mapping[str, Sequence[str]] | None,
                           eval_patients: Mapping[str, Sequence[str]], *, teacher: str, splits: str,
                           allow: bool) -> list[str]:
    """Refuse a teacher that saw an evaluation patient or has no patient list.

    Parameters
    ----------
    teacher_patients : the teacher file's ``train_patients`` (None: an old teacher without one).
    eval_patients : ``{namespace: ids}`` of the splits the segmentation run is validated or tested on.
    teacher : how to name the teacher in messages (a path or "the checkpoint's teacher").
    splits : the evaluated split names, for the message.
    allow : the paper's setting (``model.allow_teacher_overlap``): report instead of refusing.

    Returns
    -------
    list of str : the overlapping ``namespace:id`` (empty when none; ``["<unknown>"]`` for a
        teacher without a list), for the run record.

    Raises
    ------
    TeacherLeakError : overlap or no list, and ``allow`` is False. The message says how to retrain.
    """
    retrain = ("retrain it on the segmentation train split's patients only (`dsnet pretrain-sr --data SLICES "
               "--train-patients-from LNSM_DIR ...`, which `make pretrain-sr` does), or set "
               "model.allow_teacher_overlap=true (--allow-teacher-overlap) to reproduce the paper's setting")
    if teacher_patients is None:
        if allow:
            return ["<unknown>"]
        raise TeacherLeakError(f"SR teacher {teacher} has no list of its training patients (an older teacher "
                               f"file), so it may have seen {splits} patients; {retrain}")
    overlap = sorted(f"{ns}:{p}" for ns, ids in eval_patients.items()
                     for p in set(ids) & set(teacher_patients.get(ns, ())))
    if overlap and not allow:
        raise TeacherLeakError(f"SR teacher {teacher} was trained on {len(overlap)} patient(s) of the {splits} "
                               f"split(s) (e.g. {', '.join(overlap[:3])}); {retrain}")
    return overlap


def teacher_leak_check(cfg, teacher_arch: Mapping[str, Any] | None, *, root: str | Path | None = None,
                       splits: tuple[str, ...] | None = None, teacher_name: str | None = None) -> dict[str, Any]:
    """Compare the SR teacher's training patients with the patients of ``splits`` (default: the
    run's validation split and ``test``) of ``root`` (default ``cfg.data.root``).

    ``cfg`` is the run's :class:`~dsnet_trainer.seg_config.SegConfig`; ``teacher_arch`` the teacher
    record (:func:`~dsnet_trainer.models.teacher.read_teacher_arch`, or the one a seg checkpoint keeps).

    Returns the record kept in the run (``{"checked", "splits", "n_teacher_patients",
    "overlap", "allow_teacher_overlap"}``); variants without a teacher, or a teacher given as a
    module without a record, give ``{"checked": False}``.

    Raises
    ------
    TeacherLeakError : overlap, or a teacher without a patient list, unless
        ``cfg.model.allow_teacher_overlap``.
    """
    from .data import find_shards
    from .errors import ShardError
    from .models.dsnet import get_variant

    if not get_variant(cfg.model.variant).uses_teacher or not teacher_arch:
        return {"checked": False}
    root = cfg.data.root if root is None else root
    splits = tuple(splits) if splits is not None else tuple(s for s in (cfg.data.val_split, "test") if s)
    paths = []
    for split in splits:
        try:
            paths.extend(s.path for s in find_shards(root, kind="samples", split=split, option="data.root"))
        except ShardError:
            continue  # a split absent from the data has no patients to protect
    eval_patients = shard_patients(paths) if paths else {}
    tp = teacher_arch.get("train_patients")
    name = teacher_name or cfg.model.teacher or "the checkpoint's teacher"
    overlap = check_teacher_patients(tp, eval_patients, teacher=name, splits="/".join(splits),
                                     allow=cfg.model.allow_teacher_overlap)
    return {"checked": True, "splits": list(splits), "allow_teacher_overlap": cfg.model.allow_teacher_overlap,
            "n_teacher_patients": None if tp is None else sum(len(v) for v in tp.values()),
            "n_overlap": len(overlap), "overlap": overlap[:20]}


def data_provenance(root: str | Path) -> dict[str, Any] | None:
    """The build's ``provenance`` (what a phantom sample is made of, written by softmask_builder
    into ``manifest.json``); None for a real source, or when ``root`` has no readable manifest."""
    from softmask_builder.formats.release_folder import ManifestError, read_manifest

    try:
        manifest = read_manifest(Path(root))
    except (ManifestError, OSError, ValueError):
        return None
    prov = manifest.get("provenance")
    return dict(prov) if isinstance(prov, dict) and prov else None


def teacher_data_provenance(path: str | Path) -> tuple[bool, dict[str, Any] | None]:
    """``(known, provenance)`` of the slices an SR teacher file was trained on: ``known`` is False
    for teacher files written before the record existed (then nothing can be said)."""
    import torch

    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "data_provenance" not in obj:
        return False, None
    prov = obj["data_provenance"]
    return True, (dict(prov) if isinstance(prov, dict) and prov else None)


def phantom_teacher_warning(teacher: str | Path, root: str | Path) -> str | None:
    """The loud warning for a teacher trained on phantom slices used on a real-source dataset
    (``root``'s manifest has no ``provenance``); None when they agree or the teacher predates the
    record. A phantom teacher's DRTM features describe rendered anatomy, not real CT."""
    known, teacher_prov = teacher_data_provenance(teacher)
    if not known or teacher_prov is None or not Path(root, "manifest.json").is_file():
        return None
    if data_provenance(root) is not None:
        return None
    return (f"WARNING: SR teacher {teacher} was trained on PHANTOM slices ({teacher_prov.get('phantom')} phantom, "
            f"shapes {teacher_prov.get('shapes')}, backgrounds {', '.join(teacher_prov.get('backgrounds') or [])}), "
            f"but {root} is built from a REAL source: its features will not describe real CT. Train a teacher "
            "on real slices first (make pretrain-sr DEEPLESION=/path/to/DeepLesion, or dsnet pretrain-sr --data "
            "SLICES_OF_THE_SAME_SOURCE) and pass it with --teacher.")
