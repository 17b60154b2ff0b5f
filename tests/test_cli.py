"""The `scalegroups` command, run as a user would (a fresh process each time)."""

from __future__ import annotations

import json

import pytest
from helpers import processes_with_marker, run_python


def test_info_json_reports_the_resolved_runner():
    out, _ = run_python(["-m", "scalegroups.cli", "info", "--json"], env={"SCALEGROUPS_RUNNER": "dask"})
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["runner"] == "dask" and info["sources"]["runner"] == "$SCALEGROUPS_RUNNER"
    assert info["profile"] == "local" and info["versions"]["prefect"].startswith("3.")


def test_info_names_each_address_and_where_it_came_from():
    env = {"DASK_SCHEDULER_ADDRESS": "tcp://10.1.2.3:8786", "PREFECT_TASKS_RUNNER_PROCESS_POOL_MAX_WORKERS": "3"}
    out, _ = run_python(["-m", "scalegroups.cli", "info"], env=env)
    assert out.returncode == 0, out.stderr
    assert "  dask     tcp://10.1.2.3:8786  (from $DASK_SCHEDULER_ADDRESS)" in out.stdout
    assert "  ray      (starts a local cluster)  (from default)" in out.stdout
    assert "  process  max_workers 3  (from $PREFECT_TASKS_RUNNER_PROCESS_POOL_MAX_WORKERS)" in out.stdout
    assert "prefect:   a lean in-process server" in out.stdout
    # $SCALEGROUPS_ADDRESS outranks the engine's own variable, for the same function the factory calls
    out, _ = run_python(
        ["-m", "scalegroups.cli", "info", "--json"], env={**env, "SCALEGROUPS_ADDRESS": "tcp://10.9.9.9:8786"}
    )
    info = json.loads(out.stdout)
    assert info["addresses"]["dask"] == {"address": "tcp://10.9.9.9:8786", "source": "$SCALEGROUPS_ADDRESS"}
    assert info["pools"]["thread"] == {"max_workers": None, "source": "Prefect's default"}


def test_profiles_lists_and_validates(tmp_path):
    out, _ = run_python(["-m", "scalegroups.cli", "profiles"])
    assert out.returncode == 0
    assert {line.split()[1] for line in out.stdout.splitlines()} >= {"local", "k8s", "cloud"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("ray: [unclosed\n")
    out, _ = run_python(["-m", "scalegroups.cli", "profiles", str(bad)])
    assert out.returncode == 1 and "INVALID" in out.stdout and "line 2" in out.stdout


@pytest.mark.parametrize("command", [["info"], ["run", "examples/seed.py:main"]])
def test_unknown_runner_is_one_line_naming_the_option(command):
    out, _ = run_python(["-m", "scalegroups.cli", *command, "--runner", "spark"])
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "scalegroups: error: unknown runner 'spark' (from --runner); valid runners: thread, process, dask, ray"
    )


def test_run_streams_groups_with_params_and_summary():
    out, marker = run_python(
        [
            "-m",
            "scalegroups.cli",
            "run",
            "examples/streaming.py:stream",
            "--runner",
            "thread",
            "--param",
            "items=5",
            "--json",
        ],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(result["results"]) == ["0", "1", "2", "4"]
    assert list(result["failures"]) == ["3"]
    assert "groups: 5/5 finished, 1 failed" in out.stderr
    assert processes_with_marker(marker) == []


def test_run_names_a_missing_flow():
    out, _ = run_python(["-m", "scalegroups.cli", "run", "examples/seed.py:nope"])
    assert out.returncode == 2
    assert "has no flow named 'nope'; flows in it: main" in out.stderr


def test_the_leak_scan_sees_a_live_marked_process():
    """The process-table check used above can fail: it finds a marked process while it lives."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SCALEGROUPS_TEST_MARKER": "probe-marker"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert [p.pid for p in processes_with_marker("probe-marker")] == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert processes_with_marker("probe-marker") == []


def test_bench_reports_each_runner_and_the_fastest(scalegroups_prefect_api):
    out, marker = run_python(
        [
            "-m",
            "scalegroups.cli",
            "bench",
            "examples/primes.py:count_primes",
            "--runners",
            "thread,dask",
            "--param",
            "chunks=2",
            "--param",
            "chunk_size=5000",
        ],
        env={"SCALEGROUPS_MAX_WORKERS": "2", "PREFECT_API_URL": scalegroups_prefect_api},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert {"thread", "dask"} <= set(rows)
    assert out.stdout.strip().splitlines()[-1].startswith("fastest: ")
    assert processes_with_marker(marker) == []
