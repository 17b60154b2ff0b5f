"""Group timeouts stop the group's remaining work for real on Dask and Ray."""

from __future__ import annotations

import time

import pytest
from helpers import heartbeat

import scalegroups
from scalegroups.errors import GroupTimeoutError


@scalegroups.group(timeout=3)
def slow(item: int, folder: str):
    return [heartbeat.submit(f"{folder}/beat-{item}-{i}", 60) for i in range(2)]


@scalegroups.flow
def run_slow(folder: str) -> dict:
    started = time.monotonic()
    outcomes = {}
    for run in scalegroups.as_completed(slow.map(range(2), folder=folder)):
        outcomes[run.key] = type(run.exception()).__name__
    return {"outcomes": outcomes, "elapsed": time.monotonic() - started}


@pytest.mark.scalegroups_runners("dask", "ray")
def test_timeout_stops_running_tasks(scalegroups_runner, tmp_path):
    got = run_slow(str(tmp_path))
    assert got["outcomes"] == {0: "GroupTimeoutError", 1: "GroupTimeoutError"}
    assert got["elapsed"] < 30
    beats = list(tmp_path.glob("beat-*"))
    assert beats, "no task ever started"
    time.sleep(3)  # a task still running would touch its file within 0.2 s
    before = {p: p.stat().st_mtime for p in beats}
    time.sleep(2)
    assert {p: p.stat().st_mtime for p in tmp_path.glob("beat-*")} == before, "tasks kept running"


def test_timeout_error_type():
    assert issubclass(GroupTimeoutError, TimeoutError)
