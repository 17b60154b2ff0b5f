"""prefect-dask's `DaskTaskRunner`: a local or remote Dask cluster."""

from __future__ import annotations

import logging
from typing import Any

from prefect_dask import DaskTaskRunner

from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.network import check_reachable, is_loopback
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

    def share(self, value: Any) -> Any:
        """Scatter `value` to the cluster once; tasks receive the data, not a copy per submit."""
        return self.client.scatter(value, hash=False)

    def duplicate(self) -> DaskRunner:
        runner = super().duplicate()
        runner.address_source = self.address_source
        return runner
