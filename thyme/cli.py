"""The ``thyme`` command line. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, cast

import msgspec

from thyme.errors import ThymeError
from thyme.logs import ENV_LOG_LEVEL, LEVELS

if TYPE_CHECKING:
    from typing import Any

    from thyme.connectors.kinesis import KinesisConnection
    from thyme.connectors.source import SourceSpec
    from thyme.kinesis.launcher import RunOptions
    from thyme.schema import DatasetSchema
    from thyme.store import DeadLetterQuery

EXIT_USAGE = 2
N = TypeVar("N", int, float)


def _at(value: str) -> datetime:
    """A time as users write it: ISO-8601 with a zone, epoch seconds or ms, or "10m" back from now."""
    from thyme.times import parse_time

    try:
        return parse_time(value, "time")
    except ThymeError as exc:
        problem = getattr(exc, "problem", str(exc))
        raise argparse.ArgumentTypeError(f"{problem} (got {value!r}). {getattr(exc, 'fix', '')}".strip()) from None


_DATASET_HELP = "the dataset class, e.g. app:ClickEvent or path/to/app.py:ClickEvent"
_TIME_HELP = 'ISO-8601 with a zone, epoch seconds or ms, or back from now: "10m", "2h"'


def _cmd_lookup(args: argparse.Namespace) -> int:
    from thyme.loader import load_dataset
    from thyme.serving import lookup
    from thyme.store import open_store

    klass = load_dataset(args.dataset, require_source=False)
    store = open_store(args.store, create=False)  # a lookup never creates a store
    try:
        results: list[dict[str, object] | None] = []
        for key in args.keys:
            found = lookup(klass, key, at=args.at, store=store)
            results.append(None if found is None else found.as_dict())
    finally:
        store.close()
    out = results[0] if len(results) == 1 else results
    sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    return 0 if all(r is not None for r in results) else 1


def _run_options(args: argparse.Namespace) -> RunOptions:
    from thyme.handover import DEFAULT_NAMESPACE
    from thyme.kinesis.launcher import RunOptions

    given = vars(args)
    daemon = {
        option: given[arg]
        for arg, option in (
            ("worker_id", "worker_id"),
            ("profile", "profile"),
            ("idle_ms", "idle_time_between_reads_ms"),
            ("shutdown_grace_ms", "shutdown_grace_ms"),
            ("failover_ms", "failover_time_ms"),
            ("assignment_ms", "assignment_ms"),
            ("max_records", "max_records"),
            ("max_shards", "max_shards"),
            ("memory_budget", "memory_budget"),
        )
        if arg in given  # `status` has none of the daemon's settings
    }
    if "child_timeout_s" in given:
        daemon["child_timeout_s"] = given["child_timeout_s"] or None
    if "retrieval" in given:
        daemon["retrieval"] = given["retrieval"]
        daemon["consumer_name"] = given["consumer_name"]
    if "leader_lock_s" in given:
        daemon["leader_lock_s"] = given["leader_lock_s"] or None  # 0: KCL's own timing
    if given.get("record_size") is not None:
        daemon["record_size"] = given["record_size"]
    return RunOptions(
        store_url=args.store,
        application_name=args.application_name,
        dynamodb_endpoint_url=args.dynamodb_endpoint_url,
        sts_endpoint_url=args.sts_endpoint_url,
        metrics=getattr(args, "metrics", None),
        metrics_namespace=getattr(args, "metrics_namespace", None) or DEFAULT_NAMESPACE,
        progress=getattr(args, "progress", None),
        prometheus_port=getattr(args, "prometheus_port", None),
        prometheus_address=getattr(args, "prometheus_address", None) or "127.0.0.1",
        bootstrap_leases=getattr(args, "bootstrap_leases", True),
        check_environment=getattr(args, "check_environment", True),
        environment_check_s=getattr(args, "environment_check_s", 30.0),
        leader_stale_s=_stale_option(given.get("leader_stale_s")) if "leader_stale_s" in given else None,
        log_level=_log_level(args.log_level) if "log_level" in given else "info",
        **daemon,
    )


def _stale_option(value: float | None) -> float | Literal["auto"] | None:
    """``--leader-stale-s``: not given is ``auto`` (3x the lock's lease), 0 is off."""
    if value is None:
        return "auto"
    return value or None


def _log_level(given: str | None) -> Literal["debug", "info", "warning", "error"]:
    from thyme.errors import ConfigError

    value = given or os.environ.get(ENV_LOG_LEVEL, "").strip().lower() or "info"
    if value not in LEVELS:
        raise ConfigError(ENV_LOG_LEVEL, "not a log level", f"Use one of {', '.join(LEVELS)}.", value)
    return cast('Literal["debug", "info", "warning", "error"]', value)


def _cmd_kinesis_properties(args: argparse.Namespace) -> int:
    from thyme.kinesis.launcher import plan
    from thyme.loader import load_dataset

    the_plan = plan(load_dataset(args.dataset), _run_options(args), open_the_store=False)
    sys.stdout.write(the_plan.properties.render(redact_credentials=True))
    return 0


def _cmd_kinesis_status(args: argparse.Namespace) -> int:
    from thyme.kinesis.status import as_json, as_table, status
    from thyme.loader import load_dataset

    rows, reasons, leader = status(load_dataset(args.dataset), _run_options(args))
    if args.json:
        sys.stdout.write(msgspec.json.encode(as_json(rows, reasons, leader)).decode() + "\n")
    else:
        sys.stdout.write(as_table(rows, reasons, leader))
    return 0


def _payload(raw: bytes) -> dict[str, object]:
    from thyme.records.formats import readable

    shown, kind = readable(raw)
    text: dict[str, object] = {"payload": shown.decode("utf-8", "backslashreplace")}
    return text if kind is None else {**text, "payload_compression": kind}


def _source_of(args: argparse.Namespace) -> tuple[DatasetSchema, SourceSpec, KinesisConnection, str, Any]:
    """The dataset's schema, source, resolved connection, application name and a Kinesis client
    with the identity ``run`` reads with (the role assumed): for the commands that call Kinesis."""
    from thyme.connectors.source import source_spec
    from thyme.errors import LoadError
    from thyme.kinesis.aws import session_name, source_kinesis
    from thyme.kinesis.launcher import env_endpoint
    from thyme.kinesis.properties import default_application_name
    from thyme.loader import load_dataset
    from thyme.schema import dataset_schema

    klass = load_dataset(args.dataset)
    schema, spec = dataset_schema(klass), source_spec(klass)
    if schema is None or spec is None:
        raise LoadError(f"{args.dataset} is not a @source(KinesisSource(...)) @dataset class")
    connection = spec.connector.resolve()
    application = args.application_name or default_application_name(schema.name, connection.stream_name, schema.version)
    sts = args.sts_endpoint_url or env_endpoint(os.environ, "sts")
    return schema, spec, connection, application, source_kinesis(connection, sts, session_name(application))


def _cmd_kinesis_deregister_consumer(args: argparse.Namespace) -> int:
    from thyme.kinesis.fanout import deregister

    _schema, _spec, connection, application, client = _source_of(args)
    sys.stdout.write(deregister(client, connection, args.consumer_name or application) + "\n")
    return 0


def _cmd_kinesis_preflight(args: argparse.Namespace) -> int:
    from thyme.kinesis.sample import Preflight, judge_sample, read_sample

    schema, spec, connection, _application, client = _source_of(args)
    since = args.since if args.since is not None else datetime.now(UTC) - timedelta(hours=1)
    shards, cut = read_sample(
        client,
        connection.stream_arn,
        connection.kinesis_identity,
        connection.endpoint_url,
        since,
        args.limit,
        args.timeout,
    )
    samples, examples = judge_sample(schema, spec, shards)
    for sample in samples:
        sample.complete = sample.shard not in cut
    report = Preflight(
        stream=connection.stream_arn,
        format=str(spec.connector.record_format),
        since=since,
        max_lateness=spec.max_lateness,
        keep=args.keep,
        shards=samples,
        examples=examples,
    )
    if args.json:
        sys.stdout.write(msgspec.json.encode(report.as_json()).decode() + "\n")
    else:
        sys.stdout.write(report.as_table())
    return 1 if report.dead_letters else 0


def _share(value: str) -> float:
    text = value.strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a share: {value!r} (write "99%" or 0.99)') from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f'not a share between 0 and 100%: {value!r} (write "99%" or 0.99)')
    return share


def _checked(value: str, kind: Callable[[str], N], ok: Callable[[N], bool], problem: str) -> N:
    """``value`` read as ``kind`` if ``ok`` accepts it, else argparse's error ``<problem>: <value>``."""
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{problem}: {value!r}") from None
    if not ok(number):
        raise argparse.ArgumentTypeError(f"{problem}: {value!r}")
    return number


def _leader_stale(value: str) -> float:
    from thyme.kinesis.leader import MIN_STALE_AFTER_S

    return _checked(
        value,
        float,
        lambda s: s == 0 or s >= MIN_STALE_AFTER_S,
        f"not a number of seconds of at least {MIN_STALE_AFTER_S}, or 0 (a live leader of KCL's own timing "
        "renews its lock every 30 s)",
    )


def _leader_lock(value: str) -> int:
    from thyme.kinesis.entry import KCL_LEADER_LOCK_S, MIN_LEADER_LOCK_S

    return _checked(
        value,
        int,
        lambda s: s == 0 or MIN_LEADER_LOCK_S <= s <= KCL_LEADER_LOCK_S,
        f"not a whole number of seconds from {MIN_LEADER_LOCK_S} to {KCL_LEADER_LOCK_S}, or 0 (KCL's own 120 s)",
    )


def _max_records(value: str) -> int:
    return _checked(value, int, lambda n: 1 <= n <= 10_000, "not a whole number from 1 to 10000 (Kinesis' limit)")


def _size(value: str) -> int:
    from thyme.kinesis.budget import parse_size

    try:
        return parse_size(value, "size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a size such as 2GiB, 1536MiB or 512KiB: {value!r}") from exc


def _positive_int(value: str) -> int:
    return _checked(value, int, lambda n: n > 0, "not a positive whole number")


def _positive_float(value: str) -> float:
    return _checked(value, float, lambda n: n > 0, "not a positive number of seconds")


def _dead_letter_query(args: argparse.Namespace, include_redriven: bool = False) -> DeadLetterQuery:
    from thyme.store import DeadLetterQuery
    from thyme.times import to_us

    def us(moment: datetime | None) -> int | None:
        return None if moment is None else to_us(moment)

    return DeadLetterQuery(
        shard=args.shard, since_us=us(args.since), until_us=us(args.until), include_redriven=include_redriven
    )


def _cmd_kinesis_dead_letters(args: argparse.Namespace) -> int:
    from thyme.loader import load_dataset
    from thyme.records import describe
    from thyme.schema import dataset_schema
    from thyme.store import open_store
    from thyme.times import iso_from_ms, iso_from_us

    schema = dataset_schema(load_dataset(args.dataset))
    assert schema is not None
    store = open_store(args.store, create=False)
    try:
        letters = store.dead_letters(
            schema, reason=args.reason, limit=args.limit, query=_dead_letter_query(args, args.include_redriven)
        )
        held = store.dead_letter_counts(schema) if not letters and args.reason is not None else {}
    finally:
        store.close()
    for letter in letters:
        entry = {
            "id": letter.id,
            "shard": letter.shard,
            "sequence": letter.sequence,
            "sub_sequence": letter.sub_sequence,
            "partition_key": letter.partition_key,
            "reason": letter.reason,
            "detail": describe(letter.detail),
            # times in ISO-8601 UTC to read, and the raw numbers (unit in the name) to compute with
            "arrived_at": iso_from_ms(letter.arrival_ms),
            "recorded_at": iso_from_us(letter.recorded_at_us),
            "redriven_at": iso_from_us(letter.redriven_at_us),
            "arrival_ms": letter.arrival_ms,
            "recorded_at_us": letter.recorded_at_us,
            "redriven_at_us": letter.redriven_at_us,
            # the payload as text with undecodable bytes escaped (\xNN), never raw to a terminal;
            # a compressed one as what it holds (decompressed within the consumer's bounds)
            **_payload(letter.raw),
        }
        sys.stdout.write(msgspec.json.encode(entry).decode() + "\n")
    return 0 if letters or args.reason is None else _no_such_reason(args.reason, held)


def _no_such_reason(wanted: str, held: dict[str, int]) -> int:
    """A ``--reason`` that matches nothing held: say so, with the reasons that are, and exit 1
    (a typo must not look like "no dead letters")."""
    from thyme.store.common import reason_matches

    if any(reason_matches(reason, wanted) for reason in held):
        return 0  # the reason is held; the other filters left nothing
    top = sorted(held.items(), key=lambda item: (-item[1], item[0]))
    listed = "; ".join(f"{reason} ({n})" for reason, n in top[:10]) + ("; …" if len(top) > 10 else "")
    hint = f"reasons held: {listed}" if held else "no dead letters are held"
    sys.stderr.write(f"thyme: no dead letters with reason {wanted!r} (or starting with it); {hint}\n")
    return 1


def _cmd_kinesis_redrive(args: argparse.Namespace) -> int:
    from thyme.loader import load_dataset
    from thyme.redrive import redrive
    from thyme.schema import dataset_schema as schema_of
    from thyme.store import open_store

    klass = load_dataset(args.dataset)
    store = open_store(args.store, create=False)
    try:
        report = redrive(klass, store, reason=args.reason, query=_dead_letter_query(args), dry_run=args.dry_run)
        held = {}
        if not report.examined and args.reason is not None and (schema := schema_of(klass)) is not None:
            held = store.dead_letter_counts(schema)
    finally:
        store.close()
    sys.stdout.write(msgspec.json.encode(report.as_dict()).decode() + "\n")
    return 0 if report.examined or args.reason is None else _no_such_reason(args.reason, held)


def _cmd_kinesis_run(args: argparse.Namespace) -> int:
    from thyme.kinesis.launcher import run
    from thyme.loader import load_dataset
    from thyme.logs import configure

    options = _run_options(args)
    configure({"component": "thyme.kinesis", "dataset": args.dataset.rpartition(":")[2]}, LEVELS[options.log_level])
    return run(load_dataset(args.dataset), options)


def _add_dataset_options(command: argparse.ArgumentParser) -> None:
    """What every Kinesis command needs to find a dataset's consumer: its store and lease table."""
    command.add_argument("dataset", metavar="MODULE:DATASET", help=_DATASET_HELP)
    command.add_argument("--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)")
    command.add_argument(
        "--application-name",
        default=None,
        help="KCL application and lease table name (default: thyme-<dataset>-<stream>, thyme-<dataset>-v<N>-<stream> "
        "for version N > 1)",
    )
    command.add_argument(
        "--dynamodb-endpoint-url",
        default=None,
        help="DynamoDB endpoint for the lease table ($THYME_DYNAMODB_ENDPOINT_URL; local stacks)",
    )
    command.add_argument(
        "--sts-endpoint-url", default=None, help="STS endpoint for assuming role_arn ($THYME_STS_ENDPOINT_URL)"
    )


def _add_daemon_options(command: argparse.ArgumentParser) -> None:
    """The daemon's settings: for ``run`` and for ``properties``, which prints them."""
    from thyme.kinesis.entry import DEFAULT_LEADER_LOCK_S

    command.add_argument("--worker-id", default=None, help="KCL worker id (default: the host name)")
    command.add_argument(
        "--profile",
        choices=["local", "aws"],
        default=None,
        help="timing profile: local (fast discovery, no CloudWatch) when an endpoint URL is set, else aws",
    )
    command.add_argument("--idle-ms", type=int, default=250, help="idleTimeBetweenReadsInMillis (>= 200)")
    command.add_argument("--shutdown-grace-ms", type=int, default=30_000, help="shutdownGraceMillis")
    command.add_argument("--failover-ms", type=int, default=10_000, help="failoverTimeMillis")
    command.add_argument(
        "--max-records",
        type=_max_records,
        default=10_000,
        help="maxRecords: the most records one GetRecords call, and so one batch to a shard's child, holds "
        "(1-10000, default 10000; lower bounds each child's memory while a shard catches up)",
    )
    command.add_argument(
        "--max-shards",
        type=_positive_int,
        default=None,
        help="maxLeasesForWorker: the most shards this host holds (default: no limit). Shards beyond what "
        "all hosts together may hold wait unconsumed: with S shards on R hosts give ceil(S/(R-1)) or more",
    )
    command.add_argument(
        "--memory-budget",
        type=_size,
        default=None,
        metavar="SIZE",
        help="memory the whole host (launcher, JVM, one child per shard) may use with every shard backlogged, "
        "e.g. 2GiB: sets maxRecords, the prefetch and the JVM heap to fit (needs --max-shards; polling only)",
    )
    command.add_argument(
        "--record-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="the records' usual size, for --memory-budget to count batches in records (default 1KiB)",
    )
    command.add_argument(
        "--assignment-ms",
        type=_positive_int,
        default=None,
        help="leaseAssignmentIntervalMillis: how often the leader assigns leases (default 500 with the local "
        "profile, 2000 with aws; KCL's own is 2x failoverTimeMillis)",
    )
    command.add_argument(
        "--child-timeout-s",
        type=int,
        default=300,
        help="timeoutInSeconds: restart the daemon when a shard's processor is silent this long "
        "(default 300; 0: never; must exceed the store retry bound, $THYME_STORE_GIVE_UP_AFTER_S)",
    )
    command.add_argument(
        "--retrieval",
        choices=["polling", "fan-out"],
        default=os.environ.get("THYME_KINESIS_RETRIEVAL") or "polling",
        help="polling: GetRecords, the stream's 2 MiB/s per shard shared by every polling consumer (default); "
        "fan-out: enhanced fan-out, 2 MiB/s per shard for this consumer alone, pushed ~70 ms after a put, billed "
        "per consumer-shard hour and GB ($THYME_KINESIS_RETRIEVAL)",
    )
    command.add_argument(
        "--consumer-name",
        default=os.environ.get("THYME_KINESIS_CONSUMER_NAME") or None,
        help="with --retrieval fan-out: the stream consumer KCL registers (default: the application name; "
        "$THYME_KINESIS_CONSUMER_NAME); remove a retired one with `thyme kinesis deregister-consumer`",
    )
    command.add_argument(
        "--leader-lock-s",
        type=_leader_lock,
        default=_leader_lock(os.environ.get("THYME_LEADER_LOCK_S") or str(DEFAULT_LEADER_LOCK_S)),
        help="the lease of KCL's leader lock, renewed every third of it: when the leader's host dies, another "
        f"takes over after this long ($THYME_LEADER_LOCK_S; default {DEFAULT_LEADER_LOCK_S}; 0: KCL's own 120 s, "
        "renewed every 30 s; needs a JDK once to compile the entry point, see `install-jars`)",
    )


def _cmd_kinesis_install_jars(args: argparse.Namespace) -> int:
    from thyme.kinesis import entry, jars
    from thyme.logs import configure

    configure({"component": "thyme.kinesis"})
    lock = jars.read_lock()
    folder = args.into or jars.default_folder(lock)
    if args.verify:
        problems = jars.verify(folder, lock)
        for problem in problems:
            sys.stderr.write(f"thyme: {folder}: {problem}\n")
        if problems:
            return 1
        if entry.compiled(folder) is None:
            sys.stderr.write(
                f"thyme: {folder}: the entry point that sets the leader lock's timing is not compiled here "
                "(run install-jars with a JDK); the stock daemon would run, with KCL's 120 s lock\n"
            )
            return 1
    else:
        jars.install(folder, lock, args.repository)
        entry.ensure(folder)  # without a JDK: one warning line; the stock daemon will run there
    sys.stdout.write(f"{folder}\n")  # for THYME_KCL_CLASSPATH=$(thyme kinesis install-jars --into DIR)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from thyme.kinesis.doctor import diagnose
    from thyme.loader import load_dataset

    klass = load_dataset(args.dataset) if args.dataset else None
    findings = diagnose(klass, _run_options(args))
    for finding in findings:
        sys.stdout.write(finding.line() + "\n")
    return 0 if all(f.ok for f in findings) else 1


def _cmd_store_migrate(args: argparse.Namespace) -> int:
    from thyme.loader import load_dataset
    from thyme.schema import dataset_schema
    from thyme.store import migration_script, open_store, redact_url, store_url

    schemas = [dataset_schema(load_dataset(target, require_source=False)) for target in args.datasets]
    url = store_url(args.store)
    if args.print:
        sys.stdout.write(migration_script(url, [s for s in schemas if s is not None]))  # connects to nothing
        return 0
    db = open_store(url)  # creates or upgrades Thyme's own tables
    try:
        for schema in schemas:
            assert schema is not None
            db.ensure_dataset(schema)  # creates the dataset's tables; refuses changed fields
    finally:
        db.close()
    sys.stderr.write(f"thyme: store {redact_url(url)} is ready for {', '.join(args.datasets)}\n")
    return 0


class _Version(argparse.Action):
    """``--version``: this package's version and the KCL daemon's it would run (found lazily: the
    CLI's other commands never look for jars they do not need)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions of thyme-kinesis and the KCL daemon")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from thyme import __version__
        from thyme.kinesis.launcher import kcl_version

        try:
            ours = version("thyme-kinesis")
        except PackageNotFoundError:  # run from a source tree
            ours = __version__
        kcl, folder = kcl_version()
        if kcl:
            daemon = f"KCL MultiLangDaemon {kcl} ({folder})"
        else:
            from thyme.kinesis.jars import read_lock

            daemon = f"KCL MultiLangDaemon {read_lock().kcl_version} (pinned; not installed in {folder})"
        sys.stdout.write(f"thyme-kinesis {ours}; {daemon}; Python {sys.version.split()[0]}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thyme", description="Thyme feature platform: Kinesis ingestion and lookups.")
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True)

    lookup = commands.add_parser(
        "lookup",
        help="print the newest version of keys as JSON",
        description="Print the newest version of each KEY with event time <= --at (default now), as JSON. "
        "Exit status 1 if a key has no version.",
    )
    lookup.add_argument("dataset", metavar="MODULE:DATASET", help=_DATASET_HELP)
    lookup.add_argument(
        "keys", metavar="KEY", nargs="+", help="values of the dataset's key field; each is converted to its type"
    )
    lookup.add_argument(
        "--at", type=_at, default=None, help=f"the moment to look up as of: {_TIME_HELP} (default: now)"
    )
    lookup.add_argument("--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)")
    lookup.set_defaults(handler=_cmd_lookup)

    doctor = commands.add_parser(
        "doctor",
        help="check that this host can run a consumer: Java, the KCL jars, the store, AWS",
        description="Check, creating and starting nothing: Java (11 or newer), the KCL daemon's classpath (the "
        "pinned jars and their hashes), the daemon's logging configuration, the store (reachable, tables "
        "current) and, given MODULE:DATASET, what `run` checks before it starts (credentials, the stream, "
        "the lease table). One line per check; exit status 1 if any fails.",
    )
    doctor.add_argument("dataset", metavar="MODULE:DATASET", nargs="?", default=None, help=_DATASET_HELP)
    doctor.add_argument("--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)")
    doctor.add_argument("--application-name", default=None, help="KCL application and lease table name")
    doctor.add_argument("--dynamodb-endpoint-url", default=None, help="($THYME_DYNAMODB_ENDPOINT_URL)")
    doctor.add_argument("--sts-endpoint-url", default=None, help="($THYME_STS_ENDPOINT_URL)")
    doctor.set_defaults(handler=_cmd_doctor)
    store = commands.add_parser(
        "store", help="manage the store", description="Create or upgrade the store's tables ahead of the consumers."
    )
    store_commands = store.add_subparsers(dest="store_command", required=True)
    migrate = store_commands.add_parser(
        "migrate",
        help="create or upgrade the store's tables for datasets (--print: show the SQL instead)",
        description="Create or upgrade Thyme's tables and each dataset's tables. With --print (PostgreSQL), "
        "print the SQL script instead, for a DBA to review and run with an admin user; consumers then "
        "only need to read and write.",
    )
    migrate.add_argument(
        "datasets", metavar="MODULE:DATASET", nargs="+", help="the dataset classes to prepare tables for"
    )
    migrate.add_argument("--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)")
    migrate.add_argument("--print", action="store_true", help="print the SQL instead of running it (PostgreSQL)")
    migrate.set_defaults(handler=_cmd_store_migrate)

    kinesis = commands.add_parser(
        "kinesis",
        help="run and inspect Kinesis consumers",
        description="Run a dataset's Kinesis consumer, print its KCL properties, its per-shard status, its "
        "dead letters, and re-drive them.",
    )
    kinesis_commands = kinesis.add_subparsers(dest="kinesis_command", required=True)
    run = kinesis_commands.add_parser(
        "run",
        help="consume the dataset's Kinesis stream (until SIGTERM/Ctrl-C)",
        description="Start the KCL MultiLangDaemon for MODULE:DATASET and keep it running. One child "
        "process per leased shard applies records to the store; SIGTERM or Ctrl-C stops gracefully.",
    )
    _add_dataset_options(run)
    _add_daemon_options(run)
    run.add_argument(
        "--metrics",
        choices=["emf", "off"],
        default=os.environ.get("THYME_METRICS") or None,
        help="per-batch CloudWatch Embedded Metric Format lines on stderr ($THYME_METRICS; "
        "default: emf with the aws profile, off with local)",
    )
    run.add_argument(
        "--metrics-namespace",
        default=os.environ.get("THYME_METRICS_NAMESPACE") or None,
        help="CloudWatch namespace of the metrics ($THYME_METRICS_NAMESPACE; default Thyme/KinesisSource)",
    )
    run.add_argument(
        "--bootstrap-leases",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a new application, create KCL's lease table and one lease per shard first, so the first "
        "records arrive in seconds instead of after KCL's random 1-30 s wait (default: on)",
    )
    run.add_argument(
        "--prometheus-port",
        type=int,
        default=int(os.environ["THYME_PROMETHEUS_PORT"]) if os.environ.get("THYME_PROMETHEUS_PORT") else None,
        help="serve per-shard counters for Prometheus at /metrics on this port ($THYME_PROMETHEUS_PORT; "
        "the launcher adds up its children's batches)",
    )
    run.add_argument(
        "--prometheus-address",
        default=os.environ.get("THYME_PROMETHEUS_ADDRESS") or None,
        help="address to serve it on ($THYME_PROMETHEUS_ADDRESS; default 127.0.0.1; 0.0.0.0 in a pod)",
    )
    run.add_argument(
        "--check-environment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before starting, check credentials, the stream, its shards and the lease table, each failure one "
        "line; while running, stop with one line if the stream goes away or the credentials stop working "
        "(default: on)",
    )
    run.add_argument(
        "--environment-check-s",
        type=float,
        default=float(os.environ.get("THYME_ENVIRONMENT_CHECK_S") or 30),
        help="how often a running consumer checks the stream ($THYME_ENVIRONMENT_CHECK_S, default 30)",
    )
    run.add_argument(
        "--leader-stale-s",
        type=_leader_stale,
        default=_leader_stale(os.environ["THYME_LEADER_STALE_S"]) if os.environ.get("THYME_LEADER_STALE_S") else None,
        help="remove KCL's leader lock once it has gone unrenewed this long, so a live worker takes it "
        "($THYME_LEADER_STALE_S; default 3x the lock's lease, at least 45; 0: do not watch it)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a status line with records/s and lag below the logs (default: only on a terminal)",
    )
    run.add_argument(
        "--log-level",
        choices=list(LEVELS),
        default=None,
        help="the lowest level written to stderr ($THYME_LOG_LEVEL; default info). The KCL's own lines "
        "follow: its WARN and ERROR, its INFO only at debug ($THYME_KCL_LOG_LEVEL sets its level alone)",
    )
    run.set_defaults(handler=_cmd_kinesis_run)
    props = kinesis_commands.add_parser(
        "properties",
        help="print the KCL properties `run` would use (credentials redacted)",
        description="Print the .properties file `thyme kinesis run` would give the KCL MultiLangDaemon with the "
        "same options, credentials and role ARNs redacted; nothing is started and no AWS call is made.",
    )
    _add_dataset_options(props)
    _add_daemon_options(props)
    props.set_defaults(handler=_cmd_kinesis_properties)
    install_jars = kinesis_commands.add_parser(
        "install-jars",
        help="fetch the KCL daemon's pinned classpath (no Maven needed)",
        description="Fetch the jars of the KCL MultiLangDaemon's classpath, as pinned in thyme-kinesis "
        "(kcl-classpath.lock), from Maven Central or $THYME_MAVEN_REPOSITORY_URL, each checked against its "
        "sha256; resumes what an interrupted run fetched; then compiles the daemon's entry point (sets the "
        "leader lock's timing) into that folder with javac, so a JDK is needed here but a JRE where it runs; "
        "prints the folder. `run` does this on first use "
        "unless THYME_KCL_AUTO_INSTALL=0.",
    )
    install_jars.add_argument(
        "--into",
        type=Path,
        default=None,
        help="the folder (default: the per-user cache, $THYME_KCL_CACHE or ~/.cache/thyme-kinesis/…); "
        "point THYME_KCL_CLASSPATH at it when it is not the default",
    )
    install_jars.add_argument(
        "--repository", default=None, help="a Maven repository URL ($THYME_MAVEN_REPOSITORY_URL; default Maven Central)"
    )
    install_jars.add_argument(
        "--verify",
        action="store_true",
        help="fetch nothing; check every jar's sha256 and that the entry point is compiled, one line per problem",
    )
    install_jars.set_defaults(handler=_cmd_kinesis_install_jars)
    status = kinesis_commands.add_parser(
        "status",
        help="per shard: lease owner, KCL checkpoint, store position, watermark, counters",
        description="Read the KCL lease table and the store: one row per shard, then dead letters by reason.",
    )
    _add_dataset_options(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=_cmd_kinesis_status)
    deregister = kinesis_commands.add_parser(
        "deregister-consumer",
        help="remove the enhanced fan-out consumer a retired `run --retrieval fan-out` registered",
        description="Deregister the stream consumer that `run --retrieval fan-out` registers (KCL never removes "
        "it: it counts against the stream's 20 and is billed per shard-hour), with the identity `run` reads "
        "with. Run it after the last consumer of that name has stopped; a running one registers it again.",
    )
    deregister.add_argument("dataset", metavar="MODULE:DATASET", help=_DATASET_HELP)
    deregister.add_argument(
        "--consumer-name", default=None, help="the consumer (default: the application name, as `run` uses)"
    )
    deregister.add_argument(
        "--application-name", default=None, help="the KCL application name `run` was given, if not the default"
    )
    deregister.add_argument(
        "--sts-endpoint-url", default=None, help="STS endpoint for assuming role_arn ($THYME_STS_ENDPOINT_URL)"
    )
    deregister.set_defaults(handler=_cmd_kinesis_deregister_consumer)
    preflight = kinesis_commands.add_parser(
        "preflight",
        help="read a sample of every shard and print what the consumer would make of it",
        description="Read up to --limit records of every shard (from --since, within --timeout; read-only: no "
        "lease table, no store) with the identity `run` reads with, and judge them with the dataset's format, "
        "schema and lateness as the consumer would: per shard and overall, rows, dead letters by reason with "
        "an example each, the event-time range, how many are late under max_lateness, and a max_lateness that "
        "would keep --keep of them. Exit status 1 if any sampled record would be a dead letter.",
    )
    preflight.add_argument("dataset", metavar="MODULE:DATASET", help=_DATASET_HELP)
    preflight.add_argument(
        "--since",
        type=_at,
        default=None,
        help=f"read from this arrival time: {_TIME_HELP} (default: 1h back)",
    )
    preflight.add_argument("--limit", type=_positive_int, default=1000, help="records per shard (default 1000)")
    preflight.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="seconds for the whole reading (default 30)"
    )
    preflight.add_argument(
        "--keep", type=_share, default=0.99, help='share of rows the suggested max_lateness keeps (default "99%%")'
    )
    preflight.add_argument(
        "--application-name",
        default=None,
        help="names the role session, as `run` does (default: thyme-<dataset>-<stream>)",
    )
    preflight.add_argument(
        "--sts-endpoint-url", default=None, help="STS endpoint for assuming role_arn ($THYME_STS_ENDPOINT_URL)"
    )
    preflight.add_argument("--json", action="store_true", help="print JSON instead of a table")
    preflight.set_defaults(handler=_cmd_kinesis_preflight)
    dead = kinesis_commands.add_parser(
        "dead-letters",
        help="list dead letters (JSON lines) or re-drive them",
        description="`list` (the default) prints the dataset's dead letters, oldest first, one JSON object "
        "per line, payload escaped; `redrive` validates them again against the dataset as it is now and "
        "applies the ones that pass, once, keeping the rest.",
    )
    dead_commands = dead.add_subparsers(dest="dead_letters_command", required=True)
    listing = dead_commands.add_parser("list", help="print dead letters as JSON lines")
    again = dead_commands.add_parser(
        "redrive",
        help="apply the dead letters that pass the current dataset; keep the rest",
        description="Validate each dead letter again (decoder, schema, future-skew bound of the dataset as it "
        "is now) and apply the ones that pass, marking them re-driven in the same transaction: running it "
        "twice applies nothing twice. `late` letters are kept unless --reason late asks for them. Prints a "
        "JSON summary.",
    )
    for command in (listing, again):
        command.add_argument("dataset", metavar="MODULE:DATASET", help=_DATASET_HELP)
        command.add_argument(
            "--store", default=None, help="store URL (default: $THYME_STORE_URL or sqlite:///thyme.db)"
        )
        command.add_argument(
            "--reason",
            default=None,
            help='only this reason or the reasons starting with it: late, schema, "schema: temperature_c"',
        )
        command.add_argument("--shard", default=None, help="only this shard, e.g. shardId-000000000001")
        command.add_argument("--since", type=_at, default=None, help=f"recorded at or after this time: {_TIME_HELP}")
        command.add_argument("--until", type=_at, default=None, help=f"recorded before this time: {_TIME_HELP}")
    listing.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    listing.add_argument("--include-redriven", action="store_true", help="also the ones already re-driven")
    listing.set_defaults(handler=_cmd_kinesis_dead_letters)
    again.add_argument("--dry-run", action="store_true", help="only count what would be applied")
    again.set_defaults(handler=_cmd_kinesis_redrive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:2] == ["kinesis", "dead-letters"] and given[2:3] and given[2] not in ("list", "redrive", "-h", "--help"):
        given.insert(2, "list")  # `thyme kinesis dead-letters MODULE:DATASET` lists, as before
    args = parser.parse_args(given)
    try:
        code: int = args.handler(args)
    except ThymeError as exc:
        sys.stderr.write(f"thyme: error: {exc}\n")
        return EXIT_USAGE
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):  # an AWS call no command wrapped: still one line
            from thyme.kinesis.aws import explain

            sys.stderr.write(f"thyme: error: {explain(exc, 'the consumer', 'an AWS call', 'AWS')}\n")
            return EXIT_USAGE
        sys.stderr.write(f"thyme: bug: an unexpected {type(exc).__name__}; please report it with this traceback\n")
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
