"""Enhanced fan-out: the stream consumer ``run --retrieval fan-out`` reads as.

With ``retrievalMode = FANOUT`` KCL registers a stream consumer (``RegisterStreamConsumer``,
named ``fanoutConfig.consumerName``, by default the application name) when it starts, waits for
it to be ``ACTIVE`` and subscribes to every shard it leases (``SubscribeToShard``, HTTP/2): each
registered consumer gets 2 MiB/s per shard of its own, pushed ~70 ms after a put, where polling
consumers share 2 MiB/s per shard and 5 GetRecords/s. KCL never deregisters it: a consumer you
retire keeps counting against the stream's 20 and is billed per shard-hour until
:func:`deregister` (``thyme kinesis deregister-consumer``) removes it.

:func:`check_consumer` is ``run``'s preflight for it: the calls KCL will make, with the source's
identity, each failure one line naming the missing permission — instead of the daemon retrying
``RegisterStreamConsumer`` with stack traces.
"""

from __future__ import annotations

from typing import Any

from thyme.connectors.kinesis import KinesisConnection
from thyme.kinesis.aws import AwsError, calling, stream_label


def describe_consumer(client: Any, connection: KinesisConnection, name: str) -> dict[str, Any] | None:
    """The consumer's description, or None if the stream has none by that name. Raises AwsError."""
    where = f"consumer {name} of {stream_label(connection)}"

    def describe() -> dict[str, Any] | None:
        try:
            found = client.describe_stream_consumer(StreamARN=connection.stream_arn, ConsumerName=name)
        except client.exceptions.ResourceNotFoundException:
            return None
        return dict(found["ConsumerDescription"])

    return calling(
        connection.kinesis_identity, "kinesis:DescribeStreamConsumer", where, connection.endpoint_url, describe
    )


def check_consumer(client: Any, connection: KinesisConnection, name: str) -> str:
    """Before the daemon starts: the consumer can be described (KCL's first call) and, if it is
    being deleted, the run would fail. Returns its state: ``new`` (KCL registers it), or AWS's."""
    found = describe_consumer(client, connection, name)
    if found is None:
        return "new"
    status = str(found.get("ConsumerStatus", ""))
    if status == "DELETING":
        raise AwsError(
            f"consumer {name} of {stream_label(connection)} is being deleted: wait until it is gone (KCL then "
            "registers it again), or pick another --consumer-name"
        )
    return status


def deregister(client: Any, connection: KinesisConnection, name: str) -> str:
    """Deregister the consumer ``name``; one line saying what happened. Raises AwsError."""
    where = f"consumer {name} of {stream_label(connection)}"

    def call() -> str:
        try:
            client.deregister_stream_consumer(StreamARN=connection.stream_arn, ConsumerName=name)
        except client.exceptions.ResourceNotFoundException:
            return f"{where}: not registered (nothing to do)"
        return (
            f"{where}: deregistered; its subscriptions end and billing stops (a consumer still running with it "
            "registers it again)"
        )

    return calling(
        connection.kinesis_identity, "kinesis:DeregisterStreamConsumer", where, connection.endpoint_url, call
    )
