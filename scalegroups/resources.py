"""One resource vocabulary for groups: {"cpu": 2, "gpu": 0, "memory": "2GiB"}.

Mapped by each runner (`EngineRunnerMixin.resource_context`): Ray -> `remote_options(num_cpus,
num_gpus, memory)`; Dask -> worker resources `CPU`, `GPU`, `MEMORY` (bytes) through
`dask.annotate`, which workers must advertise (`dask worker --resources CPU=1,MEMORY=...`; the
local profile's workers advertise `CPU` = their threads); threads and processes cannot place work,
so they warn once and run the group anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, ValidationError, field_validator

from scalegroups.errors import ConfigurationError


class Resources(BaseModel):
    """What one task of a group needs. Unset fields ask for nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: NonNegativeFloat | None = None
    gpu: NonNegativeFloat | None = None
    memory: int | None = None  # bytes; "2GiB"-style strings are accepted

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: Any) -> Any:
        if isinstance(value, str):
            from dask.utils import parse_bytes  # dask is a core dependency; imported when needed

            return parse_bytes(value)
        return value

    def as_dask(self) -> dict[str, float]:
        """Dask worker-resource names (as the k8s/ workers advertise them)."""
        names = {"cpu": "CPU", "gpu": "GPU", "memory": "MEMORY"}
        return {names[k]: float(v) for k, v in self.model_dump(exclude_none=True).items() if v}

    def as_ray(self) -> dict[str, Any]:
        """Ray `remote` options."""
        options = {"num_cpus": self.cpu, "num_gpus": self.gpu, "memory": self.memory}
        return {k: v for k, v in options.items() if v is not None}


def parse_resources(value: Mapping[str, Any] | Resources | None) -> Resources | None:
    """Validate a group's `resources=` argument, with one clear error for a bad key or value."""
    if value is None or isinstance(value, Resources):
        return value
    try:
        return Resources.model_validate(dict(value))
    except (ValidationError, ValueError) as exc:
        raise ConfigurationError(
            f"invalid resources {dict(value)!r}: {exc}. Use keys cpu, gpu (numbers) and memory "
            "(bytes or a string like '2GiB')"
        ) from None
