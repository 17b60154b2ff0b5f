"""The engines scalegroups runs groups on, registered once.

Each engine is one `Engine` entry: its name, the profile section that describes *what* cluster to
use, the runner class that knows *how* to start it (imported lazily from its module, so a missing
optional engine fails with the extra to install), what `max_workers` means for it, the variable
its own users already set for an address, and how the pytest plugin starts one for a test
session. Every list of runner names in scalegroups is derived from `ENGINES`: adding an engine
touches this file and its own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from scalegroups.extras import require


class Section(BaseModel):
    """A profile section: the settings of one engine. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class ThreadSection(Section):
    """`prefect.task_runners.ThreadPoolTaskRunner`: tasks in threads of the flow's process."""

    max_workers: PositiveInt | None = None  # None: Prefect's own setting and default


class ProcessSection(Section):
    """`prefect.task_runners.ProcessPoolTaskRunner`: tasks in spawned worker processes."""

    max_workers: PositiveInt | None = None  # None: Prefect's own setting, else one per CPU


class DaskSection(Section):
    """`prefect_dask.DaskTaskRunner`: an existing scheduler, or a cluster class to start.

    `cluster_kwargs` go to the cluster class unchanged (its own vocabulary); `worker_resources`
    are Dask worker resources (`{"CPU": 1}`) advertised by the workers of a cluster scalegroups
    starts, the same meaning in every profile. `worker_config` is Dask configuration (dotted keys)
    for the worker processes of a cluster scalegroups starts: a `LocalCluster`'s nannies hand it to
    their workers, dask-kubernetes workers get it as `DASK_*` variables. Workers in the flow's own
    process (`processes: false`) read that process's Dask configuration instead. `cluster_config`
    is Dask configuration in effect in the flow's process while scalegroups builds a cluster there:
    what that process hosts (a `LocalCluster`'s scheduler and nannies) and, through the nannies, its
    workers (`worker_config` wins where both set a key). Not used with `address`.
    """

    address: str | None = None
    cluster_class: str = "distributed.LocalCluster"
    cluster_kwargs: dict[str, Any] = Field(default_factory=dict)
    worker_resources: dict[str, float] = Field(default_factory=dict)
    worker_config: dict[str, Any] = Field(default_factory=dict)
    cluster_config: dict[str, Any] = Field(default_factory=dict)
    adapt_kwargs: dict[str, Any] | None = None
    client_kwargs: dict[str, Any] = Field(default_factory=dict)


class RaySection(Section):
    """`prefect_ray.RayTaskRunner`. `local` starts a private Ray; otherwise a cluster address."""

    address: str = "local"
    init_kwargs: dict[str, Any] = Field(default_factory=dict)


def _pool_size(section: Any, workers: int) -> Any:
    return section.model_copy(update={"max_workers": workers})


def _dask_workers(section: Any, workers: int) -> Any:
    return section.model_copy(update={"cluster_kwargs": {**section.cluster_kwargs, "n_workers": workers}})


def _ray_cpus(section: Any, workers: int) -> Any:
    return section.model_copy(update={"init_kwargs": {**section.init_kwargs, "num_cpus": workers}})


@dataclass(frozen=True)
class Engine:
    """One engine scalegroups can run on."""

    name: str
    section: type[Section]
    runner: str  # "module:Class", imported when a runner is built
    max_workers: Callable[[Any, int], Any]  # section with `max_workers` applied
    max_workers_means: str
    extra: str | None = None  # the scalegroups extra that installs the engine
    modules: tuple[str, ...] = ()  # imported first, to name a missing extra
    address_variable: str | None = None  # the engine's own address variable (e.g. RAY_ADDRESS)
    test_session: str | None = None  # "module:function" starting one for a pytest session

    @property
    def takes_address(self) -> bool:
        """True if the engine can connect to an existing cluster."""
        return "address" in self.section.model_fields

    def runner_class(self) -> type:
        """Import and return the runner class (a clear error names a missing extra)."""
        for module in self.modules:
            require(module, f"the {self.name} runner")
        return _load(self.runner)

    def start_test_session(self, stack: Any) -> dict[str, str]:
        """Start the engine for a test session; return the environment a test needs to use it."""
        if self.test_session is None:
            return {}
        return _load(self.test_session)(stack)


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine(
            name="thread",
            section=ThreadSection,
            runner="scalegroups.engines.local:ThreadRunner",
            max_workers=_pool_size,
            max_workers_means="threads in the pool",
        ),
        Engine(
            name="process",
            section=ProcessSection,
            runner="scalegroups.engines.local:ProcessRunner",
            max_workers=_pool_size,
            max_workers_means="worker processes in the pool",
            test_session="scalegroups.engines.local:process_test_session",
        ),
        Engine(
            name="dask",
            section=DaskSection,
            runner="scalegroups.engines.dask:DaskRunner",
            max_workers=_dask_workers,
            max_workers_means="n_workers of a cluster scalegroups starts",
            modules=("distributed", "prefect_dask"),
            address_variable="DASK_SCHEDULER_ADDRESS",
            test_session="scalegroups.engines.dask:start_test_cluster",
        ),
        Engine(
            name="ray",
            section=RaySection,
            runner="scalegroups.engines.ray:RayRunner",
            max_workers=_ray_cpus,
            max_workers_means="num_cpus of a private local Ray",
            extra="ray",
            modules=("ray", "prefect_ray"),
            address_variable="RAY_ADDRESS",
            test_session="scalegroups.engines.ray:start_test_ray",
        ),
    )
}

RUNNER_NAMES: tuple[str, ...] = tuple(ENGINES)
