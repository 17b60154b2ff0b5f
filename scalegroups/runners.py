"""The runner factory: runner name + profile section + overrides -> a Prefect task runner.

Precedence, highest first: explicit arguments > `SCALEGROUPS_*` environment variables > the
profile's section for the engine > built-in defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prefect.task_runners import TaskRunner
from pydantic import BaseModel, ValidationError

from scalegroups.errors import ConfigurationError
from scalegroups.extras import require
from scalegroups.profiles import Profile, load_profile
from scalegroups.settings import RUNNER_NAMES, read_env

DEFAULT_RUNNER = "thread"
DEFAULT_PROFILE = "local"


@dataclass(frozen=True)
class RunnerSpec:
    """Everything the factory decided, before any engine is imported."""

    runner: str
    profile: Profile
    section: BaseModel
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str | None:
        """The cluster address the runner will connect to, if any."""
        value = getattr(self.section, "address", None)
        return None if value == "local" else value

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for `scalegroups info`."""
        return {
            "runner": self.runner,
            "profile": self.profile.name,
            "profile_file": self.profile.source,
            "address": self.address,
            "settings": self.section.model_dump(),
            "sources": dict(self.sources),
        }


def _pick(explicit: Any, env_value: Any, env_name: str, default: Any) -> tuple[Any, str]:
    if explicit is not None:
        return explicit, "argument"
    if env_value is not None:
        return env_value, f"${env_name}"
    return default, "default"


def _apply_overrides(section: BaseModel, overrides: dict[str, Any], runner: str) -> BaseModel:
    data = section.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return type(section).model_validate(data)
    except ValidationError as exc:
        item = exc.errors()[0]
        where = ".".join(str(p) for p in item["loc"])
        fields = ", ".join(type(section).model_fields)
        raise ConfigurationError(
            f"invalid option {where!r} for the {runner} runner: {item['msg']} (options: {fields}, address, max_workers)"
        ) from None


def _apply_max_workers(runner: str, section: BaseModel, max_workers: int) -> BaseModel:
    if runner in {"thread", "process"}:
        return section.model_copy(update={"max_workers": max_workers})
    if runner == "dask":
        kwargs = {**section.cluster_kwargs, "n_workers": max_workers}  # type: ignore[attr-defined]
        return section.model_copy(update={"cluster_kwargs": kwargs})
    kwargs = {**section.init_kwargs, "num_cpus": max_workers}  # type: ignore[attr-defined]
    return section.model_copy(update={"init_kwargs": kwargs})


def resolve_runner(runner: str | None = None, *, profile: str | None = None, **overrides: Any) -> RunnerSpec:
    """Decide runner, profile section and options from arguments, environment and profile."""
    env = read_env()
    name, runner_source = _pick(runner, env.runner, "SCALEGROUPS_RUNNER", DEFAULT_RUNNER)
    name = str(name).strip().lower()
    if name not in RUNNER_NAMES:
        raise ConfigurationError(
            f"unknown runner {name!r} (from {runner_source}); valid runners: " + ", ".join(RUNNER_NAMES)
        )
    profile_name, profile_source = _pick(profile, env.profile, "SCALEGROUPS_PROFILE", DEFAULT_PROFILE)
    loaded = load_profile(str(profile_name))
    section: BaseModel = getattr(loaded, name)
    sources = {"runner": runner_source, "profile": profile_source}

    address = overrides.pop("address", None)
    max_workers = overrides.pop("max_workers", None)
    if overrides:
        section = _apply_overrides(section, overrides, name)
        sources["options"] = "argument"

    address, address_source = _pick(address, env.address, "SCALEGROUPS_ADDRESS", None)
    if address is not None and name in {"thread", "process"}:
        # $SCALEGROUPS_ADDRESS is for the cluster engines; a local pool simply ignores it.
        if address_source == "argument":
            raise ConfigurationError(
                f"an address ({address!r}, from {address_source}) only applies to the dask and "
                f"ray runners, not {name!r}; drop it or choose runner='dask' or 'ray'"
            )
    elif address is not None:
        section = section.model_copy(update={"address": str(address)})
        sources["address"] = address_source
    elif getattr(section, "address", None) not in (None, "local"):
        sources["address"] = f"profile {loaded.name!r}"

    max_workers, workers_source = _pick(max_workers, env.max_workers, "SCALEGROUPS_MAX_WORKERS", None)
    if max_workers is not None:
        section = _apply_max_workers(name, section, int(max_workers))
        sources["max_workers"] = workers_source
    return RunnerSpec(runner=name, profile=loaded, section=section, sources=sources)


def _dask_cluster_class(qualified_name: str) -> Any:
    module_name, _, attribute = qualified_name.rpartition(".")
    if not module_name:
        raise ConfigurationError(
            f"dask.cluster_class {qualified_name!r} must be a dotted path, e.g. distributed.LocalCluster"
        )
    module = require(module_name, f"the Dask cluster class {qualified_name!r}")
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"dask.cluster_class {qualified_name!r}: module {module_name!r} has no {attribute!r}"
        ) from None


def build_task_runner(spec: RunnerSpec) -> TaskRunner:
    """Construct the Prefect task runner a `RunnerSpec` describes (engines imported lazily)."""
    section: Any = spec.section
    address_source = spec.sources.get("address", "arguments")
    if spec.runner == "thread":
        from scalegroups.engines.local import ThreadRunner

        return ThreadRunner(max_workers=section.max_workers)
    if spec.runner == "process":
        from scalegroups.engines.local import ProcessRunner

        return ProcessRunner(max_workers=section.max_workers or os.cpu_count())
    if spec.runner == "dask":
        from scalegroups.engines.dask import DaskRunner

        if section.address:
            runner = DaskRunner(address=section.address, client_kwargs=section.client_kwargs)
        else:
            runner = DaskRunner(
                cluster_class=_dask_cluster_class(section.cluster_class),
                cluster_kwargs=section.cluster_kwargs,
                adapt_kwargs=section.adapt_kwargs,
                client_kwargs=section.client_kwargs,
            )
    else:
        require("ray", "the ray runner")  # prefect-ray imports ray lazily: check it here
        require("prefect_ray", "the ray runner")
        from scalegroups.engines.ray import RayRunner

        runner = RayRunner(address=section.address, init_kwargs=section.init_kwargs)
    runner.address_source = address_source
    return runner


def make_task_runner(runner: str | None = None, *, profile: str | None = None, **overrides: Any) -> TaskRunner:
    """Return a Prefect task runner chosen by arguments, `SCALEGROUPS_*` variables and a profile.

    `runner` is one of thread, process, dask, ray (default: `$SCALEGROUPS_RUNNER`, else thread);
    `profile` a profile name or YAML path (default: `$SCALEGROUPS_PROFILE`, else local).
    Keyword overrides replace fields of the profile's engine section (dicts are merged), plus
    `address=` and `max_workers=` for every engine.
    """
    return build_task_runner(resolve_runner(runner, profile=profile, **overrides))
