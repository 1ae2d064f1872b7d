"""Reject reasons relative to the source root, so released files never hold a local path.

Adapters name files by the paths they were given (``<root>/Images_png/...``); a reason such as
``image missing: /mnt/a/DeepLesion/Images_png/x/1.png`` would make the same data mounted
elsewhere build different shards, manifest, ``rejects.csv`` and card, and leak the local layout
into released files. The build passes every plan reject and every load error through
:func:`relative_text`, which writes paths under the root relative to it
(``image missing: Images_png/x/1.png``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from softmask_builder.errors import SoftMaskError, SourceError
from softmask_builder.sources.base import Reject, SampleRef


def root_forms(root: str | os.PathLike) -> list[str]:
    """The spellings of ``root`` a path under it may start with (as given, absolute, with links
    resolved), longest first."""
    given = str(Path(root))
    forms = {given, os.path.abspath(given), os.path.realpath(given)}
    return sorted((f for f in forms if f not in ("", ".", os.sep)), key=len, reverse=True)


def relative_text(text: str, root: str | os.PathLike | None) -> str:
    """``text`` with every ``<root>/`` prefix removed (and a bare ``<root>`` written ``.``)."""
    if not root or not text:
        return text
    for form in root_forms(root):
        text = text.replace(form + os.sep, "")
        text = re.sub(re.escape(form) + r"(?=$|[\s:,;'\")\]])", ".", text)
    return text


def relative_rejects(rejects, root) -> list[Reject]:
    return [Reject(relative_text(r.sample_id, root), r.stage, relative_text(r.reason, root)) for r in rejects]


class RootRelativeLoader:
    """Wrap a source's ``load`` function: its errors come back with paths relative to ``root``.

    Picklable (a module-level class holding the wrapped function and a string), so it travels to
    process workers. A :class:`SoftMaskError` keeps its type, id and stage; a ``ValueError``,
    ``OSError`` or ``ArithmeticError`` (the errors a build turns into rejects) becomes a
    :class:`SourceError` with the reason the build would have written (``<Type>: <message>``).
    """

    def __init__(self, loader: Callable[[SampleRef], Any], root: str):
        self.loader = loader
        self.root = str(root)

    def __call__(self, ref: SampleRef):
        try:
            return self.loader(ref)
        except SoftMaskError as exc:
            raise _same_error(exc, relative_text(exc.reason, self.root)) from None
        except (ValueError, OSError, ArithmeticError) as exc:
            raise SourceError(relative_text(f"{type(exc).__name__}: {exc}", self.root), sample_id=ref.sample_id,
                              stage="load") from None


def _same_error(exc: SoftMaskError, reason: str) -> SoftMaskError:
    try:
        return type(exc)(reason, sample_id=exc.sample_id, stage=exc.stage)
    except TypeError:  # a subclass with another constructor: keep the base type
        return SoftMaskError(reason, sample_id=exc.sample_id, stage=exc.stage)
