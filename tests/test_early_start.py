"""A flow file's engine starts while its local API server starts, not after it (`start_early`).

Without it, a first run on Dask, Ray or a process pool waits for the server (Prefect creates the
flow run first), then for the engine's worker processes. Measured in `benchmarks/` (first result);
here: that the early-started engine is the one the flow run uses, and that a call refused before
any flow run exists leaves no engine process behind.
"""

from __future__ import annotations

import json

import pytest
from helpers import run_python, selected


@pytest.mark.parametrize("runner", ["process", "dask", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_flow_files_engine_starts_early_and_is_the_one_its_flow_run_uses(runner, request, tmp_path):
    selected(request, runner)
    out, _ = run_python(
        ["tests/early_start_flow.py", "run"], {"SCALEGROUPS_RUNNER": runner, "PREFECT_HOME": str(tmp_path / "home")}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {"early": "entered", "results": [0, 2, 4, 6]}


def test_with_a_running_server_the_engine_starts_inside_the_flow_run(request, tmp_path, scalegroups_prefect_api):
    selected(request, "dask")
    out, _ = run_python(
        ["tests/early_start_flow.py", "run"],
        {"SCALEGROUPS_RUNNER": "dask", "PREFECT_API_URL": scalegroups_prefect_api, "PREFECT_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {"early": None, "results": [0, 2, 4, 6]}


@pytest.mark.parametrize("runner", ["process", "dask"])
def test_a_call_refused_before_its_flow_run_leaves_no_engine_process(runner, request, tmp_path):
    selected(request, runner)
    out, _ = run_python(
        ["tests/early_start_flow.py", "bad-call"],
        {"SCALEGROUPS_RUNNER": runner, "PREFECT_HOME": str(tmp_path / "home")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused: " in out.stdout and "bogus" in out.stdout, out.stdout + out.stderr[-2000:]
    left = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("LEFT "))[5:])
    assert left == [], left
