"""`make test-burn`: the whole suite, N times in a row, with one core kept busy by a CPU burner.

The suite must pass on a loaded machine: its tests wait for evidence, never for a clock. This runs
`make test`'s pytest command RUNS times (no retries) while `python -c "while True: pass"` spins,
then prints one line per run and exits non-zero if any run failed. The burner is stopped however
this ends.

    python tests/burn.py [--runs 3] [--workers 2] [extra pytest arguments]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_suite(extra: list[str], log: Path, workers: int) -> tuple[int, str, float]:
    """One pytest run of the suite as `make test` runs it; returns (exit code, summary line, seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_KEY")}
    env["PREFECT_HOME"] = str(ROOT / ".prefect-test")
    started = time.monotonic()
    with log.open("w") as out:
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            str(workers),
            "--dist",
            "load",
            "-p",
            "no:cacheprovider",
            *extra,
        ]
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    text = log.read_text()
    summaries = re.findall(r"^=+ (.*(?:passed|failed|error).*) =+$", text, re.M)
    return code, summaries[-1] if summaries else "no summary", time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers, as `make test`")
    args, pytest_args = parser.parse_known_args()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    results = []
    try:
        for number in range(1, args.runs + 1):
            log = ROOT / f".burn-run-{number}.log"
            code, summary, seconds = run_suite(pytest_args, log, args.workers)
            results.append(code)
            print(f"run {number}: exit {code}, {summary}, {seconds / 60:.1f} min (log {log.name})", flush=True)
    finally:
        burner.kill()
        burner.wait()
    return 0 if all(code == 0 for code in results) else 1


if __name__ == "__main__":
    sys.exit(main())
