"""Lookups: the newest version of a key as of a moment."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import msgspec

from thyme.dataset import DatasetSchema, TypeSpec, dataset_schema
from thyme.errors import ConfigError
from thyme.store import Store, open_store, store_url

T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _stored_type(spec: TypeSpec) -> Any:
    base: Any
    if spec.item is not None:
        inner = _stored_type(spec.item)
        base = list[inner] if spec.kind == "list" else dict[str, inner]  # type: ignore[valid-type]
    else:
        base = {"str": str, "int": int, "float": float, "bool": bool, "date": date, "datetime": datetime}[spec.kind]
    return base | None if spec.optional else base


def decode_row(schema: DatasetSchema, data: str) -> dict[str, Any]:
    """A stored row as a dict with Python values (datetimes UTC-aware), fields in declaration order."""
    values = _struct_decoder(schema).decode(data)
    return {f.name: getattr(values, f.name) for f in schema.fields}


@lru_cache(maxsize=64)
def _struct_decoder(schema: DatasetSchema) -> msgspec.json.Decoder[Any]:
    fields = [
        (f.name, _stored_type(f.type), None) if f.type.optional else (f.name, _stored_type(f.type))
        for f in schema.fields
    ]
    return msgspec.json.Decoder(msgspec.defstruct(f"{schema.name}Stored", sorted(fields, key=len)))


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


def to_us(at: datetime | None) -> int:
    """``at`` (default now) in µs since the epoch; a naive datetime is refused."""
    if at is None:
        at = datetime.now(UTC)
    if at.tzinfo is None:
        raise ConfigError(
            "lookup(at=...)",
            "the time has no time zone",
            "Pass an aware datetime, e.g. with tzinfo=timezone.utc.",
            value=at,
        )
    return (at - EPOCH) // _ONE_US


_ONE_US = timedelta(microseconds=1)


@lru_cache(maxsize=8)
def _shared_store(url: str) -> Store:
    """One open store per URL per process, so repeated lookups do not reopen the file."""
    return open_store(url)


def lookup(klass: type[T], key: object, at: datetime | None = None, store: Store | str | None = None) -> T | None:
    """The newest version of ``key`` in dataset ``klass`` with event time ≤ ``at`` (default: now).

    Ties (same key and event time) go to the version applied last, which is stream order.
    ``store`` is a :class:`~thyme.store.Store`, a store URL, or None for ``THYME_STORE_URL``
    (default ``sqlite:///thyme.db``). Returns an instance of ``klass``, or None.
    """
    schema = dataset_schema(klass)
    if schema is None:
        raise ConfigError("lookup(dataset)", "not a @dataset class", "Pass the dataset class.", value=klass)
    db = _shared_store(store_url(store)) if store is None or isinstance(store, str) else store
    data = db.lookup(schema, coerce_key(schema, key), to_us(at))
    if data is None:
        return None
    return klass(**decode_row(schema, data))
