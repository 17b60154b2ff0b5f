"""No engine or server process outlives a failed flow, an interrupted flow, or a test session."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from helpers import REPO, eventually, gone_within, kill_marked, marked_env, run_python


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_failed_flow_leaves_nothing(runner, scalegroups_prefect_api):
    env = {"SCALEGROUPS_RUNNER": runner, "PREFECT_API_URL": scalegroups_prefect_api}
    out, marker = run_python(["tests/shutdown_flows.py", "boom"], env=env)
    assert out.returncode != 0 and "the flow failed on purpose" in out.stderr
    assert gone_within(marker, 15) == []


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["process", "dask", "ray"])
def test_keyboard_interrupt_leaves_nothing(runner, scalegroups_prefect_api, tmp_path):
    """Ctrl-C on a flow whose two tasks are running (their marker files say so) ends the flow
    process and everything it started."""
    env, marker = marked_env(
        SCALEGROUPS_RUNNER=runner,
        SCALEGROUPS_MAX_WORKERS="2",
        PREFECT_API_URL=scalegroups_prefect_api,
        SHUTDOWN_MARKERS=str(tmp_path),
    )
    log = tmp_path / "flow.log"
    with log.open("w") as output:  # a file, not a pipe nobody reads once the test waits
        child = subprocess.Popen(
            [sys.executable, "tests/shutdown_flows.py", "forever"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            # Ctrl-C as in a terminal: a test run started in the background (`make test &`)
            # passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:

        def both_tasks_run() -> bool:
            if child.poll() is not None:
                pytest.fail(f"the flow exited ({child.returncode}) early:\n{log.read_text()[-3000:]}")
            return len(list(tmp_path.glob("started-*"))) == 2

        eventually(both_tasks_run, "both tasks running", 180)
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=120)  # a guard against a hang
        except subprocess.TimeoutExpired:
            pytest.fail(f"the flow process did not end on SIGINT within 120 s:\n{log.read_text()[-3000:]}")
    finally:
        if child.poll() is None:
            child.kill()
        left = gone_within(marker, 30)
        kill_marked(marker)
    assert left == [], log.read_text()[-3000:]


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
