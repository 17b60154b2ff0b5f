"""Turn benchmark timings into the Markdown of RESULTS.md: medians, ratios, targets."""

from __future__ import annotations

import statistics

CONFIGS = ["raw", "prefect", "scalegroups"]


def _median(results: dict, engine: str, config: str, workload: str) -> float | None:
    entry = results.get(engine, {}).get(config)
    if not isinstance(entry, dict) or not entry.get(workload):
        return None
    return statistics.median(entry[workload])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _check(ok: bool | None, text: str) -> str:
    mark = "n/a" if ok is None else ("met" if ok else "**missed**")
    return f"- {mark}: {text}"


def render(results: dict, cfg: dict, serial: float, machine: dict, elapsed: float, quick: bool) -> str:
    """The whole RESULTS.md text."""
    engines = list(results)
    m = lambda e, c, wl: _median(results, e, c, wl)  # noqa: E731
    lines = [
        "# Benchmark results",
        "",
        f"Measured {machine['date']} by `make bench`{' (--quick: smoke sizes, not comparable)' if quick else ''};"
        f" whole run {elapsed / 60:.1f} min. Medians of {cfg['repeats']} repeats.",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu']}), {machine['memory']}, Python {machine['python']};"
        f" {machine['packages']}.",
        "",
        "Configurations, each in a fresh process, all against one local Prefect API server:"
        " **raw** = the engine's own API (`ThreadPoolExecutor(4)`, `ProcessPoolExecutor(2)`,"
        " `Client.submit` on a 2-process `LocalCluster`, `ray.remote` on a 2-CPU local Ray);"
        " **prefect** = hand-written Prefect (`task.submit`, the stock runner);"
        " **scalegroups** = the same work through `make_task_runner`, groups, `fan_out`, `share`.",
        "",
    ]
    failures = [
        f"- {e}/{c}: {v}"
        for e in engines
        for c in CONFIGS
        if isinstance(results[e].get(c), str)
        for v in [results[e][c]]
    ]
    if failures:
        lines += ["Runs that failed:", *failures, ""]

    n = cfg["trivial"]
    lines += [
        f"## (a) {n} trivial tasks: ms per task",
        "",
        "| engine | raw | prefect | scalegroups | scalegroups / prefect |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        vals = [m(e, c, "trivial") for c in CONFIGS]
        per = [None if v is None else v / n * 1000 for v in vals]
        lines.append(f"| {e} | {_fmt(per[0])} | {_fmt(per[1])} | {_fmt(per[2])} | {_fmt(_ratio(per[2], per[1]))} |")

    lines += [
        "",
        f"## (b) 8 CPU-bound tasks of ~{cfg['cpu_seconds']} s: speedup over serial ({serial:.2f} s; ideal = CPUs)",
        "",
        "| engine | raw | prefect | scalegroups | scalegroups / prefect time |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        vals = [m(e, c, "cpu") for c in CONFIGS]
        speed = [None if v is None else serial / v for v in vals]
        lines.append(
            f"| {e} | {_fmt(speed[0])} | {_fmt(speed[1])} | {_fmt(speed[2])} | {_fmt(_ratio(vals[2], vals[1]))} |"
        )

    items = cfg["items"]
    lines += [
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
        per = [None if (v := m(e, c, "fine")) is None else v / items * 1000 for c in CONFIGS]
        lines.append(
            f"| {e} | {_fmt(per[0], 3)} | {_fmt(per[1], 3)} | {_fmt(per[2], 3)} | {_fmt(_ratio(per[2], per[0]))}"
            f" | {_fmt(_ratio(per[1], per[2]), 0)}× |"
        )

    lines += [
        "",
        f"## (d) {cfg['megabytes']} MB to 4 consumers: seconds",
        "",
        "raw and scalegroups place the data once (`scatter`, `ray.put`, `share`); prefect passes it to each `submit`.",
        "",
        "| engine | raw | prefect | scalegroups | scalegroups / prefect |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        vals = [m(e, c, "data") for c in CONFIGS]
        lines.append(
            f"| {e} | {_fmt(vals[0])} | {_fmt(vals[1])} | {_fmt(vals[2])} | {_fmt(_ratio(vals[2], vals[1]))} |"
        )

    lines += [
        "",
        "## (e) call → first result: seconds (engine start included; raw: engine start + one task)",
        "",
        "| engine | raw | prefect | scalegroups | scalegroups − raw |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        vals = [m(e, c, "first_result") for c in CONFIGS]
        diff = None if vals[0] is None or vals[2] is None else vals[2] - vals[0]
        lines.append(f"| {e} | {_fmt(vals[0])} | {_fmt(vals[1])} | {_fmt(vals[2])} | {_fmt(diff)} |")

    lines += ["", "## Targets", ""]
    for e in [x for x in ("process", "dask", "ray") if x in engines]:
        v = m(e, "scalegroups", "cpu")
        speed = None if v is None else serial / v
        lines.append(_check(None if speed is None else speed >= 1.8, f"{e}: CPU-bound speedup {_fmt(speed)} ≥ 1.8"))
    for e, bound in (("dask", 10.0), ("ray", 1.5)):
        if e not in engines:
            continue
        raw, pre, sg = (m(e, c, "fine") for c in CONFIGS)
        per = [None if x is None else x / items * 1000 for x in (raw, pre, sg)]
        lines.append(
            _check(
                None if per[2] is None or per[0] is None else per[2] <= max(2 * per[0], 0) or per[2] <= bound,
                f"{e}: fine-grained {_fmt(per[2], 3)} ms/item ≤ 2× raw ({_fmt(per[0], 3)}) or ≤ {bound} ms",
            )
        )
        better = _ratio(per[1], per[2])
        lines.append(
            _check(
                None if better is None else better >= 20,
                f"{e}: {_fmt(better, 0)}× better than plain Prefect (≥ 20×)",
            )
        )
    for e in engines:
        for wl in ("trivial", "cpu"):
            r = _ratio(m(e, "scalegroups", wl), m(e, "prefect", wl))
            lines.append(
                _check(
                    None if r is None else r <= 1.05,
                    f"{e} ({wl}): scalegroups / hand-written Prefect = {_fmt(r)} ≤ 1.05",
                )
            )
    for e in [x for x in ("dask", "ray") if x in engines]:
        raw, sg = m(e, "raw", "first_result"), m(e, "scalegroups", "first_result")
        ok = None if raw is None or sg is None else sg <= raw + 2
        lines.append(_check(ok, f"{e}: first result {_fmt(sg)} s ≤ raw start {_fmt(raw)} s + 2 s"))
    lines.append("")
    return "\n".join(lines)
