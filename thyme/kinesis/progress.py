"""A one-line progress display for ``thyme kinesis run`` on a terminal.

The launcher already reads every line the daemon and its children write. Each child logs one
``batch applied`` JSON line per batch (shard, records received/applied, dead letters, KCL's
``millisBehindLatest``); :class:`Progress` adds them up and keeps a status line at the bottom
of the terminal, below the scrolling logs, the way build tools and downloaders do:

    thyme: 4 shards · 120,345 records · 4,210 rec/s · behind 1.2 s · 37 dead letters

Only on a terminal (or when asked): in a container or a log file, the JSON lines are the
record, and a redrawn line would be noise.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

from thyme.handover import batch_event

_CLEAR: Final = "\r\x1b[K"
WINDOW_S: Final = 10.0
"""Records/s is measured over this many recent seconds."""


@dataclass
class _Shard:
    lag_ms: int | None = None
    seen_at: float = 0.0


class Progress:
    """Counts batches from log lines and draws the status line. Thread-safe."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self._clock = clock
        # Re-entrant: the launcher's SIGTERM/SIGINT handler logs through this object on the main
        # thread, possibly while that thread is inside write() holding the lock.
        self._lock = threading.RLock()
        self._shards: dict[str, _Shard] = {}
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.received = 0
        self.applied = 0
        self.dead = 0
        self._started = clock()
        self._shown = False

    def observe(self, line: str) -> None:
        """Count the batch if ``line`` is a child's ``batch applied`` log line."""
        batch = batch_event(line)
        if batch is None:
            return
        now = self._clock()
        with self._lock:
            self.received += batch.received
            self.applied += batch.applied
            self.dead += sum(batch.dead_letters.values())
            self._recent.append((now, batch.received))
            shard = self._shards.setdefault(batch.shard, _Shard())
            shard.lag_ms, shard.seen_at = batch.millis_behind_latest, now

    def summary(self) -> str:
        with self._lock:
            now = self._clock()
            while self._recent and self._recent[0][0] < now - WINDOW_S:
                self._recent.popleft()
            span = min(WINDOW_S, max(now - self._started, 1.0))
            rate = sum(n for _, n in self._recent) / span
            lags = [s.lag_ms for s in self._shards.values() if s.lag_ms is not None]
            parts = [
                f"{len(self._shards)} shard{'s' if len(self._shards) != 1 else ''}",
                f"{self.received:,} records",
                f"{rate:,.0f} rec/s",
            ]
            if lags:
                worst = max(lags)
                parts.append("caught up" if worst < 1000 else f"behind {_duration(worst)}")
            if self.dead:
                parts.append(f"{self.dead:,} dead letters")
            return "thyme: " + " · ".join(parts) if self._shards else "thyme: waiting for the first batch…"

    def write(self, line: str) -> None:
        """Write a log line above the status line, then redraw the status line."""
        self.observe(line)
        with self._lock:
            self.out.write((_CLEAR if self._shown else "") + line)
        self.redraw()

    def redraw(self) -> None:
        text = self.summary()
        with self._lock:
            self.out.write(_CLEAR + text)
            self.out.flush()
            self._shown = True

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self.out.write(_CLEAR)
                self.out.flush()
                self._shown = False


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
