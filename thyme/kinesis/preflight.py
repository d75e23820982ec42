"""What ``thyme kinesis run`` checks before the daemon starts, and keeps checking while it runs:
what KCL would otherwise retry forever, printing stack traces.

Before: the consumer has credentials; the source's identity (the role, assumed as KCL will) can
describe the stream, which exists and is ``ACTIVE`` or ``UPDATING``, and can list its shards (and,
with enhanced fan-out, describe its consumer, which is not being deleted); the
consumer's own identity can read the lease table (or it does not exist yet: KCL, or the lease
bootstrap, creates it); every endpoint answers. Each failure is one line naming the identity,
the call and the fix (:mod:`thyme.kinesis.aws`), within seconds.

While running: :class:`StreamWatch` describes the stream every ``interval_s``; a failure no
retry fixes (the stream deleted, credentials expired or revoked, access withdrawn), met twice in
a row, ends the run with that line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from thyme.connectors.kinesis import KinesisConnection
from thyme.kinesis.aws import (
    ACTIVE_STATES,
    AwsError,
    calling,
    check_stream,
    client_config,
    own_credentials,
    session_name,
    source_kinesis,
    stream_label,
)
from thyme.kinesis.fanout import check_consumer
from thyme.kinesis.periodic import Periodic
from thyme.kinesis.properties import KclProperties

log = logging.getLogger("thyme.kinesis")

FAILURES_TO_STOP: Final = 2
"""Consecutive fatal failures of the running check that end the run."""


@dataclass(frozen=True)
class Target:
    """What the daemon will use: the source, its properties, the STS endpoint for the role."""

    connection: KinesisConnection
    properties: KclProperties
    sts_endpoint_url: str | None

    @property
    def session(self) -> str:
        return session_name(self.properties.application_name)


def check_environment(target: Target) -> None:
    """Raise :class:`AwsError` (one line) for the first thing the daemon could not get past."""
    import boto3

    connection, properties = target.connection, target.properties
    own_credentials()
    kinesis = source_kinesis(connection, target.sts_endpoint_url, target.session)
    status = check_stream(connection, kinesis)
    where = stream_label(connection)
    if status not in ACTIVE_STATES:
        raise AwsError(f"{where} is {status}: a consumer reads an ACTIVE or UPDATING stream; wait, or recreate it")
    calling(
        connection.kinesis_identity,
        "kinesis:ListShards",
        where,
        connection.endpoint_url,
        lambda: kinesis.list_shards(StreamName=connection.stream_name, MaxResults=1),
    )
    endpoint = properties.dynamodb_endpoint
    dynamodb = boto3.client(
        "dynamodb", region_name=properties.region_name, endpoint_url=endpoint, config=client_config()
    )
    table = f"lease table {properties.table_name} (region {properties.region_name})"

    def describe_table() -> None:
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):  # KCL (or the bootstrap) creates it
            dynamodb.describe_table(TableName=properties.table_name)

    calling("the consumer's own identity", "dynamodb:DescribeTable", table, endpoint, describe_table)
    if properties.retrieval_mode == "FANOUT":
        check_consumer(kinesis, connection, properties.consumer_name or properties.application_name)


class StreamWatch(Periodic):
    """Describes the stream every ``interval_s`` while the daemon runs; after
    :data:`FAILURES_TO_STOP` fatal failures in a row, calls ``stop(error)`` once."""

    def __init__(
        self,
        target: Target,
        interval_s: float,
        stop: Callable[[AwsError], None],
        check: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(interval_s, "stream-watch")
        self._stop = stop
        self._failures = 0
        self._check = check or (
            lambda: check_stream(
                target.connection, source_kinesis(target.connection, target.sts_endpoint_url, target.session)
            )
        )

    def tick(self) -> bool:
        try:
            self._check()
        except Exception as exc:  # never let the watch die quietly
            if not isinstance(exc, AwsError) or not exc.fatal:
                log.warning("checking the stream failed; the daemon retries", extra={"fields": {"error": str(exc)}})
                return True
            self._failures += 1
            log.error(str(exc), extra={"fields": {"event": "environment_failing", "failures": self._failures}})
            if self._failures >= FAILURES_TO_STOP:
                self._stop(exc)
                return False
        else:
            self._failures = 0
        return True
