"""The Dask engine's own behaviour, on real worker processes."""

from __future__ import annotations

import logging
from typing import Any

import pytest


def error_passes(message: str) -> bool:
    """On a worker: would an ERROR of the worker's logger with this message reach the log handlers?"""
    worker_logger = logging.getLogger("distributed.worker")
    record = worker_logger.makeRecord("distributed.worker", logging.ERROR, __file__, 1, message, (), None)
    return bool(worker_logger.filter(record))


def profiler_state(dask_worker: Any) -> tuple[bool, bool]:
    """On a worker: does its Dask configuration enable the profiler, and does the profiler run?"""
    import dask

    return dask.config.get("distributed.worker.profile.enabled"), "profile" in dask_worker.periodic_callbacks


@pytest.mark.slow
def test_a_closing_cluster_does_not_print_its_workers_lost_heartbeat():
    """The scheduler closing under a heartbeat in flight is expected when we close our own cluster."""
    from distributed import Client, LocalCluster

    from scalegroups.engines.dask import _announce_shutdown
    from scalegroups.engines.dask_worker import HEARTBEAT_FAILURE

    heartbeat_failure = HEARTBEAT_FAILURE + "."

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert list(client.run(error_passes, heartbeat_failure).values()) == [True]  # Dask's own behaviour
        _announce_shutdown(client)
        assert list(client.run(error_passes, heartbeat_failure).values()) == [False]
        assert list(client.run(error_passes, "Compute Failed").values()) == [True]  # every other error still shows


@pytest.mark.slow
def test_the_local_profiles_worker_processes_run_without_dasks_profiler():
    """`worker_config` in clusters/local.yaml reaches real worker processes; `cluster_kwargs` still win."""
    from distributed import Client, LocalCluster

    from scalegroups.runners import make_task_runner

    kwargs = make_task_runner("dask", max_workers=1).cluster_kwargs
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        assert list(client.run(profiler_state).values()) == [(False, False)]
    kwargs["config"]["distributed.worker.profile.enabled"] = True
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        assert list(client.run(profiler_state).values()) == [(True, True)]


def tick_interval(dask_worker: Any) -> float:
    """On a worker: seconds between its event loop's health checks."""
    return dask_worker._tick_interval


@pytest.mark.slow
def test_the_local_profiles_cluster_config_reaches_every_server_of_the_cluster_and_ends_with_its_start(
    scalegroups_prefect_api,
):
    """`cluster_config` (clusters/local.yaml: a 100 ms tick) holds for the scheduler and nannies this
    process hosts and for the workers; Dask's own configuration here is as it was, during the run too."""
    import dask
    import distributed  # noqa: F401  # its defaults join Dask's configuration when it is imported

    from scalegroups.runners import make_task_runner

    before = dask.config.get("distributed.admin.tick.interval")
    runner = make_task_runner("dask", max_workers=2)
    assert runner.duplicate().cluster_config == {"distributed.admin.tick.interval": "100ms"}
    with runner as started:
        cluster = started._cluster
        assert cluster.scheduler._tick_interval == 0.1
        assert [nanny._tick_interval for nanny in cluster.workers.values()] == [0.1, 0.1]
        assert list(started.client.run(tick_interval).values()) == [0.1, 0.1]
        assert dask.config.get("distributed.admin.tick.interval") == before
    assert before == "20ms"  # Dask's default: what the profile changes
