"""A user's flow file for tests/test_early_start.py: `python tests/early_start_flow.py run|bad-call`.

`run`: the flow reports how its runner was started and its results. `bad-call`: the flow is called
with an argument it does not take (Prefect refuses before any flow run exists); then the engine
processes still alive under this process are reported.
"""

from __future__ import annotations

import json
import sys
import time

import psutil
from helpers import double
from prefect.context import FlowRunContext

import scalegroups


@scalegroups.flow
def doubles(count: int) -> dict:
    runner = FlowRunContext.get().task_runner
    return {"early": runner.__dict__.get("_early"), "results": [double.submit(i).result() for i in range(count)]}


def engine_processes() -> list[str]:
    """This process's children that run engine work (not multiprocessing's resource tracker)."""
    children = psutil.Process().children(recursive=True)
    return [" ".join(c.cmdline())[:80] for c in children if "resource_tracker" not in " ".join(c.cmdline())]


if __name__ == "__main__":
    if sys.argv[1] == "run":
        print("RESULT " + json.dumps(doubles(4)), flush=True)
    else:
        try:
            doubles(4, bogus=1)
        except TypeError as exc:
            print(f"refused: {exc}", flush=True)
        deadline = time.monotonic() + 30  # a guard: closing the engine is synchronous
        while engine_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        print("LEFT " + json.dumps(engine_processes()), flush=True)
