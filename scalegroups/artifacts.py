"""Live progress of a map in the Prefect UI: a progress artifact, a summary table, a dashboard link.

Every `Group.map`, `fan_out` (counting items, not batches) and `deploy_map` called in a flow gets,
on that flow run (Prefect keys allow lowercase letters, digits and dashes only):

- `scalegroups-<name>-progress`: percent of items finished, updated at most every `INTERVAL_S`
  seconds while items finish, and once at 100 when the last one has; its description carries the
  counts ("12/40 done: 11 completed, 1 failed").
- `scalegroups-<name>-summary`: at the end, a table: a row per status with its count (completed,
  failed, crashed, cancelled, timed_out), then a row per problem item with its key and error.
- `scalegroups-dashboard`: a link to the Dask or Ray dashboard, once per flow run, when the
  runner has one.

`<name>` is the group's name, the fan-out's label or the deployment's name, made key-safe. A key
gives the artifact a history across flow runs in the UI's Artifacts page.

Cost per item: a done callback appends to a list. Statuses are read and the API is called only on
ticks of the process's shared timer thread (`scalegroups.timers`), on a thread of its own when the
last item finishes, and once, synchronously, when the flow's scalegroups runner exits. While a map
runs, a status is read only when that costs no engine round trip (a Dask or Ray state is read once
the user's `result()` has fetched it): progress on must not cost what it shows. Publishing never
raises into the flow: the first failure is logged once per process and that map publishes nothing
more. `progress=False` on the call, or `SCALEGROUPS_PROGRESS=0`, turns it off.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from scalegroups.timers import Deadline, timers

INTERVAL_S = 2.0
DASHBOARD_KEY = "scalegroups-dashboard"
logger = logging.getLogger("scalegroups")

#: a finished source -> one (status, key, error) row per item it stands for
Classifier = Callable[[Any], list[tuple[str, Any, str]]]
#: the same rows if they can be read without an engine round trip, else None (read again later)
Peek = Callable[[Any], list[tuple[str, Any, str]] | None]

_warned = False
_warn_lock = threading.Lock()
_live: weakref.WeakSet[MapProgress] = weakref.WeakSet()
_linked_flow_runs: set[UUID] = set()


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key from `parts`: lowercase letters, digits and single dashes."""
    text = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "scalegroups"


def _warn_once(exc: BaseException) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    logger.warning("scalegroups could not publish progress artifacts (the flow goes on without them): %r", exc)


class MapProgress:
    """Counts the items of one map by status and publishes them as Prefect artifacts."""

    def __init__(
        self,
        name: str,
        total: int,
        flow_run_id: UUID,
        classify: Classifier,
        *,
        dashboard: str | None = None,
        interval: float = INTERVAL_S,
        final_inline: bool = False,
        peek: Peek | None = None,
    ) -> None:
        self.name = name
        self.total = total
        self.flow_run_id = flow_run_id
        self.progress_key = artifact_key("scalegroups", name, "progress")
        self.summary_key = artifact_key("scalegroups", name, "summary")
        self.counts: dict[str, int] = {}
        self.problems: list[dict[str, str]] = []
        self._classify = classify
        self._peek = peek
        self._unread: list[Any] = []  # finished sources whose statuses are not read yet (see `peek`)
        self._dashboard = dashboard
        self._interval = interval
        self._final_inline = final_inline  # the last source_done publishes before it returns
        self._sources: list[Any] = []
        self._seen: set[int] = set()
        self._pending: list[Any] = []
        self._lock = threading.Lock()  # sources and pending: taken by engine callback threads, briefly
        self._publishing = threading.Lock()  # one tick at a time
        self._progress_id: UUID | None = None
        self._published: tuple[float, str] | None = None
        self._final = False
        self._disabled = False
        self._next: Deadline | None = None

    # ------------------------------------------------------------------ counting (cheap)
    def watch(self, sources: Iterable[Any]) -> None:
        """Count `sources` as they finish (each calls `source_done` once) and start the ticks."""
        self._sources = list(sources)
        _live.add(self)
        self._next = timers.call_later(self._interval, self.tick)

    def source_done(self, source: Any) -> None:
        """A source finished: remember it for the next tick (called from engine callback threads)."""
        with self._lock:
            if id(source) in self._seen:
                return
            self._seen.add(id(source))
            self._pending.append(source)
            last = len(self._seen) == len(self._sources)
        if last and self._final_inline:
            self.tick()
        elif last:
            # the 100% and the table, promptly, off the engine's thread and off the shared timer
            # thread (reading the last statuses may wait on the engine)
            threading.Thread(target=self.tick, name="scalegroups-progress-end", daemon=True).start()

    def done_items(self) -> int:
        """Items finished so far (with their statuses read or not)."""
        return sum(self.counts.values()) + len(self._unread)

    def _take_pending(self, settle: bool) -> None:
        """Count finished sources; `settle`: read every status now, else only the cheap ones."""
        with self._lock:
            pending, self._pending = self._pending, []
        unread, self._unread = self._unread + pending, []
        peek = None if settle else self._peek
        for source in unread:
            rows = self._rows(source) if peek is None else self._peek_rows(peek, source)
            if rows is None:
                self._unread.append(source)
                continue
            for status, key, error in rows:
                self.counts[status] = self.counts.get(status, 0) + 1
                if status != "completed":
                    self.problems.append({"key": repr(key), "status": status, "error": error})

    @staticmethod
    def _peek_rows(peek: Peek, source: Any) -> list[tuple[str, Any, str]] | None:
        try:
            return peek(source)
        except Exception:  # read it the full way at the end
            return None

    def _rows(self, source: Any) -> list[tuple[str, Any, str]]:
        try:
            return self._classify(source)
        except Exception as exc:  # a status that cannot be read is still an item accounted for
            return [("failed", getattr(source, "key", None), f"status unavailable: {exc!r}")]

    # --------------------------------------------------------------- publishing (on ticks)
    def tick(self) -> None:
        """Count what finished and publish; schedule the next tick unless everything is published."""
        with self._publishing:
            if self._final or self._disabled:
                return
            with self._lock:
                everything_finished = len(self._seen) == len(self._sources)
            self._take_pending(settle=everything_finished)
            final = self.done_items() >= self.total
            try:
                self._publish(final)
            except Exception as exc:
                self._disabled = True
                _warn_once(exc)
            if final or self._disabled:
                self._final = True
                if self._next is not None:
                    self._next.cancel()
                _live.discard(self)
                return
            self._next = timers.call_later(self._interval, self.tick)

    def flush(self) -> None:
        """Count every source already done (even if its callback has not come yet) and publish now."""
        for source in self._sources:
            done = getattr(source, "done", None)
            if callable(done) and done():
                self.source_done_quietly(source)
        self.tick()

    def source_done_quietly(self, source: Any) -> None:
        """`source_done` without scheduling a tick (the caller ticks)."""
        with self._lock:
            if id(source) not in self._seen:
                self._seen.add(id(source))
                self._pending.append(source)

    def description(self) -> str:
        """ "12/40 done: 11 completed, 1 failed" (", 2 not read yet": finished, statuses still with the engine)."""
        from scalegroups.summary import counts_line

        unread = f", {len(self._unread)} not read yet" if self._unread else ""
        return f"{self.name}: {self.done_items()}/{self.total} done: {counts_line(self.counts)}{unread}"

    def _publish(self, final: bool) -> None:
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

        from scalegroups.api_clients import borrowed_client

        percent = 100.0 if final else round(100.0 * self.done_items() / max(1, self.total), 1)
        description = self.description()
        if self._published == (percent, description) and not final:
            return
        with borrowed_client() as client:
            if self._dashboard and self.flow_run_id not in _linked_flow_runs:
                _linked_flow_runs.add(self.flow_run_id)
                client.create_artifact(
                    ArtifactCreate(
                        key=DASHBOARD_KEY,
                        type="markdown",
                        data=f"[{self._dashboard}]({self._dashboard})",
                        description="the engine's dashboard for this flow run",
                        flow_run_id=self.flow_run_id,
                    )
                )
            if self._progress_id is None:
                created = client.create_artifact(
                    ArtifactCreate(
                        key=self.progress_key,
                        type="progress",
                        data=percent,
                        description=description,
                        flow_run_id=self.flow_run_id,
                    )
                )
                self._progress_id = created.id
            elif self._published != (percent, description):
                client.update_artifact(self._progress_id, ArtifactUpdate(data=percent, description=description))
            self._published = (percent, description)
            if final:
                self._publish_summary(client)

    def _publish_summary(self, client: Any) -> None:
        from prefect.client.schemas.actions import ArtifactCreate

        from scalegroups.summary import STATUSES, counts_line, summary_table

        counts = {status: self.counts.get(status, 0) for status in STATUSES}
        for status, count in self.counts.items():  # e.g. deploy_map's not_started
            counts.setdefault(status, count)
        client.create_artifact(
            ArtifactCreate(
                key=self.summary_key,
                type="table",
                data=json.dumps(summary_table(counts, self.problems)),
                description=f"{self.name}: {self.total} items: {counts_line(counts)}",
                flow_run_id=self.flow_run_id,
            )
        )


def track(
    name: str,
    sources: list[Any],
    classify: Classifier,
    *,
    total: int | None = None,
    progress: bool | None = None,
    subscribe: Callable[[Any, Callable[[Any], None]], None] | None = None,
    final_inline: bool = False,
    peek: Peek | None = None,
) -> MapProgress | None:
    """Publish the progress of `sources` (one per item unless `total` says otherwise) in this flow run.

    Returns None (and does nothing) outside a flow run, for no items, or when progress is off.
    `subscribe(source, callback)` registers the done callback (default: `source.add_done_callback`).
    `final_inline=True`: the callback of the last source publishes the end itself (for callers on a
    thread of their own, such as deploy_map's driver; engine callback threads must not block).
    `peek(source)`: rows without an engine round trip, or None; while the map runs, ticks count an
    unread source as done and read it later (usually after the user's own `result()` has fetched it),
    so progress never fetches a result twice; the end reads every status that is still unread.
    """
    try:
        from prefect.context import FlowRunContext

        from scalegroups.settings import progress_enabled

        if progress is False or not sources or not progress_enabled():
            return None
        context = FlowRunContext.get()
        flow_run = getattr(context, "flow_run", None)
        if flow_run is None:
            return None
        tracker = MapProgress(
            name,
            len(sources) if total is None else total,
            flow_run.id,
            classify,
            dashboard=dashboard_url(getattr(context, "task_runner", None)),
            final_inline=final_inline,
            peek=peek,
        )
        tracker.watch(sources)
        for source in sources:
            if subscribe is None:
                source.add_done_callback(tracker.source_done)
            else:
                subscribe(source, tracker.source_done)
        return tracker
    except Exception as exc:  # progress is a convenience: never the reason a flow fails
        _warn_once(exc)
        return None


def dashboard_url(runner: Any) -> str | None:
    """The dashboard of a started scalegroups runner (Dask, Ray), or None."""
    finder = getattr(runner, "dashboard_url", None)
    if not callable(finder):
        return None
    try:
        return finder()
    except Exception:
        return None


def flush_all() -> None:
    """Publish every unfinished map of this process now (the flow's runner is exiting)."""
    for tracker in list(_live):
        try:
            tracker.flush()
        except Exception as exc:
            _warn_once(exc)
