"""The config of segmentation runs (:mod:`dsnet_trainer.seg_config`)."""

from __future__ import annotations

import json

import pytest

from dsnet_trainer.config import from_dict
from dsnet_trainer.errors import ConfigError
from dsnet_trainer.seg_config import SegConfig


def test_config_rejects_unknown_variant():
    with pytest.raises(ConfigError, match="model.variant"):
        from_dict(SegConfig, {"model": {"variant": "dsnet2"}})
    cfg = from_dict(SegConfig, json.loads(json.dumps({"model": {"variant": "unet", "widths": [8, 16]}})))
    assert cfg.model.widths == (8, 16)
