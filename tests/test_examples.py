"""The examples, each run as a user runs them (a fresh process, no PREFECT_API_URL), on every runner.

Each run must print the right answer and leave no process behind: every process that carried the
run's marker environment variable (workers, schedulers, raylets, API servers) must be gone.
"""

from __future__ import annotations

import pytest
from helpers import processes_with_marker, run_python


def primes_below(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, limit, n)))
    return sum(sieve)


def error_lines(stderr: str, tracebacks: bool = True) -> list[str]:
    """Log lines at ERROR or above, and (with `tracebacks`) tracebacks: a run that succeeded shows none."""
    marks = ("| ERROR", "| CRITICAL", *(("Traceback",) if tracebacks else ()))
    return [line for line in stderr.splitlines() if any(mark in line for mark in marks)]


@pytest.mark.slow
# dask: the demo tests below run it; ray: the seed example below runs on a private Ray as a user does
@pytest.mark.parametrize("runner", ["thread", "process"])
def test_primes_example_on_each_runner(runner, scalegroups_prefect_api):
    out, marker = run_python(
        [
            "-m",
            "scalegroups.cli",
            "run",
            "examples/primes.py:count_primes",
            "--param",
            "chunks=4",
            "--param",
            "chunk_size=20000",
        ],
        # the session's API: this checks the example and its leftovers; the seed test below runs cold
        env={"SCALEGROUPS_RUNNER": runner, "SCALEGROUPS_MAX_WORKERS": "2", "PREFECT_API_URL": scalegroups_prefect_api},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(primes_below(80_000))
    assert processes_with_marker(marker) == [], "processes outlived the flow"


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["process", "dask", "ray"])
def test_seed_example_runs_in_worker_processes_with_one_api_server(runner):
    out, marker = run_python(["examples/seed.py"], env={"SCALEGROUPS_RUNNER": runner})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'value': 41, 'note': 'audited 4'" in out.stdout
    # one API for the flow and all its workers: the flow's own; no worker starts a server of its own
    assert "Starting temporary server" not in out.stderr, out.stderr[-3000:]
    # e.g. no usage report failing to leave an offline machine (the output's end shows the traceback)
    assert error_lines(out.stderr) == [], out.stderr[-4000:]
    assert processes_with_marker(marker) == []


@pytest.mark.slow
@pytest.mark.parametrize("engine_logs", ["0", "1"])
def test_the_demo_is_quiet_and_reports_its_speedup(engine_logs, scalegroups_prefect_api):
    out, marker = run_python(
        ["examples/primes.py"],
        env={
            "SCALEGROUPS_RUNNER": "dask",
            "SCALEGROUPS_MAX_WORKERS": "2",
            "DEMO_CHUNK_SIZE": "20000",
            "SCALEGROUPS_ENGINE_LOGS": engine_logs,
            "PREFECT_API_URL": scalegroups_prefect_api,
        },
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"scalegroups demo: {primes_below(160_000)} primes below 160000" in out.stdout
    assert "serially ~" in out.stdout and "(timed on 2 of 8 chunks) -> " in out.stdout
    assert "Task run 'primes_in_chunk/count_primes_in' - Finished in state Completed()" in out.stderr
    engine_info = [line for line in out.stderr.splitlines() if "| INFO    | distributed." in line]
    if engine_logs == "1":
        assert any("distributed.scheduler" in line for line in engine_info), out.stderr[-3000:]
    else:
        assert engine_info == [], engine_info[:5]  # neither the flow process's nor the workers'
    # e.g. no worker's heartbeat lost to the cluster's close; Dask's INFO logs, when asked for, may
    # carry a traceback of their own (a comm closed at shutdown), as Dask prints them
    assert error_lines(out.stderr, tracebacks=engine_logs == "0") == []
    assert processes_with_marker(marker) == []
