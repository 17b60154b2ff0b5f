"""Parallel sub-flows as deployments: one isolated flow run per item, streamed as they finish.

Terminal 1 (serves the per-item flow; runs up to 4 flow runs at once, each in its own process):
    python examples/deployments.py serve
Terminal 2 (fans out 8 items and collects results):
    python examples/deployments.py run
Both need the same PREFECT_API_URL (e.g. `prefect server start`, then
`export PREFECT_API_URL=http://127.0.0.1:4200/api`).
"""

from __future__ import annotations

import os
import sys
import time

from prefect import flow

import scalegroups

DEPLOYMENT = "score-item/score-item"


@flow(name="score-item", persist_result=True)
def score_item(item: int) -> dict:
    """The isolated unit of work: one item, one flow run, one process."""
    started = time.time()
    if item == 5:
        raise ValueError(f"item {item} is corrupt")
    time.sleep(1.0)
    return {"item": item, "square": item * item, "pid": os.getpid(), "started": started, "ended": time.time()}


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
    else:
        outcome = fan_out_items()
        print({k: v["square"] for k, v in sorted(outcome["results"].items())}, outcome["failures"])
