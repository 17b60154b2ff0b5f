"""The flow of test_multihost.py, run inside the `flow` host: where does each item run?"""

from __future__ import annotations

import json
import sys
import time

from prefect import task

import scalegroups


@task
def where(item: int, seconds: float) -> dict:
    """Sleep, then report this host's 10.77.0.x address (each test host has exactly one)."""
    import psutil

    time.sleep(seconds)
    addresses = [a.address for nics in psutil.net_if_addrs().values() for a in nics if a.address.startswith("10.77.")]
    return {"item": item, "host": addresses[0] if addresses else "?", "ended": time.time()}


@scalegroups.group
def locate(item: int, seconds: float):
    return where.submit(item, seconds)


@scalegroups.flow
def spread(items: int = 30, seconds: float = 0.4) -> dict:
    runs = locate.map(range(items), seconds=seconds)
    print("SUBMITTED", flush=True)
    results, failures = {}, {}
    for run in scalegroups.as_completed(runs):
        try:
            result = run.result()
            results[run.key] = [result["host"], result["ended"]]
            print(f"DONE {run.key} {result['host']}", flush=True)  # the test cuts a host on this evidence
        except Exception as exc:
            failures[run.key] = repr(exc)
    return {"results": results, "failures": failures}


if __name__ == "__main__":
    print("RESULT " + json.dumps(spread(int(sys.argv[1]), float(sys.argv[2]))), flush=True)
