"""A CPU-heavy group: count primes in ranges, then sum the counts per range.

SCALEGROUPS_RUNNER=dask python examples/primes.py        # `make demo`: local Dask cluster, speedup, where to look
SCALEGROUPS_ENGINE_LOGS=1 make demo                      # the same with Dask's INFO logs
scalegroups run examples/primes.py:count_primes --runner ray --param chunks=16
"""

from __future__ import annotations

import time

from prefect import task

import scalegroups


@task
def count_primes_in(start: int, stop: int) -> int:
    """Count primes in [start, stop) by trial division: pure Python, CPU-bound on purpose."""
    count = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            count += n == 2
            continue
        divisor = 3
        while divisor * divisor <= n:
            if n % divisor == 0:
                break
            divisor += 2
        else:
            count += 1
    return count


@task
def add(counts: list[int]) -> int:
    return sum(counts)


@scalegroups.group
def primes_in_chunk(chunk: int, chunk_size: int = 60_000, parts: int = 2):
    """One chunk of the number line, split in `parts` tasks and summed."""
    start = chunk * chunk_size
    step = chunk_size // parts
    counts = [count_primes_in.submit(start + i * step, start + (i + 1) * step) for i in range(parts)]
    return {"final": add.submit(counts)}


#: what the last `count_primes` call in this process measured (for the demo's closing lines)
LAST_RUN: dict = {}


@scalegroups.flow(log_prints=True)
def count_primes(chunks: int = 8, chunk_size: int = 60_000) -> int:
    """Count the primes below chunks * chunk_size, one group per chunk."""
    from prefect.context import FlowRunContext

    runner = FlowRunContext.get().task_runner
    started = time.perf_counter()
    runs = primes_in_chunk.map(range(chunks), chunk_size=chunk_size)
    total = 0
    for run in scalegroups.as_completed(runs):
        total += run.result()
    elapsed = time.perf_counter() - started
    print(f"{total} primes below {chunks * chunk_size} in {elapsed:.1f} s")
    dashboard = getattr(runner, "dashboard_url", lambda: None)()
    LAST_RUN.update(seconds=elapsed, runner=type(runner).__name__, workers=_workers(runner), dashboard=dashboard)
    return total


def _workers(runner) -> int:
    parallelism = getattr(runner, "parallelism", None)
    return parallelism() if callable(parallelism) else 1


def serial_seconds(chunks: int, chunk_size: int = 60_000, sample: int = 2) -> tuple[float, int]:
    """Time the same work serially in this process on `sample` evenly spread chunks; extrapolate."""
    picked = sorted({round(i * (chunks - 1) / max(1, sample - 1)) for i in range(sample)})
    started = time.perf_counter()
    for chunk in picked:
        count_primes_in.fn(chunk * chunk_size, (chunk + 1) * chunk_size)
    return (time.perf_counter() - started) * chunks / len(picked), len(picked)


def where_to_look() -> str:
    """The Prefect UI to open, or how to get one (the in-process API of a plain run has no UI)."""
    import os

    from scalegroups.server import running_server

    url = os.environ.get("PREFECT_API_URL", "")
    state = running_server()
    if state is not None and url.rstrip("/") == state.url.rstrip("/"):
        return f"Prefect UI: {state.url.removesuffix('/api')} (flow run count-primes, Artifacts: scalegroups-*)"
    if url and "127.0.0.1" not in url:
        return f"Prefect UI: {url.removesuffix('/api')} (flow run count-primes, Artifacts: scalegroups-*)"
    return "Prefect UI: none kept (this run used a temporary API); `scalegroups server start`, then run again"


def demo(chunks: int = 8, chunk_size: int = 200_000) -> None:
    """`make demo`: the flow on the chosen runner, then the speedup over the same work done serially."""
    total = count_primes(chunks, chunk_size)
    serial, sampled = serial_seconds(chunks, chunk_size)
    run = LAST_RUN
    print(f"\nscalegroups demo: {total} primes below {chunks * chunk_size}")
    print(
        f"  {run['runner']} ({run['workers']} workers): {run['seconds']:.1f} s; serially ~{serial:.1f} s "
        f"(timed on {sampled} of {chunks} chunks) -> {serial / run['seconds']:.1f}x"
    )
    print(f"  {where_to_look()}")
    if run["dashboard"]:
        print(f"  Dask/Ray dashboard (while a run lasts): {run['dashboard']}")
    print("  engine INFO logs: SCALEGROUPS_ENGINE_LOGS=1 make demo")


if __name__ == "__main__":
    import os

    demo(chunk_size=int(os.environ.get("DEMO_CHUNK_SIZE", "200000")))
