"""What runs inside a Dask worker process: the scalegroups worker plugin and its shutdown filter.

Kept apart from `scalegroups.engines.dask` so that unpickling the plugin on a worker imports no
Prefect on the worker's event loop: Prefect's import takes seconds on a busy machine, and a worker
whose loop is blocked that long misses its heartbeats (a scheduler with a short `worker-ttl` then
drops it, and the plugin registration fails with it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed import WorkerPlugin

PLUGIN_NAME = "scalegroups-worker-setup"
HEARTBEAT_FAILURE = "Failed to communicate with scheduler during heartbeat"


class WorkerSetup(WorkerPlugin):
    """Sets each Dask worker process up for Prefect task runs (one API client, cached settings)."""

    name = PLUGIN_NAME

    async def setup(self, worker: Any) -> None:
        """Install the worker hooks in a thread, so the worker keeps answering its scheduler."""
        await asyncio.to_thread(_install)

    def teardown(self, worker: Any) -> None:
        from scalegroups.prefect_compat import uninstall_worker_hooks

        uninstall_worker_hooks()


def _install() -> None:
    from scalegroups.prefect_compat import install_worker_hooks
    from scalegroups.startup_gc import long_lived_start_up

    with long_lived_start_up():  # Prefect's task engine is imported here: see `scalegroups.startup_gc`
        install_worker_hooks()


class _HeartbeatFailureAtShutdown(logging.Filter):
    """Drops the worker's "failed to communicate during heartbeat" ERROR (a heartbeat in flight
    when the scheduler it was sent to closes): the cluster is being closed on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HEARTBEAT_FAILURE)


def expect_cluster_shutdown() -> None:
    """On a Dask worker whose cluster is about to close: a heartbeat lost to that close is expected,
    not an error worth a traceback on the user's screen."""
    worker_logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _HeartbeatFailureAtShutdown) for f in worker_logger.filters):
        worker_logger.addFilter(_HeartbeatFailureAtShutdown())
