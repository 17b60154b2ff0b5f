"""A live count of group runs by status for `scalegroups run`: a bar on a terminal, lines elsewhere.

On a terminal, a rich bar with finished/submitted and the problem counts. When stderr is not a
terminal (a Kubernetes Job's log, CI), a plain line every `SCALEGROUPS_PROGRESS_LINES_S` seconds
(default 10) while something changed or runs: `scalegroups: 12/40 done, 1 failed, 3 running`.
Statuses are those of the Prefect UI's summary tables (`scalegroups.summary.STATUSES`).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import Counter
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scalegroups.groups import GroupRun, add_observer, remove_observer
from scalegroups.summary import STATUSES, finished_status

LINES_EVERY_S = 10.0


def lines_interval() -> float:
    """Seconds between plain progress lines (`SCALEGROUPS_PROGRESS_LINES_S`, default 10)."""
    try:
        return max(0.1, float(os.environ.get("SCALEGROUPS_PROGRESS_LINES_S", LINES_EVERY_S)))
    except ValueError:
        return LINES_EVERY_S


class GroupProgress:
    """Context manager: observes every group run and shows progress on stderr."""

    def __init__(self, refresh_s: float = 0.5, lines_every_s: float | None = None) -> None:
        self.submitted = 0
        self.finished = 0
        self.counts: Counter[str] = Counter()
        self._events: queue.SimpleQueue[tuple[str, GroupRun]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._refresh_s = refresh_s
        console = Console(stderr=True)
        self._lines = not console.is_terminal
        self._lines_every = lines_interval() if lines_every_s is None else lines_every_s
        self._last_line: tuple[float, str] = (time.monotonic(), "")
        self._progress = Progress(
            TextColumn("groups"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[completed_runs]} completed"),
            TextColumn("[red]{task.fields[problems]}"),
            TimeElapsedColumn(),
            console=console,
            disable=self._lines,
        )
        self._task = self._progress.add_task("groups", total=0, completed_runs=0, problems="")
        self._thread = threading.Thread(target=self._drain, name="scalegroups-progress", daemon=True)

    @property
    def failed(self) -> int:
        """Runs that did not complete (failed, crashed, cancelled or timed out)."""
        return self.finished - self.counts["completed"]

    def _observe(self, event: str, run: GroupRun) -> None:
        # Called from engine callback threads: only enqueue, never block.
        self._events.put((event, run))

    def _drain(self) -> None:
        while not self._stop.is_set() or not self._events.empty():
            try:
                event, run = self._events.get(timeout=self._refresh_s)
            except queue.Empty:
                self._maybe_line()
                continue
            if event == "submitted":
                self.submitted += 1
            else:
                self.finished += 1
                try:
                    status = finished_status(run)[0]
                except Exception:  # a status that cannot be read is still a run that did not complete
                    status = "failed"
                self.counts[status] += 1
            self._progress.update(
                self._task,
                total=self.submitted,
                completed=self.finished,
                completed_runs=self.counts["completed"],
                problems=self._problems(),
            )
            self._maybe_line()

    def _problems(self) -> str:
        return ", ".join(f"{self.counts[s]} {s}" for s in STATUSES[1:] if self.counts[s])

    def line(self) -> str:
        """`scalegroups: 12/40 done, 1 failed, 3 running`."""
        parts = [f"{self.finished}/{self.submitted} done"]
        if self._problems():
            parts.append(self._problems())
        parts.append(f"{self.submitted - self.finished} running")
        return "scalegroups: " + ", ".join(parts)

    def _maybe_line(self) -> None:
        if not self._lines or not self.submitted:
            return
        now = time.monotonic()
        last_at, last_text = self._last_line
        text = self.line()
        if now - last_at < self._lines_every or (text == last_text and self.finished == self.submitted):
            return
        self._last_line = (now, text)
        print(text, file=sys.stderr, flush=True)

    def summary(self) -> str:
        """One line: how many group runs finished, and how many of them failed (by status)."""
        text = f"groups: {self.finished}/{self.submitted} finished, {self.counts['failed']} failed"
        others = ", ".join(f"{self.counts[s]} {s}" for s in STATUSES[2:] if self.counts[s])
        return f"{text}, {others}" if others else text

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
