"""Live progress: Prefect artifacts of maps and fan-outs, read back through the API; plain lines off a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import doubled_plus, eventually, hold_until, run_python, square_or_fail
from prefect import get_client, task
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.context import FlowRunContext

import scalegroups
from scalegroups.artifacts import artifact_key


def artifacts(flow_run_id, key: str | None = None) -> list:
    """The artifacts of a flow run (with `key`, if given), oldest first."""
    wanted = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    if key is not None:
        wanted.key = ArtifactFilterKey(any_=[key])
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=wanted)
    return sorted(found, key=lambda artifact: artifact.created)


def table(artifact) -> list[dict]:
    return json.loads(artifact.data)


@scalegroups.flow
def mapped(n: int, progress: bool | None = None) -> str:
    runs = doubled_plus.map(range(n), progress=progress)
    list(scalegroups.as_completed(runs))
    return str(FlowRunContext.get().flow_run.id)


@pytest.mark.scalegroups_runners("thread", "dask")
def test_a_map_reaches_100_and_its_table_names_the_failed_item(scalegroups_runner):
    flow_run_id = mapped(6)
    # published by the time the flow returns (the runner's exit flushes): no waiting
    [progress] = artifacts(flow_run_id, "scalegroups-doubled-plus-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert progress.description == "doubled_plus: 6/6 done: 5 completed, 1 failed"
    [summary] = artifacts(flow_run_id, "scalegroups-doubled-plus-summary")
    rows = table(summary)
    counts = {row["status"]: row["count"] for row in rows if not row["key"]}
    assert counts == {"completed": "5", "failed": "1", "crashed": "0", "cancelled": "0", "timed_out": "0"}
    problems = [row for row in rows if row["key"]]
    assert [(row["key"], row["status"]) for row in problems] == [("3", "failed")]
    assert "bad item 3" in problems[0]["error"]
    assert summary.description == "doubled_plus: 6 items: 5 completed, 1 failed"


@scalegroups.flow
def mapped_and_read(n: int) -> str:
    for run in scalegroups.as_completed(doubled_plus.map(range(n))):
        run.exception()  # the user reads every run as it finishes
    return str(FlowRunContext.get().flow_run.id)


@pytest.mark.scalegroups_runners("dask")
def test_progress_fetches_no_dask_state_twice(scalegroups_runner, monkeypatch):
    """A Dask state is gathered from a worker on every `wait()`: progress must count items without
    fetching what the user fetches anyway (it cost 1.3x the CPU per task run before)."""
    import distributed

    fetched: list[str] = []
    gather = distributed.Future.result

    def counted(self, *args, **kwargs):
        fetched.append(self.key)
        return gather(self, *args, **kwargs)

    monkeypatch.setattr(distributed.Future, "result", counted)
    flow_run_id = mapped_and_read(8)
    duplicates = sorted({key for key in fetched if fetched.count(key) > 1})
    assert fetched and not duplicates, f"fetched more than once: {duplicates}"
    [progress] = artifacts(flow_run_id, "scalegroups-doubled-plus-progress")
    assert progress.description == "doubled_plus: 8/8 done: 7 completed, 1 failed"


def test_progress_can_be_turned_off_per_map_and_by_variable(scalegroups_prefect_api, monkeypatch):
    assert artifacts(mapped(2, progress=False)) == []
    monkeypatch.setenv("SCALEGROUPS_PROGRESS", "0")
    assert artifacts(mapped(2)) == []
    monkeypatch.delenv("SCALEGROUPS_PROGRESS")
    assert len(artifacts(mapped(2))) == 2  # the same flow with progress on: progress and summary


@task
def quick(item: int) -> int:
    return item


@scalegroups.group
def held(item: int, folder: str = ""):
    if item < 2:
        return quick.submit(item)
    return hold_until.submit(f"{folder}/release", f"{folder}/started-{item}")


@scalegroups.flow
def half_then_rest(folder: str) -> dict:
    flow_run_id = FlowRunContext.get().flow_run.id
    runs = held.map(range(4), folder=folder)
    key = "scalegroups-held-progress"
    try:
        # while two items still run, the UI already shows half of them done
        seen = eventually(lambda: [a for a in artifacts(flow_run_id, key) if float(a.data) == 50.0], "50% progress")
    finally:
        Path(folder, "release").write_text("")
    list(scalegroups.as_completed(runs))
    return {"while_running": seen[0].description, "flow_run_id": flow_run_id}


@pytest.mark.scalegroups_runners("thread")
def test_progress_is_updated_while_items_run(scalegroups_runner, tmp_path):
    got = half_then_rest(str(tmp_path))
    assert got["while_running"] == "held: 2/4 done: 2 completed"
    [progress] = artifacts(got["flow_run_id"], "scalegroups-held-progress")  # one artifact, updated
    assert float(progress.data) == 100.0 and progress.description == "held: 4/4 done: 4 completed"


@scalegroups.flow
def fanned(n: int) -> str:
    scalegroups.fan_out(square_or_fail, range(n), batch_size=8, key=lambda i: f"k{i}").outcomes()
    return str(FlowRunContext.get().flow_run.id)


@pytest.mark.scalegroups_runners("thread", "dask")
def test_fan_out_progress_counts_items_not_batches(scalegroups_runner):
    flow_run_id = fanned(50)
    [progress] = artifacts(flow_run_id, "scalegroups-square-or-fail-progress")
    assert float(progress.data) == 100.0
    assert progress.description == "square_or_fail: 50/50 done: 43 completed, 7 failed"
    [summary] = artifacts(flow_run_id, "scalegroups-square-or-fail-summary")
    problems = [row for row in table(summary) if row["key"]]
    # in the order batches finished
    assert sorted(row["key"] for row in problems) == sorted(repr(f"k{i}") for i in (7, 14, 21, 28, 35, 42, 49))
    assert {row["status"] for row in problems} == {"failed"}
    # the batches' own group map publishes nothing: one progress artifact per fan_out
    assert len([a for a in artifacts(flow_run_id) if a.key != "scalegroups-dashboard"]) == 2


@scalegroups.flow
def on_dask_with_dashboard() -> str:
    list(scalegroups.as_completed(doubled_plus.map(range(2))))
    return str(FlowRunContext.get().flow_run.id)


def test_the_dask_dashboard_is_linked(scalegroups_prefect_api):
    from scalegroups import make_task_runner

    flow = on_dask_with_dashboard.with_options(task_runner=make_task_runner("dask", max_workers=1))
    [link] = artifacts(flow(), "scalegroups-dashboard")
    assert link.type == "markdown" and link.data.startswith("[http://") and "/status)" in link.data


def test_artifact_keys_are_valid_prefect_keys():
    assert artifact_key("scalegroups", "Primes_In Chunk!", "progress") == "scalegroups-primes-in-chunk-progress"
    assert artifact_key("scalegroups", "score-item/score-item") == "scalegroups-score-item-score-item"


def test_off_a_terminal_scalegroups_run_prints_plain_progress_lines():
    out, _ = run_python(
        ["-m", "scalegroups.cli", "run", "examples/streaming.py:stream", "--runner", "thread", "--param", "items=5"],
        env={"SCALEGROUPS_PROGRESS_LINES_S": "0.2"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("scalegroups: ") and " done" in line]
    assert lines, out.stderr[-3000:]
    assert lines[-1].startswith("scalegroups: ") and "/5 done" in lines[-1] and "running" in lines[-1]
    assert "groups: 5/5 finished, 1 failed" in out.stderr
