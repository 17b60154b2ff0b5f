"""A live count of submitted, finished and failed group runs, for `scalegroups run`."""

from __future__ import annotations

import queue
import sys
import threading
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scalegroups.groups import GroupRun, add_observer, remove_observer


class GroupProgress:
    """Context manager: observes every group run and shows progress on stderr."""

    def __init__(self, refresh_s: float = 0.5) -> None:
        self.submitted = 0
        self.finished = 0
        self.failed = 0
        self._events: queue.SimpleQueue[tuple[str, GroupRun]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._refresh_s = refresh_s
        console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("groups"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task("groups", total=0, failed=0)
        self._thread = threading.Thread(target=self._drain, name="scalegroups-progress", daemon=True)

    def _observe(self, event: str, run: GroupRun) -> None:
        # Called from engine callback threads: only enqueue, never block.
        self._events.put((event, run))

    def _drain(self) -> None:
        while not self._stop.is_set() or not self._events.empty():
            try:
                event, run = self._events.get(timeout=self._refresh_s)
            except queue.Empty:
                continue
            if event == "submitted":
                self.submitted += 1
            else:
                self.finished += 1
                self.failed += run.failed()
            self._progress.update(self._task, total=self.submitted, completed=self.finished, failed=self.failed)

    def summary(self) -> str:
        """One line: how many group runs finished and failed."""
        return f"groups: {self.finished}/{self.submitted} finished, {self.failed} failed"

    def __enter__(self) -> GroupProgress:
        add_observer(self._observe)
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        remove_observer(self._observe)
        self._stop.set()
        self._thread.join(timeout=10)
        self._progress.stop()
        if self.submitted:
            print(self.summary(), file=sys.stderr)
