"""Typed construction of frozen dataclasses from plain mappings (parsed YAML or JSON).

One strict reader serves the build recipes (:mod:`softmask_builder.formats.recipes`, errors are
:class:`~softmask_builder.errors.InputError`) and the trainer configs (:mod:`dsnet_trainer.config`,
errors are ``ConfigError``): every key is checked against the dataclass's fields and every value
against the field's annotation, and each error names the dotted key (``split.counts.train``,
``loop.batch_size``, ``window[1]``). No value is ever evaluated as code.

Supported annotations: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Any`` (passed
through), ``Literal[...]``, ``tuple[T, ...]``, ``tuple[T1, T2]``, ``dict[K, V]``, ``X | Y``
(``Optional``; alternatives are tried in order) and nested dataclasses. Value rules (ranges,
cross-field checks) belong in each dataclass's ``__post_init__``.

Two YAML 1.1 readings of PyYAML are undone, because a file would otherwise not say what its author
wrote: an exponent without a dot (``eps: 1e-3``) is read as a *string*, so a ``float`` field parses
a string with :func:`float`; bare ``on``/``off``/``yes``/``no`` are read as booleans, so a string
``Literal`` that lists one of those words takes it back.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, *, error: type[Exception],
                 where: str = "", noun: str = "key") -> T:
    """Build the dataclass ``cls`` from a nested mapping, checking every key and value.

    Parameters
    ----------
    cls : dataclass type
        The (usually frozen) dataclass to build; nested dataclass fields are built recursively.
    data : mapping or None
        Field values by name. None or a missing key takes the field's default.
    error : exception type
        Raised for every problem of the input (called with one message string). An ``error``
        raised by a ``__post_init__`` passes through unchanged; a ``TypeError``/``ValueError``
        of another type raised there is re-raised as ``error`` naming the section.
    where : str
        Dotted path of ``data`` inside the whole document (``""`` for the top level); it prefixes
        every key named in messages.
    noun : str
        What a key is called in messages (``"key"``, ``"config key"``).

    Returns
    -------
    cls
        The instance, with lists turned into tuples and ints into floats as annotated.

    Raises
    ------
    error
        ``data`` not a mapping; an unknown key (the message lists the known ones); a missing
        field without default; a value of the wrong type, a wrong tuple length or a value
        outside a ``Literal`` (each naming the dotted key).
    TypeError
        ``cls`` is not a dataclass, or a field has an unsupported annotation (a bug in ``cls``).
    """
    return _Reader(error, noun).dataclass(cls, data, where)


class _Reader:
    def __init__(self, error: type[Exception], noun: str):
        self.error = error
        self.noun = noun

    def fail(self, key: str, rule: str, value: Any) -> Exception:
        return self.error(f"{self.noun} {key!r} must be {rule}, got {value!r}")

    def dataclass(self, cls: Any, data: Any, where: str) -> Any:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        section = where or "<root>"
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.error(f"section {section!r} must be a mapping, got {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)

        def path(name: Any) -> str:
            return f"{where}.{name}" if where else str(name)

        for name in data:
            if name not in fields:
                raise self.error(f"unknown {self.noun} {path(name)!r} "
                                 f"(known keys: {', '.join(sorted(fields)) or 'none'})")
        for name, f in fields.items():
            if (name not in data and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                raise self.error(f"missing required {self.noun} {path(name)!r}")
        kwargs = {name: self.value(value, hints[name], path(name)) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except self.error:
            raise
        except (TypeError, ValueError) as exc:
            raise self.error(f"invalid section {section!r}: {exc}") from exc

    def value(self, value: Any, tp: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any:
            return value
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            first: Exception | None = None
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.value(value, arg, key)
                except self.error as exc:
                    first = first or exc
            raise first  # the first alternative's complaint: the annotation's main type
        if origin is Literal:
            for choice in args:  # type-exact, so True does not pass for Literal[1]
                if type(choice) is type(value) and choice == value:
                    return choice
            if isinstance(value, bool):  # YAML 1.1 bare off/on/no/yes (see the module docstring)
                for word in _BOOL_WORDS[value]:
                    if word in args:
                        return word
            raise self.fail(key, "one of " + ", ".join(map(repr, args)), value)
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                raise self.fail(key, "a list", value)
            if len(args) == 2 and args[1] is Ellipsis:
                args = (args[0],) * len(value)
            elif len(value) != len(args):
                raise self.fail(key, f"a list of {len(args)} items", value)
            return tuple(self.value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        if origin is dict:
            if not isinstance(value, Mapping):
                raise self.fail(key, "a mapping", value)
            return {self.value(k, args[0], f"{key}.{k}"): self.value(v, args[1], f"{key}.{k}")
                    for k, v in value.items()}
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise self.fail(key, "true or false", value)
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise self.fail(key, "an integer", value)
        if tp is float:
            number = value
            if isinstance(value, str):  # YAML 1.1 "1e-3" (see the module docstring); float() evaluates nothing
                try:
                    number = float(value)
                except ValueError:
                    pass
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                try:
                    number = float(number)
                except OverflowError:  # an int beyond float range
                    number = math.inf
                if math.isfinite(number):
                    return number
            raise self.fail(key, "a finite number", value)
        if tp is str:
            if isinstance(value, str):
                return value
            raise self.fail(key, "a string", value)
        raise TypeError(f"unsupported annotation {tp!r} for {self.noun} {key!r}")
