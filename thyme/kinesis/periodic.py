"""A check that runs every few seconds beside the daemon, on a daemon thread: the stream watch
(``preflight.StreamWatch``) and the leader-lock watch (``leader.LeaderWatch``)."""

from __future__ import annotations

import threading
from typing import Self


class Periodic:
    """Calls :meth:`tick` every ``interval_s`` from :meth:`start` until :meth:`close`, or until
    :meth:`tick` returns False."""

    def __init__(self, interval_s: float, name: str) -> None:
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            if self.tick() is False:
                return

    def tick(self) -> bool | None:
        """One round; False ends the thread."""
        raise NotImplementedError
