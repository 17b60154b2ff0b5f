"""Turn benchmark measurements into the Markdown of RESULTS.md: medians, ratios, targets."""

from __future__ import annotations

import statistics
from typing import Any

SHARED = ["raw", "prefect", "scalegroups"]
WORKER_ENGINES = ("process", "dask", "ray")

#: targets of issue 9, checked on every run
BOOKKEEPING_MS = 20.0
SERVER_MS = 10.0
FIRST_ROUND_SPEEDUP = 1.85
COLD_START_S = 8.0
WARM_SERVER_S = 3.0
#: progress artifacts on ÷ off, CPU per task run: more than this would show
PROGRESS_COST = 1.10


def entry(results: dict, engine: str, config: str) -> dict | None:
    value = results.get(engine, {}).get(config)
    return value if isinstance(value, dict) else None


def median(results: dict, engine: str, config: str, workload: str) -> float | None:
    found = entry(results, engine, config)
    if not found or not found.get(workload):
        return None
    return statistics.median(found[workload])


def cpu_split(results: dict, engine: str, config: str) -> dict[str, float] | None:
    """Median CPU ms per trivial task run for flow, workers and server, plus their total."""
    found = entry(results, engine, config)
    if not found or not found.get("trivial_cpu"):
        return None
    split = {k: statistics.median(r[k] for r in found["trivial_cpu"]) for k in ("flow", "workers", "server")}
    split["total"] = sum(split.values())
    return split


def first_round(results: dict, engine: str, config: str) -> list[float]:
    """Speedups of each measured first round, each against the serial time measured next to it."""
    found = entry(results, engine, config) or {}
    return sorted(found.get("first_speedup", []))


def first_round_cell(speeds: list[float]) -> str:
    """The median, with the range when there were several runs: "1.91 (1.80–1.97)"."""
    if not speeds:
        return "—"
    spread = f" ({speeds[0]:.2f}–{speeds[-1]:.2f})" if len(speeds) > 1 else ""
    return f"{statistics.median(speeds):.2f}{spread}"


def bookkeeping(results: dict, engine: str) -> float | None:
    """scalegroups' CPU per task run beyond the raw engine's own CPU per task."""
    ours, raw = cpu_split(results, engine, "scalegroups"), cpu_split(results, engine, "raw")
    return None if ours is None or raw is None else ours["total"] - raw["total"]


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def check(ok: bool | None, text: str) -> str:
    mark = "n/a" if ok is None else ("met" if ok else "**missed**")
    return f"- {mark}: {text}"


def header(cfg: dict, machine: dict, elapsed: float, quick: bool) -> list[str]:
    return [
        "# Benchmark results",
        "",
        f"Measured {machine['date']} by `make bench`{' (--quick: smoke sizes, not comparable)' if quick else ''};"
        f" whole run {elapsed / 60:.1f} min; load average at the end {machine['load']}. Medians of"
        f" {cfg['repeats']} repeats.",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu']}), {machine['memory']}, Python {machine['python']};"
        f" {machine['packages']}.",
        "",
        "Configurations, each in a fresh process: **raw** = the engine's own API (`ThreadPoolExecutor(4)`,"
        " `ProcessPoolExecutor(2)`, `Client.submit` on a 2-process `LocalCluster`, `ray.remote` on a 2-CPU"
        " local Ray); **prefect** = hand-written Prefect (`task.submit`, the stock runner) against a local"
        " Prefect server with Prefect's own settings; **scalegroups** = the same work through"
        " `make_task_runner`, groups, `fan_out` and `share`, against a lean local server as scalegroups starts"
        " one; **…-user** = as a user runs a flow file: no `PREFECT_API_URL`, a fresh `PREFECT_HOME`."
        " Every configuration logs at Prefect's default level (INFO): each task run's log lines are"
        " printed and sent to the API.",
        "",
    ]


def bookkeeping_table(results: dict, engines: list[str], cfg: dict) -> list[str]:
    n = cfg["trivial"]
    lines = [
        f"## (a) Bookkeeping: CPU per task run, {n} trivial tasks (one group run each)",
        "",
        "CPU ms per task run, summed over every process of its kind, measured after every worker has run a"
        " task (a worker's start-up is in (e) and (f)) and until the API server has recorded everything:"
        " **flow** = the flow's process (with Dask's scheduler, which runs there),"
        " **workers** = every process it started (engine workers, Ray's raylet and GCS), **server** = the"
        " Prefect API server. **bookkeeping** = total − the raw engine's own total. Wall = ms per task.",
        "",
        "| engine | config | flow | workers | server | total | bookkeeping | wall ms/task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in engines:
        raw_total = (cpu_split(results, e, "raw") or {}).get("total")
        for c in SHARED:
            split = cpu_split(results, e, c)
            wall = median(results, e, c, "trivial")
            if split is None:
                lines.append(f"| {e} | {c} | — | — | — | — | — | — |")
                continue
            extra = None if raw_total is None or c == "raw" else split["total"] - raw_total
            lines.append(
                f"| {e} | {c} | {fmt(split['flow'], 1)} | {fmt(split['workers'], 1)} | {fmt(split['server'], 1)}"
                f" | {fmt(split['total'], 1)} | {fmt(extra, 1)} | {fmt(None if wall is None else wall / n * 1000, 1)} |"
            )
    return lines


def speedup_table(results: dict, engines: list[str], cfg: dict, serial: float) -> list[str]:
    lines = [
        "",
        f"## (b) 8 CPU-bound tasks of ~{cfg['cpu_seconds']} s: speedup over serial ({serial:.2f} s; ideal = CPUs)",
        "",
        "Shared server: median of the repeats in one process (warm), against the serial time above. As a"
        " user: the *first* round after 4 warm-up tasks, from a fresh `PREFECT_HOME` with no server (no"
        " waiting for anything to go idle), on a quiet machine (run before the shared servers start);"
        " each run is a fresh process, compared with the same 8 tasks run"
        " serially just before and just after it (this host's CPU speed drifts by up to 30% within minutes):"
        f" median of {cfg.get('user_repeats', 1)} runs (lowest–highest).",
        "",
        "| engine | raw | prefect | scalegroups | prefect (as a user) | scalegroups (as a user) |",
        "|---|---|---|---|---|---|",
    ]
    for e in engines:
        warm = [median(results, e, c, "cpu") for c in SHARED]
        cells = [fmt(None if v is None else serial / v) for v in warm]
        cells += [first_round_cell(first_round(results, e, c)) for c in ("prefect-user", "scalegroups-user")]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def fine_table(results: dict, engines: list[str], cfg: dict) -> list[str]:
    items = cfg["items"]
    lines = [
        "",
        f"## (c) {items:,}-item fine-grained map: ms per item",
        "",
        f"prefect = one task per item, measured on {cfg['prefect_items']} items and scaled;"
        " scalegroups = `fan_out` (automatic batches, one Prefect task run per batch).",
        "",
        "| engine | raw | prefect | scalegroups | scalegroups / raw | prefect / scalegroups |",
        "|---|---|---|---|---|---|",
    ]
    for e in engines:
        per = [None if (v := median(results, e, c, "fine")) is None else v / items * 1000 for c in SHARED]
        lines.append(
            f"| {e} | {fmt(per[0], 3)} | {fmt(per[1], 3)} | {fmt(per[2], 3)} | {fmt(ratio(per[2], per[0]))}"
            f" | {fmt(ratio(per[1], per[2]), 0)}× |"
        )
    return lines


def data_and_first_tables(results: dict, engines: list[str], cfg: dict) -> list[str]:
    lines = [
        "",
        f"## (d) {cfg['megabytes']} MB to 4 consumers: seconds",
        "",
        "raw and scalegroups place the data once (`scatter`, `ray.put`, `share`); prefect passes it to each `submit`.",
        "",
        "| engine | raw | prefect | scalegroups | scalegroups / prefect |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        vals = [median(results, e, c, "data") for c in SHARED]
        lines.append(f"| {e} | {fmt(vals[0])} | {fmt(vals[1])} | {fmt(vals[2])} | {fmt(ratio(vals[2], vals[1]))} |")
    lines += [
        "",
        "## (e) call → first result: seconds (engine start included; raw: engine start + one task)",
        "",
        "| engine | raw | prefect | scalegroups | prefect (as a user) | scalegroups (as a user) |",
        "|---|---|---|---|---|---|",
    ]
    for e in engines:
        vals = [median(results, e, c, "first_result") for c in (*SHARED, "prefect-user", "scalegroups-user")]
        lines.append(f"| {e} | " + " | ".join(fmt(v) for v in vals) + " |")
    return lines


def startup_table(startup: dict[str, float]) -> list[str]:
    lines = [
        "",
        "## (f) Start-up: the seed pattern on threads as a whole process, seconds",
        "",
        "`python examples/seed.py` (5 groups of 4 small tasks) from the shell prompt back to it;"
        " **prefect** = the same code as plain Prefect wrote it (`benchmarks/plain_seed.py`: its own"
        " temporary server); **cold** = a fresh `PREFECT_HOME`, no server; **warm** = a home used before;"
        " **warm server** = `scalegroups server start` first; **first run on a machine** = not even"
        " scalegroups' template database exists yet.",
        "",
        "| what | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value if isinstance(value, str) else fmt(value)} |" for name, value in startup.items()]
    return lines


def stop_table(results: dict, engines: list[str]) -> list[str]:
    """(h): how long a timed-out group's running task keeps running."""
    lines = [
        "",
        "## (h) Stopping a timed-out group",
        "",
        "A group with `timeout=2` whose task spins in pure Python: seconds from the group's deadline"
        " (submitted + 2 s) to the task stopped (Dask: `TaskInterrupted` raised in its thread, its"
        " `finally` ran; Ray: the worker process ended by `ray.cancel(force=True)`). Median of the repeats.",
        "",
        "| engine | seconds to stop | repeats |",
        "|---|---|---|",
    ]
    for e in engines:
        found = entry(results, e, "scalegroups")
        values = [v for v in (found or {}).get("stop", []) if v is not None]
        if found and found.get("stop"):
            missing = len(found["stop"]) - len(values)
            note = f"{len(values)}" + (f" ({missing} not started in time, or not stopped in 60 s)" if missing else "")
            lines.append(f"| {e} | {fmt(statistics.median(values) if values else None)} | {note} |")
    return lines


def remote_table(remote: dict, cfg: dict) -> list[str]:
    """(g): the same trivial task runs with the API server over loopback and on another host."""
    lines = ["", "## (g) The API server on another host", ""]
    if not remote:
        return lines + ["Not measured in this run (`--no-remote`)."]
    if "skipped" in remote:
        return lines + [f"Not measured here: {remote['skipped']}."]
    delay = remote.get("delay_ms")
    lines += [
        f"{cfg['trivial']} trivial tasks (one group run each); the lean API server in this host's network"
        " namespace (**loopback**) or in another namespace across a veth pair and a bridge (**network**"
        + (f", {delay:g} ms round trip added with netem" if delay else ", no delay added: netem unavailable")
        + "). CPU ms per task run by process, and wall ms per task.",
        "",
        "| engine | server | flow | workers | server CPU | total | wall ms/task | network ÷ loopback (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for engine, places in remote.items():
        if not isinstance(places, dict):
            continue
        walls = {}
        for place in ("loopback", "network"):
            found = places.get(place)
            if not isinstance(found, dict):
                lines.append(f"| {engine} | {place} | failed: {str(found)[:80]} | | | | | |")
                continue
            split = {k: statistics.median(r[k] for r in found["trivial_cpu"]) for k in ("flow", "workers", "server")}
            walls[place] = statistics.median(found["trivial"]) / cfg["trivial"] * 1000
            ratio_text = fmt(ratio(walls.get("network"), walls.get("loopback"))) if place == "network" else ""
            lines.append(
                f"| {engine} | {place} | {fmt(split['flow'], 1)} | {fmt(split['workers'], 1)} |"
                f" {fmt(split['server'], 1)} | {fmt(sum(split.values()), 1)} | {fmt(walls[place], 1)} | {ratio_text} |"
            )
    return lines


def progress_row(progress: dict, engine: str, label: str, cfg: dict) -> tuple[float, float, float] | None:
    """(CPU ms per task run over all processes, of it the server's, wall ms per task) of one (i) run;
    `progress` has the shape of `results` ({engine: {"on"|"off": run}}), so the (a) helpers read it."""
    split, wall = cpu_split(progress, engine, label), median(progress, engine, label, "trivial")
    if split is None or wall is None:
        return None
    return split["total"], split["server"], wall / cfg["trivial"] * 1000


def progress_table(progress: dict, cfg: dict) -> list[str]:
    """(i): the same trivial task runs with progress artifacts on (the default) and off."""
    lines = ["", "## (i) Progress artifacts: what they cost", ""]
    if not progress:
        return lines + ["Not measured in this run (`--no-progress`, or no `scalegroups` configuration)."]
    lines += [
        f"{cfg['trivial']} trivial tasks in one `map` (one group run each), lean server, progress artifacts"
        " on (`SCALEGROUPS_PROGRESS=1`, the default: a progress artifact updated every ~2 s and a summary"
        " table at the end) and off (`SCALEGROUPS_PROGRESS=0`); a full run goes off, on, on, off, medians of the"
        " pooled repeats.",
        "",
        "| engine | progress | CPU ms/task run (all processes) | of which server | wall ms/task"
        " | on ÷ off (CPU) | on ÷ off (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, runs in progress.items():
        off = progress_row(progress, engine, "off", cfg)
        for label in ("off", "on"):
            found = progress_row(progress, engine, label, cfg)
            if found is None:
                lines.append(f"| {engine} | {label} | failed: {str(runs.get(label))[:80]} | | | | |")
                continue
            ratios = ("", "")
            if label == "on" and off is not None:
                ratios = (fmt(ratio(found[0], off[0])), fmt(ratio(found[2], off[2])))
            lines.append(
                f"| {engine} | {label} | {fmt(found[0], 1)} | {fmt(found[1], 1)} | {fmt(found[2], 1)} |"
                f" {ratios[0]} | {ratios[1]} |"
            )
    return lines


def progress_cost(progress: dict, cfg: dict) -> dict[str, float | None]:
    """on ÷ off CPU per task run, per engine (None: a run failed)."""
    costs: dict[str, float | None] = {}
    for engine in progress:
        on, off = (progress_row(progress, engine, label, cfg) for label in ("on", "off"))
        costs[engine] = None if on is None or off is None else ratio(on[0], off[0])
    return costs


def targets(results: dict, engines: list[str], cfg: dict, serial: float, startup: dict[str, float]) -> list[str]:
    lines = ["", "## Targets", ""]
    for e in [x for x in WORKER_ENGINES if x in engines]:
        split, extra = cpu_split(results, e, "scalegroups"), bookkeeping(results, e)
        total = None if split is None else split["total"]
        lines.append(
            check(
                None if extra is None else extra <= BOOKKEEPING_MS,
                f"{e}: bookkeeping {fmt(extra, 1)} ms CPU per task run ≤ {BOOKKEEPING_MS:g}"
                f" (all processes {fmt(total, 1)} ms, the raw engine's own included)",
            )
        )
        server = None if split is None else split["server"]
        lines.append(
            check(None if server is None else server <= SERVER_MS, f"{e}: server {fmt(server, 1)} ms ≤ {SERVER_MS:g}")
        )
        speeds = first_round(results, e, "scalegroups-user")
        speed = statistics.median(speeds) if speeds else None
        lines.append(
            check(
                None if speed is None else speed >= FIRST_ROUND_SPEEDUP,
                f"{e}: first round of CPU groups {fmt(speed)}× ≥ {FIRST_ROUND_SPEEDUP}× (fresh home, as a user;"
                f" median of {len(speeds)})",
            )
        )
    cold, warm = (
        value if isinstance(value := startup.get(name), float) else None
        for name in ("scalegroups cold", "scalegroups warm server")
    )
    lines.append(
        check(None if cold is None else cold <= COLD_START_S, f"cold start {fmt(cold)} s ≤ {COLD_START_S:g} s")
    )
    lines.append(
        check(
            None if warm is None else warm <= WARM_SERVER_S,
            f"warm, server started: {fmt(warm)} s ≤ {WARM_SERVER_S:g} s",
        )
    )
    items = cfg["items"]
    for e, bound in (("dask", 10.0), ("ray", 1.5)):
        if e not in engines:
            continue
        per = [None if (v := median(results, e, c, "fine")) is None else v / items * 1000 for c in SHARED]
        ok = None if per[2] is None or per[0] is None else per[2] <= 2 * per[0] or per[2] <= bound
        lines.append(
            check(ok, f"{e}: fine-grained {fmt(per[2], 3)} ms/item ≤ 2× raw ({fmt(per[0], 3)}) or ≤ {bound} ms")
        )
    return lines


def render(
    results: dict,
    startup: dict[str, float],
    cfg: dict,
    serial: float,
    machine: dict,
    elapsed: float,
    quick: bool,
    remote: dict | None = None,
    progress: dict | None = None,
) -> str:
    """The whole RESULTS.md text."""
    engines = list(results)
    failures = [f"- {e}/{c}: {v}" for e in engines for c, v in results[e].items() if isinstance(v, str)]
    failures += [
        f"- {e}/{c}: {len(v['failed'])} of its runs: {v['failed'][0]}"
        for e in engines
        for c, v in results[e].items()
        if isinstance(v, dict) and v.get("failed")
    ]
    lines: list[Any] = header(cfg, machine, elapsed, quick)
    if failures:
        lines += ["Runs that failed:", *failures, ""]
    lines += bookkeeping_table(results, engines, cfg)
    lines += speedup_table(results, engines, cfg, serial)
    lines += fine_table(results, engines, cfg)
    lines += data_and_first_tables(results, engines, cfg)
    lines += startup_table(startup)
    lines += remote_table(remote or {}, cfg)
    lines += stop_table(results, engines)
    lines += progress_table(progress or {}, cfg)
    lines += targets(results, engines, cfg, serial, startup)
    for engine, cost in progress_cost(progress or {}, cfg).items():
        lines.append(
            check(
                None if cost is None else cost <= PROGRESS_COST,
                f"{engine}: progress artifacts: {fmt(cost)}× the CPU per task run without them ≤ {PROGRESS_COST:g}×",
            )
        )
    lines += ["", "Charts: ![bookkeeping](bookkeeping.png) ![speedup](speedup.png) ![start-up](startup.png)", ""]
    return "\n".join(lines)
