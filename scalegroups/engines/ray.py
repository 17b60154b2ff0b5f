"""prefect-ray's `RayTaskRunner`: a private local Ray, or a Ray cluster at an address."""

from __future__ import annotations

from typing import Any

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

    def parallelism(self) -> int:
        """CPUs of the Ray cluster."""
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def share(self, value: Any) -> Any:
        """Put `value` in Ray's object store once; prefect-ray resolves the ref in each task."""
        import ray

        return ray.put(value)

    def duplicate(self) -> RayRunner:
        runner = super().duplicate()
        runner.address_source = self.address_source
        return runner
