"""prefect-ray's `RayTaskRunner`: a private local Ray, or a Ray cluster at an address."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect_ray import RayTaskRunner

from scalegroups.engines import RaySection
from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.errors import ConfigurationError
from scalegroups.network import check_reachable
from scalegroups.prefect_compat import (
    RayRemoteFunctions,
    install_worker_hooks,
    ray_dashboard_url,
    run_prefect_task_on_ray,
    worker_hooks_installed,
)
from scalegroups.resources import Resources
from scalegroups.settings import engine_logs_enabled
from scalegroups.startup_gc import long_lived_start_up

RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001
CLIENT_SERVER_ATTEMPTS = 5  # 1, 2, 4 and 8 s apart: 15 s in all before the error stands
logger = logging.getLogger("scalegroups")


class CachedRemoteRayTaskRunner(RayTaskRunner):
    """`RayTaskRunner` that makes its Ray remote function once, not once per submitted task."""

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        remote_functions = self.__dict__.get("_remote_functions")
        if remote_functions is None:
            remote_functions = self.__dict__["_remote_functions"] = RayRemoteFunctions(self._run_prefect_task)
        return remote_functions.submit(self, task, parameters, wait_for, dependencies)

    def __getstate__(self) -> dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        state.pop("_remote_functions", None)  # remote functions belong to this driver's Ray session
        return state


class RayRunner(EngineRunnerMixin, CachedRemoteRayTaskRunner):
    """`RayTaskRunner` that checks a cluster address before `ray.init` can hang on it."""

    @classmethod
    def from_section(cls, section: RaySection) -> RayRunner:
        """The runner a profile's ray section describes."""
        return cls(address=section.address, init_kwargs=section.init_kwargs)

    def preflight(self) -> None:
        """Fail within seconds when the Ray address does not answer."""
        if not self.address or self.address in {"local", "auto"}:
            return
        port = RAY_CLIENT_PORT if self.address.startswith("ray://") else RAY_GCS_PORT
        check_reachable(self.address, "Ray cluster", port, self.address_source)

    def _start(self) -> Any:
        # Ray Client's proxy starts one server process per client job; on a loaded head that
        # start was seen to fail at once ("Initialization failure from server"), twice in a row
        # here and three times, 3 s in all, in CI, and work when asked again later. Up to
        # CLIENT_SERVER_ATTEMPTS, waiting twice as long each time, then the error stands.
        for attempt in range(1, CLIENT_SERVER_ATTEMPTS):
            try:
                return super()._start()
            except ConnectionAbortedError as exc:
                if not str(self.address).startswith("ray://"):
                    raise
                logger.warning(
                    "Ray Client at %s could not start this job's server (%s); asking again", self.address, exc
                )
                self._started = False
                time.sleep(2 ** (attempt - 1))  # the head is loaded: give it time
        return super()._start()

    @staticmethod
    def _run_prefect_task(*upstream_refs: Any, **kwargs: Any) -> Any:
        """What runs in a Ray worker: the worker process is set up (once) before the task runs.

        In the task rather than in a `worker_process_setup_hook`: a runtime_env hook makes Ray
        Client (`ray://`) fail to start the job's server.
        """
        if not worker_hooks_installed():  # the first task run in this worker process
            with long_lived_start_up():  # see `scalegroups.startup_gc`
                install_worker_hooks()
        return run_prefect_task_on_ray(*upstream_refs, **kwargs)

    @contextmanager
    def quiet_logs(self) -> Iterator[None]:
        """Ray's INFO lines off in this process (`ray.init(logging_level=WARNING)`), unless the profile
        sets a level or `SCALEGROUPS_ENGINE_LOGS=1`; tasks' own output still reaches the driver."""
        if not engine_logs_enabled() and not str(self.address).startswith("ray://"):
            self.init_kwargs.setdefault("logging_level", logging.WARNING)
        yield

    def dashboard_url(self) -> str | None:
        """The Ray dashboard `ray.init` reported for this runner, if Ray serves one."""
        return ray_dashboard_url(self)

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


def start_test_ray(stack: ExitStack) -> dict[str, str]:
    """The pytest plugin's Ray: a private local Ray with two CPUs for the session."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialized in this process; cannot start a private one")
    # Ray's workers do not inherit sys.path: give them the test's import path.
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    stack.callback(ray.shutdown)
    return {}
