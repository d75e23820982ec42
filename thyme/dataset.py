"""Datasets: a keyed, event-time versioned table declared as a Python class.

.. code-block:: python

    @dataset(index=True)
    class ClickEvent:
        user_id: Field[str] = field(key=True)
        page: Field[str] = field()
        timestamp: Field[datetime] = field(timestamp=True)

The decorator reads the annotations once, checks them, and attaches a
:class:`~thyme.schema.DatasetSchema` (``cls.__thyme_dataset__``). Instances are plain value
objects (keyword ``__init__``, ``__eq__``, ``__repr__``, :meth:`as_dict`); lookups return them.
The class methods ``lookup`` and ``lookup_many`` call the serving layer (``thyme/serving.py``)
through :func:`serve_lookups_with`, which the ``thyme`` package calls when it is imported: this
module, at the bottom of the layers, never imports the store.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Final, TypeAlias, TypeVar, dataclass_transform, overload

import msgspec

from thyme.errors import DatasetError
from thyme.schema import SCALAR_KINDS, SUPPORTED_TYPES, DatasetSchema, FieldSchema, TypeSpec
from thyme.times import TimeLike

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
            return msgspec.structs.replace(inner, optional=True)
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
    kind = SCALAR_KINDS.get(annotation) if isinstance(annotation, type) else None
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

    def lookup(klass: type[T], key: object, at: TimeLike | None = None, store: Any = None) -> T | None:
        """The newest version of ``key`` with event time ≤ ``at`` (default: now), or None."""
        return _serving().lookup(klass, key, at=at, store=store)

    def lookup_many(klass: type[T], keys: Any, at: TimeLike | None = None, store: Any = None) -> list[T | None]:
        """:meth:`lookup` for each key, in order, from one snapshot of the store."""
        return _serving().lookup_many(klass, keys, at=at, store=store)

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__repr__ = __repr__  # type: ignore[method-assign,assignment]
    cls.__eq__ = __eq__  # type: ignore[method-assign,assignment]
    cls.__hash__ = None  # type: ignore[assignment]
    cls.as_dict = as_dict  # type: ignore[attr-defined]
    cls.lookup = classmethod(lookup)  # type: ignore[attr-defined]
    cls.lookup_many = classmethod(lookup_many)  # type: ignore[attr-defined]


class Serving(typing.Protocol):
    """What ``Dataset.lookup`` and ``Dataset.lookup_many`` call (``thyme/serving.py`` provides it)."""

    def lookup(self, klass: type[T], key: object, at: TimeLike | None = ..., store: Any = ...) -> T | None: ...

    def lookup_many(
        self, klass: type[T], keys: Sequence[object], at: TimeLike | None = ..., store: Any = ...
    ) -> list[T | None]: ...


_SERVING: list[Serving] = []


def serve_lookups_with(serving: Serving) -> None:
    """Give dataset classes their lookup methods. Called once, by ``thyme/__init__.py``: the
    package root sits above every layer, so the SDK declares and the serving layer answers."""
    _SERVING[:] = [serving]


def _serving() -> Serving:
    if not _SERVING:  # only if thyme/__init__.py did not run, which importing thyme.dataset makes it do
        raise RuntimeError("thyme.dataset was loaded without the thyme package")
    return _SERVING[0]


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
