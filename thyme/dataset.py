"""Datasets: a keyed, event-time versioned table declared as a Python class.

.. code-block:: python

    @dataset(index=True)
    class ClickEvent:
        user_id: Field[str] = field(key=True)
        page: Field[str] = field()
        timestamp: Field[datetime] = field(timestamp=True)

The decorator reads the annotations once, checks them, and attaches a
:class:`DatasetSchema` (``cls.__thyme_dataset__``). Instances are plain value objects
(keyword ``__init__``, ``__eq__``, ``__repr__``, :meth:`as_dict`); lookups return them.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, TypeVar, dataclass_transform, overload

from pydantic import BaseModel, ConfigDict

from thyme.errors import DatasetError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class _FieldMarker:
    def __repr__(self) -> str:
        return "thyme.Field"


Field: TypeAlias = Annotated[T, _FieldMarker()]
"""Annotation marker: ``user_id: Field[str]`` is ``user_id: str`` to type checkers and to Thyme."""


class _FieldOptions:
    __slots__ = ("key", "timestamp")

    def __init__(self, key: bool, timestamp: bool) -> None:
        self.key = key
        self.timestamp = timestamp


def field(*, key: bool = False, timestamp: bool = False) -> Any:
    """Declare a dataset field: ``key=True`` for the key, ``timestamp=True`` for event time."""
    return _FieldOptions(key=key, timestamp=timestamp)


Kind = Literal["str", "int", "float", "bool", "datetime", "date", "list", "dict"]
_SCALARS: Final[dict[object, Kind]] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    datetime: "datetime",
    date: "date",
}
SUPPORTED_TYPES: Final = "str, int, float, bool, datetime, date, Optional[T], list[T] or dict[str, T]"


class TypeSpec(BaseModel):
    """A field's type: a scalar kind, or ``list``/``dict`` of ``item``; ``optional`` allows null."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


class FieldSchema(BaseModel):
    """One field of a dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: TypeSpec
    key: bool = False
    timestamp: bool = False


class DatasetSchema(BaseModel):
    """What the store and the record processor need to know about a dataset.

    Serialisable (``model_dump_json``) so that a child process can be handed it without
    importing user code.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

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
        if before.type.model_copy(update={"optional": True}) != after.type.model_copy(update={"optional": True}):
            return f"field {name}: type {before.type.describe()} became {after.type.describe()}"
        widens, narrows = widens or after.type.optional, narrows or before.type.optional
    if widens and narrows:
        return "some fields were widened and others narrowed at once"
    return "widens" if widens else "narrows" if narrows else "same"


_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")


def _type_spec(annotation: object, where: str) -> TypeSpec:
    """Translate one annotation into a :class:`TypeSpec`, or raise naming the field."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # Field[T], or the user's own Annotated[T, ...]
        annotation = typing.get_args(annotation)[0]
        origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            inner = _type_spec(members[0], where)
            if inner.optional:
                return inner
            return inner.model_copy(update={"optional": True})
        _unsupported(annotation, where)
    if origin is list:
        (item,) = typing.get_args(annotation) or (None,)
        if item is None:
            _unsupported(annotation, where)
        return TypeSpec(kind="list", item=_type_spec(item, where))
    if origin is dict:
        args = typing.get_args(annotation)
        if len(args) != 2 or args[0] is not str:
            _unsupported(annotation, where)
        return TypeSpec(kind="dict", item=_type_spec(args[1], where))
    kind = _SCALARS.get(annotation) if isinstance(annotation, type) else None
    if kind is None:
        _unsupported(annotation, where)
    return TypeSpec(kind=kind)


def _unsupported(annotation: object, where: str) -> typing.NoReturn:
    shown = getattr(annotation, "__name__", None) or repr(annotation)
    raise DatasetError(
        where,
        "unsupported field type",
        f"Use one of {SUPPORTED_TYPES}.",
        value=shown,
    )


def _build_schema(cls: type, index: bool, version: int) -> DatasetSchema:
    name = cls.__name__
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DatasetError(
            f"@dataset(version=...) on {name}",
            "version must be a whole number ≥ 1",
            "Start at version=1 and increase it when the fields change.",
            value=version,
        )
    if not _NAME.fullmatch(name):
        raise DatasetError(
            f"@dataset on {name}",
            "a dataset class name must be letters, digits and underscores (at most 63, starting with a letter)",
            "Rename the class.",
            value=name,
        )
    module = sys.modules.get(cls.__module__)
    try:
        hints = typing.get_type_hints(cls, globalns=vars(module) if module else None, include_extras=True)
    except Exception as exc:  # NameError for an undefined name, TypeError for a bad hint
        raise DatasetError(
            f"@dataset on {name}",
            f"cannot read the field annotations: {exc}",
            "Import every type used in an annotation in the dataset's module.",
        ) from exc
    own = inspect.get_annotations(cls)
    fields: list[FieldSchema] = []
    for attr in own:
        hint = hints[attr]
        if typing.get_origin(hint) is ClassVar or hint is ClassVar:
            continue
        where = f"{name}.{attr}"
        if not _NAME.fullmatch(attr):
            raise DatasetError(
                where,
                "a field name must start with a letter and use letters, digits and underscores (at most 63)",
                "Rename the field.",
                value=attr,
            )
        options = cls.__dict__.get(attr, None)
        if options is None:
            options = _FieldOptions(key=False, timestamp=False)
        elif not isinstance(options, _FieldOptions):
            raise DatasetError(
                where,
                "dataset fields take no default values",
                "Write `= field()` or nothing.",
                value=options,
            )
        spec = _type_spec(hint, where)
        if options.key and options.timestamp:
            raise DatasetError(
                where,
                "a field cannot be both the key and the timestamp",
                "Use separate fields for key=True and timestamp=True.",
            )
        if options.key and (spec.optional or spec.kind not in ("str", "int")):
            raise DatasetError(
                where,
                "the key field must be a non-optional str or int",
                "Declare it as Field[str] or Field[int].",
                value=spec.describe(),
            )
        if options.timestamp and (spec.optional or spec.kind != "datetime"):
            raise DatasetError(
                where,
                "the timestamp field must be a non-optional datetime",
                "Declare it as Field[datetime].",
                value=spec.describe(),
            )
        fields.append(FieldSchema(name=attr, type=spec, key=options.key, timestamp=options.timestamp))
    for flag, label, example in (
        ("key", "key", "user_id: Field[str] = field(key=True)"),
        ("timestamp", "timestamp", "timestamp: Field[datetime] = field(timestamp=True)"),
    ):
        marked = [f.name for f in fields if getattr(f, flag)]
        if len(marked) != 1:
            problem = (
                f"a dataset needs exactly one {label} field, found none"
                if not marked
                else f"a dataset needs exactly one {label} field, found {len(marked)}: {', '.join(marked)}"
            )
            raise DatasetError(f"@dataset on {name}", problem, f"Mark one field, for example `{example}`.")
    return DatasetSchema(name=name, version=version, index=bool(index), fields=tuple(fields))


def _install_value_methods(cls: type, schema: DatasetSchema) -> None:
    names = tuple(schema.field_names())
    for attr in names:
        if isinstance(cls.__dict__.get(attr), _FieldOptions):
            delattr(cls, attr)

    optional = {f.name for f in schema.fields if f.type.optional}

    def __init__(self: Any, **values: Any) -> None:  # noqa: N807
        unknown = set(values) - set(names)
        if unknown:
            raise TypeError(f"{schema.name}() got unexpected fields: {', '.join(sorted(unknown))}")
        missing = [n for n in names if n not in values and n not in optional]
        if missing:
            raise TypeError(f"{schema.name}() is missing fields: {', '.join(missing)}")
        for n in names:
            setattr(self, n, values.get(n))

    def __repr__(self: Any) -> str:  # noqa: N807
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{schema.name}({inner})"

    def __eq__(self: Any, other: object) -> bool:  # noqa: N807
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def as_dict(self: Any) -> dict[str, Any]:
        """The row as a dict, fields in declaration order."""
        return {n: getattr(self, n) for n in names}

    def lookup(klass: type[T], key: object, at: datetime | None = None, store: Any = None) -> T | None:
        """The newest version of ``key`` with event time ≤ ``at`` (default: now), or None."""
        from thyme.lookup import lookup as _lookup

        return _lookup(klass, key, at=at, store=store)

    def lookup_many(klass: type[T], keys: Any, at: datetime | None = None, store: Any = None) -> list[T | None]:
        """:meth:`lookup` for each key, in order, from one snapshot of the store."""
        from thyme.lookup import lookup_many as _lookup_many

        return _lookup_many(klass, keys, at=at, store=store)

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__repr__ = __repr__  # type: ignore[method-assign,assignment]
    cls.__eq__ = __eq__  # type: ignore[method-assign,assignment]
    cls.__hash__ = None  # type: ignore[assignment]
    cls.as_dict = as_dict  # type: ignore[attr-defined]
    cls.lookup = classmethod(lookup)  # type: ignore[attr-defined]
    cls.lookup_many = classmethod(lookup_many)  # type: ignore[attr-defined]


@overload
@dataclass_transform(kw_only_default=True, field_specifiers=(field,))
def dataset(cls: C, /) -> C: ...
@overload
def dataset(*, index: bool = False, version: int = 1) -> Callable[[C], C]: ...
def dataset(cls: C | None = None, /, *, index: bool = False, version: int = 1) -> C | Callable[[C], C]:
    """Declare a dataset: exactly one key field and one ``datetime`` timestamp field.

    Raises :class:`~thyme.errors.DatasetError` at decoration time, naming the field, for an
    unsupported type, a missing or duplicate key/timestamp, or a bad version.
    """

    def wrap(klass: C) -> C:
        if not isinstance(klass, type):
            raise DatasetError("@dataset", "decorates a class", "Put @dataset on a class.", value=klass)
        schema = _build_schema(klass, index=index, version=version)
        _install_value_methods(klass, schema)
        klass.__thyme_dataset__ = schema  # type: ignore[attr-defined]
        return klass

    return wrap(cls) if cls is not None else wrap


def dataset_schema(cls: object) -> DatasetSchema | None:
    """The :class:`DatasetSchema` of a ``@dataset`` class, or None."""
    schema = getattr(cls, "__thyme_dataset__", None)
    return schema if isinstance(schema, DatasetSchema) else None
