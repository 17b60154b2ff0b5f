"""A CPU-heavy group: count primes in ranges, then sum the counts per range.

SCALEGROUPS_RUNNER=dask python examples/primes.py        # local Dask cluster
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


@scalegroups.flow(log_prints=True)
def count_primes(chunks: int = 8, chunk_size: int = 60_000) -> int:
    """Count the primes below chunks * chunk_size, one group per chunk."""
    started = time.perf_counter()
    runs = primes_in_chunk.map(range(chunks), chunk_size=chunk_size)
    total = 0
    for run in scalegroups.as_completed(runs):
        total += run.result()
    print(f"{total} primes below {chunks * chunk_size} in {time.perf_counter() - started:.1f} s")
    return total


if __name__ == "__main__":
    count_primes()
