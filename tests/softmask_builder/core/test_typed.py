"""Direct tests of softmask_builder.core.typed.from_mapping on hand-made dataclasses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from softmask_builder.core.typed import from_mapping


class BadInput(ValueError):
    """The error type handed to the reader: every input problem must come back as this type."""


@dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    milestones: tuple[int, ...] = ()
    mode: Literal["auto", "off", "on"] = "auto"


@dataclass(frozen=True)
class Outer:
    name: str
    epochs: int = 1
    flag: bool = False
    window: tuple[float, float] = (0.0, 1.0)
    spacing: float | tuple[float, float] | None = None
    counts: dict[str, int] | None = None
    extra: Any = None
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self):
        if self.epochs < 1:
            raise BadInput(f"epochs must be >= 1, got {self.epochs}")
        if self.name == "plain-value-error":
            raise ValueError("a plain ValueError from __post_init__")


def read(data, **kw):
    return from_mapping(Outer, data, error=BadInput, **kw)


def test_nested_document_matches_the_hand_built_instance():
    text = """
name: run
epochs: 3
flag: true
window: [-1350, 150]
spacing: [0.5, 0.7]
counts: {train: 10, val: 2}
extra: {anything: [1, 2]}
optim:
  lr: 1e-3          # a string for YAML 1.1
  milestones: [2, 4]
  mode: off         # False for YAML 1.1
"""
    got = read(yaml.safe_load(text))
    want = Outer(name="run", epochs=3, flag=True, window=(-1350.0, 150.0), spacing=(0.5, 0.7),
                 counts={"train": 10, "val": 2}, extra={"anything": [1, 2]},
                 optim=Optim(lr=0.001, milestones=(2, 4), mode="off"))
    assert got == want
    assert all(type(v) is float for v in got.window)  # ints promoted, not just equal
    assert type(got.optim.milestones) is tuple


def test_missing_keys_and_none_sections_take_defaults():
    assert read({"name": "a"}) == Outer(name="a")
    assert read({"name": "a", "optim": None}) == Outer(name="a")
    assert read({"name": "a", "spacing": None, "counts": None}) == Outer(name="a")


def test_union_alternatives_are_tried_in_order():
    assert read({"name": "a", "spacing": 2}).spacing == 2.0
    assert type(read({"name": "a", "spacing": 2}).spacing) is float
    assert read({"name": "a", "spacing": [1, 2]}).spacing == (1.0, 2.0)
    with pytest.raises(BadInput, match=r"'spacing' must be a finite number"):
        read({"name": "a", "spacing": "wide"})


def test_literal_is_type_exact_and_takes_back_yaml11_words():
    assert read({"name": "a", "optim": {"mode": True}}).optim.mode == "on"
    assert read({"name": "a", "optim": {"mode": False}}).optim.mode == "off"

    @dataclass(frozen=True)
    class Numbered:
        level: Literal[1, 2] = 1

    assert from_mapping(Numbered, {"level": 2}, error=BadInput).level == 2
    with pytest.raises(BadInput, match="'level' must be one of 1, 2, got True"):
        from_mapping(Numbered, {"level": True}, error=BadInput)


@pytest.mark.parametrize("data, key", [
    ({"name": "a", "epochs": 2.5}, "epochs"),
    ({"name": "a", "epochs": True}, "epochs"),
    ({"name": "a", "epochs": "3"}, "epochs"),
    ({"name": "a", "flag": 1}, "flag"),
    ({"name": "a", "flag": "yes"}, "flag"),
    ({"name": 3}, "name"),
    ({"name": "a", "window": [1, 2, 3]}, "window"),
    ({"name": "a", "window": 1.0}, "window"),
    ({"name": "a", "window": [1, "b"]}, "window[1]"),
    ({"name": "a", "counts": {"train": 1.5}}, "counts.train"),
    ({"name": "a", "counts": [1, 2]}, "counts"),
    ({"name": "a", "optim": {"lr": "fast"}}, "optim.lr"),
    ({"name": "a", "optim": {"lr": float("nan")}}, "optim.lr"),
    ({"name": "a", "optim": {"lr": ".inf"}}, "optim.lr"),
    ({"name": "a", "optim": {"lr": 10 ** 400}}, "optim.lr"),
    ({"name": "a", "optim": {"milestones": [1, 2.0]}}, "optim.milestones[1]"),
    ({"name": "a", "optim": {"mode": "fp8"}}, "optim.mode"),
    ({"name": "a", "optim": [1]}, "optim"),
])
def test_wrong_type_is_an_error_naming_the_dotted_key(data, key):
    with pytest.raises(BadInput, match=f"'{key}'".replace(".", r"\.").replace("[", r"\[")):
        read(data)


def test_unknown_key_names_its_path_and_the_known_keys():
    with pytest.raises(BadInput) as info:
        read({"name": "a", "optim": {"lrr": 1}})
    message = str(info.value)
    assert "unknown key 'optim.lrr'" in message
    assert "lr, milestones, mode" in message
    with pytest.raises(BadInput, match="unknown config key 'top.nope'"):
        read({"name": "a", "nope": 1}, where="top", noun="config key")


def test_missing_required_field_is_named():
    with pytest.raises(BadInput, match="missing required key 'name'"):
        read({"epochs": 2})


def test_post_init_errors_keep_their_type_or_become_the_error_type():
    with pytest.raises(BadInput, match="epochs must be >= 1"):
        read({"name": "a", "epochs": 0})
    with pytest.raises(BadInput, match="invalid section '<root>': a plain ValueError") as info:
        read({"name": "plain-value-error"})
    assert type(info.value.__cause__) is ValueError


def test_top_level_must_be_a_mapping():
    with pytest.raises(BadInput, match="must be a mapping"):
        read([("name", "a")])


def test_bugs_in_the_dataclass_are_type_errors():
    @dataclass(frozen=True)
    class Unsupported:
        items: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match="unsupported annotation"):
        from_mapping(Unsupported, {"items": [1]}, error=BadInput)
    with pytest.raises(TypeError, match="not a dataclass"):
        from_mapping(dict, {}, error=BadInput)


def test_float_strings_parse_like_float():
    for text in ("1e-3", "2.5E2", "-7"):
        assert read({"name": "a", "optim": {"lr": text}}).optim.lr == float(text)
    assert math.isclose(read(yaml.safe_load("name: a\noptim: {lr: 5e-1}")).optim.lr, 0.5)
