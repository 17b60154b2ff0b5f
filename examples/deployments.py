"""Parallel sub-flows as deployments: one isolated flow run per item, streamed as they finish.

Terminal 1 (serves the per-item flow; runs up to 4 flow runs at once, each in its own process):
    python examples/deployments.py serve
Terminal 2 (fans out 8 items and collects results):
    python examples/deployments.py run
Both need the same PREFECT_API_URL (e.g. `prefect server start`, then
`export PREFECT_API_URL=http://127.0.0.1:4200/api`).

With a process work pool instead of `serve`, each run can choose its engine (README, "Parallel
sub-flows as deployments"; `engine-of-item` below is the flow tests/test_deployments.py deploys):
    prefect work-pool create local-processes --type process
    prefect worker start --pool local-processes
    python examples/deployments.py deploy       # engine-of-item/engine-of-item on that pool
    python examples/deployments.py engines      # 2 runs on Ray, 2 on threads, chosen per run
"""

from __future__ import annotations

import os
import sys
import time

from prefect import flow, task

import scalegroups

DEPLOYMENT = "score-item/score-item"
ENGINE_DEPLOYMENT = "engine-of-item/engine-of-item"
POOL = "local-processes"


@flow(name="score-item", persist_result=True)
def score_item(item: int) -> dict:
    """The isolated unit of work: one item, one flow run, one process."""
    started = time.time()
    if item == 5:
        raise ValueError(f"item {item} is corrupt")
    time.sleep(1.0)
    return {"item": item, "square": item * item, "pid": os.getpid(), "started": started, "ended": time.time()}


@task
def cube(item: int) -> int:
    return item**3


@scalegroups.flow(name="engine-of-item", persist_result=True)
def engine_of_item(item: int) -> dict:
    """Which engine this flow run got: `SCALEGROUPS_RUNNER` as the run saw it, and its task runner."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return {
        "item": item,
        "cube": cube.submit(item).result(),
        "SCALEGROUPS_RUNNER": os.environ.get("SCALEGROUPS_RUNNER"),
        "task_runner": type(context.task_runner).__name__ if context else None,
        "pid": os.getpid(),
    }


def deploy_engine_of_item(work_pool: str = POOL) -> None:
    """Deploy `engine_of_item` from this checkout to a process work pool (nothing built or pushed)."""
    from pathlib import Path

    engine_of_item.from_source(
        source=str(Path(__file__).resolve().parents[1]), entrypoint="examples/deployments.py:engine_of_item"
    ).deploy(
        name="engine-of-item",
        work_pool_name=work_pool,
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,
    )


def engines_per_run() -> dict:
    """Two runs on Ray and two on threads, the engine chosen per run by the work pool's job variables."""
    on_ray = scalegroups.deploy_map(ENGINE_DEPLOYMENT, [1, 2], job_variables={"env": {"SCALEGROUPS_RUNNER": "ray"}})
    on_threads = scalegroups.deploy_map(
        ENGINE_DEPLOYMENT, [3, 4], job_variables={"env": {"SCALEGROUPS_RUNNER": "thread"}}
    )
    return {**on_ray.results(), **on_threads.results()}


@flow(name="fan-out-items")
def fan_out_items(n: int = 8, limit: int = 4) -> dict:
    runs = scalegroups.deploy_map(DEPLOYMENT, range(n), limit=limit, timeout=600)
    results, failures = {}, {}
    for run in runs.as_completed():
        try:
            results[run.key] = run.result()
        except Exception as exc:
            failures[run.key] = f"{run.status}: {exc}"
    return {"results": results, "failures": failures}


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        score_item.serve(name="score-item", limit=int(os.environ.get("SERVE_LIMIT", "4")))
    elif sys.argv[1:] == ["deploy"]:
        deploy_engine_of_item()
    elif sys.argv[1:] == ["engines"]:
        for item, seen in sorted(engines_per_run().items()):
            print(item, seen["SCALEGROUPS_RUNNER"], seen["task_runner"])
    else:
        outcome = fan_out_items()
        print({k: v["square"] for k, v in sorted(outcome["results"].items())}, outcome["failures"])
