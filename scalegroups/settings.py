"""Environment variables and their precedence.

Precedence, highest first: explicit arguments > `SCALEGROUPS_*` environment variables > the
profile's section for the engine > built-in defaults.
"""

from __future__ import annotations

import os

from pydantic import PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from scalegroups.errors import ConfigurationError

RUNNER_NAMES: tuple[str, ...] = ("thread", "process", "dask", "ray")

#: Prefect's default (20 s) is shorter than a first start on a fresh database on a small machine.
EPHEMERAL_STARTUP_TIMEOUT_S = 120


class EnvSettings(BaseSettings):
    """The `SCALEGROUPS_*` environment variables (read fresh on every call)."""

    model_config = SettingsConfigDict(env_prefix="SCALEGROUPS_", extra="ignore")

    runner: str | None = None
    profile: str | None = None
    address: str | None = None
    max_workers: PositiveInt | None = None


def read_env() -> EnvSettings:
    """Read the `SCALEGROUPS_*` variables now, with one clear error for a bad value."""
    try:
        return EnvSettings()
    except ValidationError as exc:
        item = exc.errors()[0]
        name = "SCALEGROUPS_" + str(item["loc"][0]).upper()
        raise ConfigurationError(f"{name}={os.environ.get(name, '')!r} is invalid: {item['msg']}") from None


def apply_prefect_defaults() -> None:
    """Give Prefect's temporary server enough time for a cold first start, unless the user chose.

    Only fills in variables that are unset, then refreshes Prefect's settings so the new default
    is seen even when `prefect` was imported first.
    """
    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    if key in os.environ:
        return
    os.environ[key] = str(EPHEMERAL_STARTUP_TIMEOUT_S)
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
