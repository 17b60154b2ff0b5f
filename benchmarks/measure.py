"""One benchmark configuration (engine x configuration), run in its own process.

Configurations:

- `raw`: the engine's own API (no Prefect).
- `prefect`: hand-written Prefect (`task.submit`, the stock runner) against a Prefect server with
  Prefect's own settings (`$PREFECT_API_URL`, its pid in `$BENCH_SERVER_PID`).
- `scalegroups`: the same work through `make_task_runner`, groups, `fan_out`, `share`, against a
  lean local server as scalegroups starts one.
- `prefect-user`, `scalegroups-user`: as a user runs a flow file: no `PREFECT_API_URL`, a fresh
  `PREFECT_HOME` (Prefect then starts its own temporary server(s); scalegroups its in-process one).
  `scalegroups-user` is a `@scalegroups.flow` whose runner `SCALEGROUPS_RUNNER` names, as the
  README writes flows (the others pass `task_runner=` to `prefect.flow`).

Prints one line `RESULT <json>`: for each workload, a list of repeat measurements.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from benchmarks import workloads as w

WORKERS = 2


# ------------------------------------------------------------------------------------ CPU
def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds used by this process (the flow), its descendants (engine) and the API server."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        pid = os.environ.get("BENCH_SERVER_PID")
        self.server = psutil.Process(int(pid)) if pid else None
        self._seen: dict[int, psutil.Process] = {}

    def snapshot(self) -> dict[str, float]:
        for child in self.me.children(recursive=True):
            self._seen.setdefault(child.pid, child)
        workers = sum(_cpu(p) for p in self._seen.values())
        return {
            "flow": _cpu(self.me),
            "workers": workers,
            "server": _cpu(self.server) if self.server else 0.0,
        }

    def settle(self, limit_s: float = 180) -> None:
        """Wait until the API server has digested the work (under 3% of a core for 1.5 s)."""
        if self.server is None:
            return
        quiet_since, deadline = None, time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = _cpu(self.server)
            time.sleep(0.5)
            if (_cpu(self.server) - before) / 0.5 < 0.03:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.5:
                    return
            else:
                quiet_since = None

    def per_task(self, fn: Callable[[], Any], tasks: int) -> tuple[float, dict[str, float]]:
        """Run `fn`; return its wall time and the CPU ms per task of each kind of process."""
        self.settle()
        before = self.snapshot()
        started = time.perf_counter()
        fn()
        wall = time.perf_counter() - started
        self.settle()
        after = self.snapshot()
        return wall, {k: (after[k] - before[k]) * 1000 / tasks for k in before}


def warm_up_loops(cfg: dict) -> int:
    """Loops of a ~0.1 s CPU task: a few of them, 2 per worker, give every worker a task before the
    trivial tasks are measured (a worker's start-up is a cost per worker, not per task run)."""
    return max(1, cfg["loops"] // 6)


def repeat(times: int, fn: Callable[[], Any]) -> list[float]:
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return timings


# ---------------------------------------------------------------------------- raw engines
class RawEngine:
    """submit(fn, *args) -> handle; gather(handles) -> results; share(value)."""

    def __init__(self, engine: str):
        self.engine = engine
        if engine in ("thread", "process"):
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

            self.pool = (
                ThreadPoolExecutor(4)
                if engine == "thread"
                else ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
            )
        elif engine == "dask":
            from distributed import Client, LocalCluster

            self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = Client(self.cluster)
        else:
            import ray

            ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
            self.remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, *args: Any) -> Any:
        if self.engine in ("thread", "process"):
            return self.pool.submit(fn, *args)
        if self.engine == "dask":
            return self.client.submit(fn, *args, pure=False)
        import ray

        if fn not in self.remote:
            self.remote[fn] = ray.remote(fn)
        return self.remote[fn].remote(*args)

    def gather(self, handles: list) -> list:
        if self.engine in ("thread", "process"):
            return [h.result() for h in handles]
        if self.engine == "dask":
            return self.client.gather(handles)
        import ray

        return ray.get(handles)

    def map(self, fn: Callable, items: list) -> list:
        if self.engine in ("thread", "process"):
            return list(self.pool.map(fn, items))
        if self.engine == "dask":
            return self.client.gather(self.client.map(fn, items, pure=False))
        return self.gather([self.submit(fn, i) for i in items])

    def share(self, value: Any) -> Any:
        if self.engine == "dask":
            return self.client.scatter(value)
        if self.engine == "ray":
            import ray

            return ray.put(value)
        return value

    def close(self) -> None:
        if self.engine in ("thread", "process"):
            self.pool.shutdown()
        elif self.engine == "dask":
            self.client.close()
            self.cluster.close()
        else:
            import ray

            ray.shutdown()


def run_raw(engine: str, cfg: dict) -> dict:
    meter = CpuMeter()
    started = time.perf_counter()
    raw = RawEngine(engine)
    raw.gather([raw.submit(w.noop_fn, 0)])
    out: dict[str, list] = {"first_result": [time.perf_counter() - started], "trivial": [], "trivial_cpu": []}
    raw.gather([raw.submit(w.burn_fn, warm_up_loops(cfg)) for _ in range(2 * WORKERS)])
    for _ in range(cfg["repeats"]):
        wall, cpu = meter.per_task(
            lambda: raw.gather([raw.submit(w.noop_fn, i) for i in range(cfg["trivial"])]), cfg["trivial"]
        )
        out["trivial"].append(wall)
        out["trivial_cpu"].append(cpu)
    out["cpu"] = repeat(cfg["repeats"], lambda: raw.gather([raw.submit(w.burn_fn, cfg["loops"]) for _ in range(8)]))
    items = list(range(cfg["items"]))
    out["fine"] = repeat(cfg["repeats"], lambda: raw.map(w.item_fn, items))
    data = b"x" * (cfg["megabytes"] * 2**20)
    out["data"] = repeat(
        cfg["repeats"],
        lambda: raw.gather([raw.submit(w.consume_fn, shared) for shared in [raw.share(data)] * 4]),
    )
    raw.close()
    return out


# -------------------------------------------------------------------- Prefect, hand-written
def stock_runner(engine: str) -> Any:
    if engine == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=4)
    if engine == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=WORKERS)
    if engine == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_kwargs={"n_workers": WORKERS, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        )
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address="local", init_kwargs={"num_cpus": WORKERS, "include_dashboard": False})


def prefect_trivial(n: int) -> list:
    return [f.result() for f in [w.noop.submit(i) for i in range(n)]]


def scalegroups_trivial(n: int) -> list:
    import scalegroups

    return [r.result() for r in scalegroups.as_completed(w.one_noop.map(range(n)))]


def prefect_body(cfg: dict, called_at: float) -> dict:
    w.noop.submit(0).result()
    out: dict[str, list] = {"first_result": [time.time() - called_at], "trivial": [], "trivial_cpu": []}
    [f.result() for f in [w.burn.submit(warm_up_loops(cfg)) for _ in range(2 * WORKERS)]]
    meter = CpuMeter()
    for _ in range(cfg["repeats"]):
        wall, cpu = meter.per_task(lambda: prefect_trivial(cfg["trivial"]), cfg["trivial"])
        out["trivial"].append(wall)
        out["trivial_cpu"].append(cpu)
    out["cpu"] = repeat(cfg["repeats"], lambda: [f.result() for f in [w.burn.submit(cfg["loops"]) for _ in range(8)]])
    sample = cfg["prefect_items"]
    per_item = repeat(cfg["repeats"], lambda: [f.result() for f in [w.item.submit(i) for i in range(sample)]])
    out["fine"] = [t * cfg["items"] / sample for t in per_item]  # extrapolated from the sample
    data = b"x" * (cfg["megabytes"] * 2**20)
    out["data"] = repeat(cfg["repeats"], lambda: [f.result() for f in [w.consume.submit(data) for _ in range(4)]])
    return out


def scalegroups_body(cfg: dict, called_at: float) -> dict:
    import scalegroups

    out = trivial_body(cfg, called_at)
    out["cpu"] = repeat(cfg["repeats"], lambda: [r.result() for r in w.one_burn.map(range(8), loops=cfg["loops"])])
    out["fine"] = repeat(cfg["repeats"], lambda: scalegroups.fan_out(w.item_fn, range(cfg["items"])).results())
    data = b"x" * (cfg["megabytes"] * 2**20)

    def fan_data() -> list:
        shared = scalegroups.share(data)
        return [r.result() for r in w.one_consume.map(range(4), data=shared)]

    out["data"] = repeat(cfg["repeats"], fan_data)
    if cfg.get("engine") in ("dask", "ray"):
        out["stop"] = [stop_latency(cfg["engine"]) for _ in range(cfg["repeats"])]
    return out


def user_body(grouped: bool) -> Callable[[dict, float], dict]:
    """As a user's flow file: 4 warm-up tasks, then the first measured round of 8 CPU tasks."""

    def body(cfg: dict, called_at: float) -> dict:
        if grouped:
            [r.result() for r in w.one_burn.map(range(4), loops=cfg["loops"] // 10)]
        else:
            [f.result() for f in [w.burn.submit(cfg["loops"] // 10) for _ in range(4)]]
        out: dict[str, list] = {"first_result": [time.time() - called_at]}
        started = time.perf_counter()
        if grouped:
            [r.result() for r in w.one_burn.map(range(8), loops=cfg["loops"])]
        else:
            [f.result() for f in [w.burn.submit(cfg["loops"]) for _ in range(8)]]
        out["cpu_first"] = [time.perf_counter() - started]
        started = time.perf_counter()
        (scalegroups_trivial if grouped else prefect_trivial)(cfg["trivial"])
        out["trivial"] = [time.perf_counter() - started]
        return out

    return body


def stop_latency(engine: str) -> float | None:
    """Seconds from a group's deadline (submitted + `timeout`) to its running task being stopped
    (None: not stopped within 60 s).

    Stopped = the task's thread was interrupted (its `finally` wrote the time: Dask, threads never)
    or its process ended (Ray's forced cancel, seen by polling).
    """
    import tempfile
    from pathlib import Path

    import psutil

    from scalegroups import GroupTimeoutError

    with tempfile.TemporaryDirectory() as folder:
        deadline_at = time.time() + w.one_spin.timeout
        run = w.one_spin(0, folder)
        deadline = time.monotonic() + 60
        while not list(Path(folder).glob("pid-*")) and not run.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(GroupTimeoutError):
            run.result()
        started = list(Path(folder).glob("pid-*"))
        if not started:
            return None  # cancelled before it started: nothing was running to stop
        pid = int(started[0].read_text())
        while time.monotonic() < deadline:
            stopped = list(Path(folder).glob("stopped-*"))
            if stopped:
                return float(stopped[0].read_text()) - deadline_at
            if engine == "ray" and not psutil.pid_exists(pid):
                return time.time() - deadline_at
            time.sleep(0.01)
    return None


def trivial_body(cfg: dict, called_at: float) -> dict:
    """Only the trivial tasks (the server-over-a-network rows, `benchmarks/remote.py`).

    Every worker runs a task before the trivial tasks are measured (`warm_up_loops`): a Ray worker
    that started with the first measured round spread its start-up (importing Prefect, 2-4 s of
    CPU) over that round and the next, and the median counted it per task run."""
    w.one_noop(0).result()
    out: dict[str, list] = {"first_result": [time.time() - called_at], "trivial": [], "trivial_cpu": []}
    [r.result() for r in w.one_burn.map(range(2 * WORKERS), loops=warm_up_loops(cfg))]
    meter = CpuMeter()
    for _ in range(cfg["repeats"]):
        wall, cpu = meter.per_task(lambda: scalegroups_trivial(cfg["trivial"]), cfg["trivial"])
        out["trivial"].append(wall)
        out["trivial_cpu"].append(cpu)
    return out


def run_flow(engine: str, config: str, cfg: dict) -> dict:
    from prefect import flow

    if config.startswith("prefect"):
        runner = stock_runner(engine)
    else:
        from scalegroups import make_task_runner

        runner = make_task_runner(engine, max_workers=runner_pool_size(engine))
    body = {
        "prefect": prefect_body,
        "scalegroups": scalegroups_body,
        "prefect-user": user_body(grouped=False),
        "scalegroups-user": user_body(grouped=True),
        "scalegroups-trivial": trivial_body,
    }[config]
    if config == "scalegroups-user":
        import scalegroups

        os.environ.update(SCALEGROUPS_RUNNER=engine, SCALEGROUPS_MAX_WORKERS=str(runner_pool_size(engine)))
        bench_flow = scalegroups.flow(name=f"bench-{config}-{engine}")(body)
    else:
        bench_flow = flow(body, name=f"bench-{config}-{engine}", task_runner=runner)
    return bench_flow({**cfg, "engine": engine}, time.time())


def runner_pool_size(engine: str) -> int:
    """Workers every scalegroups configuration runs with (threads: 4; processes, Dask, Ray: 2)."""
    return 4 if engine == "thread" else WORKERS


def main() -> None:
    engine, config, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = json.loads(cfg_json)
    result = run_raw(engine, cfg) if config == "raw" else run_flow(engine, config, cfg)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
