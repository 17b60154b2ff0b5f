"""pytest plugin: run one test on every runner against real local engines.

Installed with scalegroups (entry point `pytest11`), so any project can write::

    def test_my_group(scalegroups_runner):          # runs once per runner
        assert my_flow() == expected                # make_task_runner()/scalegroups.flow pick it

- `scalegroups_runner` is parametrized over thread, process, dask and ray and sets
  `SCALEGROUPS_RUNNER` (and `SCALEGROUPS_ADDRESS` for the session's Dask cluster) for the test.
- One Prefect API server, one `distributed.LocalCluster` (2 worker processes) and one private local
  Ray (2 CPUs) are started once per session, on first use, and stopped at the end of the session.
- Restrict runners per test with `@pytest.mark.scalegroups_runners("dask", "ray")`, or for the
  whole run with `--scalegroups-runners=thread,dask` (or `$SCALEGROUPS_TEST_RUNNERS`).

Heavy imports (prefect, dask, ray) happen inside the fixtures, never at plugin load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

ALL_RUNNERS = ("thread", "process", "dask", "ray")
LOCAL_WORKERS = 2


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scalegroups")
    group.addoption(
        "--scalegroups-runners",
        default=os.environ.get("SCALEGROUPS_TEST_RUNNERS", ",".join(ALL_RUNNERS)),
        help="comma-separated runners for the scalegroups_runner fixture (default: all four)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scalegroups_runners(*names): run this test only on these runners")


def _selected_runners(config: pytest.Config) -> list[str]:
    names = [n.strip() for n in config.getoption("--scalegroups-runners").split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_RUNNERS))
    if unknown:
        raise pytest.UsageError(f"unknown runners {unknown}; valid: {', '.join(ALL_RUNNERS)}")
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
        self._dask_cluster: Any = None
        self._ray_started = False

    @property
    def dask_address(self) -> str:
        """Address of the session's `distributed.LocalCluster` (started on first use)."""
        if self._dask_cluster is None:
            from distributed import LocalCluster

            self._dask_cluster = self._stack.enter_context(
                LocalCluster(
                    n_workers=LOCAL_WORKERS,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=40,
                    resources={"CPU": 1},
                )
            )
        return self._dask_cluster.scheduler_address

    @property
    def dask_cluster(self) -> Any:
        """The session's `distributed.LocalCluster` (started on first use)."""
        _ = self.dask_address
        return self._dask_cluster

    def ensure_ray(self) -> None:
        """Start the session's private local Ray (`address="local"`) unless it runs."""
        import ray

        if self._ray_started:
            return
        if ray.is_initialized():
            raise RuntimeError("Ray is already initialized in this process; cannot start a private one")
        # Ray's workers do not inherit sys.path: give them the test's import path.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        ray.init(
            address="local",
            num_cpus=LOCAL_WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        self._ray_started = True
        self._stack.callback(ray.shutdown)

    def close(self) -> None:
        """Stop every engine this object started."""
        self._stack.close()


@pytest.fixture(scope="session")
def scalegroups_prefect_api() -> Iterator[str]:
    """One Prefect API for the session: `$PREFECT_API_URL`, else one temporary local server."""
    from scalegroups.server import shared_api

    with shared_api() as url:
        yield url


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
    name: str = getattr(request, "param", "thread")
    for variable in ("SCALEGROUPS_ADDRESS", "SCALEGROUPS_PROFILE", "SCALEGROUPS_MAX_WORKERS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SCALEGROUPS_RUNNER", name)
    if name == "process":
        monkeypatch.setenv("SCALEGROUPS_MAX_WORKERS", str(LOCAL_WORKERS))
    elif name == "dask":
        monkeypatch.setenv("SCALEGROUPS_ADDRESS", scalegroups_engines.dask_address)
    elif name == "ray":
        scalegroups_engines.ensure_ray()
    return name


@pytest.fixture
def scalegroups_task_runner(scalegroups_runner: str) -> Any:
    """A Prefect task runner for this test's runner, for `flow.with_options(task_runner=...)`."""
    from scalegroups.runners import make_task_runner

    return make_task_runner()
