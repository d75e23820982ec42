"""``@source``: attach a connector to a dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal, TypeVar

from thyme.connectors.formats import check_dataset
from thyme.connectors.kinesis import KinesisSource
from thyme.duration import format_duration, parse_duration
from thyme.errors import SourceError
from thyme.schema import dataset_schema

C = TypeVar("C", bound=type)
CDC_MODES: Final = ("append", "upsert")
DEFAULT_MAX_FUTURE_SKEW: Final = timedelta(hours=1)


@dataclass(frozen=True)
class SourceSpec:
    """A connector attached to a dataset, with the ingestion settings that go with it."""

    connector: KinesisSource
    max_lateness: timedelta | None
    """Records older than the shard's watermark minus this are late (dead letters). None: never late."""
    max_future_skew: timedelta
    """Records whose event time is further than this ahead of their arrival time are rejected."""
    cdc: Literal["append", "upsert"]

    def describe(self) -> str:
        lateness = "none" if self.max_lateness is None else format_duration(self.max_lateness)
        return (
            f"{self.connector!r}, max_lateness={lateness}, "
            f"max_future_skew={format_duration(self.max_future_skew)}, cdc={self.cdc}"
        )


def source(
    connector: KinesisSource,
    *,
    max_lateness: str | timedelta | None = None,
    cdc: str = "append",
    cursor: str | None = None,
    every: str | timedelta | None = None,
    max_future_skew: str | timedelta = DEFAULT_MAX_FUTURE_SKEW,
    backfill: bool = False,
) -> Callable[[C], C]:
    """Attach ``connector`` to the ``@dataset`` class below it.

    Args:
        connector: the connector, e.g. :class:`KinesisSource`.
        max_lateness: how far behind the shard's watermark an event may be and still be applied
            (``"5m"``). Unset: no event is late.
        cdc: ``"append"`` (every event is a new version; default) or ``"upsert"``.
        cursor, every: polling settings; streaming connectors reject them.
        max_future_skew: events further than this ahead of their Kinesis arrival time are
            rejected, so that one producer with a wrong clock cannot push the watermark ahead
            and make every later record late. Default ``"1h"``.
        backfill: backfilling on commit; not supported for Kinesis.
    """
    if not isinstance(connector, KinesisSource):
        raise SourceError(
            "@source(connector)",
            "not a supported connector",
            "Pass KinesisSource(...).",
            value=type(connector).__name__,
        )
    name = type(connector).__name__
    for option, value in (("cursor", cursor), ("every", every)):
        if value is not None:
            raise SourceError(
                f"@source({name}(...), {option}=...)",
                f"{name} is a streaming connector: it consumes continuously and does not poll, "
                f"so `{option}` cannot be set",
                f"Remove `{option}=...`.",
                value=value,
            )
    if backfill:
        raise SourceError(
            f"@source({name}(...), backfill=...)",
            f"backfilling a {name}-sourced dataset on commit is not supported",
            "Rely on the live ingestion path; to re-read retained records, start a new "
            'application with init_position="trim_horizon" or a timestamp.',
            value=backfill,
        )
    if cdc not in CDC_MODES:
        raise SourceError(
            "@source(cdc=...)",
            "unknown change-data-capture mode",
            'Use "append" or "upsert".',
            value=cdc,
        )
    lateness = None if max_lateness is None else parse_duration(max_lateness, "@source(max_lateness=...)")
    skew = parse_duration(max_future_skew, "@source(max_future_skew=...)")
    spec = SourceSpec(connector=connector, max_lateness=lateness, max_future_skew=skew, cdc=cdc)  # type: ignore[arg-type]

    def wrap(cls: C) -> C:
        schema = dataset_schema(cls)
        if schema is None:
            raise SourceError(
                f"@source on {getattr(cls, '__name__', cls)!s}",
                "decorates a @dataset class",
                "Put @source(...) above @dataset(...), as in the documentation example.",
            )
        if getattr(cls, "__thyme_source__", None) is not None:
            raise SourceError(
                f"@source on {schema.name}",
                "a dataset takes one Kinesis source",
                "Keep one @source(KinesisSource(...)) per dataset.",
            )
        check_dataset(connector.record_format.name, connector.record_format.fields, schema)
        cls.__thyme_source__ = spec  # type: ignore[attr-defined]
        return cls

    return wrap


def source_spec(cls: object) -> SourceSpec | None:
    """The :class:`SourceSpec` attached by ``@source``, or None."""
    spec = getattr(cls, "__thyme_source__", None)
    return spec if isinstance(spec, SourceSpec) else None
