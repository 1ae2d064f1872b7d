"""Worker of the 2-process DDP test (spawned; not a test module). Each rank trains the tiny SR
teacher through the public API and records which samples it read and its final weights."""

from __future__ import annotations

import json
import os
from pathlib import Path


def run_rank(rank: int, world: int, port: int, data: str, out: str, record: str, overrides: list[str]) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    from dsnet_trainer.config import load_config
    from dsnet_trainer.data import SliceShardDataset
    from dsnet_trainer.sr import SRConfig, pretrain_sr

    seen: list = []
    original = SliceShardDataset.__getitem__

    def recording(self, key):
        if self.mode == "train":
            seen.append(list(key))
        return original(self, key)

    SliceShardDataset.__getitem__ = recording
    cfg = load_config(SRConfig, "sr_tiny", overrides)
    result = pretrain_sr(cfg, data=data, out=out)
    rec = Path(record)
    torch.save({"generator": result.generator.state_dict(), "discriminator": result.discriminator.state_dict()},
               rec / f"rank{rank}.pt")
    (rec / f"rank{rank}.json").write_text(json.dumps({"keys": seen, "report": result.report}))
