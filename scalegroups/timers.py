"""One timer thread for every deadline in the process (a 10,000-run map needs no 10,000 threads)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("scalegroups")


class Deadline:
    """A pending call; `cancel()` stops it if it has not run yet."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback (a no-op once it ran)."""
        self.cancelled = True


class Timers:
    """Runs callbacks at their deadlines, in order, on one daemon thread started on first use."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Run `callback()` after `delay` seconds unless the returned deadline is cancelled."""
        deadline = Deadline(time.monotonic() + delay, callback)
        with self._condition:
            heapq.heappush(self._heap, (deadline.when, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="scalegroups-timers", daemon=True)
                self._thread.start()
            self._condition.notify()
        return deadline

    def pending(self) -> int:
        """Deadlines not yet run or cancelled."""
        with self._condition:
            return sum(not entry[2].cancelled for entry in self._heap)

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                deadline = heapq.heappop(self._heap)[2]
            if not deadline.cancelled:
                try:
                    deadline.callback()
                except Exception:  # one failing callback must not stop every other deadline
                    logger.exception("a scalegroups timer callback failed")


#: the process's timers (group timeouts)
timers = Timers()
