"""prefect-ray's `RayTaskRunner`: a private local Ray, or a Ray cluster at an address."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect_ray import RayTaskRunner

from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.errors import ConfigurationError
from scalegroups.network import check_reachable
from scalegroups.resources import Resources

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

    @contextmanager
    def resource_context(self, resources: Resources) -> Iterator[None]:
        """Submit with Ray `remote_options`; fail fast if no node could ever run such a task."""
        import ray
        from prefect_ray.context import remote_options

        options = resources.as_ray()
        wanted = {
            "CPU": options.get("num_cpus", 0),
            "GPU": options.get("num_gpus", 0),
            "memory": options.get("memory", 0),
        }
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
            raise ConfigurationError(
                f"no Ray node has {options} (nodes: {[{k: n.get(k) for k in ('CPU', 'GPU', 'memory')} for n in nodes]})"
            )
        with remote_options(**options):
            yield

    def cancel_futures(self, futures: list[Any]) -> None:
        """Cancel the tasks; `force=True` ends the worker processes running them."""
        import ray

        for future in futures:
            try:
                ray.cancel(future.wrapped_future, force=True)
            except Exception:  # already finished, or its worker is gone
                continue

    def share(self, value: Any) -> Any:
        """Put `value` in Ray's object store once; prefect-ray resolves the ref in each task."""
        import ray

        return ray.put(value)
