"""prefect-ray's `RayTaskRunner`: a private local Ray, or a Ray cluster at an address."""

from __future__ import annotations

from prefect_ray import RayTaskRunner

from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.network import check_reachable

RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001


class RayRunner(EngineRunnerMixin, RayTaskRunner):
    """`RayTaskRunner` that checks a cluster address before `ray.init` can hang on it."""

    def preflight(self) -> None:
        """Fail within seconds when the Ray address does not answer."""
        if not self.address or self.address in {"local", "auto"}:
            return
        port = RAY_CLIENT_PORT if self.address.startswith("ray://") else RAY_GCS_PORT
        check_reachable(self.address, "Ray cluster", port, self.address_source)

    def duplicate(self) -> RayRunner:
        runner = super().duplicate()
        runner.address_source = self.address_source
        return runner
