"""Prefect's own thread and process pools."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from scalegroups.engines.base import EngineRunnerMixin
from scalegroups.prefect_compat import (
    install_worker_hooks,
    pool_processes,
    process_pool_worker_talks_to_the_api,
    runner_executor,
    runner_pool_size,
)
from scalegroups.startup_gc import long_lived_start_up
from scalegroups.watchdog import exit_with_parent

#: pool size the test plugin gives process runners (two workers, like its Dask cluster and Ray)
TEST_WORKERS = 2


class ThreadRunner(EngineRunnerMixin, ThreadPoolTaskRunner):
    """`ThreadPoolTaskRunner`: tasks run in threads of the flow's process."""

    uses_worker_processes = False
    starts_early = False

    def parallelism(self) -> int:
        """Threads share one interpreter: for batching, count at most one per CPU."""
        cpus = os.cpu_count() or 1
        return max(1, min(runner_pool_size(self), cpus))


def setup_worker_process(
    talk_to_the_api: bool = True, initializer: Callable[..., None] | None = None, *initargs: Any
) -> None:
    """Process-pool initializer: one Prefect settings object and API client per worker process,
    its events and API logs sent to the API by itself if `talk_to_the_api` (not relayed through the
    flow process), and an exit when the pool's process dies (a SIGKILLed flow would otherwise leave
    its workers)."""
    exit_with_parent()
    with long_lived_start_up():  # Prefect's task engine is imported here: see `scalegroups.startup_gc`
        install_worker_hooks()
    if talk_to_the_api:
        process_pool_worker_talks_to_the_api()
    if initializer is not None:
        initializer(*initargs)


class ProcessRunner(EngineRunnerMixin, ProcessPoolTaskRunner):
    """`ProcessPoolTaskRunner`: tasks run in spawned worker processes sharing the flow's API."""

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ):
        super().__init__(
            max_workers=max_workers, initializer=setup_worker_process, initargs=(True, initializer, *initargs)
        )

    def parallelism(self) -> int:
        """Worker processes in the pool."""
        return max(1, runner_pool_size(self))

    def script_importing_engine(self) -> str | None:
        """Prefect's pool spawns its workers: each imports the flow's script."""
        return "process"

    def on_started(self, stack: ExitStack) -> None:
        """Nothing beyond Prefect's pool: the initializer sets each worker process up."""

    def spawn_workers_now(self) -> None:
        """Have the pool spawn all its workers now (each imports Prefect as it starts), not one per
        submitted task: a no-op per worker, not waited for."""
        executor = runner_executor(self)
        if executor is not None:
            for _ in range(runner_pool_size(self)):
                executor.submit(os.getpid)

    def __enter__(self) -> ProcessRunner:
        # Subprocess message processors see what Prefect relays from the workers: with any, keep the relay.
        _, *user_initializer = self._initargs
        self._initargs = (not self.subprocess_message_processor_factories, *user_initializer)
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        # Prefect's exit waits for running tasks. When the flow ends with an error or Ctrl-C, those
        # tasks' results can no longer be used: end the worker processes instead of waiting for them.
        if exc_info[0] is not None:
            self.terminate_workers()
        super().__exit__(*exc_info)

    def terminate_workers(self) -> None:
        """End the pool's worker processes now (running tasks are lost)."""
        processes = pool_processes(runner_executor(self))
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def process_test_session(stack: ExitStack) -> dict[str, str]:
    """The pytest plugin's process runner: a pool of two worker processes per test."""
    return {"SCALEGROUPS_MAX_WORKERS": str(TEST_WORKERS)}
