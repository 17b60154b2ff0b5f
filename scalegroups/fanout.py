"""Engine-speed fan-out: many small items per Prefect task run, results and failures per item.

A Prefect task run costs ~10 ms on threads and ~150 ms in worker processes (API calls, state
changes, context); a fine-grained item may cost far less. `fan_out` runs items in batches, one
tracked Prefect task run per batch, on whatever runner the flow uses, and reports every item:
its value, or its own exception with its key. A batch that crashes as a whole (its worker died,
its arguments could not be shipped) marks each of its items crashed, never missing.
"""

from __future__ import annotations

import math
import pickle
import traceback
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from scalegroups.checkpoints import CHECKPOINT_POLICY, FunctionSource, checkpointing
from scalegroups.errors import OrchestrationError, ScalegroupsError
from scalegroups.groups import Group, GroupRun, as_completed

BATCHES_PER_WORKER = 4

COMPLETED, FAILED, CRASHED = "completed", "failed", "crashed"


@dataclass
class ItemOutcome:
    """What happened to one item: its value, or the exception it raised (or its batch raised)."""

    index: int
    key: Any
    status: str
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        """True if the item completed."""
        return self.status == COMPLETED


class FanOutError(ScalegroupsError):
    """Some items failed; `.outcomes` holds every failed item with its key and exception."""

    def __init__(self, name: str, failed: list[ItemOutcome], total: int):
        self.outcomes = failed
        first = failed[0]
        super().__init__(
            f"{len(failed)} of {total} items of {name!r} failed; first: item {first.key!r} "
            f"({first.status}): {first.error!r}"
        )


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@task(cache_policy=NO_CACHE, persist_result=False)
def run_batch(fn: Callable[..., Any], items: list[Any], first_index: int, kwargs: dict) -> list:
    """Call `fn(item, **kwargs)` for each item; one item's exception does not stop the others."""
    outcomes = []
    for offset, item in enumerate(items):
        try:
            outcomes.append((first_index + offset, COMPLETED, fn(item, **kwargs), None, ""))
        except Exception as exc:
            outcomes.append((first_index + offset, FAILED, None, _portable(exc), traceback.format_exc()))
    return outcomes


def auto_batch_size(n_items: int) -> int:
    """About `BATCHES_PER_WORKER` batches per worker of the flow's runner (load balance vs overhead)."""
    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    parallelism = runner.parallelism() if hasattr(runner, "parallelism") else 1
    return max(1, math.ceil(n_items / (parallelism * BATCHES_PER_WORKER)))


class FanOut:
    """The batches of one `fan_out` call, with per-item results as batches finish."""

    def __init__(self, name: str, keys: list[Any], batches: list[GroupRun]):
        self.name = name
        self.keys = keys
        self.batches = batches

    def _outcomes(self, batch: GroupRun) -> list[ItemOutcome]:
        start, stop = batch.key
        try:
            rows = batch.result()
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            return [ItemOutcome(i, self.keys[i], CRASHED, error=exc, traceback=tb) for i in range(start, stop)]
        return [ItemOutcome(i, self.keys[i], status, value, error, tb) for i, status, value, error, tb in rows]

    def item_rows(self, batch: GroupRun) -> list[tuple[str, Any, str]]:
        """(status, key, error) of each item of a finished batch, for progress counts."""
        return [(o.status, o.key, repr(o.error) if o.error else "") for o in self._outcomes(batch)]

    def as_completed(self, timeout: float | None = None) -> Iterator[ItemOutcome]:
        """Yield every item's outcome, a batch at a time, as batches finish."""
        for batch in as_completed(self.batches, timeout=timeout):
            yield from self._outcomes(batch)

    def outcomes(self) -> list[ItemOutcome]:
        """Every item's outcome, in item order (waits for all batches)."""
        return sorted(self.as_completed(), key=lambda outcome: outcome.index)

    def results(self) -> list[Any]:
        """Every item's value in item order; raises `FanOutError` listing failed items, if any."""
        outcomes = self.outcomes()
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise FanOutError(self.name, failed, len(outcomes))
        return [o.value for o in outcomes]

    def summary(self) -> dict[str, int]:
        """Counts of completed, failed and crashed items (waits for all batches)."""
        counts = {COMPLETED: 0, FAILED: 0, CRASHED: 0}
        for outcome in self.outcomes():
            counts[outcome.status] += 1
        return counts


def fan_out(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    batch_size: int | None = None,
    key: Callable[[Any], Hashable] | None = None,
    name: str | None = None,
    progress: bool | None = None,
    checkpoint: bool | None = None,
    **kwargs: Any,
) -> FanOut:
    """Run `fn(item, **kwargs)` for every item, `batch_size` items per Prefect task run.

    `fn` is a plain function (a Prefect task's function is used directly). The default batch size
    gives each worker about four batches. Call inside a flow; works on every runner.
    `progress=False`: no progress artifacts (counted in items) in the Prefect UI.
    `checkpoint=True` (or `SCALEGROUPS_CHECKPOINT=1`) persists each batch's outcomes, keyed on its
    items, `kwargs` and `fn`'s source: a run called again reruns only unfinished batches (give
    `batch_size` so that the batches are the same on every runner size).
    """
    if FlowRunContext.get() is None:
        raise OrchestrationError("fan_out submits tasks: call it from the body of a flow")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    function = getattr(fn, "fn", fn)
    label = name or getattr(function, "__name__", "items")
    item_list = list(items)
    keys = [key(item) if key else item for item in item_list]
    size = batch_size or auto_batch_size(len(item_list))
    batch_task = run_batch.with_options(name=f"{label}-batch")
    checkpointed = checkpointing(checkpoint, getattr(FlowRunContext.get(), "task_runner", None)) is not None
    if checkpointed:
        batch_task = batch_task.with_options(persist_result=True, cache_policy=CHECKPOINT_POLICY + FunctionSource())

    def submit_batch(bounds: tuple[int, int]) -> Any:
        start, stop = bounds
        return batch_task.with_options(task_run_name=f"{label}[{start}:{stop}]").submit(
            function, item_list[start:stop], start, kwargs
        )

    batch_group = Group(submit_batch, name=label, checkpoint=checkpointed)
    bounds = [(start, min(start + size, len(item_list))) for start in range(0, len(item_list), size)]
    fanned = FanOut(label, keys, batch_group.map(bounds, progress=False))
    from scalegroups.artifacts import track

    track(label, fanned.batches, fanned.item_rows, total=len(item_list), progress=progress)
    return fanned
