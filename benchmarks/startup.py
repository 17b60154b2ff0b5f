"""Start-up as a user sees it: whole processes, from `python` to exit, on threads.

The seed pattern (examples/seed.py: groups of 4 small tasks) with plain Prefect and with
scalegroups: on a fresh `PREFECT_HOME` with no server (cold), on a home used before (warm), with a
server started by `scalegroups server start` (warm server), and the very first run on a machine
(no template database in scalegroups' cache yet).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = ["examples/seed.py"]
PLAIN = ["benchmarks/plain_seed.py"]


def _time(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed: {done.stderr[-2000:]}")
    return elapsed


def _median(runs: list[float | str]) -> float | str:
    """The median of the runs that finished; a run that failed is reported, never hidden."""
    done = [r for r in runs if isinstance(r, float)]
    failed = [r for r in runs if isinstance(r, str)]
    if not failed:
        return statistics.median(done)
    note = f"{len(failed)} of {len(runs)} runs failed: {failed[0]}"
    return f"{statistics.median(done):.2f} ({note})" if done else note


def _attempt(args: list[str], env: dict[str, str]) -> float | str:
    try:
        return _time(args, env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return _why(str(exc)) or type(exc).__name__


def _why(output: str) -> str:
    """The line of a failed run's output that says why: the last error or exception line, else
    the last line (Prefect logs its temporary server's stop after the error that caused it)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line or "| ERROR" in line]
    return (errors or lines or [""])[-1][-160:]


def measure_startup(workdir: Path, repeats: int, env: dict[str, str]) -> dict[str, float | str]:
    """Seconds, medians of `repeats` whole-process runs (the first-run row: one run); a row whose
    runs failed says so (e.g. plain Prefect's temporary server timing out on a fresh home)."""
    rows: dict[str, float | str] = {}
    n = max(repeats, 1)

    def fresh(tag: str, i: int) -> dict[str, str]:
        return {**env, "PREFECT_HOME": str(workdir / f"startup-{tag}-{i}")}

    rows["import prefect"] = statistics.median(_time(["-c", "import prefect"], env) for _ in range(n))
    rows["import scalegroups"] = statistics.median(_time(["-c", "import scalegroups"], env) for _ in range(n))
    rows["prefect cold"] = _median([_attempt(PLAIN, fresh("prefect", i)) for i in range(n)])
    rows["prefect warm"] = _median([_attempt(PLAIN, fresh("prefect", 0)) for _ in range(n)])
    empty_cache = {**fresh("first", 0), "SCALEGROUPS_CACHE_DIR": str(workdir / "empty-cache")}
    rows["scalegroups first run on a machine"] = _median([_attempt(SEED, empty_cache)])
    rows["scalegroups cold"] = _median([_attempt(SEED, fresh("cold", i)) for i in range(n)])
    rows["scalegroups warm"] = _median([_attempt(SEED, fresh("cold", 0)) for _ in range(n)])
    served = fresh("served", 0)
    subprocess.run(
        [sys.executable, "-m", "scalegroups.cli", "server", "start", "--port", "4299"],
        env=served,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    try:
        rows["scalegroups warm server"] = _median([_attempt(SEED, served) for _ in range(n)])
    finally:
        subprocess.run(
            [sys.executable, "-m", "scalegroups.cli", "server", "stop"],
            env=served,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
    return rows
