"""A call repeated at a steady rate in a background thread, for as long as a `with` lasts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class Periodic:
    """Calls `action` every `interval` seconds (first after one interval) from a daemon
    thread started on entering the `with` and stopped, joined, on leaving it."""

    def __init__(self, action: Callable[[], None], interval: float, name: str = "") -> None:
        self.action, self.interval = action, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._repeat, name=name or None, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _repeat(self) -> None:
        while not self._stop.wait(self.interval):
            self.action()
