"""scalegroups: portable Prefect task groups on threads, processes, Dask and Ray.

    from prefect import task
    import scalegroups

    @scalegroups.group
    def scored(item):
        raw = load.submit(item)
        return {"final": score.submit(raw)}

    @scalegroups.flow
    def main(items):
        runs = scored.map(items)
        return {run.key: run.result() for run in scalegroups.as_completed(runs)}

The runner comes from `SCALEGROUPS_RUNNER` (thread, process, dask, ray) when `main` is called.
Importing the package loads nothing else: each name below is imported on first use, and
importing changes nothing in the environment or in Prefect's settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "DeploymentMap": "scalegroups.deployments",
    "DeploymentRun": "scalegroups.deployments",
    "deploy_map": "scalegroups.deployments",
    "ConfigurationError": "scalegroups.errors",
    "GroupTimeoutError": "scalegroups.errors",
    "MissingExtraError": "scalegroups.errors",
    "OrchestrationError": "scalegroups.errors",
    "ProfileError": "scalegroups.errors",
    "ScalegroupsError": "scalegroups.errors",
    "UnreachableClusterError": "scalegroups.errors",
    "FanOut": "scalegroups.fanout",
    "FanOutError": "scalegroups.fanout",
    "ItemOutcome": "scalegroups.fanout",
    "fan_out": "scalegroups.fanout",
    "flow": "scalegroups.flows",
    "Group": "scalegroups.groups",
    "GroupRun": "scalegroups.groups",
    "as_completed": "scalegroups.groups",
    "group": "scalegroups.groups",
    "Profile": "scalegroups.profiles",
    "available_profiles": "scalegroups.profiles",
    "load_profile": "scalegroups.profiles",
    "make_task_runner": "scalegroups.runners",
    "resolve_runner": "scalegroups.runners",
    "share": "scalegroups.sharing",
    "summarize": "scalegroups.summary",
}

__all__ = [
    "ConfigurationError",
    "DeploymentMap",
    "DeploymentRun",
    "FanOut",
    "FanOutError",
    "Group",
    "GroupRun",
    "GroupTimeoutError",
    "ItemOutcome",
    "MissingExtraError",
    "OrchestrationError",
    "Profile",
    "ProfileError",
    "ScalegroupsError",
    "UnreachableClusterError",
    "as_completed",
    "available_profiles",
    "deploy_map",
    "fan_out",
    "flow",
    "group",
    "load_profile",
    "make_task_runner",
    "resolve_runner",
    "share",
    "summarize",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalegroups' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from scalegroups.deployments import DeploymentMap, DeploymentRun, deploy_map
    from scalegroups.errors import (
        ConfigurationError,
        GroupTimeoutError,
        MissingExtraError,
        OrchestrationError,
        ProfileError,
        ScalegroupsError,
        UnreachableClusterError,
    )
    from scalegroups.fanout import FanOut, FanOutError, ItemOutcome, fan_out
    from scalegroups.flows import flow
    from scalegroups.groups import Group, GroupRun, as_completed, group
    from scalegroups.profiles import Profile, available_profiles, load_profile
    from scalegroups.runners import make_task_runner, resolve_runner
    from scalegroups.sharing import share
    from scalegroups.summary import summarize
