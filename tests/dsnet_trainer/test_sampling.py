"""Data order (:mod:`dsnet_trainer.sampling`): the seeded sampler against ``DistributedSampler``,
the evaluation sampler's exact shares."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from dsnet_trainer.runtime import DistContext
from dsnet_trainer.sampling import EvalShardSampler, SeededSampler


# ---------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("n, world, drop_last", [(10, 2, False), (11, 3, False), (11, 3, True), (5, 1, False)])
def test_seeded_sampler_matches_distributed_sampler(n, world, drop_last):
    seen = []
    for rank in range(world):
        ctx = DistContext(rank=rank, world_size=world)
        s = SeededSampler(n, seed=7, ctx=ctx, drop_last=drop_last)
        s.set_epoch(3)
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, seed=7, drop_last=drop_last)
        ref.set_epoch(3)
        keys = list(s)
        assert [k[0] for k in keys] == list(ref) and len(s) == len(ref)
        assert all(k[1:] == (7, 3) for k in keys)
        seen.append([k[0] for k in keys])
    if world > 1 and n % world == 0:
        assert not set(seen[0]) & set(seen[1])  # disjoint shares without padding
    s = SeededSampler(n, seed=7)
    s.set_epoch(0)
    e0 = [k[0] for k in s]
    s.set_epoch(1)
    assert sorted(e0) == list(range(n)) and [k[0] for k in s] != e0  # reshuffled per epoch


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (7, 1)])
def test_eval_sampler_counts_each_sample_once(n, world):
    shares = [list(EvalShardSampler(n, ctx=DistContext(rank=r, world_size=world))) for r in range(world)]
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(n))
