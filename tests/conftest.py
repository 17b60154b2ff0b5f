"""The project's tests use the scalegroups pytest plugin (installed with the package)."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# `make test` runs two pytest-xdist workers: each gets a Prefect home (a database) of its own, as
# two local servers writing one SQLite file would wait on each other's locks. Set before anything
# imports Prefect (the scalegroups plugin does not).
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get("PREFECT_HOME"):
    os.environ["PREFECT_HOME"] = os.path.join(os.environ["PREFECT_HOME"], _worker)

# tests/compat/ drives upstream suites in their own pytest processes (`make test-compat`); it holds
# no tests of ours, and `make test` must never import its binding plugin.
collect_ignore = ["compat"]

# Longest first: pytest-xdist hands tests out in collection order, so a long test collected last
# keeps one worker busy while the other idles. tests/durations.json holds seconds per test (setup +
# call + teardown) from a measured run; refresh it with `make test PYTEST_ARGS=--store-durations`.
# The order changes nothing else: every test still runs, each test in a fresh state.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true", help=f"write each test's seconds to {DURATIONS}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order tests longest first (an xdist group by its total), unknown ones after, stable otherwise."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    weight: dict[str, float] = {}
    for item in items:
        key = _group(item) or item.nodeid
        weight[key] = weight.get(key, 0.0) + known.get(item.nodeid, 0.0)
    items.sort(key=lambda item: -weight[_group(item) or item.nodeid])


def _group(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return f"group:{mark.args[0] if mark.args else mark.kwargs.get('name')}" if mark else None


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.getoption("store_durations") and not os.environ.get("PYTEST_XDIST_WORKER") and _measured:
        DURATIONS.write_text(json.dumps({k: round(v, 2) for k, v in sorted(_measured.items())}, indent=0) + "\n")
