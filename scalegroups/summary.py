"""Account for every item at the end of a map: counts, and a table artifact in the Prefect UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from prefect.context import FlowRunContext

from scalegroups.errors import GroupTimeoutError
from scalegroups.fanout import FanOut
from scalegroups.groups import GroupRun, final_state

STATUSES = ("completed", "failed", "crashed", "cancelled", "timed_out")


def run_status(run: GroupRun) -> tuple[str, str]:
    """(status, error text) of a finished group run."""
    error = run.exception()
    if error is None:
        return "completed", ""
    if isinstance(error, GroupTimeoutError):
        return "timed_out", str(error)
    states = [final_state(future, 0) for future in run.futures]
    if any(state.is_crashed() for state in states):
        return "crashed", repr(error)
    if any(state.is_cancelled() for state in states):
        return "cancelled", repr(error)
    return "failed", repr(error)


def finished_status(run: GroupRun) -> tuple[str, str]:
    """`run_status` for a finished run without fetching a successful run's results (states only)."""
    if not run.failed():
        return "completed", ""
    return run_status(run)


def group_rows(run: GroupRun) -> list[tuple[str, Any, str]]:
    """The (status, key, error) row of a finished group run, for progress counts."""
    status, error = finished_status(run)
    return [(status, run.key, error)]


def group_rows_if_known(run: GroupRun) -> list[tuple[str, Any, str]] | None:
    """`group_rows` if the run's states are known without an engine round trip, else None."""
    failed = run.failed_if_known()
    if failed is None:
        return None
    return [("completed", run.key, "")] if not failed else group_rows(run)


def counts_line(counts: dict[str, int]) -> str:
    """ "38 completed, 1 failed, 1 crashed": the non-zero counts, in `STATUSES` order."""
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s)) or "none"


def summary_table(counts: dict[str, int], problems: list[dict[str, str]], limit: int = 1000) -> list[dict[str, str]]:
    """Rows for a Prefect table: one per status with its count, then one per problem item (key, error)."""
    rows = [{"status": s, "count": str(counts.get(s, 0)), "key": "", "error": ""} for s in STATUSES]
    for problem in problems[:limit]:
        rows.append({"status": problem["status"], "count": "", "key": problem["key"], "error": problem["error"][:500]})
    if len(problems) > limit:
        more = str(len(problems) - limit)
        rows.append({"status": "...", "count": more, "key": "(more problems not listed)", "error": ""})
    return rows


def summarize(items: Iterable[GroupRun] | FanOut, *, artifact_key: str | None = None) -> dict[str, Any]:
    """Wait for every run (or fan-out item) and count them by status; in a flow, also publish a table.

    Returns {"total": n, "completed": ..., "failed": ..., "crashed": ..., "cancelled": ..., "timed_out": ...,
    "problems": [{"key": ..., "status": ..., "error": ...}, ...]}.
    """
    rows: list[dict[str, str]] = []
    if isinstance(items, FanOut):
        for outcome in items.outcomes():
            rows.append({"key": repr(outcome.key), "status": outcome.status, "error": repr(outcome.error or "")})
        name = items.name
    else:
        runs = list(items)
        for run in runs:
            status, error = run_status(run)
            rows.append({"key": repr(run.key), "status": status, "error": error})
        name = runs[0].group if runs else "groups"
    counts = Counter(row["status"] for row in rows)
    summary: dict[str, Any] = {"total": len(rows), **{s: counts.get(s, 0) for s in STATUSES}}
    summary["problems"] = [row for row in rows if row["status"] != "completed"]
    if FlowRunContext.get() is not None:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            table=summary_table(summary, summary["problems"]),
            key=artifact_key,
            description=f"{name}: {summary['total']} items: {counts_line(summary)}",
        )
    return summary
