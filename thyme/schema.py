"""What Thyme knows about a dataset, as data: its fields, their types, its version.

:class:`DatasetSchema` is built by ``@dataset`` (``thyme/dataset.py``) and is all that the record
rules, the store and the child need: it is serialisable, so a child process is handed it without
importing user code. :func:`compare_shapes` says which changes the rows of one version can follow.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Final, Literal

import msgspec

Kind = Literal["str", "int", "float", "bool", "datetime", "date", "list", "dict"]
SCALAR_KINDS: Final[dict[object, Kind]] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    datetime: "datetime",
    date: "date",
}
SUPPORTED_TYPES: Final = "str, int, float, bool, datetime, date, Optional[T], list[T] or dict[str, T]"


class TypeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A field's type: a scalar kind, or ``list``/``dict`` of ``item``; ``optional`` allows null."""

    kind: Kind
    """The base kind."""
    optional: bool = False
    """Whether ``null`` (or a missing key) is accepted."""
    item: TypeSpec | None = None
    """Element type of a ``list``, value type of a ``dict`` (keys are always ``str``)."""

    def describe(self) -> str:
        """Python spelling, for messages: ``Optional[list[int]]``."""
        base: str = self.kind
        if self.item is not None:
            inner = self.item.describe()
            base = f"list[{inner}]" if self.kind == "list" else f"dict[str, {inner}]"
        return f"Optional[{base}]" if self.optional else base


class FieldSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One field of a dataset."""

    name: str
    type: TypeSpec
    key: bool = False
    timestamp: bool = False


class DatasetSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the store and the record processor need to know about a dataset.

    Serialisable (:meth:`to_json`, :meth:`from_json`) so that a child process can be handed it
    without importing user code. A msgspec struct, not a pydantic model: the child, which needs
    it, then loads no pydantic (about 12 MiB of a waiting child's memory, measured).
    """

    name: str
    """The dataset's name: the class name."""
    version: int = 1
    """Bumped by the user when fields change in a way stored rows cannot follow (see
    :func:`compare_shapes`); each version is a dataset of its own in the store."""
    index: bool = False
    """Whether lookups by key are served (``@dataset(index=True)``). Not part of the stored shape:
    the store keeps the key index either way, so it can be turned on or off at the same version."""
    fields: tuple[FieldSchema, ...]

    @property
    def key_field(self) -> FieldSchema:
        """The single key field."""
        return next(f for f in self.fields if f.key)

    @property
    def timestamp_field(self) -> FieldSchema:
        """The single event-time field."""
        return next(f for f in self.fields if f.timestamp)

    def field_names(self) -> list[str]:
        """Field names in declaration order."""
        return [f.name for f in self.fields]

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetSchema:
        """Raises ``msgspec.ValidationError``/``DecodeError`` for anything else."""
        return msgspec.json.decode(text, type=cls)

    def replace(self, **changes: object) -> DatasetSchema:
        """A copy with ``changes`` (``name``, ``version``, ``index``, ``fields``)."""
        return msgspec.structs.replace(self, **changes)


ShapeChange = Literal["same", "widens", "narrows"]
"""How a dataset's fields compare with the ones a store holds for the same name and version."""


def compare_shapes(stored: DatasetSchema, wanted: DatasetSchema) -> ShapeChange | str:
    """How ``wanted``'s fields relate to ``stored``'s (same name and version), or the reason they
    cannot share one table.

    Rows stay readable both ways when the only differences are *widenings* (``wanted`` adds an
    ``Optional`` field, or makes a required field ``Optional``: every stored row is valid under
    ``wanted``) or only *narrowings* (the reverse: an older copy of the code, whose rows are valid
    under ``stored``). Field order and ``index`` do not matter. Anything else — a type changed, a
    new required field, a required field removed, the key or timestamp moved, or widening and
    narrowing at once — changes what a stored row means, and needs a new ``version``.
    """
    old = {f.name: f for f in stored.fields}
    new = {f.name: f for f in wanted.fields}
    widens = narrows = False
    for name in old.keys() | new.keys():
        before, after = old.get(name), new.get(name)
        if before is None or after is None:
            present = after if before is None else before
            assert present is not None
            if present.key or present.timestamp:
                return f"field {name}: the {'key' if present.key else 'timestamp'} field changed"
            if not present.type.optional:
                return (
                    f"field {name}: a new required field (the rows stored lack it)"
                    if before is None
                    else f"field {name}: a required field was removed"
                )
            widens, narrows = widens or before is None, narrows or after is None
            continue
        if (before.key, before.timestamp) != (after.key, after.timestamp):
            return f"field {name}: its key/timestamp role changed"
        if before.type == after.type:
            continue
        if msgspec.structs.replace(before.type, optional=True) != msgspec.structs.replace(after.type, optional=True):
            return f"field {name}: type {before.type.describe()} became {after.type.describe()}"
        widens, narrows = widens or after.type.optional, narrows or before.type.optional
    if widens and narrows:
        return "some fields were widened and others narrowed at once"
    return "widens" if widens else "narrows" if narrows else "same"


def dataset_schema(cls: object) -> DatasetSchema | None:
    """The :class:`DatasetSchema` of a ``@dataset`` class, or None."""
    schema = getattr(cls, "__thyme_dataset__", None)
    return schema if isinstance(schema, DatasetSchema) else None


class SchemaSet:
    """Dataset schemas, found by identity before equality: hashing a schema walks all its fields
    (~3 µs, measured), and a process asks about the same few schema objects on every lookup."""

    __slots__ = ("_by_id", "_equal")

    def __init__(self) -> None:
        self._by_id: dict[int, DatasetSchema] = {}
        """Holds each schema it was asked about, so an id is never reused while it is a key."""
        self._equal: set[DatasetSchema] = set()

    def __contains__(self, schema: object) -> bool:
        if self._by_id.get(id(schema)) is schema:
            return True
        if isinstance(schema, DatasetSchema) and schema in self._equal:
            self._by_id[id(schema)] = schema
            return True
        return False

    def add(self, schema: DatasetSchema) -> None:
        self._equal.add(schema)
        self._by_id[id(schema)] = schema
