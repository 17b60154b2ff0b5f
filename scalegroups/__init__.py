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
"""

from scalegroups.settings import apply_prefect_defaults

apply_prefect_defaults()

from scalegroups.deployments import DeploymentMap, DeploymentRun, deploy_map  # noqa: E402
from scalegroups.errors import (  # noqa: E402
    ConfigurationError,
    GroupTimeoutError,
    MissingExtraError,
    OrchestrationError,
    ProfileError,
    ScalegroupsError,
    UnreachableClusterError,
)
from scalegroups.fanout import FanOut, FanOutError, ItemOutcome, fan_out  # noqa: E402
from scalegroups.flows import flow  # noqa: E402
from scalegroups.groups import Group, GroupRun, as_completed, group  # noqa: E402
from scalegroups.profiles import Profile, available_profiles, load_profile  # noqa: E402
from scalegroups.runners import make_task_runner, resolve_runner  # noqa: E402
from scalegroups.sharing import share  # noqa: E402
from scalegroups.summary import summarize  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DeploymentMap",
    "DeploymentRun",
    "FanOut",
    "FanOutError",
    "GroupTimeoutError",
    "ItemOutcome",
    "Group",
    "GroupRun",
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
