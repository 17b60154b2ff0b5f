"""prefect-dask's `DaskTaskRunner`: a local or remote Dask cluster."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.errors import ConfigurationError
from scalegroups.network import check_reachable, is_loopback
from scalegroups.resources import Resources
from scalegroups.server import configured_api_url

DASK_SCHEDULER_PORT = 8786
logger = logging.getLogger("scalegroups")


class DaskRunner(EngineRunnerMixin, DaskTaskRunner):
    """`DaskTaskRunner` that checks a scheduler address before connecting."""

    def preflight(self) -> None:
        """Fail within seconds when the scheduler address does not answer."""
        if not self.address:
            return
        check_reachable(self.address, "Dask scheduler", DASK_SCHEDULER_PORT, self.address_source)
        if configured_api_url() is None and not is_loopback(self.address):
            logger.warning(
                "Dask scheduler %s is remote but PREFECT_API_URL is not set: its workers cannot "
                "reach this machine's temporary Prefect server. Set PREFECT_API_URL to a server "
                "both sides can reach.",
                self.address,
            )

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
        """Cancel pending tasks; restart the workers still running any (a Dask thread cannot be stopped)."""
        wrapped = [f.wrapped_future for f in futures if hasattr(f, "wrapped_future")]
        keys = {w.key for w in wrapped}
        busy = [worker for worker, running in self.client.processing().items() if keys & set(running)]
        self.client.cancel(wrapped, force=True)
        if busy:
            logger.warning("restarting Dask workers %s to stop timed-out tasks", busy)
            self.client.restart_workers(busy, raise_for_error=False)

    def share(self, value: Any) -> Any:
        """Scatter `value` to the cluster once; tasks receive the data, not a copy per submit."""
        return self.client.scatter(value, hash=False)
