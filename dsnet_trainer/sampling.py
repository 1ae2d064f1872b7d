"""Data order: which samples each rank reads, in which order, with which augmentation seed.

:class:`SeededSampler` (shuffled, rank-disjoint, padded like ``DistributedSampler``, yields
``(index, seed, epoch)`` keys so each sample's augmentation depends only on those three numbers,
never on worker count or start method), :class:`EvalShardSampler` (rank-disjoint, *no* padding,
so summed metrics are exact), :func:`make_loader` (the project's DataLoader settings).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import InputError
from .runtime import DistContext

__all__ = ["SeededSampler", "EvalShardSampler", "make_loader"]


class SeededSampler(Sampler):
    """Epoch-shuffled, rank-disjoint sample order that carries a seed to the dataset.

    Order and rank split are exactly those of :class:`torch.utils.data.DistributedSampler`
    (shuffled with ``seed + epoch``; padded by repeating indices so every rank gets the same
    count, or trimmed with ``drop_last``). Each item is a key ``(index, seed, epoch)``; a dataset
    that accepts such keys (:func:`dsnet_trainer.data.resolve_key`) draws its augmentation from
    ``numpy.random.default_rng([seed, epoch, index])``. Augmentation thus depends only on those
    numbers, not on the number of workers, their start method or a resume.

    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, n_samples: int, *, seed: int, shuffle: bool = True, drop_last: bool = False,
                 ctx: DistContext | None = None):
        if n_samples < 1:
            raise InputError(f"cannot sample from an empty dataset (n_samples={n_samples})")
        ctx = ctx or DistContext()
        self.seed = int(seed)
        self.epoch = 0
        self._inner = DistributedSampler(range(n_samples), num_replicas=ctx.world_size, rank=ctx.rank,
                                         shuffle=shuffle, seed=self.seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._inner.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for i in self._inner:
            yield (int(i), self.seed, self.epoch)

    def __len__(self) -> int:
        return len(self._inner)


class EvalShardSampler(Sampler):
    """Rank ``r`` of ``w`` gets indices ``r, r+w, r+2w, ...``: disjoint, complete, no padding.

    Use for evaluation: metrics summed over ranks (:func:`~dsnet_trainer.runtime.all_reduce_sums`)
    then count every sample exactly once, unlike ``DistributedSampler`` whose padding repeats
    samples.
    Yields plain ``int`` indices (deterministic, no augmentation).
    """

    def __init__(self, n_samples: int, *, ctx: DistContext | None = None):
        ctx = ctx or DistContext()
        self.indices = list(range(ctx.rank, n_samples, ctx.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, sampler: Sampler, *, batch_size: int, num_workers: int = 0,
                mp_context: str = "default", timeout_s: float = 0.0, drop_last: bool = False,
                pin_memory: bool = False, persistent_workers: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader with the project's settings.

    - ``persistent_workers`` when ``num_workers > 0`` (workers keep their open HDF5 handles).
    - ``mp_context``: ``default``, ``fork``, ``spawn`` or ``forkserver``.
    - ``timeout_s``: a worker silent that long raises (never a silent stall); ignored with 0 workers.
    - its own ``torch.Generator`` seeded with ``seed``, so creating iterators never consumes
      the global torch RNG (which a resume would otherwise replay differently).
    """
    if mp_context not in ("default", "fork", "spawn", "forkserver"):
        raise InputError(f"mp_context must be default, fork, spawn or forkserver, got {mp_context!r}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        kwargs["timeout"] = float(timeout_s)
        if mp_context != "default":
            kwargs["multiprocessing_context"] = mp_context
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, generator=gen, **kwargs)
