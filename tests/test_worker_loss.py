"""A worker process killed mid-map loses nothing: every item completes or ends failed with its key."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import nap_and_note

import scalegroups

ITEMS = 50
FINISHED_BEFORE_KILL = 5


@scalegroups.group
def nap(item: int, folder: str):
    return nap_and_note.submit(folder, item, 0.2)


def spawned_children() -> set[int]:
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(proc.cmdline()):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def ray_task_workers() -> set[int]:
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::") and "nap_and_note" in cmd:
            found.add(proc.pid)
    return found


def candidates(runner: str, engines, before: set[int]) -> set[int]:
    """PIDs of the engine's worker processes that this test may kill."""
    if runner == "ray":
        return ray_task_workers()
    if runner == "dask":
        from distributed import Client

        with Client(engines.dask_address, timeout=10) as client:
            return set(client.run(os.getpid).values())
    return spawned_children() - before  # the flow's own process pool


def kill_one_worker_when_busy(find, folder: Path, stop: threading.Event, killed: list[int]) -> None:
    """Once some items have finished (their files say so) and workers are known, kill one worker."""
    deadline = time.monotonic() + 300  # a guard: the evidence below normally comes within seconds
    while not stop.is_set() and time.monotonic() < deadline:
        if len(list(folder.glob("done-*"))) >= FINISHED_BEFORE_KILL and (pids := find()):
            for pid in sorted(pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
                return
        time.sleep(0.05)


@scalegroups.flow
def nap_all(folder: str) -> dict:
    outcomes = {}
    for run in scalegroups.as_completed(nap.map(range(ITEMS), folder=folder)):
        error = run.exception()
        outcomes[run.key] = "completed" if error is None else type(error).__name__
    return outcomes


@pytest.mark.scalegroups_runners("process", "dask", "ray")
def test_killed_worker_loses_no_item(scalegroups_runner, scalegroups_engines, tmp_path):
    stop, killed = threading.Event(), []
    before = spawned_children()

    def find() -> set[int]:
        return candidates(scalegroups_runner, scalegroups_engines, before)

    killer = threading.Thread(target=kill_one_worker_when_busy, args=(find, tmp_path, stop, killed))
    killer.start()
    try:
        outcomes = nap_all(str(tmp_path))
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
        assert FINISHED_BEFORE_KILL <= completed < ITEMS, outcomes
        assert set(outcomes.values()) - {"completed"} <= {"BrokenProcessPool", "CrashedRun", "RuntimeError"}, outcomes


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
