"""The KCL MultiLangDaemon ``.properties`` file, rendered from a typed model.

KCL reads keys as case-sensitive Java bean names and **silently ignores unknown keys**: a
misspelt endpoint key sends traffic to real AWS. So the keys live in one place (the field
aliases below, tested against KCL 3.x's key list in ``tests/test_kinesis_run.py``), values are typed,
and every value is escaped for the Java properties format; nothing a user wrote is pasted
into the file as text.

A property set to its Java default (``0``/``false``) is dropped by KCL, so the model only
sets what differs from KCL's defaults on purpose.
"""

from __future__ import annotations

import re
import socket
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from thyme.connectors.kinesis import InitialPosition, KinesisConnection
from thyme.errors import REDACTED, SourceError
from thyme.kinesis.aws import session_name
from thyme.kinesis.entry import DEFAULT_LEADER_LOCK_S

Profile = Literal["local", "aws"]
Retrieval = Literal["polling", "fan-out"]
AWS_ASSIGNMENT_MS: Final = 2_000
"""``leaseAssignmentIntervalMillis`` with the aws profile (KCL's default is 2 x failoverTimeMillis,
20 s): the leader assigns a dead or departed worker's leases, and each worker finds the leases it
was given (every half of it), within seconds instead of 20-40 s. It costs the leader a Scan of the
lease and worker-metrics tables every 2 s and each worker a Query of its index every second."""
_CONSUMER_NAME: Final = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_APP_NAME: Final = re.compile(r"[^A-Za-z0-9_.-]")


class KclProperties(BaseModel):
    """Every key Thyme sets, by its exact KCL name (the alias)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    executable_name: str = Field(alias="executableName")
    """Command line of the child (split on spaces by KCL, no shell)."""
    processing_language: str = Field("python/3", alias="processingLanguage")
    stream_name: str = Field(alias="streamName")
    application_name: str = Field(alias="applicationName")
    table_name: str = Field(alias="tableName")
    """The lease table (KCL has no ``leaseTableName`` key)."""
    worker_id: str = Field(alias="workerId")
    region_name: str = Field(alias="regionName")
    initial_position: Literal["LATEST", "TRIM_HORIZON"] | None = Field(None, alias="initialPositionInStream")
    initial_position_timestamp: int | None = Field(None, alias="initialPositionInStreamExtended")
    """AT_TIMESTAMP as whole epoch seconds (a fraction makes the daemon exit)."""
    kinesis_endpoint: str | None = Field(None, alias="kinesisEndpoint")
    dynamodb_endpoint: str | None = Field(None, alias="dynamoDBEndpoint")
    credentials: str = Field(alias="AwsCredentialsProvider", repr=False)
    """Provider for the Kinesis client (and the others unless they are set)."""
    credentials_dynamodb: str = Field(alias="AwsCredentialsProviderDynamoDB")
    credentials_cloudwatch: str = Field(alias="AwsCredentialsProviderCloudWatch")
    retrieval_mode: Literal["POLLING", "FANOUT"] = Field("POLLING", alias="retrievalMode")
    """POLLING (GetRecords, the stream's shared 2 MiB/s per shard) or FANOUT (enhanced fan-out:
    SubscribeToShard, 2 MiB/s per shard for this consumer alone). Always written: without it
    KCL picks FANOUT unless a polling key is set."""
    consumer_name: str | None = Field(None, alias="fanoutConfig.consumerName")
    """FANOUT only: the stream consumer KCL registers (RegisterStreamConsumer) and subscribes
    with; KCL's default is the application name. A nested key of the daemon's FanoutConfigBean."""
    max_records: int | None = Field(10_000, alias="maxRecords", ge=1, le=10_000)
    """POLLING only (None with FANOUT)."""
    idle_time_between_reads_ms: int | None = Field(250, alias="idleTimeBetweenReadsInMillis", ge=200)
    """POLLING only (None with FANOUT)."""
    metrics_level: Literal["NONE", "SUMMARY", "DETAILED"] = Field("SUMMARY", alias="metricsLevel")
    shutdown_grace_ms: int = Field(30_000, alias="shutdownGraceMillis", ge=1)
    failover_time_ms: int = Field(10_000, alias="failoverTimeMillis", ge=1)
    shard_sync_interval_ms: int | None = Field(None, alias="shardSyncIntervalMillis", ge=1)
    lease_assignment_interval_ms: int | None = Field(None, alias="leaseAssignmentIntervalMillis", ge=1)
    parent_shard_poll_interval_ms: int | None = Field(None, alias="parentShardPollIntervalMillis", ge=1)
    worker_metrics_capture_ms: int | None = Field(None, alias="inMemoryWorkerMetricsCaptureFrequencyMillis", ge=1)
    worker_metrics_report_ms: int | None = Field(None, alias="workerMetricsReporterFreqInMillis", ge=1)
    skip_shard_sync_if_leases_exist: bool = Field(True, alias="skipShardSyncAtWorkerInitializationIfLeasesExist")
    """True: KCL's ProcessTask does not call ListShards for every new batch's shard. When that call
    fails (a timeout, throttling), KCL 3.x drops the already fetched batch and delivers the next
    one (ShardConsumerSubscriber.onNext): records lost (seen once in the fault suite). Costs the
    KPL de-aggregation hash-range filter after a reshard; new shards are still found by the
    periodic shard sync and at each parent's end."""
    child_timeout_s: int | None = Field(None, alias="timeoutInSeconds", ge=1)
    """A child that sends nothing for this long (a hung batch) makes the daemon halt (exit 1),
    so the launcher restarts it. Unset: wait forever. Must exceed the store retry bound."""

    max_leases_for_worker: int | None = Field(None, alias="maxLeasesForWorker", ge=1)
    """The most shards this worker holds (``run --max-shards``); KCL 3's leader assigns no more.
    None: unlimited."""

    leader_lock_lease_ms: int | None = Field(None, alias="thyme.leaderLockLeaseMillis", ge=1)
    """Not KCL's: read by our entry point (``thyme.kinesis.entry``), which sets KCL core's
    ``dynamoDbLockBasedLeaderLeaseDurationInMillis`` (KCL: 120 s). None: KCL's."""
    leader_lock_heartbeat_ms: int | None = Field(None, alias="thyme.leaderLockHeartbeatMillis", ge=1)
    """Not KCL's: how often the leader renews the lock (KCL: 30 s); less than the lease."""
    prefetch_batches: int | None = Field(None, alias="thyme.prefetchBatches", ge=1, le=1000)
    """Not KCL's: batches fetched ahead per shard, polling only (KCL: 4); set by the entry point."""
    prefetch_bytes: int | None = Field(None, alias="thyme.prefetchBytes", ge=1, le=2**31 - 1)
    """Not KCL's: bytes fetched ahead per shard, polling only (KCL: 8 MiB)."""

    def render(self, redact_credentials: bool = False) -> str:
        """The file's text. ``redact_credentials`` hides assumed-role ARNs and ExternalIds (for printing)."""
        lines = [
            "# KCL MultiLangDaemon properties, rendered by `thyme kinesis run` from a typed model.",
            "# Keys are case-sensitive; KCL ignores unknown keys.",
        ]
        for name, value in self.model_dump(by_alias=True, exclude_none=True).items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if redact_credentials and name.startswith("AwsCredentialsProvider") and "|" in text:
                provider, _arn, *rest = text.split("|")
                rest = [f"externalId={REDACTED!r}" if part.startswith("externalId=") else part for part in rest]
                text = "|".join([provider, repr(REDACTED), *rest])
            lines.append(f"{name} = {escape(text)}")
        return "\n".join(lines) + "\n"


def escape(value: str) -> str:
    """Escape a value for a Java ``.properties`` file (backslashes, leading blanks, non-ASCII)."""
    if "\n" in value or "\r" in value:
        raise ValueError("a properties value cannot contain a line break")
    out = value.replace("\\", "\\\\")
    if out.startswith(" "):
        out = "\\" + out
    return "".join(c if 0x20 <= ord(c) < 0x7F else f"\\u{ord(c):04x}" for c in out)


def default_application_name(dataset: str, stream_name: str, version: int = 1) -> str:
    """``thyme-<dataset>-<stream>`` for version 1, ``thyme-<dataset>-v<version>-<stream>`` after:
    each version of a dataset is a consumer of its own, with its own KCL checkpoints, reading the
    stream from the source's ``init_position``. Trimmed to DynamoDB's table-name alphabet and length."""
    label = dataset if version == 1 else f"{dataset}-v{version}"
    return _APP_NAME.sub("-", f"thyme-{label}-{stream_name}")[:255]


def default_worker_id() -> str:
    """The host name: stable across restarts of the same host/pod, so leases are picked up
    again at once instead of after they expire."""
    return socket.gethostname() or "thyme-worker"


def _initial_position(position: InitialPosition) -> tuple[Literal["LATEST", "TRIM_HORIZON"] | None, int | None]:
    if position.kind == "AT_TIMESTAMP":
        assert isinstance(position.timestamp, datetime)
        return None, int(position.timestamp.timestamp())  # whole seconds, rounded down
    return position.kind, None


def build_properties(
    connection: KinesisConnection,
    *,
    dataset: str,
    python: str,
    version: int = 1,
    application_name: str | None = None,
    worker_id: str | None = None,
    dynamodb_endpoint_url: str | None = None,
    sts_endpoint_url: str | None = None,
    profile: Profile | None = None,
    idle_time_between_reads_ms: int = 250,
    shutdown_grace_ms: int = 30_000,
    failover_time_ms: int = 10_000,
    assignment_ms: int | None = None,
    max_records: int = 10_000,
    child_timeout_s: int | None = None,
    leader_lock_s: int | None = DEFAULT_LEADER_LOCK_S,
    retrieval: Retrieval = "polling",
    consumer_name: str | None = None,
    max_shards: int | None = None,
    prefetch: tuple[int, int] | None = None,
) -> KclProperties:
    """The properties for consuming ``connection``'s stream into ``dataset`` with the child
    ``<python> -m record_processor``.

    ``assignment_ms`` is KCL's ``leaseAssignmentIntervalMillis`` (default 500 ms local, 2 s aws).

    ``retrieval="fan-out"`` reads with enhanced fan-out as the stream consumer ``consumer_name``
    (default: the application name); the polling keys are then left out.

    ``leader_lock_s`` is the leader lock's lease (renewed every third of it); None keeps KCL's
    120 s (renewed every 30 s).

    ``max_shards`` is KCL's ``maxLeasesForWorker``; ``prefetch`` the batches and bytes fetched
    ahead per shard (polling only; ``thyme.kinesis.budget`` derives both from a memory budget).

    ``profile`` defaults to ``"local"`` when the connection has an endpoint URL (a local
    stack): fast lease discovery and assignment, no CloudWatch metrics (KCL has no
    CloudWatch endpoint key). ``"aws"`` keeps KCL's intervals, which real AWS rate limits suit.

    With a ``role_arn``, only the Kinesis client assumes it; DynamoDB (the lease table) and
    CloudWatch stay in the consumer's own account with the default credential chain.
    """
    if not python or any(c.isspace() for c in python):
        raise SourceError(
            "record processor interpreter",
            "KCL splits executableName on spaces, so its path cannot contain one",
            "Install Python and the virtualenv at a path without spaces.",
            value=python,
        )
    if consumer_name is not None and not _CONSUMER_NAME.fullmatch(consumer_name):
        raise SourceError(
            "consumer name",
            "a Kinesis stream consumer's name is 1-128 letters, digits, '_', '.' or '-'",
            "Choose another --consumer-name.",
            value=consumer_name,
        )
    profile = profile or ("local" if connection.endpoint_url else "aws")
    app = application_name or default_application_name(dataset, connection.stream_name, version)
    position, at_timestamp = _initial_position(connection.init_position)
    default_chain = "DefaultCredentialsProvider"
    kinesis_credentials = default_chain
    if connection.role_arn is not None:
        parts = [
            "StsAssumeRoleCredentialsProvider",
            connection.role_arn,
            session_name(app),
            f"endpointRegion={connection.region}",
        ]
        if connection.external_id:
            parts.append(f"externalId={connection.external_id}")
        if sts_endpoint_url:
            parts.append(f"endpoint={sts_endpoint_url}^{connection.region}")
        kinesis_credentials = "|".join(parts)
    local = profile == "local"
    return KclProperties(
        executable_name=f"{python} -m record_processor",
        stream_name=connection.stream_name,
        application_name=app,
        table_name=app,
        worker_id=worker_id or default_worker_id(),
        region_name=connection.region,
        initial_position=position,
        initial_position_timestamp=at_timestamp,
        kinesis_endpoint=connection.endpoint_url,
        dynamodb_endpoint=dynamodb_endpoint_url or (connection.endpoint_url if local else None),
        credentials=kinesis_credentials,
        credentials_dynamodb=default_chain,
        credentials_cloudwatch=default_chain,
        retrieval_mode="FANOUT" if retrieval == "fan-out" else "POLLING",
        consumer_name=(consumer_name or app) if retrieval == "fan-out" else None,
        max_records=None if retrieval == "fan-out" else max_records,
        idle_time_between_reads_ms=None if retrieval == "fan-out" else idle_time_between_reads_ms,
        metrics_level="NONE" if local else "SUMMARY",
        shutdown_grace_ms=shutdown_grace_ms,
        failover_time_ms=failover_time_ms,
        child_timeout_s=child_timeout_s,
        leader_lock_lease_ms=None if leader_lock_s is None else leader_lock_s * 1000,
        leader_lock_heartbeat_ms=None if leader_lock_s is None else leader_lock_s * 1000 // 3,
        max_leases_for_worker=max_shards,
        prefetch_batches=None if prefetch is None or retrieval == "fan-out" else prefetch[0],
        prefetch_bytes=None if prefetch is None or retrieval == "fan-out" else prefetch[1],
        # Measured on the local stack: with KCL's defaults a new application takes
        # ~2 minutes to deliver a first record; these take it to ~10-20 s on a local stack.
        shard_sync_interval_ms=1 if local else None,
        lease_assignment_interval_ms=assignment_ms or (500 if local else AWS_ASSIGNMENT_MS),
        parent_shard_poll_interval_ms=500 if local else None,
        worker_metrics_capture_ms=100 if local else None,
        worker_metrics_report_ms=1000 if local else None,
    )
