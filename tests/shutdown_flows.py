"""Flows run in child processes by test_shutdown.py (fresh processes, no PREFECT_API_URL)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from prefect import task

import scalegroups


@task
def sleep_for(seconds: float) -> float:
    """Sleep; first leave `started-<pid>` in `$SHUTDOWN_MARKERS` (if set): evidence it runs."""
    folder = os.environ.get("SHUTDOWN_MARKERS")
    if folder:
        Path(folder, f"started-{os.getpid()}-{threading.get_ident()}").write_text("")
    time.sleep(seconds)
    return seconds


@scalegroups.flow
def boom() -> None:
    [f.result() for f in [sleep_for.submit(0.1) for _ in range(4)]]
    raise RuntimeError("the flow failed on purpose")


@scalegroups.flow
def forever() -> None:
    futures = [sleep_for.submit(600) for _ in range(2)]
    print("READY", flush=True)
    [f.result() for f in futures]


if __name__ == "__main__":
    {"boom": boom, "forever": forever}[sys.argv[1]]()
