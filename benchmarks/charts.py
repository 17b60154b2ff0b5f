"""The headline comparisons of RESULTS.md as PNG charts (matplotlib, the `bench` extra)."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.report import BOOKKEEPING_MS, FIRST_ROUND_SPEEDUP, cpu_split, first_round, median

COLORS = {"flow": "#4c72b0", "workers": "#dd8452", "server": "#55a868"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def bookkeeping_chart(results: dict, out: Path) -> Path:
    """Stacked bars: CPU ms per task run by process, stock Prefect vs scalegroups, per engine."""
    plt = _pyplot()
    engines = [e for e in results if cpu_split(results, e, "scalegroups")]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels, x = [], 0.0
    for engine in engines:
        for config in ("prefect", "scalegroups"):
            split = cpu_split(results, engine, config)
            if split is None:
                continue
            bottom = 0.0
            for part in ("flow", "workers", "server"):
                ax.bar(x, split[part], bottom=bottom, color=COLORS[part], label=part if x == 0 else None)
                bottom += split[part]
            ax.text(x, bottom, f"{bottom:.0f}", ha="center", va="bottom", fontsize=8)
            labels.append((x, f"{engine}\n{'Prefect' if config == 'prefect' else 'scalegroups'}"))
            x += 1
        x += 0.6
    ax.axhline(BOOKKEEPING_MS, color="grey", linestyle="--", linewidth=1)
    ax.text(x - 0.5, BOOKKEEPING_MS, f"target {BOOKKEEPING_MS:g} ms", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
    ax.set_ylabel("CPU ms per task run (all processes)")
    ax.set_title("Prefect bookkeeping per task run: Prefect as it ships vs scalegroups")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = out / "bookkeeping.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speedup_chart(results: dict, serial: float, out: Path) -> Path:
    """Grouped bars: speedup over serial of 8 CPU tasks, raw / Prefect / scalegroups, per engine."""
    plt = _pyplot()
    engines = list(results)
    series = [
        ("raw engine", "raw", "cpu"),
        ("Prefect (as a user)", "prefect-user", "cpu_first"),
        ("scalegroups (as a user)", "scalegroups-user", "cpu_first"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.26
    for i, (label, config, workload) in enumerate(series):
        if workload == "cpu_first":  # per run, against the serial time measured next to it
            speeds = [statistics.median(f) if (f := first_round(results, e, config)) else 0 for e in engines]
        else:
            speeds = [0 if (v := median(results, e, config, workload)) is None else serial / v for e in engines]
        bars = ax.bar([j + (i - 1) * width for j in range(len(engines))], speeds, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(FIRST_ROUND_SPEEDUP, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(engines)), engines)
    ax.set_ylabel("speedup over serial (2 cores: ideal 2)")
    ax.set_title("8 CPU-bound tasks of ~0.6 s, first round after warm-up")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / "speedup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def startup_chart(startup: dict[str, float], out: Path) -> Path:
    """Horizontal bars: whole-process seconds of the seed pattern, Prefect vs scalegroups."""
    plt = _pyplot()
    names = [n for n in startup if not n.startswith("import") and isinstance(startup[n], float)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["#c44e52" if n.startswith("prefect") else "#4c72b0" for n in names]
    bars = ax.barh(names, [startup[n] for n in names], color=colors)
    ax.bar_label(bars, fmt="%.1f s", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds, `python seed.py` to exit")
    ax.set_title("Start-up of a small flow file on threads")
    fig.tight_layout()
    path = out / "startup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(results: dict, startup: dict[str, float], serial: float, out: Path) -> list[Path]:
    """Every chart, saved next to RESULTS.md."""
    return [bookkeeping_chart(results, out), speedup_chart(results, serial, out), startup_chart(startup, out)]
