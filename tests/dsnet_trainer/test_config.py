"""Typed config: files, overrides (never evaluated), strict keys and types, run-folder copy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from dsnet_trainer.config import (LoopConfig, apply_overrides, config_sha256, dump_yaml, from_dict, load_config,
                                  packaged_config, parse_override, to_dict)
from dsnet_trainer.errors import ConfigError, InputError


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    milestones: tuple[int, ...] = ()
    window: tuple[float, float] = (-1.0, 1.0)
    mode: Literal["off", "bf16"] = "off"
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    epochs: int = 3
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    loop: LoopConfig = field(default_factory=LoopConfig)


def test_defaults_file_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.lr=1e-3", "inner.milestones=[2, 4]", "flag=true",
                                    "inner.window=[-1350, 150]", "inner.mode=off", "inner.name=abc"])
    assert cfg.epochs == 7                           # from the file
    assert cfg.inner.lr == pytest.approx(0.001)      # "1e-3" is a str for YAML 1.1; read as float
    assert cfg.inner.milestones == (2, 4)
    assert cfg.inner.window == (-1350.0, 150.0) and isinstance(cfg.inner.window[0], float)
    assert cfg.inner.mode == "off"                   # YAML reads bare off as False; mapped back
    assert cfg.flag is True and cfg.inner.name == "abc"
    assert cfg.loop == LoopConfig()                  # untouched section keeps defaults


def test_json_file_and_roundtrip(tmp_path):
    cfg = Outer(epochs=2, inner=Inner(lr=0.25, milestones=(1,), name=None))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(to_dict(cfg)))
    again = load_config(Outer, path)
    assert again == cfg
    assert from_dict(Outer, yaml.safe_load(dump_yaml(cfg))) == cfg
    assert config_sha256(again) == config_sha256(cfg)
    assert config_sha256(Outer(epochs=3)) != config_sha256(cfg)


@pytest.mark.parametrize("override, key", [
    ("inner.lrr=1", "inner.lrr"),            # unknown key, named with its section
    ("epochs=three", "epochs"),              # wrong type
    ("epochs=2.5", "epochs"),                # float for an int
    ("flag=1", "flag"),                      # int for a bool
    ("inner.mode=fp8", "inner.mode"),        # not one of the literals
    ("inner.window=[1, 2, 3]", "inner.window"),
    ("loop.batch_size=0", "loop.batch_size"),  # rejected by __post_init__
    ("loop.device=tpu", "loop.device"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(Outer, None, [override])


def test_override_values_are_never_evaluated():
    parts, value = parse_override("inner.name=__import__('os').getcwd()")
    assert parts == ["inner", "name"] and value == "__import__('os').getcwd()"
    cfg = load_config(Outer, None, ["inner.name=__import__('os').getcwd()"])
    assert cfg.inner.name == "__import__('os').getcwd()"
    with pytest.raises(ConfigError, match="epochs"):
        load_config(Outer, None, ["epochs=__import__('os').getpid()"])


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", "a b=1", "x=[unclosed"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({}, [text])


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(Outer, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, scalar)
    assert issubclass(ConfigError, InputError) and issubclass(ConfigError, ValueError)


def test_packaged_configs_load_and_differ():
    from dsnet_trainer.sr import SRConfig

    tiny = load_config(SRConfig, "sr_tiny")
    paper = load_config(SRConfig, packaged_config("sr_paper"))
    # Read back from the YAML text itself, independently of the loader.
    raw = yaml.safe_load(packaged_config("sr_paper").read_text())
    assert paper.generator.n_blocks == raw["generator"]["n_blocks"]
    assert paper.data.hr_patch_px == raw["data"]["hr_patch_px"]
    assert tiny.generator.n_channels < paper.generator.n_channels
    with pytest.raises(ConfigError, match="sr_nope"):
        packaged_config("sr_nope")
