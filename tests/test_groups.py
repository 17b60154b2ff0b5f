"""The group API on every runner, against real engines (thread, process pool, Dask, Ray)."""

from __future__ import annotations

import os

import pytest
from helpers import (
    calls_group,
    double,
    doubled_plus,
    eventually,
    logs_a_line,
    recorded_task_run,
    submits_task,
    where,
)
from prefect import flow

import scalegroups
from scalegroups import OrchestrationError


def seed_group(item: int):
    """The seed's plain-function group: no scalegroups API at all."""
    return where.submit(item)


@flow
def seed_flow(items: list[int]) -> list[dict]:
    return [f.result() for f in [seed_group(i) for i in items]]


def test_seed_pattern_same_results_in_worker_processes(scalegroups_task_runner, scalegroups_runner):
    results = seed_flow.with_options(task_runner=scalegroups_task_runner)(list(range(6)))
    assert [r["item"] for r in results] == list(range(6))
    pids = {r["pid"] for r in results}
    if scalegroups_runner == "thread":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids, "tasks ran in the flow's process"


@scalegroups.flow
def stream_all(items: list[int]) -> dict:
    results, failures = {}, {}
    for run in scalegroups.as_completed(doubled_plus.map(items)):
        assert run.done()
        try:
            results[run.key] = run.result()
        except ValueError as exc:
            failures[run.key] = str(exc)
    return {"results": results, "failures": failures}


def test_map_and_as_completed_with_one_failing_item(scalegroups_runner):
    outcome = stream_all(list(range(8)))
    expected = {i: 2 * i + 2 * (i + 1) for i in range(8) if i != 3}
    assert outcome["results"] == expected
    assert outcome["failures"] == {3: "bad item 3"}


@scalegroups.flow
def group_shapes() -> dict:
    single = scalegroups.group(lambda x: double.submit(x), name="single")(5)
    mapping = scalegroups.group(lambda x: {"a": double.submit(x), "b": double.submit(x + 1)}, name="m")(1)
    listed = scalegroups.group(lambda x: [double.submit(x), double.submit(x)], name="l")(2)
    return {
        "single": single.result(),
        "mapping": mapping.result(),
        "list": listed.result(),
        "keys": [single.key, mapping.key, listed.key],
        "failed": [single.failed(), mapping.failed(), listed.failed()],
    }


@pytest.mark.scalegroups_runners("thread", "dask")
def test_result_shapes(scalegroups_runner):
    assert group_shapes() == {
        "single": 10,
        "mapping": {"a": 2, "b": 4},
        "list": [4, 4],
        "keys": [5, 1, 2],
        "failed": [False, False, False],
    }


@scalegroups.flow
def group_in_task() -> int:
    return calls_group.submit(1).result()


@scalegroups.flow
def task_in_task() -> int:
    return submits_task.submit(1).result()


def test_task_submitted_inside_a_task_runs_as_in_prefect(scalegroups_runner):
    """Prefect 3 lets a task submit tasks; the runner's copy in the worker starts on that submit."""
    assert task_in_task() == 2


def test_group_called_inside_a_task_runs(scalegroups_runner):
    assert group_in_task() == 2 * 1 + 2 * 2


def test_group_outside_a_flow_is_refused():
    with pytest.raises(OrchestrationError, match="outside a flow"):
        doubled_plus(1)


@scalegroups.flow
def tagged() -> str:
    run = doubled_plus(2)
    run.result()
    return str(run.futures[0].task_run_id)


def test_task_runs_carry_the_group_name(scalegroups_runner):
    task_run = recorded_task_run(tagged())
    assert task_run.name == "doubled_plus/double"
    assert task_run.state.is_completed()
    assert task_run.tags == [], "a tag would cost an API call per task run"


@scalegroups.group
def logged(item: int):
    return logs_a_line.submit(item)


@scalegroups.flow
def logging_groups(items: int) -> dict[str, int]:
    runs = [logged(i) for i in range(items)]
    return {str(run.futures[0].task_run_id): run.result() for run in runs}


def test_every_task_runs_log_lines_reach_the_api(scalegroups_runner):
    """A task's own log line and Prefect's "Finished" line, per task run, wherever it ran."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    items = 6
    runs = logging_groups(items)
    assert sorted(runs.values()) == list(range(items))
    expected = {task_run_id: f"scalegroups log check: item {item}" for task_run_id, item in runs.items()}

    def all_logged():
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=list(expected))))
        messages: dict[str, list[str]] = {}
        for log in logs:
            messages.setdefault(str(log.task_run_id), []).append(log.message)
        finished = {t for t, lines in messages.items() if any("Finished in state Completed" in m for m in lines)}
        complete = all(t in finished and line in messages[t] for t, line in expected.items())
        return messages if complete else None

    messages = eventually(all_logged, f"the log lines of {items} task runs in the API")
    for task_run_id in expected:
        assert sum(m == expected[task_run_id] for m in messages[task_run_id]) == 1, messages[task_run_id]


@scalegroups.flow
def broken_group_returns_value() -> None:
    scalegroups.group(lambda x: x, name="plain")(1)


def test_group_returning_no_futures_is_a_clear_error():
    with pytest.raises(OrchestrationError, match="must return a Prefect future"):
        broken_group_returns_value()
