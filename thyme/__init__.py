"""Thyme: datasets fed by streaming sources, served by lookups.

.. code-block:: python

    from thyme import Secret, dataset, field, Field
    from thyme.connectors import KinesisSource, source

This package root is the one place above every layer (``docs/architecture.md``): importing it
loads the SDK only — no store, no database driver. ``lookup`` and ``lookup_many`` load the
serving layer on first use, and dataset classes get their ``lookup`` methods from it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from thyme import dataset as _dataset
from thyme.dataset import Field, dataset, field
from thyme.errors import ConfigError, ThymeError
from thyme.schema import DatasetSchema
from thyme.secret import Secret
from thyme.times import TimeLike

if TYPE_CHECKING:
    from collections.abc import Sequence

    from thyme.serving import lookup, lookup_many

__all__ = ["ConfigError", "DatasetSchema", "Field", "Secret", "ThymeError", "dataset", "field", "lookup", "lookup_many"]
__version__ = "0.2.0"

T = TypeVar("T")


class _Serving:
    """``Dataset.lookup`` and ``Dataset.lookup_many``, loading the serving layer on first use."""

    def lookup(self, klass: type[T], key: object, at: TimeLike | None = None, store: Any = None) -> T | None:
        from thyme.serving import lookup

        return lookup(klass, key, at=at, store=store)

    def lookup_many(
        self, klass: type[T], keys: Sequence[object], at: TimeLike | None = None, store: Any = None
    ) -> list[T | None]:
        from thyme.serving import lookup_many

        return lookup_many(klass, keys, at=at, store=store)


_dataset.serve_lookups_with(_Serving())


def __getattr__(name: str) -> Any:
    if name in ("lookup", "lookup_many"):
        from thyme import serving

        return getattr(serving, name)
    raise AttributeError(f"module 'thyme' has no attribute {name!r}")
