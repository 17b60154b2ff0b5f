"""The Dask engine's own behaviour, on real worker processes."""

from __future__ import annotations

import logging

import pytest


def heartbeat_failure_passes(dask_worker=None) -> bool:
    """On a worker: would the worker's heartbeat-failure ERROR reach the log handlers?"""
    from scalegroups.engines.dask_worker import HEARTBEAT_FAILURE

    worker_logger = logging.getLogger("distributed.worker")
    record = worker_logger.makeRecord(
        "distributed.worker", logging.ERROR, __file__, 1, HEARTBEAT_FAILURE + ".", (), None
    )
    return bool(worker_logger.filter(record))


def other_error_passes(dask_worker=None) -> bool:
    worker_logger = logging.getLogger("distributed.worker")
    record = worker_logger.makeRecord("distributed.worker", logging.ERROR, __file__, 1, "Compute Failed", (), None)
    return bool(worker_logger.filter(record))


@pytest.mark.slow
def test_a_closing_cluster_does_not_print_its_workers_lost_heartbeat():
    """The scheduler closing under a heartbeat in flight is expected when we close our own cluster."""
    from distributed import Client, LocalCluster

    from scalegroups.engines.dask import _announce_shutdown

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert list(client.run(heartbeat_failure_passes).values()) == [True]  # Dask's own behaviour
        _announce_shutdown(client)
        assert list(client.run(heartbeat_failure_passes).values()) == [False]
        assert list(client.run(other_error_passes).values()) == [True]  # every other error still shows
