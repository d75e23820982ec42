"""Connections shared by the threads of a process, one caller at a time.

A store call takes a connection, uses it for one unit of work (a transaction, a lookup) and
gives it back, so any number of threads share as many connections as run at once. Threads that
come and go (a server that starts a thread per request) reuse the idle ones instead of leaving
one open per thread that ever ran. A process made by ``fork`` does not touch its parent's
connections (their transactions and locks are the parent's): it opens its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Generic, TypeVar

C = TypeVar("C")

MAX_IDLE: Final = 16
"""Idle connections kept for reuse; one given back beyond this is closed."""


class ConnectionPool(Generic[C]):
    """Hands out connections made by ``connect``; ``close`` closes one. Thread-safe."""

    def __init__(self, connect: Callable[[], C], close: Callable[[C], None], max_idle: int = MAX_IDLE) -> None:
        self._connect = connect
        self._close = close
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[C] = []
        self._pid = os.getpid()

    def take(self) -> tuple[C, bool]:
        """A connection for this caller alone, and whether it was just opened (not reused)."""
        if self._pid != os.getpid():  # a forked child: leave the parent's connections alone
            self._pid, self._lock, self._idle = os.getpid(), threading.Lock(), []
        with self._lock:
            if self._idle:
                return self._idle.pop(), False
        return self._connect(), True

    def give(self, conn: C) -> None:
        """Give back a connection in a clean state (no transaction open)."""
        with self._lock:
            if len(self._idle) < self._max_idle and self._pid == os.getpid():
                self._idle.append(conn)
                return
        self.discard(conn)

    def discard(self, conn: C) -> None:
        """Close a connection instead of giving it back (it broke, or enough are idle)."""
        if self._pid == os.getpid():
            self._close(conn)

    @contextmanager
    def connection(self) -> Iterator[C]:
        """Take a connection for the ``with`` block; it goes back afterwards, whatever happens in it
        (the block leaves no transaction open)."""
        conn, _ = self.take()
        try:
            yield conn
        finally:
            self.give(conn)

    def close(self) -> None:
        """Close the idle connections (one in use is given back as usual). The pool can be used
        again afterwards: it opens new connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)

    def __len__(self) -> int:
        """Idle connections held."""
        return len(self._idle)
