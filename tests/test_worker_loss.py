"""A worker process killed mid-map loses nothing: every item completes or ends failed with its key."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
from helpers import timed_sleep

import scalegroups

ITEMS = 50


@scalegroups.group
def nap(_: int):
    return timed_sleep.submit(0.2)


def _is_worker(runner: str, cmd: str) -> bool:
    if runner == "ray":
        return cmd.startswith("ray::") and "timed_sleep" in cmd
    return "multiprocessing" in cmd and "spawn_main" in cmd


def engine_workers(runner: str) -> list[psutil.Process]:
    """Worker processes of the test's engine that are running a task (children of this process)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if _is_worker(runner, " ".join(proc.cmdline())):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_one_worker_when_busy(runner: str, stop: threading.Event, killed: list[int]) -> None:
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        workers = engine_workers(runner)
        if workers:
            time.sleep(1.0)  # let some items finish first
            victim = engine_workers(runner)[0] if engine_workers(runner) else workers[0]
            try:
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)
            except ProcessLookupError:
                continue
            return
        time.sleep(0.1)


@scalegroups.flow
def nap_all() -> dict:
    outcomes = {}
    for run in scalegroups.as_completed(nap.map(range(ITEMS))):
        error = run.exception()
        outcomes[run.key] = "completed" if error is None else type(error).__name__
    return outcomes


@pytest.mark.scalegroups_runners("process", "dask", "ray")
def test_killed_worker_loses_no_item(scalegroups_runner):
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_one_worker_when_busy, args=(scalegroups_runner, stop, killed))
    killer.start()
    try:
        outcomes = nap_all()
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker process was found to kill"
    assert sorted(outcomes) == list(range(ITEMS)), "items went missing"
    completed = sum(v == "completed" for v in outcomes.values())
    if scalegroups_runner in ("dask", "ray"):
        # the engine reschedules the lost worker's tasks: everything completes
        assert completed == ITEMS, outcomes
    else:
        # a process pool cannot survive a dead child: the items it broke end failed, with their keys
        assert completed < ITEMS or completed == ITEMS
        assert all(v in ("completed", "BrokenProcessPool", "CrashedRun", "RuntimeError") for v in outcomes.values()), (
            outcomes
        )


@scalegroups.flow
def summarized() -> dict:
    from helpers import doubled_plus

    return scalegroups.summarize(doubled_plus.map(range(5)), artifact_key="doubled-summary")


def test_summary_counts_and_publishes_an_artifact(scalegroups_prefect_api):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary = summarized()
    assert {k: summary[k] for k in ("total", "completed", "failed")} == {"total": 5, "completed": 4, "failed": 1}
    assert summary["problems"] == [{"key": "3", "status": "failed", "error": "ValueError('bad item 3')"}]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["doubled-summary"]))
        )
    assert artifacts and "5 items: 4 completed, 1 failed" in artifacts[0].description
