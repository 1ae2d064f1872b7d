"""The one YAML loader of the project: recipes (``formats.recipes``) and trainer configs
(``dsnet_trainer.config``) both parse through :func:`safe_load_strict`.

It is ``yaml.SafeLoader`` (no Python objects) with two refusals, both raised as
``yaml.YAMLError`` subclasses so callers turn them into their own one-line error:

- an anchor (``&name``) or an alias (``*name``): refused when the parser *meets* it, before
  anything is expanded, so a "billion laughs" alias bomb (a few hundred bytes that expand to
  gigabytes) or a recursive alias fails in milliseconds instead of running to a MemoryError.
  No recipe or config the project ships uses them; write the value out instead.
- a key given twice in one mapping (PyYAML silently keeps the last one, so the file would not
  say what its author meant): the error names the key and both lines.
"""

from __future__ import annotations

import yaml


class AliasRefused(yaml.composer.ComposerError):
    """A YAML anchor or alias was found (see the module docstring)."""


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors/aliases and duplicate keys."""

    def compose_node(self, parent, index):
        # Checked on the parser's events, before the composer resolves (expands) anything.
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise AliasRefused(None, None, f"alias *{event.anchor} refused (YAML anchors/aliases are not "
                               "allowed: write the value out)", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise AliasRefused(None, None, f"anchor &{anchor} refused (YAML anchors/aliases are not "
                               "allowed: write the value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_load_strict(text: str):
    """Parse YAML like ``yaml.safe_load``, refusing anchors/aliases and duplicate keys
    (:class:`StrictSafeLoader`); errors are ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 (a SafeLoader subclass)


def one_line(exc: BaseException) -> str:
    """A YAML error's (multi-line) text on one line."""
    return " ".join(str(exc).split())
