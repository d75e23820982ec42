"""An optional Prometheus endpoint for ``thyme kinesis run`` (``--prometheus-port``).

Each shard is its own child process, so no child can serve a scrape for the consumer. The
launcher can: it already reads every line the daemon and its children write, and each child
logs one ``batch applied`` JSON line per batch. :class:`PrometheusExporter` adds those up per
shard and serves them in the Prometheus text format at ``/metrics``. Counters live as long as
the launcher (Prometheus handles the reset when it restarts); a daemon restart keeps them.

Metrics (labels ``dataset``, ``shard``; dead letters also ``reason``, grouped like the log's
``dead_letters``):

* ``thyme_records_received_total``, ``thyme_records_applied_total``,
  ``thyme_records_replayed_total``, ``thyme_dead_letters_total`` (counters)
* ``thyme_batches_total``, ``thyme_batch_seconds_total``, ``thyme_store_seconds_total``
  (counters: divide for the mean batch and store-write time)
* ``thyme_millis_behind_latest`` (gauge, as KCL reported it with the shard's last batch)
* ``thyme_daemon_starts_total`` (counter, label ``dataset``: restarts show as increments)
* ``thyme_kcl_leader_lock_age_seconds`` (gauge, label ``dataset``: seconds since KCL's leader
  lock last changed, when the launcher watches it)
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from thyme.handover import batch_event

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class _Shard:
    received: int = 0
    applied: int = 0
    replayed: int = 0
    batches: int = 0
    seconds: float = 0.0
    store_seconds: float = 0.0
    dead: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lag_ms: int | None = None


_COUNTERS: Final = (
    ("thyme_records_received_total", "Records delivered to the shard's processor.", "received"),
    ("thyme_records_applied_total", "Rows written to the store.", "applied"),
    ("thyme_records_replayed_total", "Records skipped because the store already had them.", "replayed"),
    ("thyme_batches_total", "processRecords batches handled.", "batches"),
    ("thyme_batch_seconds_total", "Time handling batches (decode, judge, store).", "seconds"),
    ("thyme_store_seconds_total", "Time in store transactions.", "store_seconds"),
)


METRIC_NAMES: Final = frozenset(
    [name for name, _, _ in _COUNTERS]
    + [
        "thyme_dead_letters_total",
        "thyme_millis_behind_latest",
        "thyme_daemon_starts_total",
        "thyme_kcl_leader_lock_age_seconds",
    ]
)
"""Every metric the exporter serves (the alert rules in ``deploy/alerts`` are checked against it)."""


class PrometheusExporter:
    """Aggregates batch lines; renders and serves the Prometheus text format. Thread-safe."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self._lock = threading.Lock()
        self._shards: dict[str, _Shard] = {}
        self.daemon_starts = 0
        self.leader_lock_age: Callable[[], float | None] | None = None
        """Seconds since KCL's leader lock last changed (``thyme.kinesis.leader.LeaderWatch``)."""
        self._server: ThreadingHTTPServer | None = None

    def observe(self, line: str) -> None:
        batch = batch_event(line)
        if batch is None:
            return
        with self._lock:
            shard = self._shards.setdefault(batch.shard, _Shard())
            shard.received += batch.received
            shard.applied += batch.applied
            shard.replayed += batch.replayed
            shard.batches += 1
            shard.seconds += batch.seconds
            shard.store_seconds += batch.store_seconds
            for reason, n in batch.dead_letters.items():
                shard.dead[reason] += n
            if batch.millis_behind_latest is not None:
                shard.lag_ms = batch.millis_behind_latest

    def daemon_started(self) -> None:
        with self._lock:
            self.daemon_starts += 1

    def render(self) -> str:
        with self._lock:
            shards = sorted(self._shards.items())
            out: list[str] = []
            dataset = _label(self.dataset)
            for name, text, attribute in _COUNTERS:
                out += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
                out += [
                    f'{name}{{dataset="{dataset}",shard="{_label(s)}"}} {_number(getattr(v, attribute))}'
                    for s, v in shards
                ]
            name = "thyme_dead_letters_total"
            out += [f"# HELP {name} Records kept as dead letters, by reason.", f"# TYPE {name} counter"]
            for s, v in shards:
                out += [
                    f'{name}{{dataset="{dataset}",shard="{_label(s)}",reason="{_label(r)}"}} {n}'
                    for r, n in sorted(v.dead.items())
                ]
            name = "thyme_millis_behind_latest"
            out += [
                f"# HELP {name} How far the shard's reader was behind the tip at its last batch (KCL).",
                f"# TYPE {name} gauge",
            ]
            out += [
                f'{name}{{dataset="{dataset}",shard="{_label(s)}"}} {v.lag_ms}'
                for s, v in shards
                if v.lag_ms is not None
            ]
            name = "thyme_daemon_starts_total"
            out += [f"# HELP {name} Times the launcher started the KCL daemon.", f"# TYPE {name} counter"]
            out.append(f'{name}{{dataset="{dataset}"}} {self.daemon_starts}')
            age = None if self.leader_lock_age is None else self.leader_lock_age()
            if age is not None:
                name = "thyme_kcl_leader_lock_age_seconds"
                out += [
                    f"# HELP {name} Seconds since KCL's leader lock was last renewed, as this host saw it "
                    "(a live leader renews it every third of its lease: 3.3 s by default, 30 s with KCL's own timing).",
                    f"# TYPE {name} gauge",
                    f'{name}{{dataset="{dataset}"}} {_number(age)}',
                ]
            return "\n".join(out) + "\n"

    def serve(self, address: str, port: int) -> int:
        """Serve ``/metrics`` on a daemon thread; returns the port (useful with port 0)."""
        render = self.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of http.server
                pass  # one line per scrape would flood the logs

        self._server = ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6f}"
