"""deploy_map against a real Prefect server and a real `flow.serve` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from helpers import REPO, closed_port, eventually, gone_within, kill_marked, marked_env

import scalegroups


@pytest.fixture(scope="module")
def served(scalegroups_prefect_api):
    """`python examples/deployments.py serve` (limit 4) against the session's API server."""
    from prefect import get_client

    env, marker = marked_env(PREFECT_API_URL=scalegroups_prefect_api, SERVE_LIMIT="4")
    server = subprocess.Popen(
        [sys.executable, "examples/deployments.py", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while True:
                try:
                    client.read_deployment_by_name("score-item/score-item")
                    break
                except Exception:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"serve did not start: {server.stderr.read()[-2000:]}") from None
                    time.sleep(1)
        yield marker
    finally:
        _stop(server)
        assert gone_within(marker, 20) == [], "served flow runs outlived the serve process"


@pytest.mark.slow
def test_items_run_as_parallel_flow_runs(served):
    import examples.deployments as example  # noqa: F401  (importable: the served flow's module)

    outcome = example.fan_out_items(n=8, limit=4)
    assert sorted(outcome["results"]) == [0, 1, 2, 3, 4, 6, 7]
    assert all(outcome["results"][i]["square"] == i * i for i in outcome["results"])
    assert list(outcome["failures"]) == [5] and outcome["failures"][5].startswith("failed")
    spans = [(r["started"], r["ended"]) for r in outcome["results"].values()]
    overlapping = sum(1 for a in spans for b in spans if a < b and a[0] < b[1] and b[0] < a[1])
    assert overlapping > 0, "flow runs did not overlap in time"
    assert len({r["pid"] for r in outcome["results"].values()}) == 7, "runs shared a process"
    # the calling flow run's progress reached 100 and its table names the failed item
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    def newest(key):
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
            )
        return found[0]

    progress = newest("scalegroups-score-item-progress")
    assert float(progress.data) == 100.0 and progress.description == "score-item: 8/8 done: 7 completed, 1 failed"
    summary = newest("scalegroups-score-item-summary")
    assert summary.flow_run_id == progress.flow_run_id
    assert [(row["key"], row["status"]) for row in json.loads(summary.data) if row["key"]] == [("5", "failed")]


@pytest.mark.slow
def test_timeout_cancels_and_reports(served):
    runs = scalegroups.deploy_map("score-item/score-item", [1, 2], limit=1, timeout=0.5)
    statuses = {run.key: run.status for run in runs.as_completed()}
    assert statuses[2] == "timed_out"


@pytest.mark.slow
def test_job_variables_reach_each_flow_run(served):
    from prefect import get_client

    wanted = {"env": {"SCALEGROUPS_RUNNER": "ray"}}
    [run] = scalegroups.deploy_map("score-item/score-item", [1], job_variables=wanted, timeout=120).wait()
    assert run.status == "completed"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.flow_run_id).job_variables == wanted


def test_unknown_deployment_is_reported_per_item(scalegroups_prefect_api):
    runs = scalegroups.deploy_map("no-such-flow/no-such-deployment", [1, 2])
    outcomes = list(runs.as_completed())
    assert {run.key for run in outcomes} == {1, 2}
    assert all(run.status == "failed" and run.error is not None for run in outcomes)


@scalegroups.flow
def runner_class_name() -> str:
    from prefect.context import FlowRunContext

    return type(FlowRunContext.get().task_runner).__name__


def test_a_flow_run_the_engine_starts_gets_the_runner_its_environment_chooses(scalegroups_prefect_api, monkeypatch):
    """Prefect's engine runs a deployment's flow run without calling the flow: it reads
    `flow.task_runner`, which `scalegroups.flow` builds from `SCALEGROUPS_*` as they are then."""
    from prefect.flow_engine import run_flow
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.setenv("SCALEGROUPS_RUNNER", "process")
    assert run_flow(runner_class_name) == "ProcessRunner"
    monkeypatch.setenv("SCALEGROUPS_RUNNER", "thread")
    assert run_flow(runner_class_name.with_options(name="renamed")) == "ThreadRunner"
    fixed = runner_class_name.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    assert run_flow(fixed) == "ThreadPoolTaskRunner"
    assert type(fixed.with_options(name="still-fixed").task_runner) is ThreadPoolTaskRunner


@pytest.fixture
def api_server(tmp_path):
    """`python -m scalegroups.server` on a free port, with a Prefect home of its own: an API that a
    worker and the flow runs it starts (separate processes) reach by URL; stopped at the end."""
    env, marker = marked_env(PREFECT_HOME=str(tmp_path / "server-home"))
    port = closed_port()
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen(
        [sys.executable, "-m", "scalegroups.server", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: server.poll() is not None or _answers(url), "the API server answering", timeout=90)
        assert server.poll() is None, f"the API server exited: {server.stderr.read()[-2000:]}"
        yield url, marker
    finally:
        _stop(server)
        left = gone_within(marker, 20)
        kill_marked(marker)
        assert left == [], f"the API server left processes: {left}"


def _answers(url: str) -> bool:
    from scalegroups.server import _answers as answers

    return answers(url, timeout=1.0)


def _stop(process: subprocess.Popen, grace: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def using_api(url: str):
    """This process's Prefect clients (also on deploy_map's thread) talk to `url` meanwhile."""
    from prefect.context import refresh_global_settings_context

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        refresh_global_settings_context()


@pytest.mark.slow
def test_job_variables_choose_each_runs_engine_on_a_process_work_pool(api_server, tmp_path):
    """A process work pool and `prefect worker start`: the env job variable that deploy_map passes
    reaches each flow run's process, and `scalegroups.flow` builds that run's engine from it."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    import examples.deployments as example

    url, _ = api_server
    pool = "local-processes"
    env, marker = marked_env(PREFECT_API_URL=url, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
    worker_log = tmp_path / "worker.log"  # a file: the runs' logs could fill a pipe nobody reads
    with using_api(url):
        with get_client(sync_client=True) as client:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        with open(worker_log, "wb") as log:  # started first: it starts up while the flow is deployed
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            example.deploy_engine_of_item(pool)
            # one item per engine: each Ray flow run starts a private local Ray (one CPU)
            ray_env = {"SCALEGROUPS_RUNNER": "ray", "SCALEGROUPS_MAX_WORKERS": "1"}
            on_ray = scalegroups.deploy_map(example.ENGINE_DEPLOYMENT, [2], job_variables={"env": ray_env}, timeout=150)
            on_threads = scalegroups.deploy_map(
                example.ENGINE_DEPLOYMENT,
                [3],
                job_variables={"env": {"SCALEGROUPS_RUNNER": "thread"}},
                timeout=150,
            )
            seen = {}
            for runs in (on_threads, on_ray):
                for run in runs.as_completed():
                    problem = f"item {run.key}: {run.status} {run.error or run.state}\n{worker_log.read_text()[-3000:]}"
                    assert run.status == "completed", problem
                    seen[run.key] = run.result()
        finally:
            _stop(worker)
            left = [str(p) for p in gone_within(marker, 60)]  # a guard: Ray shuts down slowly on a busy machine
            kill_marked(marker)
    assert left == [], f"the worker or its flow runs (or their Ray) outlived the worker: {left}"
    by_item = {item: (r["SCALEGROUPS_RUNNER"], r["task_runner"], r["cube"]) for item, r in seen.items()}
    assert by_item == {
        2: ("ray", "RayRunner", 8),
        3: ("thread", "ThreadRunner", 27),
    }, worker_log.read_text()[-3000:]
    assert len({r["pid"] for r in seen.values()}) == 2, "flow runs shared a process"
