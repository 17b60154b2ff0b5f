"""Concurrency limits (server-enforced, strict) and resources, on real engines."""

from __future__ import annotations

import uuid

import pytest
from helpers import max_overlap, rendezvous, timed_sleep

import scalegroups
from scalegroups import ConfigurationError, OrchestrationError
from scalegroups import limits as limits_module


def limited_group(limit_name: str, slots: int):
    @scalegroups.group(name=f"limited-{limit_name}", limits={limit_name: slots})
    def sleeper(_: int, seconds: float):
        return timed_sleep.submit(seconds)

    return sleeper


def test_max_overlap_helper():
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1


def test_missing_limit_fails_strictly_and_clearly(scalegroups_prefect_api, monkeypatch):
    monkeypatch.delenv("SCALEGROUPS_SYNC_LIMITS", raising=False)
    name = f"missing-{uuid.uuid4().hex[:8]}"
    group = limited_group(name, 2)

    @scalegroups.flow
    def run() -> None:
        group.map(range(3), seconds=0)

    with pytest.raises(OrchestrationError, match=f"needs concurrency limit 'tag:{name}', which does not exist"):
        run()


def test_auto_sync_creates_declared_limits(scalegroups_prefect_api, monkeypatch):
    from prefect import get_client

    monkeypatch.setenv("SCALEGROUPS_SYNC_LIMITS", "1")
    name = f"auto-{uuid.uuid4().hex[:8]}"
    group = limited_group(name, 3)

    @scalegroups.flow
    def run() -> int:
        return len([r.result() for r in group.map(range(2), seconds=0)])

    assert run() == 2
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(f"tag:{name}").limit == 3


def test_conflicting_declarations_are_refused():
    limited_group("conflict-a", 2)
    with pytest.raises(ConfigurationError, match="conflicts with 2 declared elsewhere"):
        limited_group("conflict-a", 3)


def rendezvous_group(name: str, limits: dict[str, int] | None = None, resources: dict | None = None):
    @scalegroups.group(name=name, limits=limits or {}, resources=resources)
    def meet(item: int, folder: str, parties: int, wait: float):
        return rendezvous.submit(folder, item, parties, wait)

    return meet


def meet_all(group, folder, items: int, parties: int, wait: float) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)

    @scalegroups.flow
    def run() -> list[dict]:
        runs = group.map(range(items), folder=str(folder), parties=parties, wait=wait)
        return [r.result() for r in scalegroups.as_completed(runs)]

    return run()


@pytest.mark.scalegroups_runners("process", "dask", "ray")
def test_limit_holds_across_worker_processes(scalegroups_runner, tmp_path):
    """Two workers run two tasks at once; a limit of 1 across them lets only one run at a time.

    Evidence, not clocks: without the limit, tasks wait until they meet a second running task;
    with it, each waits 4 s for a second one that must never come.
    """
    free = meet_all(rendezvous_group(f"free-{scalegroups_runner}"), tmp_path / "free", 2, parties=2, wait=120)
    assert max(r["seen"] for r in free) == 2, "the runner never ran two tasks at once"
    assert len({r["pid"] for r in free}) == 2

    name = f"one-{scalegroups_runner}-{uuid.uuid4().hex[:6]}"
    limits_module.sync({name: 1})
    limited = meet_all(rendezvous_group(name, limits={name: 1}), tmp_path / "limited", 3, parties=2, wait=4)
    assert sorted(r["item"] for r in limited) == [0, 1, 2]
    assert max(r["seen"] for r in limited) == 1, f"limit 1 was exceeded: {limited}"


@pytest.mark.scalegroups_runners("ray")
def test_ray_places_by_cpu(scalegroups_runner, tmp_path):
    """cpu: 2 on a 2-CPU Ray: tasks run one at a time (each waits 3 s for a partner that never comes)."""
    results = meet_all(rendezvous_group("two-cpus", resources={"cpu": 2}), tmp_path, 2, parties=2, wait=3)
    assert max(r["seen"] for r in results) == 1


@pytest.mark.scalegroups_runners("dask")
def test_dask_refuses_resources_no_worker_has(scalegroups_runner, tmp_path):
    with pytest.raises(ConfigurationError, match=r"no Dask worker advertises resources \{'CPU': 2.0\}"):
        meet_all(rendezvous_group("two-cpus-dask", resources={"cpu": 2}), tmp_path, 1, parties=1, wait=1)


@pytest.mark.scalegroups_runners("dask", "ray")
def test_one_cpu_each_uses_both_workers(scalegroups_runner, tmp_path):
    results = meet_all(rendezvous_group(f"one-cpu-{scalegroups_runner}", resources={"cpu": 1}), tmp_path, 2, 2, 120)
    assert max(r["seen"] for r in results) == 2


def test_bad_resources_are_refused():
    with pytest.raises(ConfigurationError, match="invalid resources"):
        scalegroups.group(resources={"cpus": 2})(lambda x: x)


def test_rate_limit_is_honoured(scalegroups_prefect_api):
    """4 tasks per second, bursts of 4: 20 tasks cannot start faster than that."""
    name = f"rate-{uuid.uuid4().hex[:8]}"
    limits_module.declare_rates({name: 4}, "test")
    limits_module.sync_rates({name: 4})

    @scalegroups.group(name=f"rated-{name}", rate_limits={name: 4})
    def rated(_: int):
        return timed_sleep.submit(0)

    @scalegroups.flow
    def run() -> list:
        return [r.result() for r in rated.map(range(20))]

    starts = sorted(start for start, _, _ in run())
    # every window of 1 s holds at most burst (4) + refill (4) starts, with one of tolerance
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 9
    # and 20 starts at 4/s after a burst of 4 take at least (20 - 4) / 4 = 4 s (10% tolerance)
    assert starts[-1] - starts[0] >= 3.6


def test_rate_limit_without_decay_is_refused(scalegroups_prefect_api, monkeypatch):
    monkeypatch.delenv("SCALEGROUPS_SYNC_LIMITS", raising=False)
    name = f"nodecay-{uuid.uuid4().hex[:8]}"
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(f"rate:{name}", 2)

    @scalegroups.group(name=f"nodecay-{name}", rate_limits={name: 2})
    def rated(_: int):
        return timed_sleep.submit(0)

    @scalegroups.flow
    def run() -> None:
        rated(1)

    with pytest.raises(OrchestrationError, match="has no slot decay"):
        run()
