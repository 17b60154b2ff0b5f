"""Prefect's own thread and process pools."""

from __future__ import annotations

import os

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from scalegroups.engines.base import EngineRunnerMixin


class ThreadRunner(EngineRunnerMixin, ThreadPoolTaskRunner):
    """`ThreadPoolTaskRunner`: tasks run in threads of the flow's process."""

    uses_worker_processes = False

    def parallelism(self) -> int:
        """Threads share one interpreter: for batching, count at most one per CPU."""
        return max(1, min(self._max_workers, os.cpu_count() or 1))


class ProcessRunner(EngineRunnerMixin, ProcessPoolTaskRunner):
    """`ProcessPoolTaskRunner`: tasks run in spawned worker processes sharing the flow's API."""
