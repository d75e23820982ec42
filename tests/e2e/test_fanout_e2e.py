"""Enhanced fan-out against the local stack, as far as it goes: kinesis-mock serves
RegisterStreamConsumer, DescribeStreamConsumer and DeregisterStreamConsumer but not
SubscribeToShard (its HTTP/2 event stream), so records cannot flow here. What is proven: the
daemon, run with ``--retrieval fan-out --consumer-name``, registers the consumer under that name
(the nested key ``fanoutConfig.consumerName`` reaches KCL), and ``thyme kinesis
deregister-consumer`` removes it. Untested here: delivery through SubscribeToShard, its latency,
resubscription after the 5-minute subscription ends (README, Enhanced fan-out)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import THYME, unique, wait_for, write_app


def consumers(kinesis: Any, arn: str) -> dict[str, str]:
    return {c["ConsumerName"]: c["ConsumerStatus"] for c in kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]}


def test_the_daemon_registers_the_named_consumer_and_the_cli_deregisters_it(
    kinesis: Any, aws: dict[str, str], new_consumer: Any, tmp_path: Path
) -> None:
    stream = unique("e2e-efo")
    arn = streams.create_stream(kinesis, stream, 2)
    app = write_app(tmp_path, arn)
    name = unique("thyme-efo")
    consumer = new_consumer(app)
    consumer.extra_args = ["--retrieval", "fan-out", "--consumer-name", name]
    consumer.start()
    found = wait_for(lambda: consumers(kinesis, arn).get(name), 120, f"KCL to register the consumer {name}", interval=1)
    assert found in ("CREATING", "ACTIVE")
    assert consumer.alive(), consumer.log_text()[-3000:]
    consumer.stop()
    done = subprocess.run(
        [THYME, "kinesis", "deregister-consumer", f"{app}:Clicks", "--consumer-name", name],
        capture_output=True,
        text=True,
        env=consumer.env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"consumer {name} of stream {stream} (account ")
    assert "deregistered" in done.stdout
    assert consumers(kinesis, arn).get(name) in (None, "DELETING")
    properties = subprocess.run(
        [THYME, "kinesis", "properties", f"{app}:Clicks", "--retrieval", "fan-out", "--consumer-name", name],
        capture_output=True,
        text=True,
        env=consumer.env,
        timeout=60,
        check=True,
    ).stdout
    assert "retrievalMode = FANOUT" in properties
    assert f"fanoutConfig.consumerName = {name}" in properties
    assert "maxRecords" not in properties
