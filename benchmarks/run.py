"""`make bench`: raw engine vs hand-written Prefect vs scalegroups, side by side, in one run.

Each (engine, configuration) runs in a fresh process so nothing one installs (scalegroups'
settings cache, a Ray or Dask instance) leaks into another; all of them use one Prefect API server
started here. Results (medians of the repeats, ratios, targets) go to benchmarks/RESULTS.md.

    python -m benchmarks.run [--quick] [--engines thread,dask] [--output benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from benchmarks.report import render

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["thread", "process", "dask", "ray"]
CONFIGS = ["raw", "prefect", "scalegroups"]
FULL = {
    "repeats": 3,
    "trivial": 200,
    "cpu_seconds": 0.5,
    "items": 10_000,
    "prefect_items": 200,
    "megabytes": 50,
}
QUICK = {"repeats": 1, "trivial": 20, "cpu_seconds": 0.05, "items": 500, "prefect_items": 20, "megabytes": 2}


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    packages = ", ".join(f"{p} {version(p)}" for p in ("prefect", "prefect-dask", "prefect-ray", "distributed", "ray"))
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_gib:.0f} GiB",
        "python": platform.python_version(),
        "packages": packages,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run_one(engine: str, config: str, cfg: dict) -> dict[str, list[float]] | str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.measure", engine, config, json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return "failed: " + " | ".join(tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke run)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)

    from benchmarks.workloads import calibrate_burn
    from scalegroups.server import shared_api

    cfg = dict(QUICK if args.quick else FULL)
    cfg["loops"] = calibrate_burn(cfg["cpu_seconds"])
    started = time.perf_counter()
    serial = statistics.median(_serial_cpu(cfg) for _ in range(cfg["repeats"]))
    results: dict[str, dict[str, object]] = {}
    with shared_api():
        server = _server_pid()
        if server:
            os.environ["SCALEGROUPS_BENCH_SERVER_PID"] = str(server)
        for engine in args.engines.split(","):
            results[engine] = {}
            for config in CONFIGS:
                t0 = time.perf_counter()
                results[engine][config] = run_one(engine, config, cfg)
                print(f"{engine:8} {config:12} {time.perf_counter() - t0:6.1f} s", flush=True)
    report = render(results, cfg, serial, machine(), time.perf_counter() - started, quick=args.quick)
    analysis = ROOT / "benchmarks" / "analysis.md"  # hand-written, from profiles: why targets are missed
    if analysis.exists() and not args.quick:
        report += "\n" + analysis.read_text()
    Path(args.output).write_text(report)
    print(report)
    return 0


def _server_pid() -> int | None:
    """PID of this process's temporary Prefect server (None when PREFECT_API_URL was given)."""
    from prefect.server.api.server import SubprocessASGIServer

    process = SubprocessASGIServer._instances.get(None) and SubprocessASGIServer().server_process
    return process.pid if process else None


def _serial_cpu(cfg: dict) -> float:
    from benchmarks.workloads import burn_fn

    started = time.perf_counter()
    for _ in range(8):
        burn_fn(cfg["loops"])
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
