"""The local AWS stack for end-to-end tests: started here, never skipped.

By default the tests start kinesis-mock + moto on 127.0.0.1 (``scripts/local_aws.py``) and
fail loudly if they cannot. With ``THYME_E2E_ENDPOINTS=env`` they use the endpoints already
in the environment instead (LocalStack from ``docker-compose.yml``, or real AWS), unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.faults import MakeConsumer, consumer_factory
from tests.e2e.harness import REPO, Consumer, unique

sys.path.insert(0, str(REPO / "scripts"))

import local_aws
import streams

ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "THYME_KINESIS_ENDPOINT_URL",
    "THYME_DYNAMODB_ENDPOINT_URL",
    "THYME_STS_ENDPOINT_URL",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.environ.get("THYME_E2E_ENDPOINTS") == "env":
        yield {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
        return
    stack = local_aws.LocalAWS(state_dir=tmp_path_factory.mktemp("local-aws"))
    stack.start()  # raises with the servers' log tails if the stack cannot start
    try:
        yield stack.env()
    finally:
        stack.stop()


@pytest.fixture
def aws(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in aws_env.items():
        monkeypatch.setenv(key, value)
    return aws_env


@pytest.fixture
def kinesis(aws: dict[str, str]) -> Any:
    return streams.kinesis_client()


@pytest.fixture
def consumers(tmp_path: Path) -> Iterator[list[Consumer]]:
    """Consumers a test starts are killed at the end even if it fails."""
    started: list[Consumer] = []
    yield started
    for consumer in started:
        consumer.close()


@pytest.fixture
def new_consumer(aws: dict[str, str], tmp_path: Path, consumers: list[Consumer]) -> Any:
    def make(
        app: Path,
        store: Path | None = None,
        application: str | None = None,
        worker_id: str = "w1",
        env: dict[str, str] | None = None,
        store_url: str | None = None,
    ) -> Consumer:
        consumer = Consumer(
            app,
            store or tmp_path / "thyme.db",
            application or unique("e2e-app"),
            worker_id,
            {**os.environ, **aws, **(env or {})},
            tmp_path / f"consumer-{len(consumers)}.log",
            store_url=store_url,
        )
        consumers.append(consumer)
        return consumer

    return make


@pytest.fixture
def fault_consumer(aws: dict[str, str], tmp_path: Path, consumers: list[Consumer]) -> MakeConsumer:
    """A consumer of the fault suites (``faults.FaultConsumer``), killed at the end like the others."""
    return consumer_factory(aws, tmp_path, consumers)
