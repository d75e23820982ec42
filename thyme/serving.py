"""Serving: lookups, the newest version of a key as of a moment.

Safe from any number of threads and processes: a store shares nothing between threads but its
settings (each thread reads through its own connection), and a store URL is opened once per
process. A dataset is served by key when it is declared ``@dataset(index=True)``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, TypeVar

import msgspec

from thyme import times
from thyme.errors import ConfigError, SchemaChangedError
from thyme.schema import DatasetSchema, TypeSpec, dataset_schema
from thyme.store import Store, open_store, store_url
from thyme.times import TimeLike

T = TypeVar("T")


def _stored_type(spec: TypeSpec) -> Any:
    base: Any
    if spec.item is not None:
        inner = _stored_type(spec.item)
        base = list[inner] if spec.kind == "list" else dict[str, inner]  # type: ignore[valid-type]
    else:
        base = {"str": str, "int": int, "float": float, "bool": bool, "date": date, "datetime": datetime}[spec.kind]
    return base | None if spec.optional else base


def decode_row(schema: DatasetSchema, data: str) -> dict[str, Any]:
    """A stored row as a dict with Python values (datetimes UTC-aware), fields in declaration order.

    Every field reads as optional: a row written before a field was added (or made optional, at
    the same version) holds no value for it, and gives None."""
    try:
        values = _struct_decoder(schema).decode(data)
    except msgspec.ValidationError as exc:
        raise SchemaChangedError(
            f"dataset {schema.name} version {schema.version}: a stored row does not match the class ({exc}); "
            "its fields changed without a new version"
        ) from None
    return {f.name: getattr(values, f.name) for f in schema.fields}


def _struct_decoder(schema: DatasetSchema) -> msgspec.json.Decoder[Any]:
    found = _DECODERS.get(id(schema))
    if found is None or found[0] is not schema:
        fields = [(f.name, _stored_type(msgspec.structs.replace(f.type, optional=True)), None) for f in schema.fields]
        found = _DECODERS[id(schema)] = (
            schema,
            msgspec.json.Decoder(msgspec.defstruct(f"{schema.name}Stored", fields)),
        )
    return found[1]


_DECODERS: dict[int, tuple[DatasetSchema, msgspec.json.Decoder[Any]]] = {}
"""Row decoders by the schema object they decode for (held, so its id is not reused)."""


def coerce_key(schema: DatasetSchema, key: object) -> str | int:
    """The key as the store holds it (``"42"`` becomes 42 for an int key, for the CLI)."""
    field = schema.key_field
    if field.type.kind == "int":
        if isinstance(key, bool):
            pass
        elif isinstance(key, int):
            return key
        elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
            return int(key)
    elif isinstance(key, str):
        return key
    raise ConfigError(
        f"lookup key for {schema.name}.{field.name}",
        f"expected a {field.type.kind}",
        f"Pass the {field.name} value to look up.",
        value=key,
    )


def to_us(at: TimeLike | None) -> int:
    """``at`` (default now) in µs since the epoch: an aware datetime, ISO-8601 with a zone, epoch
    seconds or milliseconds, or a duration back from now (:mod:`thyme.times`); no naive times."""
    return times.to_us(datetime.now(UTC) if at is None else times.parse_time(at, "lookup(at=...)"))


_OPENING = threading.Lock()


@lru_cache(maxsize=8)
def _cached_store(url: str) -> Store:
    return open_store(url, create=False)  # reads only: a wrong URL is an error, not an empty store


def _shared_store(url: str) -> Store:
    """One open store per URL per process, so repeated lookups do not reopen the file (opened
    under a lock: two threads' first lookups must not both create it)."""
    with _OPENING:
        return _cached_store(url)


def _served(klass: type) -> DatasetSchema:
    schema = dataset_schema(klass)
    if schema is None:
        raise ConfigError("lookup(dataset)", "not a @dataset class", "Pass the dataset class.", value=klass)
    if not schema.index:
        raise ConfigError(
            f"lookup({schema.name})",
            "the dataset is not served by key",
            "Declare it @dataset(index=True, ...) to serve lookups (no new version needed).",
        )
    return schema


def lookup(klass: type[T], key: object, at: TimeLike | None = None, store: Store | str | None = None) -> T | None:
    """The newest version of ``key`` in dataset ``klass`` with event time ≤ ``at`` (default: now).

    Ties (same key and event time) go to the version applied last, which is stream order.
    ``store`` is a :class:`~thyme.store.Store`, a store URL, or None for ``THYME_STORE_URL``
    (default ``sqlite:///thyme.db``). Returns an instance of ``klass``, or None.
    """
    return lookup_many(klass, [key], at=at, store=store)[0]


def lookup_many(
    klass: type[T], keys: Sequence[object], at: TimeLike | None = None, store: Store | str | None = None
) -> list[T | None]:
    """:func:`lookup` for each of ``keys``, in order (None where a key has no version), read from
    one snapshot of the store: a batch of features for one request, consistent with each other."""
    schema = _served(klass)
    if isinstance(keys, str | bytes):
        raise ConfigError(
            f"lookup_many({schema.name}, keys)", "expects a list of keys", "Pass [key] or use lookup().", value=keys
        )
    coerced = [coerce_key(schema, key) for key in keys]
    at_us = to_us(at)
    db = _shared_store(store_url(store)) if store is None or isinstance(store, str) else store
    return [
        None if data is None else klass(**decode_row(schema, data)) for data in db.lookup_many(schema, coerced, at_us)
    ]
