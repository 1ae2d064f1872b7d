"""Exceptions of :mod:`dsnet_trainer`.

Every error the trainer raises on purpose derives from :class:`TrainerError`, itself a
:class:`softmask_builder.errors.SoftMaskError`, so one ``except SoftMaskError`` covers the whole
toolkit. Errors caused by the caller's input (a file, an option, a config key) derive from
:class:`InputError`, which is both the builder's ``InputError`` and a :class:`ValueError`; the
message names the offending file, option or key.
"""

from __future__ import annotations

from softmask_builder.errors import InputError as _BuilderInputError
from softmask_builder.errors import SoftMaskError


class TrainerError(SoftMaskError):
    """Base class of every error raised on purpose by dsnet_trainer."""


class InputError(TrainerError, _BuilderInputError):
    """An argument, option or file given to the trainer is invalid. The message names it."""


class ConfigError(InputError):
    """A config file, key or command-line override is invalid (the message names the key)."""


class ShardError(InputError):
    """A shard is missing, unreadable, corrupt, of another schema version or of the wrong kind
    (the message names the file)."""


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable or does not match the model/config (names the file)."""


class DeviceError(InputError):
    """The requested device or precision is not available on this machine (names the option)."""
