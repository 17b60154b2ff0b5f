"""Stream group results as they finish with `scalegroups.as_completed`; one item fails on purpose.

SCALEGROUPS_RUNNER=ray python examples/streaming.py
"""

from __future__ import annotations

import random
import time

from prefect import task

import scalegroups


@task
def fetch(item: int) -> int:
    time.sleep(random.uniform(0.1, 1.0))
    if item == 3:
        raise ValueError(f"item {item} is corrupt")
    return item


@task
def score(value: int) -> float:
    return value**0.5


@scalegroups.group
def scored(item: int):
    raw = fetch.submit(item)
    return {"raw": raw, "final": score.submit(raw)}


@scalegroups.flow
def stream(items: int = 8) -> dict:
    """Print each item's score as soon as its group finishes; failures are reported, not fatal."""
    results, failures = {}, {}
    for run in scalegroups.as_completed(scored.map(range(items))):
        try:
            results[run.key] = run.result()
            print(f"item {run.key}: {results[run.key]:.3f}")
        except Exception as exc:
            failures[run.key] = repr(exc)
            print(f"item {run.key} failed: {exc}")
    return {"results": results, "failures": failures}


if __name__ == "__main__":
    print(stream())
