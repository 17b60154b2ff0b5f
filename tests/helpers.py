"""Tasks, groups and process-table helpers shared by the tests (importable by worker processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
from prefect import get_run_logger, task

import scalegroups

REPO = Path(__file__).resolve().parents[1]


@task
def where(item: int) -> dict:
    return {"item": item, "pid": os.getpid()}


@task
def double(value: int) -> int:
    return value * 2


@task
def explode(item: int) -> int:
    raise ValueError(f"bad item {item}")


@task
def add(a: int, b: int) -> int:
    return a + b


@scalegroups.group
def doubled_plus(item: int):
    """Two tasks wired by data and `wait_for`; fails for item 3."""
    first = double.submit(item) if item != 3 else explode.submit(item)
    second = double.submit(item + 1, wait_for=[first])
    return {"first": first, "final": add.submit(first, second)}


@task
def logs_a_line(item: int) -> int:
    get_run_logger().info("scalegroups log check: item %d", item)
    return item


@task
def calls_group(item: int) -> int:
    return doubled_plus(item).result()


@task
def submits_task(item: int) -> int:
    return double.submit(item).result()


def selected(request, runner: str) -> None:
    """Skip unless `runner` is among `--scalegroups-runners` (for tests that start their own engines)."""
    import pytest

    names = [n.strip() for n in request.config.getoption("--scalegroups-runners").split(",")]
    if runner not in names:
        pytest.skip(f"{runner} not in --scalegroups-runners")


def eventually(probe, what: str, timeout: float = 60.0, interval: float = 0.2):
    """Call `probe()` until it returns something truthy (its result) or `timeout` passes (then fail).

    For evidence that arrives asynchronously (the API records task runs from events, in batches);
    the timeout is a guard, never the expectation.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # not there yet (e.g. ObjectNotFound)
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"no evidence of {what} after {timeout:.0f} s (last error: {last_error!r})")
        time.sleep(interval)


def recorded_task_run(task_run_id, final: bool = True):
    """The task run as the API has recorded it (waiting until it has, in a final state if `final`)."""
    from prefect import get_client

    def probe():
        with get_client(sync_client=True) as client:
            task_run = client.read_task_run(task_run_id)
        return task_run if (not final or (task_run.state and task_run.state.is_final())) else None

    return eventually(probe, f"task run {task_run_id} recorded by the API")


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries SCALEGROUPS_TEST_MARKER=marker."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("SCALEGROUPS_TEST_MARKER") == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def kill_marked(marker: str) -> None:
    """Kill every process carrying the marker (cleanup after a failed test, so it leaks nothing)."""
    for proc in processes_with_marker(marker):
        try:
            proc.kill()
        except psutil.Error:
            continue


def marked_env(**extra: str) -> tuple[dict[str, str], str]:
    """A child environment like a new user's (no SCALEGROUPS_*, no PREFECT_API_*, Prefect's usage report
    not switched off), tagged with a fresh marker."""
    marker = uuid.uuid4().hex
    unlike_a_user = ("SCALEGROUPS_", "PREFECT_API", "PREFECT_SERVER_ANALYTICS_ENABLED")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unlike_a_user)}
    env.update(extra)
    env.update(SCALEGROUPS_TEST_MARKER=marker, PYTHONPATH=str(REPO))
    return env, marker


def gone_within(marker: str, seconds: float) -> list[psutil.Process]:
    """Wait up to `seconds` for every marked process to end; return those still alive."""
    deadline = time.monotonic() + seconds
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def run_python(args: list[str], env: dict[str, str] | None = None, timeout: float = 300):
    """Run `python ARGS` (or the CLI) in a fresh process tagged with a marker; return (proc, marker).

    The child gets no PREFECT_API_URL, like a new user's first run.
    """
    child_env, marker = marked_env(**(env or {}))
    try:
        completed = subprocess.run(
            [sys.executable, *args],
            env=child_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        kill_marked(marker)  # what the killed child started must not outlive the test
        raise
    return completed, marker


def square_or_fail(item: int, offset: int = 0) -> int:
    """Plain function for fan_out: fails for multiples of 7 (not 0)."""
    if item and item % 7 == 0:
        raise ValueError(f"item {item} is a multiple of 7")
    return item * item + offset


@task
def size_and_pid(data: bytes) -> tuple[int, int]:
    return len(data), os.getpid()


@task
def timed_sleep(seconds: float) -> tuple[float, float, int]:
    """Sleep; return wall-clock start, end and the worker's pid."""
    import time

    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.getpid()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@task
def heartbeat(path: str, seconds: float) -> str:
    """Write "<pid> <time>" to `path` every 0.2 s for `seconds`; when the loop ends for any reason
    but the process dying, leave `stopped-<name>` beside it (evidence that the task was stopped)."""
    import time
    from pathlib import Path

    beat = Path(path)
    fresh = beat.with_name(f".{beat.name}.tmp")  # written, then renamed: a kill never leaves it empty
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            fresh.write_text(f"{os.getpid()} {time.time()}")
            os.replace(fresh, beat)
            time.sleep(0.2)
    finally:
        (beat.parent / f"stopped-{beat.name}").write_text("stopped")
    return path


@task
def rendezvous(folder: str, item: int, parties: int, wait: float = 60.0) -> dict:
    """Run until `parties` tasks have arrived (or `wait` seconds pass), watching who runs meanwhile.

    A running task keeps `running-<item>` in `folder`; an arrived one leaves `arrived-<item>` for
    good. `seen` is the most tasks this one saw running at once: one task seeing two is evidence
    that two ran together, whatever the machine's speed.
    """
    import time
    from pathlib import Path

    here = Path(folder)
    mine = here / f"running-{item}"
    mine.write_text(str(os.getpid()))
    (here / f"arrived-{item}").write_text("")
    seen, deadline = 1, time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            seen = max(seen, len(list(here.glob("running-*"))))
            if seen >= parties or len(list(here.glob("arrived-*"))) >= parties:
                break
            time.sleep(0.02)
    finally:
        mine.unlink()
    return {"item": item, "pid": os.getpid(), "seen": seen}


@task
def hold_until(release: str, started: str) -> int:
    """Leave `started`, then run until the file `release` exists; return this worker's pid."""
    import time
    from pathlib import Path

    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + 300  # a guard: the test releases it
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()


@task
def nap_and_note(folder: str, item: int, seconds: float) -> int:
    """Sleep, keeping `busy-<pid>` in `folder` meanwhile; then leave `done-<item>` (evidence that
    the item finished) ."""
    import time
    from pathlib import Path

    busy = Path(folder, f"busy-{os.getpid()}")
    busy.write_text(str(item))
    try:
        time.sleep(seconds)
    finally:
        busy.unlink(missing_ok=True)
    Path(folder, f"done-{item}").write_text(str(os.getpid()))
    return item
