"""Prefect's own thread and process pools."""

from __future__ import annotations

import os
from typing import Any

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

    def __exit__(self, *exc_info: Any) -> None:
        # Prefect's exit waits for running tasks. When the flow ends with an error or Ctrl-C, those
        # tasks' results can no longer be used: end the worker processes instead of waiting for them.
        if exc_info[0] is not None:
            self._terminate_workers()
        super().__exit__(*exc_info)

    def _terminate_workers(self) -> None:
        executor = getattr(self, "_executor", None)
        processes = dict(getattr(executor, "_processes", None) or {})  # ProcessPoolExecutor has no public API
        for process in processes.values():
            if process.is_alive():
                process.terminate()
        for process in processes.values():
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
