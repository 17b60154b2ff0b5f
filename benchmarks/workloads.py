"""The work the benchmarks run: module-level so every engine's workers can import it."""

from __future__ import annotations

import time

from prefect import task

import scalegroups


def noop_fn(i: int) -> int:
    return i


def burn_fn(loops: int) -> int:
    """Pure-Python CPU work: `loops` iterations of integer arithmetic."""
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1_000_003
    return total


def item_fn(i: int) -> int:
    """One fine-grained item: a few microseconds of work."""
    return sum(j * j for j in range(i % 50))


def consume_fn(data: bytes) -> int:
    return len(data)


def calibrate_burn(seconds: float) -> int:
    """Loops of `burn_fn` that take about `seconds` on this machine (single core)."""
    loops = 200_000
    while True:
        started = time.perf_counter()
        burn_fn(loops)
        elapsed = time.perf_counter() - started
        if elapsed > 0.1:
            return int(loops * seconds / elapsed)
        loops *= 2


noop = task(noop_fn, name="noop")
burn = task(burn_fn, name="burn")
item = task(item_fn, name="item")
consume = task(consume_fn, name="consume")


@scalegroups.group
def one_noop(i: int):
    return noop.submit(i)


@scalegroups.group
def one_burn(_: int, loops: int):
    return burn.submit(loops)


@scalegroups.group
def one_consume(_: int, data):
    return consume.submit(data)


def spin_fn(folder: str) -> None:
    """Spin until stopped: writes `pid-<pid>` first and `stopped-<pid>` (its time) when interrupted."""
    import os
    from pathlib import Path

    pid = os.getpid()
    Path(folder, f"pid-{pid}").write_text(str(pid))
    try:
        while True:
            burn_fn(10_000)
    finally:
        Path(folder, f"stopped-{pid}").write_text(repr(time.time()))


spin = task(spin_fn, name="spin")


@scalegroups.group(timeout=1.0)
def one_spin(_: int, folder: str):
    return spin.submit(folder)
