"""Flows run in child processes by test_checkpoints.py and test_orphans.py (killed on purpose).

`python tests/crash_flows.py items N`: a checkpointed group over N items; each task execution
leaves `done-<item>-<pid>` in `$CRASH_MARKERS` (set per run: inputs stay the same across runs).
`python tests/crash_flows.py hold`: two tasks that run until killed, each leaving `started-<pid>-<n>`,
and the flow's API URL in `$CRASH_MARKERS/api`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from prefect import task

import scalegroups


@task
def slow_square(item: int) -> int:
    """Sleep a little (so a kill lands mid-run), leave the execution marker, return item squared."""
    time.sleep(float(os.environ.get("CRASH_TASK_SECONDS", "0.3")))
    Path(os.environ["CRASH_MARKERS"], f"done-{item}-{os.getpid()}").write_text("")
    return item * item


@scalegroups.group(checkpoint=True)
def squared(item: int):
    return slow_square.submit(item)


@scalegroups.flow
def items(n: int) -> dict[int, int]:
    return {run.key: run.result() for run in scalegroups.as_completed(squared.map(range(n)))}


@task
def hold(seconds: float) -> int:
    """Leave `started-<pid>-<seconds>` in `$CRASH_MARKERS`, then sleep (the test kills the flow meanwhile)."""
    Path(os.environ["CRASH_MARKERS"], f"started-{os.getpid()}-{seconds}").write_text("")
    time.sleep(seconds)
    return os.getpid()


@scalegroups.flow
def holding() -> None:
    from scalegroups.server import configured_api_url

    futures = [hold.submit(600 + i) for i in range(2)]
    Path(os.environ["CRASH_MARKERS"], "api").write_text(configured_api_url() or "")
    [f.result() for f in futures]


if __name__ == "__main__":
    if sys.argv[1] == "items":
        print("RESULT", json.dumps(items(int(sys.argv[2]))), flush=True)
    else:
        holding()


# ----------------------------------------------------------- in-process flows of test_checkpoints.py


@task
def noted_square(folder: str, salt: str, item: int) -> int:
    """Leave a file per execution (`ran-<item>-<unique>`) in `folder`; return item squared."""
    Path(folder, f"ran-{item}-{uuid.uuid4().hex}").write_text(str(os.getpid()))
    return item * item


@scalegroups.group(checkpoint=True)
def noted(item: int, folder: str, salt: str):
    return noted_square.submit(folder, salt, item)


@scalegroups.group
def unmarked(item: int, folder: str, salt: str):
    return noted_square.submit(folder, salt, item)


@scalegroups.flow
def noted_items(n: int, folder: str, salt: str, checkpoint: bool = True) -> dict[int, int]:
    chosen = noted if checkpoint else unmarked
    return {run.key: run.result() for run in scalegroups.as_completed(chosen.map(range(n), folder=folder, salt=salt))}


def noted_plain(item: int, folder: str, salt: str) -> int:
    """Plain function for fan_out: one file per execution, like `noted_square`."""
    Path(folder, f"ran-{item}-{uuid.uuid4().hex}").write_text(str(os.getpid()))
    return item * item


@scalegroups.flow
def fanned_items(n: int, folder: str, salt: str) -> list[int]:
    return scalegroups.fan_out(noted_plain, range(n), batch_size=2, checkpoint=True, folder=folder, salt=salt).results()


def executions(folder: Path) -> list[int]:
    """Items executed so far (one entry per execution), from the files the tasks leave."""
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("ran-*"))
