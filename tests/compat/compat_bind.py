"""pytest plugin for `make test-compat`, loaded with `-p compat_bind` into an upstream test run.

The upstream test files and their conftest run untouched; this plugin is the only thing we add.
It is driven by environment variables that `tests/compat/run.py` sets:

- `COMPAT_SUITE`: `dask` or `ray` (which runner classes to bind, see `BINDINGS`).
- `COMPAT_MODE`: `stock` binds nothing; `ours` replaces the stock runner class by the scalegroups
  subclass in every module attribute the tests can import it from, before any test module is
  imported. `scalegroups.engines.*` is imported first, so our class still derives from the real
  stock class. In both modes the plugin checks, after collection, which class the test modules'
  global name really is, prints it, and stops the run if it is not the expected one: the
  comparison can never silently be stock against stock (or ours against ours).
- `COMPAT_DESELECT_PARAMS`: comma-separated fixture names; tests parametrized with a fixture
  function of that name (e.g. prefect-ray's `ray_task_runner_with_inprocess_cluster`) are
  deselected, and the count is printed.
- `COMPAT_REPORT`: where to write the JSON result (per test: outcome, first lines of the error).

One change to the run's infrastructure, the same in both modes: both upstream conftests start
their session's API server with Prefect's `prefect_test_harness()`, whose start-up timeout is a
fixed 30 s. On a fresh `PREFECT_HOME` that start migrates a new database; with both suites side by
side on 2 cores it took 27.6 s in one run and over 30 s in the next, and every test of that run
then errored in set-up (CI, 2026-12-02: "no test passed" on the stock runner). Here the harness
waits as long as Prefect's own setting `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` says
(`run.py` sets it); a server that never answers still fails the run, only later.

Prefect's own `tests/test_task_runners.py` (ThreadPoolTaskRunner / ProcessPoolTaskRunner) has no
binding here: the `prefect` sdist ships no `tests/` directory; see `run.py` for why it cannot run.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

# suite -> [(our module, our class, the name the test modules use, where the stock class lives)]
BINDINGS: dict[str, list[tuple[str, str, str, list[str]]]] = {
    "dask": [
        ("scalegroups.engines.dask", "DaskRunner", "DaskTaskRunner", ["prefect_dask", "prefect_dask.task_runners"]),
    ],
    "ray": [
        ("scalegroups.engines.ray", "RayRunner", "RayTaskRunner", ["prefect_ray", "prefect_ray.task_runners"]),
    ],
}

SUITE = os.environ.get("COMPAT_SUITE", "")
MODE = os.environ.get("COMPAT_MODE", "")
PREFIX = "scalegroups-compat:"


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


class CompatPlugin:
    def __init__(self) -> None:
        self.bound: list[dict[str, str]] = []
        #: class name the test modules use -> the qualified name of the class they must see
        self.expected: dict[str, str] = {}
        self.seen: dict[str, dict[str, str]] = {}
        self.tests: dict[str, dict[str, Any]] = {}
        self.collect_errors: list[dict[str, str]] = []
        self.deselected: list[str] = []
        self.deselect_params = {p for p in os.environ.get("COMPAT_DESELECT_PARAMS", "").split(",") if p}
        self.fatal: str | None = None

    # -- binding ---------------------------------------------------------------------------------
    def bind(self) -> None:
        if SUITE not in BINDINGS or MODE not in {"stock", "ours"}:
            raise pytest.UsageError(f"{PREFIX} COMPAT_SUITE={SUITE!r} COMPAT_MODE={MODE!r} are not valid")
        for our_module, our_name, stock_name, locations in BINDINGS[SUITE]:
            if MODE == "stock":
                # Nothing of scalegroups is imported: the stock run is upstream's run as is.
                stock = getattr(importlib.import_module(locations[0]), stock_name)
                self.expected[stock_name] = _qualified(stock)
                continue
            ours = getattr(importlib.import_module(our_module), our_name)  # imports the stock class first
            for location in locations:
                module = importlib.import_module(location)
                stock = getattr(module, stock_name)
                if stock is not ours and stock not in ours.__mro__:
                    raise pytest.UsageError(
                        f"{PREFIX} {location}.{stock_name} is {_qualified(stock)}, not a base of {_qualified(ours)}"
                    )
                setattr(module, stock_name, ours)
                self.bound.append({"location": f"{location}.{stock_name}", "stock": _qualified(stock)})
            self.expected[stock_name] = _qualified(ours)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = [f"{PREFIX} suite {SUITE}, mode {MODE}", _HARNESS_LINE]
        if MODE == "stock":
            lines += [f"{PREFIX} no binding; tests must see {name} = {q}" for name, q in self.expected.items()]
        for entry in self.bound:
            lines.append(
                f"{PREFIX} bound {entry['location']} -> {self.expected[entry['location'].rsplit('.', 1)[1]]}"
                f" (subclass of {entry['stock']})"
            )
        return lines

    # -- selection and the check that the tests see the class we mean ---------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config, items: list) -> None:
        keep = []
        for item in items:
            module = getattr(item, "module", None)
            if module is not None and module.__name__ not in self.seen:
                self.seen[module.__name__] = {
                    name: _qualified(getattr(module, name)) for name in self.expected if hasattr(module, name)
                }
            if self._deselected_by_param(item):
                self.deselected.append(item.nodeid)
            else:
                keep.append(item)
        if self.deselected:
            config.hook.pytest_deselected(items=[i for i in items if i.nodeid in set(self.deselected)])
            items[:] = keep
        wrong = {
            f"{module}.{name}": actual
            for module, names in self.seen.items()
            for name, actual in names.items()
            if actual != self.expected[name]
        }
        if wrong or not any(self.seen.values()):
            self.fatal = f"test modules do not see the expected classes {self.expected}: {wrong or self.seen}"

    def _deselected_by_param(self, item: Any) -> bool:
        callspec = getattr(item, "callspec", None)
        if callspec is None or not self.deselect_params:
            return False
        for value in callspec.params.values():
            function = getattr(value, "_fixture_function", value)  # pytest wraps fixture functions
            if getattr(function, "__name__", None) in self.deselect_params:
                return True
        return False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for module, names in self.seen.items():
            for name, actual in names.items():
                ok = "ok" if actual == self.expected[name] else "WRONG"
                line = f"{PREFIX} {module}.{name} is {actual} ({MODE}: {ok})"
                if reporter is not None:
                    reporter.write_line(line)
        if self.deselected and reporter is not None:
            reporter.write_line(
                f"{PREFIX} deselected {len(self.deselected)} tests parametrized with {sorted(self.deselect_params)}"
            )
        if self.fatal:
            self._write(exitstatus=None)
            pytest.exit(f"{PREFIX} {self.fatal}", returncode=3)

    # -- results ---------------------------------------------------------------------------------
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append({"nodeid": report.nodeid, "error": _error_lines(report)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "error": "", "duration": 0.0})
        entry["duration"] = round(entry["duration"] + report.duration, 2)
        if report.failed:
            if entry["outcome"] not in {"failed", "error"}:
                entry["outcome"] = "failed" if report.when == "call" else "error"
                entry["error"] = (f"[{report.when}] " if report.when != "call" else "") + _error_lines(report)
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
            entry["error"] = _skip_reason(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._write(exitstatus=int(exitstatus))

    def _write(self, exitstatus: int | None) -> None:
        path = os.environ.get("COMPAT_REPORT")
        if not path:
            return
        data = {
            "suite": SUITE,
            "mode": MODE,
            "expected": self.expected,
            "bound": self.bound,
            "seen": self.seen,
            "fatal": self.fatal,
            "deselected": self.deselected,
            "collect_errors": self.collect_errors,
            "exitstatus": exitstatus,
            "tests": self.tests,
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


def _error_lines(report: Any, limit: int = 10) -> str:
    """Where it failed and the end of the (native) traceback: the innermost frames and the exception."""
    text = getattr(report, "longreprtext", "") or str(report.longrepr)
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    crash = getattr(report.longrepr, "reprcrash", None)
    head = [f"at {os.path.basename(crash.path)}:{crash.lineno}"] if crash is not None else []
    return "\n".join(head + lines[-limit:])


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _harness_waits_for_the_setting() -> str:
    """Make `prefect_test_harness()` without arguments wait for the server as long as
    `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` says (Prefect's own fallback for `None`).

    Must run before the upstream conftest does `from prefect.testing.utilities import
    prefect_test_harness`; returns the line for the report header."""
    import prefect.testing.utilities as utilities

    harness: Callable[..., Any] = utilities.prefect_test_harness

    @functools.wraps(harness)
    def prefect_test_harness(server_startup_timeout: int | None = None) -> Any:
        return harness(server_startup_timeout=server_startup_timeout)

    utilities.prefect_test_harness = prefect_test_harness
    seconds = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "Prefect's default")
    return f"{PREFIX} prefect_test_harness() waits {seconds} s for its server (Prefect's fixed default: 30 s)"


# Bind when `-p compat_bind` imports this module: that is before pytest loads the upstream
# conftest.py and long before it imports a test module.
_plugin = CompatPlugin()
_plugin.bind()
_HARNESS_LINE = _harness_waits_for_the_setting()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_plugin, "scalegroups-compat")
