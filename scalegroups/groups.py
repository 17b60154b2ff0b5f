"""`@group`, `GroupRun`, `Group.map` and `as_completed`: reusable task groups, engine-agnostic.

A group is a plain function that submits Prefect tasks and returns their futures: one future, a
sequence of futures, or a mapping of names to futures (`"final"` marks the group's result). Groups
know nothing about engines; they only see Prefect futures.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, ParamSpec

from prefect import tags
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

from scalegroups import limits as limits_module
from scalegroups.batch_states import fetch_final_states
from scalegroups.context import current_checkpoint, current_group, current_rates
from scalegroups.errors import GroupTimeoutError, OrchestrationError
from scalegroups.prefect_compat import final_state_if_local, known_final_state
from scalegroups.resources import Resources, parse_resources
from scalegroups.timers import Deadline, timers

P = ParamSpec("P")
FINAL = "final"
GroupObserver = Callable[[str, "GroupRun"], None]
_observers: list[GroupObserver] = []


def add_observer(observer: GroupObserver) -> None:
    """Call `observer(event, run)` for every group run: events "submitted" and "finished"."""
    _observers.append(observer)


def remove_observer(observer: GroupObserver) -> None:
    """Stop calling an observer added with `add_observer`."""
    if observer in _observers:
        _observers.remove(observer)


def _notify(event: str, run: GroupRun) -> None:
    for observer in list(_observers):
        observer(event, run)


def final_state(future: PrefectFuture[Any], timeout: float | None = None) -> Any:
    """The future's state after waiting up to `timeout`, fetched from the engine at most once."""
    state = known_final_state(future)
    if state is None:  # not yet fetched: wait() keeps it (a Dask wait() gathers it from a worker)
        future.wait(timeout)
        state = future.state
    return state


def _is_failure(future: PrefectFuture[Any]) -> bool:
    return _is_failed_state(final_state(future))


def _is_failed_state(state: Any) -> bool:
    return bool(state.is_failed() or state.is_crashed() or state.is_cancelled())


class GroupRun:
    """The futures one call of a group returned, with a result and a done signal for the whole."""

    def __init__(
        self,
        group: str,
        key: Any,
        returned: Any = None,
        error: BaseException | None = None,
        *,
        timeout: float | None = None,
        canceller: Callable[[list[PrefectFuture[Any]]], None] | None = None,
    ):
        self.group = group
        self.key = key
        self.returned = returned
        self._error = error
        self._futures = [] if error is not None else _collect_futures(group, returned)
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one state fetch per future, whoever asks first
        self._callbacks: list[Callable[[GroupRun], None]] = []
        self._finished: set[int] = set()
        self.finished_at: float | None = None
        self._canceller = canceller
        self._deadline: Deadline | None = None
        _notify("submitted", self)
        if not self._futures:
            self._mark_done()
        self._distinct = {id(f): f for f in self._futures}  # a future returned twice is awaited once
        for future in self._distinct.values():
            future.add_done_callback(self._future_done)
        if timeout is not None and not self.done():
            self._deadline = timers.call_later(timeout, lambda: self._time_out(timeout))

    def __repr__(self) -> str:
        status = "done" if self.done() else "running"
        return f"GroupRun(group={self.group!r}, key={self.key!r}, {status})"

    @property
    def futures(self) -> list[PrefectFuture[Any]]:
        """Every future the group returned, in the order returned."""
        return list(self._futures)

    def _future_done(self, future: PrefectFuture[Any]) -> None:
        with self._lock:
            self._finished.add(id(future))
            last = len(self._finished) == len(self._distinct) and not self._done.is_set()
        if last:
            self._mark_done()

    def unfinished(self) -> list[PrefectFuture[Any]]:
        """The futures of this run that have not finished yet."""
        with self._lock:
            return [f for key, f in self._distinct.items() if key not in self._finished]

    def _time_out(self, timeout: float) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._error = GroupTimeoutError(
                f"group {self.group!r} (key {self.key!r}) did not finish within {timeout} s; its unfinished "
                "tasks were cancelled"
            )
        if self._canceller is not None:
            try:
                self._canceller(self.unfinished())
            except Exception as exc:  # report, but never lose the timeout itself
                self._error.add_note(f"cancelling its tasks failed: {exc!r}")
        self._mark_done()

    def _mark_done(self) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()
        self.finished_at = time.monotonic()
        if self._deadline is not None:
            self._deadline.cancel()
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        _notify("finished", self)

    def add_done_callback(self, callback: Callable[[GroupRun], None]) -> None:
        """Call `callback(run)` once every future of the run is done (now, if it already is)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def done(self) -> bool:
        """True once every future of the run has finished (successfully or not)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run is done or `timeout` seconds pass; return `done()`."""
        return self._done.wait(timeout)

    def failed(self) -> bool:
        """True if the run is done and a task failed, crashed or was cancelled."""
        if not self.done():
            return False
        return self._error is not None or any(self._is_failure(f) for f in self._futures)

    def _is_failure(self, future: PrefectFuture[Any]) -> bool:
        # progress (on its own thread) and the user may read the same state at once: fetch it once
        with self._reading:
            return _is_failure(future)

    def failed_if_known(self) -> bool | None:
        """`failed()` of a done run if it can be told without an engine round trip, else None.

        For progress counts: a Dask or Ray task's state is known here once something waited on it
        (the user's `result()`, usually); reading it earlier would fetch it from the engine twice.
        """
        if not self.done():
            return None
        if self._error is not None:
            return True
        states = [final_state_if_local(future) for future in self._distinct.values()]
        if any(state is None for state in states):
            return None
        return any(_is_failed_state(state) for state in states)

    def exception(self) -> BaseException | None:
        """The exception `result()` would raise, or None (waits for the run)."""
        try:
            self.result()
        except Exception as exc:
            return exc
        return None

    def result(self, timeout: float | None = None) -> Any:
        """The `"final"` (or only) future's result, else a dict/list of all results.

        Waits for the whole run; a failed task's original exception is raised.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"group {self.group!r} (key {self.key!r}) not done after {timeout} s")
        if self._error is not None:
            raise self._error
        fetch_final_states(self._distinct.values())  # one engine round trip for all, not one each
        for future in self._futures:
            if self._is_failure(future):
                future.result()  # raises the task's original exception
        returned = self.returned
        if isinstance(returned, PrefectFuture):
            return returned.result()
        if isinstance(returned, Mapping):
            if FINAL in returned:
                return returned[FINAL].result()
            return {name: future.result() for name, future in returned.items()}
        return [future.result() for future in returned]


def _collect_futures(group: str, returned: Any) -> list[PrefectFuture[Any]]:
    if isinstance(returned, PrefectFuture):
        return [returned]
    if isinstance(returned, Mapping):
        values = list(returned.values())
    elif isinstance(returned, Sequence) and not isinstance(returned, str | bytes):
        values = list(returned)
    else:
        values = [returned]
    bad = [v for v in values if not isinstance(v, PrefectFuture)]
    if bad or not values:
        got = type(bad[0]).__name__ if bad else "nothing"
        raise OrchestrationError(
            f"group {group!r} must return a Prefect future, a list of futures or a mapping of "
            f"names to futures (from task.submit()); it returned {got}. Submit the tasks with "
            ".submit() and return their futures."
        )
    return values


class Group(Generic[P]):
    """A reusable task group; call it inside a flow to get a `GroupRun`."""

    def __init__(
        self,
        fn: Callable[P, Any],
        name: str | None = None,
        tags: Iterable[str] = (),
        *,
        limits: Mapping[str, int] | None = None,
        resources: Mapping[str, Any] | Resources | None = None,
        timeout: float | None = None,
        rate_limits: Mapping[str, float] | None = None,
        checkpoint: bool | None = None,
    ):
        functools.update_wrapper(self, fn)
        self.checkpoint = checkpoint
        if timeout is not None and timeout <= 0:
            raise ValueError(f"group timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.fn = fn
        self.name = name or fn.__name__
        self.limits = limits_module.declare(limits or {}, self.name)
        self.rate_limits = limits_module.declare_rates(rate_limits or {}, self.name)
        self.resources = parse_resources(resources)
        self.tags = (*tags, *self.limits)

    def __repr__(self) -> str:
        return f"Group({self.name!r})"

    def _check_context(self) -> None:
        if FlowRunContext.get() is None:
            raise OrchestrationError(
                f"group {self.name!r} was called outside a flow: groups submit tasks, so call "
                "them from the body of a @flow (or @scalegroups.flow)."
            )

    def _engine_context(self) -> AbstractContextManager[None]:
        runner = getattr(FlowRunContext.get(), "task_runner", None)
        if self.resources is None or not hasattr(runner, "resource_context"):
            return nullcontext()
        return runner.resource_context(self.resources)

    def _run(self, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> GroupRun:
        runner = getattr(FlowRunContext.get(), "task_runner", None)
        token = current_group.set(self.name)
        rates_token = current_rates.set(tuple(self.rate_limits))
        checkpoint_token = current_checkpoint.set(self.checkpoint)
        try:
            with tags(*self.tags), self._engine_context():
                returned = self.fn(*args, **kwargs)
        finally:
            current_checkpoint.reset(checkpoint_token)
            current_rates.reset(rates_token)
            current_group.reset(token)
        return GroupRun(
            self.name, key, returned, timeout=self.timeout, canceller=getattr(runner, "cancel_futures", None)
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> GroupRun:
        """Run the group function once; its first argument (if any) becomes `run.key`."""
        self._check_context()
        limits_module.require(self.limits, self.name, self.rate_limits)
        return self._run(args[0] if args else None, args, kwargs)

    def map(
        self,
        items: Iterable[Any],
        *,
        key: Callable[[Any], Hashable] | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> list[GroupRun]:
        """Call the group once per item (item as first argument); every run is submitted at once.

        Extra keyword arguments are passed unchanged to every call. A call that raises before
        submitting anything still yields a run, done and failed with that exception.
        `progress=False`: no progress artifacts in the Prefect UI for this map (`scalegroups.artifacts`).
        """
        self._check_context()
        limits_module.require(self.limits, self.name, self.rate_limits)
        runs = []
        for item in items:
            run_key = key(item) if key else item
            try:
                runs.append(self._run(run_key, (item,), kwargs))
            except OrchestrationError:
                raise
            except Exception as exc:
                runs.append(GroupRun(self.name, run_key, error=exc))
        from scalegroups.artifacts import track
        from scalegroups.summary import group_rows, group_rows_if_known

        track(self.name, runs, group_rows, progress=progress, peek=group_rows_if_known)
        return runs


def group(
    fn: Callable[P, Any] | None = None,
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    limits: Mapping[str, int] | None = None,
    resources: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    rate_limits: Mapping[str, float] | None = None,
    checkpoint: bool | None = None,
) -> Any:
    """Decorator: turn a function that submits tasks and returns their futures into a `Group`.

    `limits={"db": 4}`: at most 4 tasks of every group sharing limit "db" run at once, on any runner
    (a Prefect global concurrency limit, checked strictly). `resources={"cpu": 2, "memory": "2GiB"}`:
    what each task needs, mapped to Ray remote options or Dask worker resources. `timeout=30`: a run
    not done after 30 s is failed with `GroupTimeoutError` and its unfinished tasks are cancelled
    (Ray ends their worker processes; Dask cancels pending ones and restarts workers running one).
    `rate_limits={"api": 5}`: at most 5 of the group's tasks start per second, across all flows.
    `checkpoint=True`: each task's result is persisted, keyed on task source and inputs, so calling
    the flow again after a crash reruns only what had not finished (`scalegroups.checkpoints`);
    None follows `SCALEGROUPS_CHECKPOINT`, False never checkpoints.
    """

    def make(f: Callable[P, Any]) -> Group[P]:
        return Group(
            f,
            name=name,
            tags=tags,
            limits=limits,
            resources=resources,
            timeout=timeout,
            rate_limits=rate_limits,
            checkpoint=checkpoint,
        )

    return make if fn is None else make(fn)


def as_completed(runs: Iterable[GroupRun], timeout: float | None = None) -> Iterator[GroupRun]:
    """Yield each run as soon as all its futures are done; failed runs are yielded too.

    The runs that have finished by the time the next one is needed are yielded in the order they
    finished, their tasks' states fetched together (on Dask one round trip for all of them instead
    of one per task, see `scalegroups.batch_states`).
    """
    pending = list(runs)
    finished: queue.SimpleQueue[GroupRun] = queue.SimpleQueue()
    for run in pending:
        run.add_done_callback(finished.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    ready: collections.deque[GroupRun] = collections.deque()
    for _ in range(len(pending)):
        if not ready:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready.append(finished.get(timeout=remaining))
            except queue.Empty:
                left = sum(not run.done() for run in pending)
                raise TimeoutError(f"{left} of {len(pending)} group runs unfinished after {timeout} s") from None
            _take_finished(finished, ready)
        yield ready.popleft()


def _take_finished(finished: queue.SimpleQueue[GroupRun], ready: collections.deque[GroupRun]) -> None:
    """Move every run already finished into `ready` and fetch their tasks' states in one go."""
    while True:
        try:
            ready.append(finished.get_nowait())
        except queue.Empty:
            break
    fetch_final_states(future for run in ready for future in run._distinct.values())
