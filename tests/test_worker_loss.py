"""A worker process killed mid-map loses nothing: every item completes or ends failed with its key."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import nap_and_note

import scalegroups

ITEMS = 50
FINISHED_BEFORE_KILL = 5


@scalegroups.group
def nap(item: int, folder: str):
    return nap_and_note.submit(folder, item, 0.2)


def kill_a_busy_worker(folder: Path, stop: threading.Event, killed: list[int]) -> None:
    """Once some items have finished (their files say so), kill a process busy with an item."""
    deadline = time.monotonic() + 300  # a guard: the evidence below normally comes within seconds
    while not stop.is_set() and time.monotonic() < deadline:
        if len(list(folder.glob("done-*"))) >= FINISHED_BEFORE_KILL:
            for busy in folder.glob("busy-*"):
                try:
                    os.kill(int(busy.name.removeprefix("busy-")), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    continue
                killed.append(int(busy.name.removeprefix("busy-")))
                return
        time.sleep(0.02)


@scalegroups.flow
def nap_all(folder: str) -> dict:
    outcomes = {}
    for run in scalegroups.as_completed(nap.map(range(ITEMS), folder=folder)):
        error = run.exception()
        outcomes[run.key] = "completed" if error is None else type(error).__name__
    return outcomes


@pytest.mark.scalegroups_runners("process", "dask", "ray")
def test_killed_worker_loses_no_item(scalegroups_runner, tmp_path):
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_busy_worker, args=(tmp_path, stop, killed))
    killer.start()
    try:
        outcomes = nap_all(str(tmp_path))
    finally:
        stop.set()
        killer.join()
    assert killed, "no busy worker process was found to kill"
    assert killed[0] != os.getpid()
    assert sorted(outcomes) == list(range(ITEMS)), "items went missing"
    completed = sum(v == "completed" for v in outcomes.values())
    if scalegroups_runner in ("dask", "ray"):
        # the engine reschedules the lost worker's tasks: everything completes
        assert completed == ITEMS, outcomes
    else:
        # a process pool cannot survive a dead child: the items it broke end failed, with their keys.
        # Which ones is a race (an item that had finished may still have had its result in flight),
        # so the check is that the pool broke and that every item reported completed really ran.
        assert completed < ITEMS, outcomes
        ran = {int(p.name.removeprefix("done-")) for p in tmp_path.glob("done-*")}
        assert {key for key, v in outcomes.items() if v == "completed"} <= ran, outcomes
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
