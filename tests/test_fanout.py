"""fan_out (many items per task run) and share (one copy of large data), on every runner."""

from __future__ import annotations

import pytest
from helpers import double, size_and_pid, square_or_fail

import scalegroups
from scalegroups import FanOutError
from scalegroups.caching import hashes_for_nothing, prepared


@scalegroups.flow
def fan(n: int, batch_size: int | None = None) -> dict:
    fanned = scalegroups.fan_out(square_or_fail, range(n), batch_size=batch_size, key=lambda i: f"k{i}", offset=1)
    outcomes = fanned.outcomes()
    try:
        fanned.results()
        error = None
    except FanOutError as exc:
        error = exc
    return {
        "batches": len(fanned.batches),
        "outcomes": [(o.index, o.key, o.status, o.value, repr(o.error) if o.error else None) for o in outcomes],
        "summary": fanned.summary(),
        "failed_keys": [o.key for o in error.outcomes] if error else [],
    }


def test_fan_out_results_keys_and_item_failures(scalegroups_runner):
    got = fan(50, batch_size=8)
    assert got["batches"] == 7
    assert [o[0] for o in got["outcomes"]] == list(range(50))
    for index, key, status, value, error in got["outcomes"]:
        assert key == f"k{index}"
        if index and index % 7 == 0:
            assert (status, value) == ("failed", None)
            assert error == f"ValueError('item {index} is a multiple of 7')"
        else:
            assert (status, value, error) == ("completed", index * index + 1, None)
    assert got["summary"] == {"completed": 43, "failed": 7, "crashed": 0}
    assert got["failed_keys"] == [f"k{i}" for i in (7, 14, 21, 28, 35, 42, 49)]


@pytest.mark.scalegroups_runners("thread", "dask")
def test_fan_out_automatic_batch_size(scalegroups_runner):
    got = fan(100)
    # 2 workers (Dask) or 2 CPUs (threads) x 4 batches each
    assert got["batches"] == 8
    assert got["summary"]["completed"] + got["summary"]["failed"] == 100


@scalegroups.flow
def unshippable() -> dict:
    import threading

    fanned = scalegroups.fan_out(lambda item, lock: item, range(4), batch_size=2, lock=threading.Lock())
    return fanned.summary()


@pytest.mark.scalegroups_runners("process", "dask", "ray")
def test_unpicklable_arguments_mark_items_crashed(scalegroups_runner):
    assert unshippable() == {"completed": 0, "failed": 0, "crashed": 4}


@scalegroups.flow
def broadcast(megabytes: int) -> list:
    data = scalegroups.share(b"x" * (megabytes * 2**20))
    return [size_and_pid.submit(data).result() for _ in range(4)]


def test_share_hands_large_data_to_every_consumer(scalegroups_runner):
    import os

    results = broadcast(8)
    assert [size for size, _ in results] == [8 * 2**20] * 4
    if scalegroups_runner != "thread":
        assert os.getpid() not in {pid for _, pid in results}


def test_default_cache_policy_is_dropped_only_when_nothing_is_cached():
    from prefect import task
    from prefect.cache_policies import INPUTS, NO_CACHE

    assert hashes_for_nothing(double)
    assert prepared(double).cache_policy is NO_CACHE
    assert prepared(double) is prepared(double)
    chosen = task(cache_policy=INPUTS, persist_result=True)(lambda x: x)
    persisted = task(persist_result=True)(lambda x: x)
    for kept in (chosen, persisted):
        assert not hashes_for_nothing(kept)
        assert prepared(kept) is kept
