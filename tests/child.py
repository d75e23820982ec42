"""Driving the record processor over the MultiLangDaemon protocol, as the daemon does: the
messages it sends and expects, and the real child (``python -m record_processor``) through pipes."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SHARD = "shardId-000000000001"
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
ARRIVAL_MS = int(T0.timestamp() * 1000) + 60_000
REPO = Path(__file__).resolve().parent.parent


def click(user: str, minutes: float, page: str = "/") -> dict[str, Any]:
    return {"user_id": user, "page": page, "timestamp": (T0 + timedelta(minutes=minutes)).isoformat()}


def initialize(shard: str = SHARD) -> str:
    return json.dumps(
        {"action": "initialize", "shardId": shard, "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}
    )


def checkpoint_reply(sequence: str | None, sub: int | None = 0, error: str | None = None) -> str:
    return json.dumps({"action": "checkpoint", "sequenceNumber": sequence, "subSequenceNumber": sub, "error": error})


def status(action: str) -> dict[str, Any]:
    return {"action": "status", "responseFor": action}


def checkpoint(sequence: str | None, sub: int | None) -> dict[str, Any]:
    return {"action": "checkpoint", "sequenceNumber": sequence, "subSequenceNumber": sub}


def start_child(
    store_url: str, stderr: Path, *extra: str, dataset: str = "tests.factories:SourcedClick"
) -> subprocess.Popen[str]:
    """The child as the daemon starts it; its stderr goes to a file (a full pipe would block it)."""
    env = {**os.environ, "THYME_STORE_URL": store_url, "PYTHONPATH": str(REPO)}
    with stderr.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "record_processor", "--dataset", dataset, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=REPO,
        )


def exchange(child: subprocess.Popen[str], line: str) -> dict[str, Any]:
    """Write one line; return the next non-empty protocol line the child writes (30 s at most)."""
    assert child.stdin is not None
    assert child.stdout is not None
    lines: queue.Queue[str] = getattr(child, "lines", None) or queue.Queue()
    if not hasattr(child, "lines"):
        child.lines = lines  # type: ignore[attr-defined]
        stdout = child.stdout

        def pump() -> None:
            for text in iter(stdout.readline, ""):
                lines.put(text)

        threading.Thread(target=pump, daemon=True).start()
    child.stdin.write(line + "\n")
    child.stdin.flush()
    while True:
        reply = lines.get(timeout=30)
        if reply.strip():
            return json.loads(reply)  # type: ignore[no-any-return]
