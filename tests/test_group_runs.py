"""GroupRun, as_completed and fan-out outcomes without an engine or a server.

The futures are Prefect's own `PrefectConcurrentFuture`s around standard-library futures that the
test completes by hand with Prefect states, so each bookkeeping rule is checked in milliseconds
and in any order the test chooses.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future

import pytest
from prefect.futures import PrefectConcurrentFuture
from prefect.states import Completed, Failed

from scalegroups.errors import GroupTimeoutError, OrchestrationError
from scalegroups.fanout import CRASHED, FanOut, FanOutError
from scalegroups.groups import GroupRun, as_completed


def pending() -> tuple[PrefectConcurrentFuture, Future]:
    """A Prefect future whose outcome the test sets through the returned stdlib future."""
    inner: Future = Future()
    return PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=inner), inner


def succeed(inner: Future, value) -> None:
    inner.set_result(Completed(data=value))


def fail(inner: Future, exc: Exception) -> None:
    inner.set_result(Failed(data=exc))


def test_a_run_is_done_when_every_future_is_and_returns_final():
    (raw, raw_inner), (final, final_inner) = pending(), pending()
    run = GroupRun("g", 7, {"raw": raw, "final": final})
    assert not run.done() and run.unfinished() == [raw, final]
    succeed(final_inner, "the result")
    assert not run.done() and run.unfinished() == [raw]
    succeed(raw_inner, 1)
    assert run.wait(5) and run.result() == "the result" and run.key == 7 and not run.failed()


def test_the_tasks_own_exception_is_raised_and_marks_the_run_failed():
    (first, first_inner), (final, final_inner) = pending(), pending()
    run = GroupRun("g", 1, {"first": first, "final": final})
    fail(first_inner, ValueError("bad item 1"))
    succeed(final_inner, 2)
    with pytest.raises(ValueError, match="bad item 1"):
        run.result()
    assert run.failed() and isinstance(run.exception(), ValueError)


def test_result_shapes_single_list_mapping_without_final():
    (a, a_inner), (b, b_inner) = pending(), pending()
    succeed(a_inner, 1)
    succeed(b_inner, 2)
    assert GroupRun("g", 0, a).result() == 1
    assert GroupRun("g", 0, [a, b]).result() == [1, 2]
    assert GroupRun("g", 0, {"x": a, "y": b}).result() == {"x": 1, "y": 2}


def test_a_future_returned_twice_is_awaited_once():
    future, inner = pending()
    run = GroupRun("g", 0, [future, future])
    succeed(inner, 3)
    assert run.wait(5) and run.result() == [3, 3]


def test_returning_no_futures_is_a_clear_error():
    with pytest.raises(OrchestrationError, match="must return a Prefect future"):
        GroupRun("g", 0, 42)


def test_a_timed_out_run_cancels_only_its_unfinished_futures():
    (done, done_inner), (stuck, _) = pending(), pending()
    cancelled: list = []
    finished = threading.Event()
    run = GroupRun("g", 5, [done, stuck], timeout=0.05, canceller=lambda fs: cancelled.extend(fs))
    run.add_done_callback(lambda _: finished.set())
    succeed(done_inner, 1)
    assert finished.wait(30), "the timeout never fired"
    assert cancelled == [stuck]
    with pytest.raises(GroupTimeoutError, match="'g' \\(key 5\\) did not finish within 0.05 s"):
        run.result()


def test_as_completed_yields_in_completion_order_and_times_out_clearly():
    futures = [pending() for _ in range(3)]
    runs = [GroupRun("g", i, f) for i, (f, _) in enumerate(futures)]
    stream = as_completed(runs, timeout=30)
    succeed(futures[2][1], "c")
    assert next(stream).key == 2
    succeed(futures[0][1], "a")
    assert next(stream).key == 0
    with pytest.raises(TimeoutError, match="1 of 3 group runs unfinished"):
        list(as_completed(runs, timeout=0.05))


def batch(rows_or_exc) -> PrefectConcurrentFuture:
    future, inner = pending()
    if isinstance(rows_or_exc, Exception):
        fail(inner, rows_or_exc)
    else:
        succeed(inner, rows_or_exc)
    return future


def test_fan_out_reports_every_item_with_its_key():
    keys = ["a", "b", "c", "d"]
    ok = GroupRun("f", (0, 2), batch([(0, "completed", 10, None, ""), (1, "failed", None, ValueError("b!"), "tb")]))
    crashed = GroupRun("f", (2, 4), batch(RuntimeError("worker died")))
    fanned = FanOut("f", keys, [ok, crashed])
    outcomes = fanned.outcomes()
    assert [(o.key, o.status) for o in outcomes] == [
        ("a", "completed"),
        ("b", "failed"),
        ("c", CRASHED),
        ("d", CRASHED),
    ]
    assert fanned.summary() == {"completed": 1, "failed": 1, "crashed": 2}
    with pytest.raises(FanOutError) as info:
        fanned.results()
    assert [o.key for o in info.value.outcomes] == ["b", "c", "d"]
    assert "3 of 4 items of 'f' failed; first: item 'b'" in str(info.value)
