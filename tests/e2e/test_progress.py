"""``thyme kinesis run`` on a terminal keeps a progress line below the logs (off a terminal it does not),
and serves its children's counters to Prometheus when asked."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import THYME, events, now, produce, unique, wait_for, write_app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_run_on_a_terminal_shows_records_rate_and_lag(kinesis: Any, aws: dict[str, str], tmp_path: Path) -> None:
    stream = unique("e2e-progress")
    arn = streams.create_stream(kinesis, stream, 1)
    produce(kinesis, stream, events(0, 50, at=now()))
    app = write_app(tmp_path, arn)
    primary, secondary = pty.openpty()
    command = [THYME, "kinesis", "run", f"{app}:Clicks", "--store", f"sqlite:///{tmp_path / 'thyme.db'}"]
    port = free_port()
    command += ["--application-name", unique("e2e-progress-app"), "--prometheus-port", str(port)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env={**os.environ, **aws}, cwd=tmp_path
    )
    os.close(secondary)
    chunks: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the process and its children closed the terminal
            while data := os.read(primary, 65536):
                chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def screen() -> str:
        return b"".join(chunks).decode("utf-8", "replace")

    try:
        wait_for(lambda: "thyme: 1 shard · 50 records" in screen(), 150, "the progress line to count 50 records")
        text = screen()
        status_lines = [part for part in text.split("\r\x1b[K") if part.startswith("thyme: 1 shard")]
        assert any("rec/s" in line for line in status_lines)
        assert any("caught up" in line or "behind" in line for line in status_lines)
        # the logs still scroll above it: the launcher's own JSON lines and the children's
        assert '"message": "starting the KCL MultiLangDaemon"' in text
        assert '"message": "batch applied"' in text
        assert '{"_aws":' not in text  # metrics are off by default with the local profile
        # the launcher's Prometheus endpoint adds up its children's batches
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            scraped = reply.read().decode()
        assert 'thyme_records_applied_total{dataset="Clicks",shard="shardId-000000000000"} 50' in scraped
        assert 'thyme_daemon_starts_total{dataset="Clicks"} 1' in scraped
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(90)
        reader.join(10)
        os.close(primary)
    assert code == 0
    assert screen().endswith("\r\x1b[K")  # the status line is cleared on exit: the terminal is left clean
