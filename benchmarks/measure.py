"""One benchmark configuration (engine x {raw, prefect, scalegroups}), run in its own process.

Prints one JSON object: for each workload, a list of repeat timings in seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import workloads as w

WORKERS = 2


def settle(limit_s: float = 180) -> None:
    """Wait until the shared API server has digested earlier work (its CPU under 10% for 1 s).

    The server records task runs asynchronously (~45 ms of CPU each on this machine class), so
    without this a workload would be measured against the previous workload's backlog.
    """
    pid = os.environ.get("SCALEGROUPS_BENCH_SERVER_PID")
    if not pid:
        return
    import psutil

    server = psutil.Process(int(pid))
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and server.cpu_percent(interval=1.0) > 10:
        pass


def repeat(times: int, fn: Callable[[], Any]) -> list[float]:
    settle()
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return timings


# ---------------------------------------------------------------- raw engines
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
    settle()
    started = time.perf_counter()
    raw = RawEngine(engine)
    raw.gather([raw.submit(w.noop_fn, 0)])
    first = time.perf_counter() - started
    out = {"first_result": [first]}
    out["trivial"] = repeat(
        cfg["repeats"], lambda: raw.gather([raw.submit(w.noop_fn, i) for i in range(cfg["trivial"])])
    )
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


# ------------------------------------------------------- Prefect, hand-written
def hand_runner(engine: str) -> Any:
    if engine == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=4)
    if engine == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=WORKERS)
    if engine == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": WORKERS,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address="local", init_kwargs={"num_cpus": WORKERS, "include_dashboard": False})


def prefect_body(cfg: dict, called_at: float) -> dict:
    w.noop.submit(0).result()
    out: dict[str, list[float]] = {"first_result": [time.time() - called_at]}
    out["trivial"] = repeat(
        cfg["repeats"], lambda: [f.result() for f in [w.noop.submit(i) for i in range(cfg["trivial"])]]
    )
    out["cpu"] = repeat(cfg["repeats"], lambda: [f.result() for f in [w.burn.submit(cfg["loops"]) for _ in range(8)]])
    sample = cfg["prefect_items"]
    per_item = repeat(cfg["repeats"], lambda: [f.result() for f in [w.item.submit(i) for i in range(sample)]])
    out["fine"] = [t * cfg["items"] / sample for t in per_item]  # extrapolated from the sample
    data = b"x" * (cfg["megabytes"] * 2**20)
    out["data"] = repeat(cfg["repeats"], lambda: [f.result() for f in [w.consume.submit(data) for _ in range(4)]])
    return out


def scalegroups_body(cfg: dict, called_at: float) -> dict:
    import scalegroups

    w.one_noop(0).result()
    out: dict[str, list[float]] = {"first_result": [time.time() - called_at]}
    out["trivial"] = repeat(
        cfg["repeats"],
        lambda: [r.result() for r in scalegroups.as_completed(w.one_noop.map(range(cfg["trivial"])))],
    )
    out["cpu"] = repeat(cfg["repeats"], lambda: [r.result() for r in w.one_burn.map(range(8), loops=cfg["loops"])])
    out["fine"] = repeat(cfg["repeats"], lambda: scalegroups.fan_out(w.item_fn, range(cfg["items"])).results())
    data = b"x" * (cfg["megabytes"] * 2**20)

    def fan_data() -> list:
        shared = scalegroups.share(data)
        return [r.result() for r in w.one_consume.map(range(4), data=shared)]

    out["data"] = repeat(cfg["repeats"], fan_data)
    return out


def run_flow(engine: str, config: str, cfg: dict) -> dict:
    from prefect import flow

    if config == "prefect":
        runner, body = hand_runner(engine), prefect_body
    else:
        from scalegroups import make_task_runner

        runner = make_task_runner(engine, max_workers=4 if engine == "thread" else WORKERS)
        body = scalegroups_body
    bench_flow = flow(body, name=f"bench-{config}-{engine}", task_runner=runner)
    settle()
    return bench_flow(cfg, time.time())


def main() -> None:
    engine, config, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = json.loads(cfg_json)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    result = run_raw(engine, cfg) if config == "raw" else run_flow(engine, config, cfg)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
