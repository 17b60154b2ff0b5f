"""`make bench`: raw engines, Prefect as it ships, and scalegroups, side by side, in one run.

Each (engine, configuration) runs in a fresh process (see `benchmarks/measure.py`). The shared
configurations talk to two local Prefect servers started here, each in its own `PREFECT_HOME`:
one with Prefect's own service settings (for hand-written Prefect) and one lean, as scalegroups
starts them. The `-user` configurations run as a user runs a flow file: no API URL, a fresh home.
Start-up (`benchmarks/startup.py`) is measured as whole processes. The raw engines, the `-user`
configurations and start-up run first, before the shared servers start, as on a user's machine.
Results (medians, ratios, targets) go to benchmarks/RESULTS.md and the charts to benchmarks/*.png.

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
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from pathlib import Path

from benchmarks.report import render

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["thread", "process", "dask", "ray"]
SHARED = ["raw", "prefect", "scalegroups"]
USER = ["prefect-user", "scalegroups-user"]
# The configurations that talk to a shared server: (its home's folder, its services)
SERVED = {"prefect": ("stock", "full"), "scalegroups": ("lean", "lean")}
FULL = dict(repeats=3, user_repeats=3, trivial=200, cpu_seconds=0.6, items=10_000, prefect_items=200, megabytes=50)
QUICK = dict(repeats=1, user_repeats=1, trivial=20, cpu_seconds=0.05, items=500, prefect_items=20, megabytes=2)


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
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Prefect's API and logging settings or scalegroups' choices, plus
    `extra`. Logging stays at Prefect's default (INFO): every task run's "Finished" line is printed
    and sent to the API, as a user's would be."""
    dropped = ("PREFECT_API", "PREFECT_LOGGING_", "SCALEGROUPS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


@contextmanager
def local_server(home: Path, services: str) -> Iterator[dict[str, str]]:
    """A Prefect server (`python -m scalegroups.server`) in its own home; yields its env for clients."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env(PREFECT_HOME=str(home), SCALEGROUPS_SERVER_SERVICES=services)
    log = open(home.parent / f"server-{services}.log", "w")  # noqa: SIM115 - lives with the server
    server = subprocess.Popen(
        [sys.executable, "-m", "scalegroups.server", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {services} server did not start; see {log.name}") from None
            time.sleep(0.3)
    try:
        yield {"PREFECT_API_URL": url, "BENCH_SERVER_PID": str(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def run_one(engine: str, config: str, cfg: dict, env: dict[str, str]) -> dict[str, list] | str:
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
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--no-startup", action="store_true", help="skip the whole-process start-up section")
    parser.add_argument("--no-remote", action="store_true", help="skip the server-on-another-host section")
    parser.add_argument("--no-progress", action="store_true", help="skip the progress-artifact cost section")
    parser.add_argument("--configs", default=",".join(SHARED + USER), help="which configurations to run")
    args = parser.parse_args(argv)

    from benchmarks.startup import measure_startup
    from benchmarks.workloads import burn_fn, calibrate_burn

    cfg = dict(QUICK if args.quick else FULL)
    cfg["loops"] = calibrate_burn(cfg["cpu_seconds"])
    started = time.perf_counter()
    serial = statistics.median(_serial_cpu(cfg, burn_fn) for _ in range(cfg["repeats"]))
    results: dict[str, dict[str, object]] = {}
    partial = Path(args.output).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    configs = args.configs.split(",")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sgbench-")))

        def record(engine: str, config: str, run: dict[str, list] | str) -> None:
            results.setdefault(engine, {})[config] = run
            partial.write_text(json.dumps({"cfg": cfg, "results": results}))  # a later crash loses nothing

        # First what runs without the shared servers (raw engines, as a user, start-up): a user's
        # machine has no idle Prefect servers beside the flow, and two of them cost a first round
        # up to 0.3x of its speedup on 2 cores (measured alternating), far more than their CPU share.
        for engine in engines:
            for config in [c for c in configs if c not in SERVED]:
                if config in USER:
                    record(engine, config, run_as_user(engine, config, cfg, workdir, burn_fn))
                    continue
                env = clean_env(PREFECT_HOME=str(workdir / f"home-{engine}-{config}"))
                record(engine, config, timed(engine, config, cfg, env))
        startup = {} if args.no_startup else measure_startup(workdir, repeats=cfg["repeats"], env=clean_env())
        servers = {
            config: stack.enter_context(local_server(workdir / home, services))
            for config, (home, services) in SERVED.items()
            if config in configs
        }
        for engine in engines:
            for config in [c for c in configs if c in servers]:
                env = clean_env(PREFECT_HOME=str(workdir / f"home-{engine}-{config}"), **servers[config])
                record(engine, config, timed(engine, config, cfg, env))
        progress: dict = {}
        if not args.no_progress and "scalegroups" in servers:
            order = ("off", "on") if args.quick else ("off", "on", "on", "off")
            progress = measure_progress(engines, cfg, workdir, servers["scalegroups"], order)
            partial.write_text(json.dumps({"cfg": cfg, "results": results, "progress": progress}))
    remote: dict = {}
    if not args.no_remote:
        from benchmarks.remote import measure_remote

        try:
            remote = measure_remote([e for e in ("thread", "dask") if e in engines], cfg, clean_env())
        except Exception as exc:  # reported in the section, the rest of the run stands
            remote = {"skipped": f"the measurement failed: {exc!r}"[:300]}
    elapsed = time.perf_counter() - started
    report = render(
        results, startup, cfg, serial, machine(), elapsed, quick=args.quick, remote=remote, progress=progress
    )
    analysis = ROOT / "benchmarks" / "analysis.md"  # hand-written, from profiles: where the time went
    if analysis.exists() and not args.quick:
        report += "\n" + analysis.read_text()
    Path(args.output).write_text(report)
    partial.unlink(missing_ok=True)
    if not args.no_charts:
        from benchmarks.charts import draw_all

        draw_all(results, startup, serial, Path(args.output).parent)
    print(report)
    return 0


def timed(engine: str, config: str, cfg: dict, env: dict[str, str]) -> dict[str, list] | str:
    """`run_one`, printing how long it took."""
    t0 = time.perf_counter()
    run = run_one(engine, config, cfg, env)
    print(f"{engine:8} {config:17} {time.perf_counter() - t0:6.1f} s", flush=True)
    return run


def wait_for_quiet(limit_s: float = 30) -> None:
    """Wait until the machine is idle (under 10% of its CPUs for 1 s), as a user's run starts on a
    quiet machine: the previous configuration's processes (a Ray cluster's) may still be exiting."""
    import psutil

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and psutil.cpu_percent(interval=1.0) >= 10:
        pass


def run_as_user(engine: str, config: str, cfg: dict, workdir: Path, burn_fn) -> dict[str, list] | str:
    """`user_repeats` runs as a user (a fresh process and home each), each first round paired with
    the same 8 tasks run serially just before and just after it: its speedup is against their mean.
    A run that fails is listed; the others stand."""
    pooled: dict[str, list] = {}
    failed: list[str] = []
    for turn in range(cfg["user_repeats"]):
        env = clean_env(PREFECT_HOME=str(workdir / f"home-{engine}-{config}-{turn}"))
        wait_for_quiet()
        before = _serial_cpu(cfg, burn_fn)
        run = timed(engine, config, cfg, env)
        serial = (before + _serial_cpu(cfg, burn_fn)) / 2
        if isinstance(run, str):
            failed.append(run)
            continue
        run["first_speedup"] = [serial / run["cpu_first"][0]]
        pooled = {name: pooled.get(name, []) + list(values) for name, values in run.items()}
    if not pooled:
        return failed[0]
    return {**pooled, "failed": failed} if failed else pooled


def measure_progress(
    engines: list[str], cfg: dict, workdir: Path, server_env: dict[str, str], order: tuple[str, ...]
) -> dict:
    """(i): the trivial tasks on the lean server with progress artifacts off and on (the default).

    A full run goes off, on, on, off and pools the repeats of each, so a drift over the section
    (the server's database grows with every run) weighs on both sides alike; `--quick`: off, on.
    """
    progress: dict[str, dict[str, object]] = {}
    for engine in [e for e in ("thread", "dask") if e in engines]:
        progress[engine] = {}
        for turn, label in enumerate(order):
            home = workdir / f"home-{engine}-progress-{label}-{turn}"
            flag = "1" if label == "on" else "0"
            env = clean_env(PREFECT_HOME=str(home), SCALEGROUPS_PROGRESS=flag, **server_env)
            t0 = time.perf_counter()
            run = run_one(engine, "scalegroups-trivial", cfg, env)
            progress[engine][label] = _pooled(progress[engine].get(label), run)
            print(f"{engine:8} progress {label:8} {time.perf_counter() - t0:6.1f} s", flush=True)
    return progress


def _pooled(before: object, run: dict[str, list] | str) -> object:
    """The repeats of two runs of one configuration as one run (a failure of either stands)."""
    if before is None or isinstance(before, str):
        return before or run
    if isinstance(run, str):
        return run
    return {name: list(before.get(name, [])) + list(values) for name, values in run.items()}


def _serial_cpu(cfg: dict, burn_fn) -> float:
    started = time.perf_counter()
    for _ in range(8):
        burn_fn(cfg["loops"])
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
