"""Unreachable cluster addresses fail within seconds, with the address named, and leak nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import closed_port, double, processes_with_marker, run_python
from prefect import flow

import scalegroups
from scalegroups import UnreachableClusterError, make_task_runner


@scalegroups.flow
def tiny() -> int:
    return double.submit(1).result()


@pytest.mark.parametrize("runner", ["dask", "ray"])
@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
def test_unreachable_address_fails_fast_naming_it(runner, host, monkeypatch):
    address = f"{host}:{closed_port()}"
    monkeypatch.setenv("SCALEGROUPS_RUNNER", runner)
    monkeypatch.setenv("SCALEGROUPS_ADDRESS", address)
    started = time.monotonic()
    with pytest.raises(UnreachableClusterError) as info:
        tiny()
    assert time.monotonic() - started < 60
    assert address in str(info.value) and "$SCALEGROUPS_ADDRESS" in str(info.value)


def test_unreachable_address_with_plain_prefect_flow(monkeypatch):
    """The seed pattern (plain @prefect.flow) gets the same error when the runner starts."""
    address = f"tcp://127.0.0.1:{closed_port()}"

    @flow(task_runner=make_task_runner("dask", address=address))
    def plain() -> int:
        return double.submit(1).result()

    started = time.monotonic()
    with pytest.raises(UnreachableClusterError, match=address):
        plain()
    assert time.monotonic() - started < 60


NICE_MESSAGE = "SCALEGROUPS_SERVER_NICE='high' is invalid: use a whole number from 0 to 19"


@pytest.mark.parametrize(
    "script, variable, value, message",
    [
        (
            "examples/seed.py",  # a Prefect flow given make_task_runner()
            "SCALEGROUPS_RUNNER",
            "spark",
            "unknown runner 'spark' (from $SCALEGROUPS_RUNNER); valid runners: thread, process, dask, ray",
        ),
        ("examples/seed.py", "SCALEGROUPS_SERVER_NICE", "high", NICE_MESSAGE),
        ("examples/primes.py", "SCALEGROUPS_SERVER_NICE", "high", NICE_MESSAGE),  # a @scalegroups.flow
    ],
)
def test_a_flow_file_with_a_bad_setting_shows_the_users_line_and_the_message(script, variable, value, message):
    out, _ = run_python([script], env={variable: value}, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == f"scalegroups.errors.ConfigurationError: {message}"
    frames = [line for line in lines if line.lstrip().startswith("File ")]
    package = str(Path(scalegroups.__file__).parent) + os.sep
    ours = [frame for frame in frames if package in frame]
    assert ours == frames[-1:] and script in frames[-2], out.stderr  # the user's call, then our raise


def test_cli_prints_one_line_and_leaks_nothing():
    port = closed_port()
    out, marker = run_python(
        ["-m", "scalegroups.cli", "run", "examples/seed.py:main", "--runner", "ray"],
        env={"SCALEGROUPS_ADDRESS": f"127.0.0.1:{port}"},
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("scalegroups: error: cannot reach the Ray")
    assert "Traceback" not in out.stderr
    assert processes_with_marker(marker) == []
