"""Old import paths of modules that moved, served as the very module at the new path.

When a module moves (``softmask_builder.matting`` became ``softmask_builder.labelling.matting``),
users' code and saved notebooks keep importing the old name. A package lists its moves in one table
and calls :func:`install`; from then on ``import softmask_builder.matting`` (or ``from
softmask_builder.matting import closed_form_alpha``) returns the module object of the new path
itself — not a copy, so its functions, globals and any monkeypatch are one and the same — and
nothing is imported until an old name is asked for. No warning is raised: the old names are a
supported spelling, listed in the README's Layout section.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Mapping

__all__ = ["install"]


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader for a fixed table ``old dotted name -> new dotted name``."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self.table = dict(table)
        self.specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 (importlib protocol)
        if fullname not in self.table:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):  # noqa: D102
        module = importlib.import_module(self.table[spec.name])
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):  # noqa: D102
        # The module at the new path is already executed; importlib has just set its __spec__ to
        # the old name's: give it back its own, so that it still names its real file and name.
        module.__spec__ = self.specs[module.__name__]


def install(table: Mapping[str, str]) -> None:
    """Serve every ``old`` name of ``table`` as the module ``table[old]`` (idempotent).

    Parameters
    ----------
    table : mapping of str to str
        Full dotted old names to full dotted new names, e.g.
        ``{"softmask_builder.matting": "softmask_builder.labelling.matting"}``. A name that exists
        as a real module is found first by the normal import system, so an entry never hides one.
    """
    for finder in sys.meta_path:
        if isinstance(finder, _Alias) and finder.table == dict(table):
            return
    sys.meta_path.append(_Alias(table))
