"""Secrets: references to a value held elsewhere, resolved only at the moment of use."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

from thyme.errors import SecretError

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Secret:
    """A reference to a secret held in an environment variable.

    ``Secret(env="MY_ROLE_ARN")`` holds only the variable's *name*. The value is read by
    :meth:`resolve`, which the consumer calls when it starts; ``repr`` and ``str`` show where
    the secret lives, never what it holds.
    """

    __slots__ = ("_env",)

    def __init__(self, env: str) -> None:
        if not isinstance(env, str) or not _ENV_NAME.fullmatch(env):
            raise SecretError(
                "Secret(env=...)",
                "not an environment variable name",
                "Use letters, digits and underscores, not starting with a digit, "
                'for example Secret(env="MY_KINESIS_ROLE_ARN").',
                value=env,
            )
        self._env = env

    @property
    def env(self) -> str:
        """The name of the environment variable that holds the value."""
        return self._env

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """Return the value; raise :class:`SecretError` naming the variable if it is unset or empty."""
        value = (os.environ if environ is None else environ).get(self._env, "")
        if not value:
            raise SecretError(
                f"Secret(env={self._env!r})",
                f"environment variable {self._env} is not set",
                f"Set {self._env} in the consumer's environment (for example from your "
                "secret manager) before starting it.",
            )
        return value

    def __repr__(self) -> str:
        return f"Secret(env={self._env!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._env == self._env

    def __hash__(self) -> int:
        return hash(("Secret", self._env))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._env,))
