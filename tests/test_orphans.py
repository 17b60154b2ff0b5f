"""Nothing a flow started outlives it when it is SIGKILLed (issue 13.2): no clean-up code runs then,
so each engine process must notice by itself (`scalegroups.watchdog`, Dask's and Ray's own)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from helpers import REPO, eventually, kill_marked, marked_env, processes_with_marker

GUARD_S = 30.0  # a guard against a hang; how long it takes is printed, not asserted (a speed)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# thread: no engine process; its one check, the flow's own API server going, is made on every runner here
@pytest.mark.resilience
@pytest.mark.parametrize("runner", ["process", "dask", "ray"])
def test_sigkilled_flow_leaves_no_process_and_no_server(runner, request, tmp_path):
    names = [n.strip() for n in request.config.getoption("--scalegroups-runners").split(",")]
    if runner not in names:
        pytest.skip(f"{runner} not in --scalegroups-runners")
    # A Prefect home of its own: the flow starts its own lean API server, which must go too.
    env, marker = marked_env(
        SCALEGROUPS_RUNNER=runner,
        SCALEGROUPS_MAX_WORKERS="2",
        CRASH_MARKERS=str(tmp_path),
        PREFECT_HOME=str(tmp_path / "home"),
    )
    child = subprocess.Popen(
        [sys.executable, "tests/crash_flows.py", "hold"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        eventually(lambda: len(list(tmp_path.glob("started-*"))) == 2 or child.poll() is not None, "both tasks", 180)
        assert child.poll() is None, "the flow ended before it was killed"
        url = (tmp_path / "api").read_text()
        assert answers(url), "the flow's API server does not answer"
        started = [p for p in processes_with_marker(marker) if p.pid != child.pid]
        assert started, "no engine process found"
        child.send_signal(signal.SIGKILL)  # the flow process only: what it started must notice
        child.wait(timeout=30)
        killed = time.monotonic()
        while (left := [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and (
            time.monotonic() - killed < GUARD_S
        ):
            time.sleep(0.1)
        took = time.monotonic() - killed
        print(f"{runner}: {len(started)} engine processes gone {took:.1f} s after the flow was killed")
        assert left == [], f"still running {GUARD_S} s after the kill: {[p.cmdline()[:3] for p in left]}"
        assert processes_with_marker(marker) == [], "a process started after the scan outlived the flow"
        assert not answers(url), "the API server outlived its flow"
    finally:
        if child.poll() is None:
            child.kill()
        kill_marked(marker)
