"""The runner factory: runner name + profile section + overrides -> a Prefect task runner.

Precedence, highest first:

1. explicit arguments (`make_task_runner("dask", address=..., max_workers=4, cluster_kwargs=...)`)
2. `SCALEGROUPS_*` environment variables (`SCALEGROUPS_RUNNER`, `_PROFILE`, `_ADDRESS`, `_MAX_WORKERS`,
   `_CHECKPOINT`, `_RESULT_STORAGE`)
3. the engine's own address variable (`DASK_SCHEDULER_ADDRESS`, `RAY_ADDRESS`)
4. the profile's section for the engine (`clusters/<profile>.yaml`)
5. built-in defaults (runner `thread`, profile `local`)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prefect.task_runners import TaskRunner
from pydantic import BaseModel, ValidationError

from scalegroups.engines import ENGINES, RUNNER_NAMES, Engine
from scalegroups.errors import ConfigurationError, ScalegroupsError
from scalegroups.profiles import load_profile, parse_storage
from scalegroups.settings import read_env

DEFAULT_RUNNER = "thread"
DEFAULT_PROFILE = "local"


@dataclass(frozen=True)
class RunnerSpec:
    """Everything the factory decided, before any engine is imported."""

    runner: str
    profile: Any
    section: BaseModel
    sources: dict[str, str] = field(default_factory=dict)
    checkpoint: bool = False  # checkpoint every group (groups may still say otherwise)
    result_storage: str | None = None  # None: Prefect's default result storage

    @property
    def engine(self) -> Engine:
        """The registered engine this spec runs on."""
        return ENGINES[self.runner]

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
            "checkpoint": self.checkpoint,
            "result_storage": self.result_storage,
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


def _address(
    engine: Engine, explicit: Any, env_address: str | None, section: BaseModel, profile_name: str
) -> tuple[str | None, str | None]:
    """The address and where it came from (None, None: the profile's own, or none)."""
    address, source = _pick(explicit, env_address, "SCALEGROUPS_ADDRESS", None)
    if address is None and engine.address_variable and os.environ.get(engine.address_variable):
        address, source = os.environ[engine.address_variable], f"${engine.address_variable}"
    if address is None:
        profile_address = getattr(section, "address", None)
        return None, (f"profile {profile_name!r}" if profile_address not in (None, "local") else None)
    if not engine.takes_address:
        # $SCALEGROUPS_ADDRESS is for the cluster engines; a local pool simply ignores it.
        if source == "argument":
            cluster_engines = " or ".join(repr(e.name) for e in ENGINES.values() if e.takes_address)
            raise ConfigurationError(
                f"an address ({address!r}, from {source}) only applies to the "
                f"{' and '.join(e.name for e in ENGINES.values() if e.takes_address)} runners, not "
                f"{engine.name!r}; drop it or choose runner={cluster_engines}"
            )
        return None, None
    return str(address), source


def checked_runner_name(name: Any, source: str) -> str:
    """`name` normalised, or a ConfigurationError naming where it came from and the valid runners."""
    name = str(name).strip().lower()
    if name not in ENGINES:
        raise ConfigurationError(f"unknown runner {name!r} (from {source}); valid runners: " + ", ".join(RUNNER_NAMES))
    return name


def resolve_runner(runner: str | None = None, *, profile: str | None = None, **overrides: Any) -> RunnerSpec:
    """Decide runner, profile section and options from arguments, environment and profile."""
    env = read_env()
    name, runner_source = _pick(runner, env.runner, "SCALEGROUPS_RUNNER", DEFAULT_RUNNER)
    name = checked_runner_name(name, runner_source)
    engine = ENGINES[name]
    profile_name, profile_source = _pick(profile, env.profile, "SCALEGROUPS_PROFILE", DEFAULT_PROFILE)
    loaded = load_profile(str(profile_name))
    section: BaseModel = loaded.section(name)
    sources = {"runner": runner_source, "profile": profile_source}

    address = overrides.pop("address", None)
    max_workers = overrides.pop("max_workers", None)
    if overrides:
        section = _apply_overrides(section, overrides, name)
        sources["options"] = "argument"

    address, address_source = _address(engine, address, env.address, section, loaded.name)
    if address is not None:
        section = section.model_copy(update={"address": address})
    if address_source is not None:
        sources["address"] = address_source

    max_workers, workers_source = _pick(max_workers, env.max_workers, "SCALEGROUPS_MAX_WORKERS", None)
    if max_workers is not None:
        section = engine.max_workers(section, int(max_workers))
        sources["max_workers"] = workers_source
    storage, storage_source = _pick(None, env.result_storage, "SCALEGROUPS_RESULT_STORAGE", loaded.result_storage)
    if storage is not None:
        sources["result_storage"] = storage_source if storage_source != "default" else f"profile {loaded.name!r}"
        try:
            parse_storage(storage)
        except ValueError as exc:
            raise ConfigurationError(f"{exc} (from {sources['result_storage']})") from None
    if env.checkpoint:
        sources["checkpoint"] = "$SCALEGROUPS_CHECKPOINT"
    return RunnerSpec(
        runner=name,
        profile=loaded,
        section=section,
        sources=sources,
        checkpoint=env.checkpoint,
        result_storage=storage,
    )


def build_task_runner(spec: RunnerSpec) -> TaskRunner:
    """Construct the Prefect task runner a `RunnerSpec` describes (engines imported lazily)."""
    runner = spec.engine.runner_class().from_section(spec.section)
    runner.address_source = spec.sources.get("address", "arguments")
    runner.checkpoint = spec.checkpoint
    runner.result_storage = spec.result_storage
    return runner


def make_task_runner(runner: str | None = None, *, profile: str | None = None, **overrides: Any) -> TaskRunner:
    """Return a Prefect task runner chosen by arguments, `SCALEGROUPS_*` variables and a profile.

    `runner` is one of the registered engines (thread, process, dask, ray; default:
    `$SCALEGROUPS_RUNNER`, else thread); `profile` a profile name or YAML path (default:
    `$SCALEGROUPS_PROFILE`, else local). Keyword overrides replace fields of the profile's engine
    section (dicts are merged), plus `address=` and `max_workers=` for every engine.

    Without `PREFECT_API_URL`, this also chooses the Prefect API the flow and its workers will use
    (see `scalegroups.server.ensure_api`): Prefect's engine asks for one before any runner starts.
    """
    from scalegroups.server import ensure_api

    try:
        built = build_task_runner(resolve_runner(runner, profile=profile, **overrides))
        ensure_api()  # a bad SCALEGROUPS_SERVER_* or _GC_FREEZE value is bad input too
    except ScalegroupsError as exc:  # bad input: the message says it all; show the user's line, not ours
        raise exc.with_traceback(None) from None
    return built
