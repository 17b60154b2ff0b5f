"""No engine or server process outlives a failed flow, an interrupted flow, or a test session."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from helpers import REPO, eventually, gone_within, kill_marked, marked_env, processes_with_marker, run_python


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_failed_flow_leaves_nothing(runner, scalegroups_prefect_api):
    env = {"SCALEGROUPS_RUNNER": runner, "PREFECT_API_URL": scalegroups_prefect_api}
    out, marker = run_python(["tests/shutdown_flows.py", "boom"], env=env)
    assert out.returncode != 0 and "the flow failed on purpose" in out.stderr
    assert gone_within(marker, 15) == []


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["process", "dask", "ray"])
def test_keyboard_interrupt_leaves_nothing(runner, scalegroups_prefect_api):
    env, marker = marked_env(
        SCALEGROUPS_RUNNER=runner, SCALEGROUPS_MAX_WORKERS="2", PREFECT_API_URL=scalegroups_prefect_api
    )
    child = subprocess.Popen(
        [sys.executable, "tests/shutdown_flows.py", "forever"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in child.stdout:
            if "READY" in line:
                break
        eventually(lambda: len(processes_with_marker(marker)) > 1, "the flow's worker processes")
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        left = gone_within(marker, 20)
        kill_marked(marker)
    assert left == []


@pytest.mark.slow
def test_plugin_session_leaves_nothing(tmp_path):
    test_file = tmp_path / "test_user.py"
    test_file.write_text(
        "from prefect import flow, task\n"
        "@task\ndef one():\n    return 1\n"
        "@flow\ndef f():\n    return one.submit().result()\n"
        "def test_it(scalegroups_task_runner):\n    assert f.with_options(task_runner=scalegroups_task_runner)() == 1\n"
    )
    out, marker = run_python(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file), "--scalegroups-runners=dask,ray"]
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 passed" in out.stdout
    assert gone_within(marker, 15) == []
