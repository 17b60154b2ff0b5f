"""What runs inside a Dask worker process: the scalegroups worker plugin.

Kept apart from `scalegroups.engines.dask` so that unpickling the plugin on a worker imports no
Prefect on the worker's event loop: Prefect's import takes seconds on a busy machine, and a worker
whose loop is blocked that long misses its heartbeats (a scheduler with a short `worker-ttl` then
drops it, and the plugin registration fails with it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed import WorkerPlugin

PLUGIN_NAME = "scalegroups-worker-setup"


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

    install_worker_hooks()
