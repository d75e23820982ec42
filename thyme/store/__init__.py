"""Store selection: ``--store URL`` or ``THYME_STORE_URL``; an embedded SQLite file by default,
PostgreSQL (``postgresql://…``) when consumers on several hosts share one store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from thyme.errors import StoreConfigError
from thyme.schema import DatasetSchema
from thyme.store.base import (
    Batch,
    Conflict,
    DeadLetter,
    DeadLetterQuery,
    Feed,
    Position,
    Row,
    ShardState,
    ShardStore,
    ShardSummary,
    Store,
)
from thyme.store.url import DEFAULT_STORE_URL, ENV_STORE_URL, redact_url, store_url

__all__ = [
    "DEFAULT_STORE_URL",
    "ENV_STORE_URL",
    "Batch",
    "Conflict",
    "DeadLetter",
    "DeadLetterQuery",
    "Feed",
    "Position",
    "Row",
    "ShardState",
    "ShardStore",
    "ShardSummary",
    "Store",
    "migration_script",
    "open_store",
    "redact_url",
    "sqlite_file",
    "store_url",
]


def migration_script(url: str | None, datasets: Sequence[DatasetSchema]) -> str:
    """The SQL that creates or upgrades the store's tables and the datasets' tables, for an admin to
    review and run (``thyme store migrate --print``); connects to nothing. Only PostgreSQL has one:
    the SQLite store creates its tables itself."""
    url = store_url(url)
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise StoreConfigError(
            "thyme store migrate --print",
            "only a PostgreSQL store has a script to review",
            "The SQLite store creates its tables itself; run without --print.",
            value=redact_url(url),
        )
    from thyme.store import postgres_schema

    return postgres_schema.migration_script(datasets)


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL names, None for any
    other scheme (not validated: :func:`open_store` does that)."""
    parts = urlsplit(url)
    return Path(parts.path[1:]) if parts.scheme == "sqlite" else None


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open the store named by ``url`` (see :func:`store_url`). ``create=False`` creates nothing:
    a SQLite file must exist, Thyme's PostgreSQL tables are left as they are (for a script to
    print). The backend's module, and its driver, are imported here, on first use.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``. Query parameters:
    ``busy_timeout_ms`` (default 30000) bounds how long a writer waits for the file lock;
    ``fanout`` (default 8, at least 2) is how many index runs of one size are merged at a time:
    fewer runs for a lookup to probe (smaller) against fewer rewrites of each entry (larger).

    ``postgresql://user:password@host:5432/dbname`` (or ``postgres://…``): a PostgreSQL
    database, shared by consumers on several hosts; query parameters are libpq's (``sslmode``,
    ``connect_timeout``, …). Needs ``pip install 'thyme-kinesis[postgres]'``.
    """
    url = store_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise StoreConfigError(  # not urlsplit's message: it quotes the "port", which may be the password
            "store URL",
            "not a valid URL (an unclosed [ or a port that is not a number, e.g. an unencoded / ? # in the password)",
            "Write postgresql://user:password@host:5432/dbname, with @ / ? # in the password "
            "percent-encoded (%40 %2F %3F %23).",
            value=redact_url(url),
        ) from None
    if parts.scheme in ("postgresql", "postgres") and url.count("@") > 1:
        raise StoreConfigError(
            "store URL",
            "more than one @: the password (or user) has characters that must be percent-encoded",
            "Write @ as %40, / as %2F, ? as %3F and # as %23.",
            value=redact_url(url),
        )
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise StoreConfigError(
                "store URL",
                "a SQLite URL names a file as sqlite:///relative.db or sqlite:////absolute.db",
                "For example --store sqlite:///thyme.db.",
                value=redact_url(url),
            )
        query = parse_qs(parts.query)
        from thyme.store.sqlite import DEFAULT_BUSY_TIMEOUT_MS, DEFAULT_FANOUT, SQLiteStore

        options = {"busy_timeout_ms": DEFAULT_BUSY_TIMEOUT_MS, "fanout": DEFAULT_FANOUT}
        least = {"busy_timeout_ms": 1, "fanout": 2}
        unknown = set(query) - set(options)
        if unknown:
            raise StoreConfigError(
                "store URL",
                f"unknown SQLite option {sorted(unknown)[0]}",
                f"The options are {' and '.join(options)}.",
                value=redact_url(url),
            )
        for name, default in options.items():
            given = query.get(name, [str(default)])[-1]
            if not given.isdigit() or int(given) < least[name]:
                raise StoreConfigError(
                    f"store URL {name}",
                    f"must be a whole number of at least {least[name]}",
                    f"For example ?{name}={default}.",
                    value=given,
                )
            options[name] = int(given)
        path = sqlite_file(url)
        assert path is not None
        if not create and not path.is_file():
            raise StoreConfigError(
                "store URL",
                f"no SQLite store at {path}",
                "Check the path; a store is created by the consumer (thyme kinesis run) or thyme store migrate.",
                value=redact_url(url),
            )
        return SQLiteStore(path, **options)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from thyme.store.postgres import PostgresStore
        except ImportError as exc:
            if exc.name is not None and not exc.name.startswith("psycopg"):
                raise
            missing = "is not installed" if exc.name is not None else f"cannot be loaded ({exc})"
            raise StoreConfigError(
                "store URL",
                f"a PostgreSQL store needs the psycopg package, which {missing}",
                "Run: pip install 'thyme-kinesis[postgres]'.",
                value=redact_url(url),
            ) from None
        return PostgresStore(url, create_tables=create)
    raise StoreConfigError(
        "store URL",
        f"unsupported store scheme {parts.scheme!r}",
        "Use sqlite:///path/to/thyme.db or postgresql://user:password@host:5432/dbname.",
        value=redact_url(url),
    )
