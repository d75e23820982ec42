"""Every error Thyme raises, in one hierarchy.

Validation errors subclass :class:`ValueError` as well as :class:`ThymeError`, so callers
that already catch ``ValueError`` keep working. Each class builds its message from
structured fields: *what* was wrong (the parameter), the *value* seen, the *problem*, and
the *fix*. Secret values never reach a message: pass :data:`REDACTED` instead.
"""

from __future__ import annotations

from typing import Final


class _Redacted:
    """Stands in for a value that must not be shown (a secret)."""

    def __repr__(self) -> str:
        return "<redacted>"


REDACTED: Final = _Redacted()
"""Pass as ``value`` when the value is a secret; the message shows ``<redacted>``."""

_MISSING: Final = object()


class ThymeError(Exception):
    """Base class of every error raised by Thyme."""


class ConfigError(ThymeError, ValueError):
    """A user-supplied setting is invalid; raised before anything starts.

    The message reads ``<where>: <problem> (got <value>). <fix>``.
    """

    def __init__(self, where: str, problem: str, fix: str = "", value: object = _MISSING) -> None:
        self.where = where
        self.problem = problem
        self.fix = fix
        self.value = value
        got = "" if value is _MISSING else f" (got {value!r})"
        message = f"{where}: {problem}{got}."
        if fix:
            message += f" {fix}"
        super().__init__(message)


class DatasetError(ConfigError):
    """A ``@dataset`` class is not a valid dataset definition."""


class SourceError(ConfigError):
    """A ``@source`` decorator or a connector is configured wrongly."""


class SecretError(ConfigError):
    """A :class:`~thyme.Secret` cannot be resolved (for example its variable is unset)."""


class StoreConfigError(ConfigError):
    """The store URL or store options are invalid."""


class SchemaChangedError(ThymeError):
    """A dataset's fields differ from what the store holds for the same name and version."""


class StoreUnavailableError(ThymeError):
    """The store cannot apply a batch right now (locked, disk full, unreachable).

    Transient by nature: the caller retries with backoff and never acknowledges the batch.
    """


class LoadError(ThymeError):
    """``MODULE:DATASET`` cannot be imported or does not name a Kinesis-sourced dataset."""
