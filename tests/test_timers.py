"""One timer thread for every group timeout (engine-free)."""

from __future__ import annotations

import threading

from scalegroups.timers import Timers


def test_deadlines_run_in_deadline_order_on_one_thread():
    timers, fired, done = Timers(), [], threading.Event()
    for item, delay in enumerate([0.3, 0.1, 0.2]):
        timers.call_later(delay, lambda item=item: fired.append((item, threading.current_thread().name)))
    timers.call_later(0.4, done.set)
    assert done.wait(60)
    assert [item for item, _ in fired] == [1, 2, 0]
    assert {name for _, name in fired} == {"scalegroups-timers"}


def test_a_cancelled_deadline_never_runs():
    timers, fired, done = Timers(), [], threading.Event()
    timers.call_later(0.05, lambda: fired.append("cancelled one")).cancel()
    timers.call_later(0.1, done.set)
    assert done.wait(60) and fired == []
    assert timers.pending() == 0


def test_a_thousand_deadlines_one_thread():
    timers = Timers()
    before = threading.active_count()
    deadlines = [timers.call_later(3600, lambda: None) for _ in range(1000)]
    assert threading.active_count() - before == 1
    assert timers.pending() == 1000
    for deadline in deadlines:
        deadline.cancel()
    assert timers.pending() == 0


def test_a_failing_callback_does_not_stop_the_others():
    timers, done = Timers(), threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    timers.call_later(0.01, boom)
    timers.call_later(0.05, done.set)
    assert done.wait(60)
