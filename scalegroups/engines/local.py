"""Prefect's own thread and process pools."""

from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from scalegroups.engines.base import EngineRunnerMixin


class ThreadRunner(EngineRunnerMixin, ThreadPoolTaskRunner):
    """`ThreadPoolTaskRunner`: tasks run in threads of the flow's process."""

    uses_worker_processes = False


class ProcessRunner(EngineRunnerMixin, ProcessPoolTaskRunner):
    """`ProcessPoolTaskRunner`: tasks run in spawned worker processes sharing the flow's API."""
