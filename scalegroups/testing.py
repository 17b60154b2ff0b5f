"""pytest plugin: run one test on every runner against real local engines.

Installed with scalegroups (entry point `pytest11`), so any project can write::

    def test_my_group(scalegroups_runner):          # runs once per runner
        assert my_flow() == expected                # make_task_runner()/scalegroups.flow pick it

- `scalegroups_runner` is parametrized over the registered runners (thread, process, dask, ray)
  and sets `SCALEGROUPS_RUNNER` (and, e.g., `SCALEGROUPS_ADDRESS` of the session's Dask cluster)
  for the test.
- One Prefect API, one `distributed.LocalCluster` (2 worker processes) and one private local Ray
  (2 CPUs) are started once per session, on first use, and stopped at the end of the session.
- Restrict runners per test with `@pytest.mark.scalegroups_runners("dask", "ray")`, or for the
  whole run with `--scalegroups-runners=thread,dask` (or `$SCALEGROUPS_TEST_RUNNERS`).

Loading the plugin imports neither Prefect nor an engine; each is imported when a test asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from scalegroups.engines import ENGINES, RUNNER_NAMES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scalegroups")
    group.addoption(
        "--scalegroups-runners",
        default=os.environ.get("SCALEGROUPS_TEST_RUNNERS", ",".join(RUNNER_NAMES)),
        help=f"comma-separated runners for the scalegroups_runner fixture (default: {','.join(RUNNER_NAMES)})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scalegroups_runners(*names): run this test only on these runners")


def _selected_runners(config: pytest.Config) -> list[str]:
    names = [n.strip() for n in config.getoption("--scalegroups-runners").split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNNER_NAMES))
    if unknown:
        raise pytest.UsageError(f"unknown runners {unknown}; valid: {', '.join(RUNNER_NAMES)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scalegroups_runner" not in metafunc.fixturenames:
        return
    names = _selected_runners(metafunc.config)
    marker = metafunc.definition.get_closest_marker("scalegroups_runners")
    if marker is not None:
        names = [n for n in names if n in marker.args]
    metafunc.parametrize("scalegroups_runner", names, indirect=True, ids=names)


class LocalEngines:
    """The session's engines, each started on first use and all stopped by `close()`."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._environments: dict[str, dict[str, str]] = {}

    def environment(self, runner: str) -> dict[str, str]:
        """The variables a test sets to use the session's engine for `runner` (started on first use)."""
        if runner not in self._environments:
            self._environments[runner] = ENGINES[runner].start_test_session(self._stack)
        return self._environments[runner]

    @property
    def dask_address(self) -> str:
        """Address of the session's `distributed.LocalCluster` (started on first use)."""
        return self.environment("dask")["SCALEGROUPS_ADDRESS"]

    def close(self) -> None:
        """Stop every engine this object started."""
        self._stack.close()


@pytest.fixture(scope="session")
def scalegroups_prefect_api() -> str:
    """One Prefect API for the session: `$PREFECT_API_URL`, else a local server in this process."""
    from scalegroups.server import ensure_api

    return ensure_api(eager=True)


@pytest.fixture(scope="session")
def scalegroups_engines(scalegroups_prefect_api: str) -> Iterator[LocalEngines]:
    """The session's local Dask cluster and Ray, started lazily, stopped after the session."""
    engines = LocalEngines()
    try:
        yield engines
    finally:
        engines.close()


@pytest.fixture
def scalegroups_runner(
    request: pytest.FixtureRequest,
    scalegroups_engines: LocalEngines,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The runner name for this test; `SCALEGROUPS_*` are set so the factory builds it."""
    name: str = getattr(request, "param", RUNNER_NAMES[0])
    for variable in ("SCALEGROUPS_ADDRESS", "SCALEGROUPS_PROFILE", "SCALEGROUPS_MAX_WORKERS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SCALEGROUPS_RUNNER", name)
    for variable, value in scalegroups_engines.environment(name).items():
        monkeypatch.setenv(variable, value)
    return name


@pytest.fixture
def scalegroups_task_runner(scalegroups_runner: str) -> Any:
    """A Prefect task runner for this test's runner, for `flow.with_options(task_runner=...)`."""
    from scalegroups.runners import make_task_runner

    return make_task_runner()
