"""Group timeouts stop the group's own running tasks for real, and nothing else.

Evidence, never clocks: a timed-out task on Dask is interrupted in its thread (its `finally` leaves
a `stopped-*` file, its worker process lives on); on Ray its worker process is ended (the pid the
task recorded disappears). Only then are the heartbeat files checked.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from helpers import eventually, heartbeat, hold_until, size_and_pid

import scalegroups
from scalegroups import make_task_runner
from scalegroups.errors import GroupTimeoutError


@scalegroups.group(timeout=8)  # long enough for a task to start on a busy machine; the test waits on evidence
def slow(item: int, folder: str):
    return heartbeat.submit(f"{folder}/beat-{item}", 600)


@scalegroups.flow
def run_slow(folder: str) -> dict:
    return {
        run.key: type(run.exception()).__name__ for run in scalegroups.as_completed(slow.map(range(2), folder=folder))
    }


def beats(folder) -> dict[str, dict]:
    """What each heartbeat file says: the task's pid, when it last beat, whether it stopped."""
    found = {}
    for path in folder.glob("beat-*"):
        pid, _, when = path.read_text().partition(" ")
        found[path.name] = {"pid": int(pid), "when": when, "stopped": (folder / f"stopped-{path.name}").exists()}
    return found


@pytest.mark.scalegroups_runners("dask", "ray")
def test_timeout_stops_running_tasks(scalegroups_runner, tmp_path):
    assert run_slow(str(tmp_path)) == {0: "GroupTimeoutError", 1: "GroupTimeoutError"}
    started = eventually(lambda: beats(tmp_path), "heartbeat files of the started tasks")
    if scalegroups_runner == "dask":
        # interrupted in their threads: each task's `finally` ran, and its worker process still lives
        stopped = eventually(lambda: all(b["stopped"] for b in beats(tmp_path).values()), "tasks interrupted")
        assert stopped and all(psutil.pid_exists(b["pid"]) for b in started.values()), "a worker was restarted"
    else:
        # ray.cancel(force=True) ends the worker process running the task
        eventually(lambda: not any(psutil.pid_exists(b["pid"]) for b in started.values()), "task processes ended")
    settled = beats(tmp_path)
    assert beats(tmp_path) == settled  # nothing beats once stopped (the loop ended / its process is gone)


def test_timeout_error_type():
    assert issubclass(GroupTimeoutError, TimeoutError)


@scalegroups.group
def patient(item: int, folder: str):
    return hold_until.submit(f"{folder}/release", f"{folder}/patient-started")


@scalegroups.group
def reader(_: int, data):
    return size_and_pid.submit(data)


def test_a_timed_out_group_leaves_other_groups_and_shared_data_alone(scalegroups_prefect_api, tmp_path):
    """Two groups on one Dask worker (two threads): one times out, the other and `share()`d data live on."""
    from distributed import LocalCluster
    from prefect import flow

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:

        @flow(task_runner=make_task_runner("dask", address=cluster.scheduler_address))
        def both(folder: str) -> dict:
            data = scalegroups.share(b"x" * 10_000)
            other = patient(0, folder)
            timed = slow(0, folder)
            error = type(timed.exception()).__name__  # waits for the timeout
            Path(folder, "release").write_text("go")  # only now may the other group finish
            return {"error": error, "other_pid": other.result(), "read": reader(0, data).result()}

        got = both(str(tmp_path))
    beat = beats(tmp_path)["beat-0"]
    assert got["error"] == "GroupTimeoutError"
    assert beat["stopped"], "the timed-out task was not stopped"
    assert got["other_pid"] == beat["pid"], "the other group ran elsewhere or its worker was restarted"
    assert got["read"] == (10_000, beat["pid"]), "shared data was lost"
