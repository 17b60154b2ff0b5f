"""Final states of many finished Dask futures fetched in one round trip (`scalegroups.batch_states`)."""

from __future__ import annotations

import pytest
from helpers import double, explode

import scalegroups
from scalegroups.batch_states import fetch_final_states
from scalegroups.prefect_compat import known_final_state

BATCHED = ("dask",)  # thread futures hold their states; Ray's are fetched one by one (as cheap)


@scalegroups.group
def one_double(item: int):
    return double.submit(item)


@scalegroups.group
def doubles_or_explodes(item: int):
    return [double.submit(item), explode.submit(item)] if item == 3 else [double.submit(item)]


@scalegroups.flow
def fetch_after_all_done(items: list[int]) -> dict:
    runs = one_double.map(items)
    for run in runs:
        assert run.wait(120), "a run did not finish"
    futures = [f for run in runs for f in run.futures]
    before = sum(known_final_state(f) is not None for f in futures)
    kept = fetch_final_states(futures)
    states = [known_final_state(f) for f in futures]
    return {
        "before": before,
        "kept": kept,
        "completed": sum(s is not None and s.is_completed() for s in states),
        "again": fetch_final_states(futures),
        "results": [run.result() for run in runs],
    }


@pytest.mark.scalegroups_runners("thread", "dask", "ray")
def test_finished_futures_get_their_states_in_one_fetch(scalegroups_runner):
    got = fetch_after_all_done(list(range(6)))
    assert got["results"] == [2 * i for i in range(6)]
    if scalegroups_runner in BATCHED:
        assert got["before"] == 0, "nothing had read a state yet"
        assert got["kept"] == 6 and got["completed"] == 6
        assert got["again"] == 0, "states already held are not fetched again"
    else:
        assert got["kept"] == 0


@scalegroups.flow
def stream_after_all_done(items: list[int]) -> dict:
    runs = doubles_or_explodes.map(items)
    for run in runs:
        assert run.wait(120), "a run did not finish"
    stream = scalegroups.as_completed(runs)
    first = next(stream)
    held_after_first = sum(known_final_state(f) is not None for run in runs for f in run.futures)
    results, failures = {}, {}
    for run in [first, *stream]:
        try:
            results[run.key] = run.result()
        except ValueError as exc:
            failures[run.key] = str(exc)
    return {"held_after_first": held_after_first, "results": results, "failures": failures}


@pytest.mark.scalegroups_runners("dask")
def test_as_completed_fetches_the_states_of_every_finished_run_at_once(scalegroups_runner):
    got = stream_after_all_done(list(range(6)))
    assert got["held_after_first"] == 7, "all 7 task states should be fetched before the first run is read"
    assert got["results"] == {i: [2 * i] for i in range(6) if i != 3}
    assert got["failures"] == {3: "bad item 3"}
