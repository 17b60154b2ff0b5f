"""The examples, each run as a user runs them (a fresh process, no PREFECT_API_URL), on every runner.

Each run must print the right answer and leave no process behind: every process that carried the
run's marker environment variable (workers, schedulers, raylets, API servers) must be gone.
"""

from __future__ import annotations

import pytest
from helpers import processes_with_marker, run_python

RUNNERS = ["thread", "process", "dask", "ray"]


def primes_below(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, limit, n)))
    return sum(sieve)


@pytest.mark.slow
@pytest.mark.parametrize("runner", RUNNERS)
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
    assert processes_with_marker(marker) == []
