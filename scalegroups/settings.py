"""The `SCALEGROUPS_*` environment variables, read fresh on every call.

Precedence of everything the factory decides is documented in `scalegroups.runners`. Reading these
variables changes nothing: importing scalegroups leaves the environment and Prefect's settings as
they were.
"""

from __future__ import annotations

import os

from pydantic import PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from scalegroups.errors import ConfigurationError
from scalegroups.thread_priority import MAX_NICE


class EnvSettings(BaseSettings):
    """The `SCALEGROUPS_*` variables that choose a runner and how it runs groups."""

    model_config = SettingsConfigDict(env_prefix="SCALEGROUPS_", extra="ignore")

    runner: str | None = None
    profile: str | None = None
    address: str | None = None
    max_workers: PositiveInt | None = None
    checkpoint: bool = False  # checkpoint every group of a run (scalegroups.checkpoints)
    result_storage: str | None = None  # where checkpoints go; overrides the profile's result_storage


def read_env() -> EnvSettings:
    """Read the `SCALEGROUPS_*` variables now, with one clear error for a bad value."""
    try:
        return EnvSettings()
    except ValidationError as exc:
        item = exc.errors()[0]
        name = "SCALEGROUPS_" + str(item["loc"][0]).upper()
        raise ConfigurationError(f"{name}={os.environ.get(name, '')!r} is invalid: {item['msg']}") from None


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name}={value!r} is invalid: use 1 or 0")


def progress_enabled() -> bool:
    """False when `SCALEGROUPS_PROGRESS=0`: no progress artifacts for maps, fan-outs, deploy_maps."""
    return _flag("SCALEGROUPS_PROGRESS", True)


def engine_logs_enabled() -> bool:
    """True when `SCALEGROUPS_ENGINE_LOGS=1`: keep Dask's and Ray's INFO logs (default: warnings only)."""
    return _flag("SCALEGROUPS_ENGINE_LOGS", False)


def fast_exit_enabled() -> bool:
    """False when `SCALEGROUPS_FAST_EXIT=0`: leave the interpreter's exit as Python does it."""
    return _flag("SCALEGROUPS_FAST_EXIT", True)


def startup_gc_enabled() -> bool:
    """False when `SCALEGROUPS_GC_FREEZE=0`: leave Python's garbage collector alone at start-up."""
    return _flag("SCALEGROUPS_GC_FREEZE", True)


def server_nice() -> int:
    """`SCALEGROUPS_SERVER_NICE` (0-19, default 19): nice levels an in-process API server drops to
    once it answers, so that task runs get the cores first when all are busy (0: as the flow)."""
    value = os.environ.get("SCALEGROUPS_SERVER_NICE", "").strip()
    if not value:
        return MAX_NICE
    try:
        nice = int(value)
    except ValueError:
        nice = -1
    if not 0 <= nice <= MAX_NICE:
        raise ConfigurationError(
            f"SCALEGROUPS_SERVER_NICE={value!r} is invalid: use a whole number from 0 to {MAX_NICE}"
        )
    return nice
