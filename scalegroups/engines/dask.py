"""prefect-dask's `DaskTaskRunner`: a local or remote Dask cluster."""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from scalegroups.engines import DaskSection
from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.engines.dask_worker import PLUGIN_NAME, WorkerSetup, expect_cluster_shutdown
from scalegroups.errors import ConfigurationError, TaskInterrupted
from scalegroups.extras import require
from scalegroups.network import check_reachable, is_loopback
from scalegroups.prefect_compat import dask_client_with_keys
from scalegroups.resources import Resources
from scalegroups.settings import engine_logs_enabled
from scalegroups.timers import timers

DASK_SCHEDULER_PORT = 8786
#: what worker processes read for their `distributed` log level
LOGGING_VARIABLE = "DASK_LOGGING__DISTRIBUTED"
#: seconds a timed-out task may take to stop after its interrupt before its worker is restarted
INTERRUPT_GRACE_S = 10.0
logger = logging.getLogger("scalegroups")


def cluster_class(qualified_name: str) -> Any:
    """Import a cluster class from its dotted path, naming the extra to install if it is missing."""
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


def _is_kube_cluster(cls: Any) -> bool:
    name = cls if isinstance(cls, str) else f"{getattr(cls, '__module__', '')}.{getattr(cls, '__name__', '')}"
    return name.startswith("dask_kubernetes.operator") and name.endswith(".KubeCluster")


def _kube_worker_variables(kwargs: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    """dask-kubernetes `KubeCluster` arguments whose workers get these environment variables."""
    kwargs = copy.deepcopy(kwargs)
    spec = kwargs.get("custom_cluster_spec")
    if spec is None:
        kwargs["env"] = {**(kwargs.get("env") or {}), **variables}
        return kwargs
    for container in spec.get("spec", {}).get("worker", {}).get("spec", {}).get("containers", []):
        container.setdefault("env", []).extend({"name": key, "value": value} for key, value in variables.items())
    return kwargs


def unique_kube_cluster(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`KubeCluster` arguments naming a cluster of this flow run's own (its name plus a random suffix)."""
    kwargs = copy.deepcopy(kwargs)
    spec = kwargs.get("custom_cluster_spec")
    base = str((spec or {}).get("metadata", {}).get("name") or kwargs.get("name") or "scalegroups")
    name = f"{base[:40].rstrip('-')}-{uuid.uuid4().hex[:8]}"
    if spec is None:
        kwargs["name"] = name
        return kwargs
    spec.setdefault("metadata", {})["name"] = name
    selector = spec.get("spec", {}).get("scheduler", {}).get("service", {}).get("selector")
    if isinstance(selector, dict):
        selector["dask.org/cluster-name"] = name
    return kwargs


def _resource_variables(resources: dict[str, float]) -> dict[str, str]:
    return {f"DASK_DISTRIBUTED__WORKER__RESOURCES__{name}": f"{amount:g}" for name, amount in resources.items()}


def dotted_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dask configuration as dotted keys (`{"distributed": {"worker": ...}}` -> `"distributed.worker...."`)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(dotted_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_variables(config: dict[str, Any]) -> dict[str, str]:
    """The `DASK_*` environment variables that set this Dask configuration in a process started with them."""
    return {
        "DASK_" + key.replace("-", "_").replace(".", "__").upper(): repr(value)
        for key, value in dotted_config(config).items()
    }


def cluster_kwargs(section: DaskSection) -> dict[str, Any]:
    """The cluster class's keyword arguments, with `worker_resources` and `worker_config` in that
    class's own terms."""
    kwargs = dict(section.cluster_kwargs)
    resources = dict(section.worker_resources)
    config = dotted_config(section.worker_config)
    if not resources and not config:
        return kwargs
    if _is_kube_cluster(section.cluster_class):
        return _kube_worker_variables(kwargs, {**_resource_variables(resources), **config_variables(config)})
    if section.cluster_class == "distributed.LocalCluster":
        if resources:
            kwargs["resources"] = {**kwargs.get("resources", {}), **resources}
        if config and kwargs.get("processes") is not False:  # each nanny hands `config` to its worker
            kwargs["config"] = {**config, **dotted_config(kwargs.get("config") or {})}  # cluster_kwargs win
        return kwargs
    what = "worker_resources" if resources else "worker_config"
    raise ConfigurationError(
        f"dask.{what} cannot be given to {section.cluster_class!r}: set it in that cluster's worker "
        "configuration (e.g. DASK_DISTRIBUTED__WORKER__RESOURCES__CPU=1) instead"
    )


class DaskRunner(EngineRunnerMixin, DaskTaskRunner):
    """`DaskTaskRunner` that checks a scheduler address before connecting and sets workers up."""

    #: Dask configuration (dotted keys) in effect while this runner builds its cluster
    cluster_config: dict[str, Any] = {}  # noqa: RUF012 - replaced, never mutated

    @classmethod
    def from_section(cls, section: DaskSection) -> DaskRunner:
        """The runner a profile's dask section describes."""
        if section.address:
            return cls(address=section.address, client_kwargs=section.client_kwargs)
        runner = cls(
            cluster_class=cluster_class(section.cluster_class),
            cluster_kwargs=cluster_kwargs(section),
            adapt_kwargs=section.adapt_kwargs,
            client_kwargs=section.client_kwargs,
        )
        runner.cluster_config = dotted_config(section.cluster_config)
        return runner

    def duplicate(self) -> Any:
        """A copy with the same settings, `cluster_config` included (Prefect's copy knows only its own)."""
        runner = super().duplicate()
        runner.cluster_config = self.cluster_config
        return runner

    def preflight(self) -> None:
        """Fail within seconds when the scheduler address does not answer."""
        from scalegroups.server import configured_api_url

        super().preflight()
        if not self.address:
            return
        check_reachable(self.address, "Dask scheduler", DASK_SCHEDULER_PORT, self.address_source)
        if configured_api_url() is None and not is_loopback(self.address):
            logger.warning(
                "Dask scheduler %s is remote but PREFECT_API_URL is not set: its workers cannot "
                "reach this machine's local Prefect server. Set PREFECT_API_URL to a server "
                "both sides can reach.",
                self.address,
            )

    def script_importing_engine(self) -> str | None:
        """A `LocalCluster` with worker processes started by spawn or forkserver (Dask's default:
        spawn) has each worker import the flow's script."""
        import dask
        from distributed import LocalCluster

        cls = self.resolved_cluster_class or LocalCluster
        if self.address or not (isinstance(cls, type) and issubclass(cls, LocalCluster)):
            return None
        if not (self.cluster_kwargs or {}).get("processes", True):
            return None
        if dask.config.get("distributed.worker.multiprocessing-method") == "fork":
            return None
        return "Dask LocalCluster"

    def _start(self) -> Any:
        if not self.address and _is_kube_cluster(self.cluster_class):
            self.cluster_kwargs = unique_kube_cluster(self.cluster_kwargs)  # a cluster per flow run
        return super()._start()

    def on_started(self, stack: ExitStack) -> None:
        """Register the worker set-up on the cluster (existing and future workers); unregister at exit.

        A cluster this runner started is closed with it: its workers are told first, so a heartbeat
        caught by the scheduler's close does not print a traceback after the flow has finished.
        """
        # Dask's servers read `cluster_config` as they are made (a nanny also hands its workers the
        # configuration it sees then); a runner with an address has none (`from_section`)
        with dask.config.set(self.cluster_config):
            client = dask_client_with_keys(self.client)  # no tokenize per submitted task
        _register_worker_setup(client)
        if self._cluster is None:  # someone else's cluster: leave its workers as they were
            stack.callback(_unregister, client)
        else:
            stack.callback(_announce_shutdown, client)

    @contextmanager
    def quiet_logs(self) -> Iterator[None]:
        """Dask's INFO lines off: the `distributed` logger here (scheduler, nannies, client) and, through
        `DASK_LOGGING__DISTRIBUTED=warning`, in the worker processes started meanwhile."""
        if engine_logs_enabled():
            yield
            return
        distributed_logger = logging.getLogger("distributed")
        level, variable = distributed_logger.level, os.environ.get(LOGGING_VARIABLE)
        distributed_logger.setLevel(logging.WARNING)
        os.environ[LOGGING_VARIABLE] = "warning"
        try:
            yield
        finally:
            distributed_logger.setLevel(level)
            if variable is None:
                os.environ.pop(LOGGING_VARIABLE, None)
            else:
                os.environ[LOGGING_VARIABLE] = variable

    def dashboard_url(self) -> str | None:
        """The Dask dashboard (`Client.dashboard_link`), if the scheduler serves one."""
        try:
            return self.client.dashboard_link or None
        except Exception:  # no dashboard service on this scheduler
            return None

    def parallelism(self) -> int:
        """Threads across the cluster's current workers."""
        return max(1, sum(self.client.nthreads().values()))

    @contextmanager
    def resource_context(self, resources: Resources) -> Iterator[None]:
        """Annotate tasks with Dask worker resources; fail fast if no worker advertises them."""
        wanted = resources.as_dask()
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        if wanted and not any(
            all(info.get("resources", {}).get(name, 0) >= amount for name, amount in wanted.items())
            for info in workers.values()
        ):
            offered = sorted({str(info.get("resources")) for info in workers.values()})
            raise ConfigurationError(
                f"no Dask worker advertises resources {wanted} (workers offer: {', '.join(offered) or 'none'}); "
                "start workers with e.g. `dask worker ... --resources CPU=2,MEMORY=4e9` or ask for less"
            )
        with dask.annotate(resources=wanted):
            yield

    def cancel_futures(self, futures: list[Any]) -> None:
        """Stop these tasks without touching any other: pending ones are cancelled, running ones get
        `TaskInterrupted` raised in their thread. A task still running `INTERRUPT_GRACE_S` later (stuck
        in C code) has its worker restarted, as a last resort."""
        wrapped = [f.wrapped_future for f in futures if hasattr(f, "wrapped_future")]
        keys = [w.key for w in wrapped]
        interrupted = self.client.run(interrupt_tasks, keys, on_error="return")
        self.client.cancel(wrapped, force=True)
        if any(isinstance(found, list) and found for found in interrupted.values()):
            timers.call_later(INTERRUPT_GRACE_S, lambda: self._restart_if_still_running(keys))

    def _restart_if_still_running(self, keys: list[Any]) -> None:
        try:
            running = self.client.run(running_tasks, keys, on_error="return")
        except Exception:  # the cluster went away meanwhile
            return
        stuck = [worker for worker, found in running.items() if isinstance(found, list) and found]
        if stuck:
            logger.warning("tasks ignored the interrupt for %s s; restarting Dask workers %s", INTERRUPT_GRACE_S, stuck)
            self.client.restart_workers(stuck, raise_for_error=False)

    def share(self, value: Any) -> Any:
        """Scatter `value` to the cluster once; tasks receive the data, not a copy per submit.

        Kept on two workers where there are two, so a worker restarted (or lost) does not lose it.
        """
        shared = self.client.scatter(value, hash=False)
        if len(self.client.nthreads()) > 1:
            self.client.replicate([shared], n=2)
        return shared


def running_tasks(keys: list[Any], dask_worker: Any) -> list[Any]:
    """On a Dask worker: which of `keys` a thread of this worker is running now."""
    wanted = set(keys)
    with dask_worker.active_threads_lock:
        return [key for key in dask_worker.active_threads.values() if key in wanted]


def interrupt_tasks(keys: list[Any], dask_worker: Any) -> list[Any]:
    """On a Dask worker: raise `TaskInterrupted` in the threads running `keys`; return those keys."""
    wanted = set(keys)
    with dask_worker.active_threads_lock:
        targets = [(ident, key) for ident, key in dask_worker.active_threads.items() if key in wanted]
    for ident, _ in targets:
        raise_in_thread(ident, TaskInterrupted)
    return [key for _, key in targets]


def raise_in_thread(thread_id: int, exception: type[BaseException]) -> bool:
    """Raise `exception` in another thread of this process at its next Python instruction.

    CPython's `PyThreadState_SetAsyncExc` (a documented C-API call): it reaches pure-Python code
    (and `time.sleep`, which returns to Python at least every interval), not a long C call.
    """
    affected = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception))
    return affected == 1


def _register_worker_setup(client: Any, attempts: int = 3) -> None:
    """Register `WorkerSetup` on every worker; a connection the scheduler dropped meanwhile (a busy
    scheduler, a worker that left) is retried on a fresh one."""
    for attempt in range(1, attempts + 1):
        try:
            client.register_plugin(WorkerSetup(), name=PLUGIN_NAME)
            return
        except OSError as exc:  # distributed's CommClosedError is one
            if attempt == attempts:
                raise
            logger.warning("registering the worker set-up failed (%s); retrying", exc)


def _announce_shutdown(client: Any) -> None:
    try:
        client.run(expect_cluster_shutdown, on_error="ignore")
    except Exception:  # a worker or the scheduler is gone already: nothing to quiet
        logger.debug("could not announce the cluster's shutdown to its workers", exc_info=True)


def _unregister(client: Any) -> None:
    try:
        client.unregister_worker_plugin(PLUGIN_NAME)
    except Exception:  # the cluster may be gone already; its workers go with it
        logger.debug("could not unregister %s", PLUGIN_NAME, exc_info=True)


def start_test_cluster(stack: ExitStack) -> dict[str, str]:
    """The pytest plugin's Dask: a `LocalCluster` of two one-thread worker processes for the session,
    built as the `local` profile builds one (its `cluster_config` and `worker_config`)."""
    from distributed import LocalCluster

    from scalegroups.profiles import load_profile

    section = load_profile("local").dask
    with dask.config.set(dotted_config(section.cluster_config)):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            resources={"CPU": 1},
            config=dotted_config(section.worker_config),
        )
    stack.enter_context(cluster)
    return {"SCALEGROUPS_ADDRESS": cluster.scheduler_address}
