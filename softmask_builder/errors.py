"""Exceptions of :mod:`softmask_builder`.

Every error the package raises on purpose derives from :class:`SoftMaskError`. Errors caused by
the caller's input also derive from :class:`ValueError` so that generic callers can catch them as
such. An error about one sample carries its id in ``sample_id`` and in the message, so that a
build can turn it into a row of the rejects file and go on.
"""

from __future__ import annotations


class SoftMaskError(Exception):
    """Base class of every error raised on purpose by softmask_builder."""

    def __init__(self, message: str, *, sample_id: str | None = None, stage: str | None = None):
        self.sample_id = sample_id
        self.stage = stage
        self.reason = message
        prefix = f"[{sample_id}] " if sample_id else ""
        super().__init__(prefix + message)


class InputError(SoftMaskError, ValueError):
    """The input (an argument, a file, a sample) is invalid. The message names it."""


class RecistError(InputError):
    """A RECIST mark is degenerate (zero-length axis, NaN, outside the image, axes not crossing)."""


class SourceError(InputError):
    """A source file or folder is missing, unreadable or malformed."""
