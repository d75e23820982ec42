"""``thyme kinesis run``: start the KCL MultiLangDaemon for a dataset and keep it running.

Everything that can be checked is checked before anything starts (the dataset, the secret,
Java, the KCL jars, the store), each failure one clear line. Then:

* the properties file and the child's config are written into a private directory (0700,
  files 0600) that is removed on exit: the properties file is the one place a role ARN is
  written;
* the JVM runs in its own session, so a terminal's Ctrl-C reaches only this launcher, which
  forwards SIGTERM to the JVM alone: the children then get ``shutdownRequested`` and
  checkpoint, instead of dying on the signal;
* the daemon exits its whole JVM when one child dies, so the launcher restarts it with the
  same worker id (its leases are picked up at once) after a backoff, and gives up with the
  daemon's last error lines after repeated fast failures.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Final, Literal, TextIO

from thyme.connectors.kinesis import KinesisConnection
from thyme.connectors.source import source_spec
from thyme.errors import ConfigError, LoadError, StoreUnavailableError, ThymeError
from thyme.handover import (
    DEFAULT_GIVE_UP_AFTER_S,
    DEFAULT_NAMESPACE,
    ENV_PROCESSOR_CONFIG,
    ENV_STORE_GIVE_UP,
    ProcessorConfig,
    is_batch_line,
)
from thyme.kinesis import budget, entry, jars
from thyme.kinesis.aws import AwsError
from thyme.kinesis.bootstrap import bootstrap_leases
from thyme.kinesis.entry import DEFAULT_LEADER_LOCK_S, KCL_LEADER_LOCK_S
from thyme.kinesis.kcl_logs import KCL_LEVEL_ENV, KCL_LEVEL_FOR, convert
from thyme.kinesis.leader import LeaderWatch, read_leader, remove_stale
from thyme.kinesis.preflight import StreamWatch, Target, check_environment
from thyme.kinesis.progress import Progress
from thyme.kinesis.prometheus import PrometheusExporter
from thyme.kinesis.properties import KclProperties, Profile, Retrieval, build_properties
from thyme.logs import ENV_LOG_LEVEL
from thyme.schema import dataset_schema
from thyme.store import Feed, open_store, store_url

log = logging.getLogger("thyme.kinesis")

ENV_CLASSPATH: Final = "THYME_KCL_CLASSPATH"
ENV_LOGBACK: Final = "THYME_KCL_LOGBACK"
ENV_JAVA_OPTS: Final = "THYME_JAVA_OPTS"
ENV_DYNAMODB_ENDPOINT: Final = "THYME_DYNAMODB_ENDPOINT_URL"
ENV_STS_ENDPOINT: Final = "THYME_STS_ENDPOINT_URL"


def env_endpoint(environ: Mapping[str, str], service: Literal["dynamodb", "sts"]) -> str | None:
    """The endpoint of ``service`` from the environment: ``THYME_<SERVICE>_ENDPOINT_URL``, else the
    AWS SDKs' own ``AWS_ENDPOINT_URL_<SERVICE>``, else None (the service's public endpoint)."""
    ours = ENV_DYNAMODB_ENDPOINT if service == "dynamodb" else ENV_STS_ENDPOINT
    return environ.get(ours) or environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or None


REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_CHILD_TIMEOUT_S: Final = 300
CHILD_TIMEOUT_MARGIN_S: Final = 75
"""A hung child is detected after this long: well above the store retry bound (120 s) plus the
slowest batch (about a second for 10,000 records)."""
_ERROR_LINE: Final = re.compile(r"\bERROR\b|Exception|\berror\b")


class LaunchError(ThymeError):
    """The consumer cannot start, or the daemon keeps failing."""


@dataclass(frozen=True)
class RunOptions:
    """Settings of ``thyme kinesis run`` (see its ``--help`` for the environment variables some have)."""

    store_url: str | None = None
    application_name: str | None = None
    worker_id: str | None = None
    profile: Profile | None = None
    dynamodb_endpoint_url: str | None = None
    sts_endpoint_url: str | None = None
    idle_time_between_reads_ms: int = 250
    shutdown_grace_ms: int = 30_000
    failover_time_ms: int = 10_000
    max_records: int = 10_000
    """KCL's ``maxRecords``: the most records one GetRecords (and so one batch to a child) holds."""
    max_shards: int | None = None
    """KCL's ``maxLeasesForWorker``: the most shards this host holds; None: unlimited."""
    memory_budget: int | None = None
    """Bytes the whole host (launcher, JVM, children) may use with every shard backlogged: sets
    ``maxRecords``, the prefetch and the JVM heap (``thyme.kinesis.budget``); needs ``max_shards``."""
    record_size: int = budget.DEFAULT_RECORD_SIZE
    """The records' usual size, which the memory budget turns batch bytes into records with."""
    assignment_ms: int | None = None
    """KCL's ``leaseAssignmentIntervalMillis``; None: the profile's (500 ms local, 2 s aws)."""
    child_timeout_s: int | None = DEFAULT_CHILD_TIMEOUT_S
    """KCL ``timeoutInSeconds``: a child silent this long (a hung batch) makes the daemon halt,
    and the launcher restarts it. Must exceed the store retry bound plus the slowest batch."""
    bootstrap_leases: bool = True
    """On a new application, create the lease table and leases before KCL (skips its 1-30 s random wait)."""
    metrics: Literal["emf", "off"] | None = None
    """Per-batch CloudWatch EMF lines from the children; None: ``emf`` with the aws profile, else off."""
    metrics_namespace: str = DEFAULT_NAMESPACE
    prometheus_port: int | None = None
    """Serve per-shard counters at ``/metrics`` on this port (0: any free port); None: no endpoint."""
    prometheus_address: str = "127.0.0.1"
    progress: bool | None = None
    """A status line (records/s, lag) below the logs; None: only when stderr is a terminal."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The lowest level written to stderr, ours and the children's; the KCL's own follows
    (``kcl_logs.KCL_LEVEL_FOR``: its INFO only at debug) unless ``$THYME_KCL_LOG_LEVEL`` is set."""
    check_environment: bool = True
    """Before the daemon starts, check credentials, the stream, the shards and the lease table
    (``thyme.kinesis.preflight``); while it runs, describe the stream every ``environment_check_s``."""
    environment_check_s: float = 30.0
    retrieval: Retrieval = "polling"
    """``fan-out``: enhanced fan-out as the stream consumer ``consumer_name`` (``thyme.kinesis.fanout``)."""
    consumer_name: str | None = None
    """The fan-out consumer's name; None: the application name."""
    leader_lock_s: int | None = DEFAULT_LEADER_LOCK_S
    """The leader lock's lease (renewed every third of it), set by our entry point; None: KCL's 120 s."""
    leader_stale_s: float | Literal["auto"] | None = "auto"
    """Remove KCL's leader lock once it has gone unrenewed this long (``thyme.kinesis.leader``);
    ``auto``: 3 times the lock's lease in effect, at least 45 s; None: do not watch it."""
    max_fast_failures: int = 5
    """Give up after this many daemon exits, each within ``fast_failure_s`` of its start."""
    fast_failure_s: float = 60.0


@dataclass(frozen=True)
class Plan:
    """Everything decided before the daemon starts."""

    properties: KclProperties
    config: ProcessorConfig
    java: str
    classpath: Path
    logback: Path
    connection: KinesisConnection | None = field(default=None, repr=False)
    """The resolved source (holds the role ARN; its repr redacts it)."""
    sts_endpoint_url: str | None = None
    entry: Path | None = None
    """The compiled ``ThymeMultiLangDaemon`` (``thyme.kinesis.entry``); None: the stock MultiLangDaemon."""
    memory: budget.MemoryPlan | None = None
    """The settings a memory budget decided (``RunOptions.memory_budget``)."""

    @property
    def leader_lock_s(self) -> float:
        """The leader lock's lease in effect."""
        lease_ms = self.properties.leader_lock_lease_ms if self.entry is not None else None
        return KCL_LEADER_LOCK_S if lease_ms is None else lease_ms / 1000

    def command(self, properties_file: Path) -> list[str]:
        # the budget's heap first: -Xmx in THYME_JAVA_OPTS comes later and wins
        opts = [*(self.memory.java_opts() if self.memory else []), *os.environ.get(ENV_JAVA_OPTS, "").split()]
        classpath = f"{self.classpath}/*" if self.entry is None else f"{self.classpath}/*{os.pathsep}{self.entry}"
        return [
            self.java,
            "-XX:+UseSerialGC",
            *opts,
            f"-Dlogback.configurationFile={self.logback}",
            "-cp",
            classpath,
            entry.STOCK_MAIN_CLASS if self.entry is None else entry.MAIN_CLASS,
            "--properties-file",
            str(properties_file),
            "--log-configuration",
            str(self.logback),
        ]


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home, "bin", "java") if home else None
    if candidate is not None and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LaunchError(
            "java not found: the KCL MultiLangDaemon needs a Java runtime (11 or newer). Install one "
            "(e.g. apt-get install default-jre-headless) or set JAVA_HOME."
        )
    return found


ENV_AUTO_INSTALL: Final = "THYME_KCL_AUTO_INSTALL"
"""``0``: never fetch the pinned jars on first use (air-gapped hosts, images that must not
download); the daemon's classpath must then be installed or named by ``THYME_KCL_CLASSPATH``."""
_DAEMON_JAR: Final = "amazon-kinesis-client-multilang-*.jar"


def classpath_folder() -> Path:
    """``$THYME_KCL_CLASSPATH``; else a developer checkout's ``.kcl/lib`` (Maven's resolution of the
    same pinned set: ``tests/test_jars.py``); else the per-user cache of the pinned set."""
    configured = os.environ.get(ENV_CLASSPATH)
    if configured:
        return Path(configured)
    checkout = REPO_ROOT / ".kcl" / "lib"
    if _has_daemon(checkout):
        return checkout
    return jars.default_folder(jars.read_lock())


def _has_daemon(folder: Path) -> bool:
    return any(folder.glob(_DAEMON_JAR))  # an empty iterator for a folder that does not exist


def kcl_version() -> tuple[str | None, Path]:
    """The MultiLangDaemon's version in the classpath folder (None: no daemon jar there) and the folder."""
    path = classpath_folder()
    found = sorted(path.glob(_DAEMON_JAR))
    version = found[-1].name.removeprefix("amazon-kinesis-client-multilang-").removesuffix(".jar") if found else None
    return version, path


def _classpath() -> Path:
    """The daemon's classpath folder, checked; the pinned set is fetched into the per-user cache
    on first use unless ``$THYME_KCL_AUTO_INSTALL`` is ``0``."""
    path = classpath_folder()
    if os.environ.get(ENV_CLASSPATH) or path == REPO_ROOT / ".kcl" / "lib":
        if not _has_daemon(path):
            raise LaunchError(
                f"the KCL jars are missing from {path}: run thyme kinesis install-jars --into {path} (the "
                f"pinned set, checked against its hashes), or set {ENV_CLASSPATH} to a folder holding the "
                "multilang daemon's classpath."
            )
        lock = jars.read_lock()
        if (path / jars.STAMP).is_file() and not jars.is_complete(
            path, lock
        ):  # install-jars filled it, for another set
            raise LaunchError(
                f"the KCL jars in {path} were installed for another release of thyme-kinesis than this one (KCL "
                f"{lock.kcl_version}, {len(lock.jars)} jars pinned): run thyme kinesis install-jars --into {path} "
                "(it fetches what changed), or point THYME_KCL_CLASSPATH at a folder installed by this release."
            )
        return path
    lock = jars.read_lock()
    if jars.is_complete(path, lock):
        return path
    if os.environ.get(ENV_AUTO_INSTALL, "").strip() == "0":
        raise LaunchError(
            f"the KCL jars are not installed in {path}: run thyme kinesis install-jars ({len(lock.jars)} jars, "
            f"{lock.size / 1e6:.0f} MB from Maven Central or ${jars.ENV_REPOSITORY}), or set {ENV_CLASSPATH} to "
            "a folder holding them."
        )
    return jars.install(path, lock)


def logback_file() -> Path:
    configured = os.environ.get(ENV_LOGBACK)
    path = Path(configured) if configured else Path(__file__).with_name("logback.xml")
    if not path.is_file():
        raise LaunchError(f"the daemon's logging configuration is missing: {path} (set {ENV_LOGBACK})")
    return path


def _check_child_timeout(child_timeout_s: int | None, environ: Mapping[str, str]) -> None:
    """A child retrying an unavailable store is silent for up to the retry bound plus one more
    attempt (SQLite: a 5 s backoff and a 30 s busy timeout; PostgreSQL: two 10 s connects, or up to
    a minute of keepalives on a dead connection); a shorter ``timeoutInSeconds`` would halt the
    whole daemon for what one child handles by exiting."""
    if child_timeout_s is None:
        return
    given = environ.get(ENV_STORE_GIVE_UP)
    try:
        give_up_s = float(given) if given else DEFAULT_GIVE_UP_AFTER_S
    except ValueError:
        raise ConfigError(
            ENV_STORE_GIVE_UP, "not a number of seconds", "Set it to e.g. 120, or unset it.", value=given
        ) from None
    least = give_up_s + CHILD_TIMEOUT_MARGIN_S
    if child_timeout_s < least:
        raise ConfigError(
            "--child-timeout-s",
            f"must be at least the store retry bound ({give_up_s:.0f} s, {ENV_STORE_GIVE_UP}) plus "
            f"{CHILD_TIMEOUT_MARGIN_S} s, or a store outage would be taken for a hung processor",
            f"Use at least {least:.0f}, lower {ENV_STORE_GIVE_UP}, or 0 to never time out.",
            value=child_timeout_s,
        )


def plan(
    klass: type, options: RunOptions, environ: Mapping[str, str] | None = None, *, open_the_store: bool = True
) -> Plan:
    """Check everything and decide the daemon's settings; no AWS call is made. The store is
    opened (created or upgraded, the dataset's tables made) unless ``open_the_store`` is False
    (``thyme kinesis properties`` only prints)."""
    environ = os.environ if environ is None else environ
    schema, spec = dataset_schema(klass), source_spec(klass)
    if schema is None or spec is None:
        raise LoadError(f"{getattr(klass, '__name__', klass)} is not a @source(KinesisSource(...)) @dataset class")
    _check_child_timeout(options.child_timeout_s, environ)
    url = store_url(options.store_url)
    memory = _memory_plan(options, url)
    connection = spec.connector.resolve(environ)  # resolves the role secret: fails here if unset
    if open_the_store:
        try:
            store = open_store(url)
            try:
                store.ensure_feed(Feed(schema, connection.stream_arn))
            finally:
                store.close()
        except StoreUnavailableError as exc:
            raise LaunchError(f"the store is not usable: {exc}") from exc
    python = sys.executable
    sts = options.sts_endpoint_url or env_endpoint(environ, "sts")
    properties = build_properties(
        connection,
        dataset=schema.name,
        version=schema.version,
        python=python,
        application_name=options.application_name,
        worker_id=options.worker_id,
        dynamodb_endpoint_url=options.dynamodb_endpoint_url or env_endpoint(environ, "dynamodb"),
        sts_endpoint_url=sts,
        profile=options.profile,
        idle_time_between_reads_ms=options.idle_time_between_reads_ms,
        shutdown_grace_ms=options.shutdown_grace_ms,
        failover_time_ms=options.failover_time_ms,
        assignment_ms=options.assignment_ms,
        max_records=options.max_records if memory is None else min(options.max_records, memory.max_records),
        child_timeout_s=options.child_timeout_s,
        leader_lock_s=options.leader_lock_s,
        retrieval=options.retrieval,
        consumer_name=options.consumer_name,
        max_shards=options.max_shards,
        prefetch=None if memory is None else (memory.prefetch_batches, memory.prefetch_bytes),
    )
    config = ProcessorConfig(
        dataset=schema,
        stream=connection.stream_arn,
        max_lateness_ms=None if spec.max_lateness is None else spec.max_lateness // timedelta(milliseconds=1),
        max_future_skew_ms=spec.max_future_skew // timedelta(milliseconds=1),
        format=spec.connector.record_format.name,
        fields=spec.connector.record_format.fields,
        store_url=url,
        lease_table=properties.table_name,
        region=connection.region,
        dynamodb_endpoint_url=properties.dynamodb_endpoint,
        # the same default as the properties' profile: local when the stream has an endpoint URL
        metrics=options.metrics
        or ("off" if (options.profile or (connection.endpoint_url and "local")) == "local" else "emf"),
        metrics_namespace=options.metrics_namespace,
    )
    # `properties` only prints: it neither needs nor fetches the jars
    classpath = _classpath() if open_the_store else classpath_folder()
    java = find_java()
    daemon = entry.ensure(classpath, java) if open_the_store else entry.compiled(classpath)
    if daemon is None and open_the_store:  # the stock daemon cannot read our keys: say KCL's timing
        properties = properties.model_copy(
            update={
                "leader_lock_lease_ms": None,
                "leader_lock_heartbeat_ms": None,
                "prefetch_batches": None,
                "prefetch_bytes": None,
            }
        )
        if memory is not None:
            log.warning(
                "the stock daemon keeps KCL's prefetch (4 batches, 8 MiB a shard), so the memory budget sets "
                "maxRecords only, not the prefetch nor the JVM's heap (a heap planned for one batch ahead could "
                "run out): install a JDK, then thyme kinesis install-jars",
                extra={"fields": {"event": "budget_without_entry_point"}},
            )
            memory = None
    if memory is not None and open_the_store:
        log.info(memory.describe(), extra={"fields": {"event": "memory_budget", "max_records": properties.max_records}})
    return Plan(properties, config, java, classpath, logback_file(), connection, sts, daemon, memory)


def _memory_plan(options: RunOptions, url: str) -> budget.MemoryPlan | None:
    """The settings for ``--memory-budget`` (None without one); errors name the option to change."""
    if options.memory_budget is None:
        return None
    if options.max_shards is None:
        raise ConfigError(
            "--memory-budget",
            "needs --max-shards: the budget is shared by the shards this host may hold",
            "Add --max-shards N (KCL's maxLeasesForWorker): with S shards on R hosts, ceil(S/R), or "
            "ceil(S/(R-1)) for the others to take a lost host's shards.",
            value=f"{options.memory_budget // budget.MIB}MiB",
        )
    if options.retrieval == "fan-out":
        raise ConfigError(
            "--memory-budget",
            "plans polling's batches and prefetch; enhanced fan-out pushes its own",
            "Drop --memory-budget with --retrieval fan-out; cap the shards with --max-shards and the "
            "JVM's heap with -Xmx in THYME_JAVA_OPTS.",
            value=f"{options.memory_budget // budget.MIB}MiB",
        )
    store: budget.Store = "postgresql" if url.startswith("postgres") else "sqlite"
    return budget.plan(options.memory_budget, options.max_shards, options.record_size, store)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


class Supervisor:
    """Runs the daemon until asked to stop; restarts it when it exits on its own."""

    def __init__(self, plan: Plan, options: RunOptions, err: TextIO | None = None) -> None:
        self.plan = plan
        self.options = options
        self.err = err or sys.stderr
        self._jvm: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._context = {"dataset": plan.config.dataset.name}
        self._lowest = _RANK[options.log_level]
        self._progressed = False
        show = options.progress if options.progress is not None else _is_terminal(self.err)
        self.progress = Progress(self.err) if show else None
        self.exporter = PrometheusExporter(plan.config.dataset.name) if options.prometheus_port is not None else None

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Ask the daemon to shut down gracefully (SIGTERM to the JVM only); twice: kill it."""
        jvm = self._jvm
        if self._stopping.is_set() and jvm is not None and jvm.poll() is None:
            log.warning("second stop request: killing the daemon")
            jvm.kill()
            return
        self._stopping.set()
        if jvm is not None and jvm.poll() is None:
            log.info("stopping: the daemon asks each shard's processor to checkpoint, then exits")
            jvm.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Run until stopped (exit status 0) or until the daemon keeps failing (non-zero)."""
        private = Path(tempfile.mkdtemp(prefix="thyme-kcl-"))
        try:
            properties_file = private / "kcl.properties"
            config_file = private / "processor.json"
            _write_private(properties_file, self.plan.properties.render())
            _write_private(config_file, self.plan.config.to_json())
            env = {**os.environ, ENV_PROCESSOR_CONFIG: str(config_file), "PYTHONUNBUFFERED": "1"}
            env[ENV_LOG_LEVEL] = self.options.log_level
            env[KCL_LEVEL_ENV] = os.environ.get(KCL_LEVEL_ENV) or KCL_LEVEL_FOR[self.options.log_level]
            if self.progress is not None:
                threading.Thread(target=self._tick, name="progress", daemon=True).start()
            if self.exporter is not None:
                assert self.options.prometheus_port is not None
                port = self.exporter.serve(self.options.prometheus_address, self.options.prometheus_port)
                log.info(
                    "prometheus metrics",
                    extra={"fields": {"url": f"http://{self.options.prometheus_address}:{port}/metrics"}},
                )
            return self._loop(self.plan.command(properties_file), env)
        finally:
            self._stopping.set()
            if self.exporter is not None:
                self.exporter.close()
            if self.progress is not None:
                self.progress.clear()
            shutil.rmtree(private, ignore_errors=True)

    def _tick(self) -> None:
        """Redraw the status line every second (records/s decays when nothing arrives)."""
        assert self.progress is not None
        while not self._stopping.wait(1.0):
            self.progress.redraw()

    def _loop(self, command: list[str], env: dict[str, str]) -> int:
        fast_failures = 0
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            started = time.monotonic()
            log.info(
                "starting the KCL MultiLangDaemon",
                extra={
                    "fields": {
                        "application": self.plan.properties.application_name,
                        "worker_id": self.plan.properties.worker_id,
                        "attempt": attempt,
                    }
                },
            )
            if self.exporter is not None:
                self.exporter.daemon_started()
            rc = self._run_once(command, env)
            if self._stopping.is_set():
                log.info("daemon stopped", extra={"fields": {"exit_status": rc}})
                return 0
            lived = time.monotonic() - started
            # A run that applied batches is not a crash loop (a child killed by the OOM killer, a
            # hung child halted by timeoutInSeconds): only runs without progress count.
            fast = lived < self.options.fast_failure_s and not self._progressed
            fast_failures = fast_failures + 1 if fast else 1
            if fast_failures >= self.options.max_fast_failures:
                reason = "; ".join(line for line in self._tail if _ERROR_LINE.search(line))[-2000:]
                raise LaunchError(
                    f"the KCL daemon exited {fast_failures} times in a row within "
                    f"{self.options.fast_failure_s:.0f}s of starting (last exit status {rc}); "
                    f"giving up. Last errors: {reason or 'none logged; see the log above'}"
                )
            delay = min(30.0, 2.0 ** (fast_failures - 1))
            log.warning(
                "the daemon exited (a shard's processor failed or the daemon crashed); restarting with "
                "the same worker id",
                extra={"fields": {"exit_status": rc, "ran_s": round(lived, 1), "restart_in_s": delay}},
            )
            self._stopping.wait(delay)
        return 0

    def _run_once(self, command: list[str], env: dict[str, str]) -> int:
        self._tail.clear()
        self._progressed = False
        jvm = subprocess.Popen(  # noqa: S603 - a fixed command: java, flags, our classpath
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._jvm = jvm
        if self._stopping.is_set():  # a stop arrived while starting
            jvm.send_signal(signal.SIGTERM)
        assert jvm.stdout is not None
        for raw in jvm.stdout:  # the daemon's logs, and its children's stderr it echoes
            converted = convert(raw.decode("utf-8", "replace"), self._context)
            line = converted.text
            self._tail.append(converted.summary)
            if not self._progressed and is_batch_line(line):
                self._progressed = True
            if self.exporter is not None:
                self.exporter.observe(line)
            if _RANK.get(converted.level or "", _ALWAYS) < self._lowest:
                continue  # a child's line below the level asked for (the child logs at INFO at least)
            if self.progress is not None:
                self.progress.write(line)
            else:
                self.err.write(line)
                self.err.flush()
        # A halted (timeoutInSeconds) or killed daemon leaves its children behind; a hung one
        # would keep its batch's store transaction (the SQLite write lock) forever. They are in
        # the JVM's process group (its own session). Wait for the JVM's exit without reaping it
        # first: until it is reaped, its PID (the group's id) cannot be reused by anyone else.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, jvm.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(jvm.pid, signal.SIGKILL)
        return jvm.wait()


_RANK: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_ALWAYS: Final = 100
"""Lines without a level (EMF metrics) are always written."""


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run(klass: type, options: RunOptions) -> int:
    """Plan, check the environment, then supervise the daemon until SIGTERM/SIGINT. Returns the
    exit status; raises :class:`~thyme.kinesis.aws.AwsError` if the environment fails before or
    (for good: the stream deleted, credentials gone) while it runs."""
    the_plan = plan(klass, options)
    target = None
    if options.check_environment and the_plan.connection is not None:
        target = Target(the_plan.connection, the_plan.properties, the_plan.sts_endpoint_url)
        check_environment(target)
    if options.bootstrap_leases:
        bootstrap_leases(
            the_plan.properties,
            role_arn=None if the_plan.connection is None else the_plan.connection.role_arn,
            external_id=None if the_plan.connection is None else the_plan.connection.external_id,
            sts_endpoint_url=the_plan.sts_endpoint_url,
        )
    if the_plan.connection is not None:
        the_plan = dataclasses.replace(the_plan, config=_with_known_parents(the_plan))
    supervisor = Supervisor(the_plan, options)
    failed: list[AwsError] = []

    def environment_failed(error: AwsError) -> None:
        failed.append(error)
        supervisor.stop()

    watch = None if target is None else StreamWatch(target, options.environment_check_s, environment_failed).start()
    leader = None
    if options.leader_stale_s is not None:
        stale = None if options.leader_stale_s == "auto" else options.leader_stale_s
        leader = _leader_watch(the_plan.properties, the_plan.leader_lock_s, stale)
    if leader is not None and supervisor.exporter is not None:
        supervisor.exporter.leader_lock_age = lambda: leader.lock_age_s
    previous = {sig: signal.signal(sig, supervisor.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    redirected: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
    if supervisor.progress is not None:  # the launcher's own log lines go above the status line too
        for log_handler in logging.getLogger().handlers:
            if isinstance(log_handler, logging.StreamHandler) and log_handler.stream is supervisor.err:
                log_handler.setStream(_AboveStatus(supervisor.progress))
                redirected.append((log_handler, supervisor.err))
    try:
        code = supervisor.run()
    finally:
        if watch is not None:
            watch.close()
        if leader is not None:
            leader.close()
        for log_handler, stream in redirected:
            log_handler.setStream(stream)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise failed[0]
    return code


def _with_known_parents(the_plan: Plan) -> ProcessorConfig:
    """The children's config with every shard's parents as the stream lists them now, so a child
    reads no lease table (and loads no AWS SDK) for them; unchanged if the listing fails."""
    from thyme.kinesis.aws import session_name, shard_parents, source_kinesis

    assert the_plan.connection is not None
    try:
        client = source_kinesis(
            the_plan.connection, the_plan.sts_endpoint_url, session_name(the_plan.properties.application_name)
        )
        known = shard_parents(client, the_plan.connection.stream_arn)
    except Exception as exc:  # the children look their parents up in the lease table instead
        log.warning(
            "could not list the stream's shards; each new shard's child reads its parents from the lease table",
            extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}},
        )
        return the_plan.config
    return the_plan.config.replace(known_parents=known)


def _leader_watch(properties: KclProperties, lock_lease_s: float, stale_after_s: float | None) -> LeaderWatch:
    """A started :class:`LeaderWatch` on the application's coordinator table (the consumer's own
    identity and account, as the lease table)."""
    import boto3

    from thyme.kinesis.aws import client_config

    client = boto3.client(
        "dynamodb",
        region_name=properties.region_name,
        endpoint_url=properties.dynamodb_endpoint,
        config=client_config(),
    )
    app = properties.application_name
    watch = LeaderWatch(
        lambda: read_leader(client, app),
        lambda version: remove_stale(client, app, version),
        stale_after_s=stale_after_s,
        lock_lease_s=lock_lease_s,
    )
    watch.interval_s = min(15.0, watch.stale_after_s / 4)
    return watch.start()


class _AboveStatus(io.TextIOBase):
    """A stream for a logging handler: each line goes above the progress line."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.write(text)
        return len(text)


__all__ = ["ConfigError", "LaunchError", "Plan", "RunOptions", "Supervisor", "plan", "run"]
