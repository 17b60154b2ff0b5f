"""The final states of many finished futures in one engine round trip.

A Dask future's `result()` (or `wait()`) asks the scheduler for its one key, which asks the worker:
two messages each way and a serialization at every hop, per future. For 1,000 finished trivial
tasks that was 4.5 ms of the flow's CPU and 3.5 ms of the workers' per task, against 2.6 and 2.2
ms when the same results were gathered in one call (raw Dask, 2 worker processes, this repo's
2-core machine class). Ray's `ray.get` of many refs is likewise one call instead of many.

`fetch_final_states(futures)` gathers, in one call per engine client, the states of those futures
that have finished on their engine and whose state this process does not hold yet, and hands each
to its Prefect future (which then answers `result()`, `wait()` and `state` without a round trip).
It is an optimisation only: whatever it cannot fetch (an engine error, a lost key) is left to the
future's own `result()`, which reports it as Prefect does.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from scalegroups.prefect_compat import keep_final_state, known_final_state

logger = logging.getLogger(__name__)


def fetch_final_states(futures: Iterable[Any]) -> int:
    """Fetch the final states of the finished, not yet fetched `futures` in one round trip per
    engine client; return how many states were kept. Never raises: a failed fetch changes nothing."""
    dask_futures: dict[int, tuple[Any, list[Any]]] = {}
    ray_futures: list[Any] = []
    for future in futures:
        if known_final_state(future) is not None:
            continue
        wrapped = getattr(future, "wrapped_future", None)
        if _is_dask_future(wrapped):
            if wrapped.status == "finished":
                dask_futures.setdefault(id(wrapped.client), (wrapped.client, []))[1].append(future)
        elif _is_ray_ref(wrapped):
            ray_futures.append(future)
    kept = sum(_fetch_dask(client, batch) for client, batch in dask_futures.values() if len(batch) > 1)
    if len(ray_futures) > 1:
        kept += _fetch_ray(ray_futures)
    return kept


def _is_dask_future(wrapped: Any) -> bool:
    distributed = sys.modules.get("distributed")  # not loaded: no Dask future can exist here
    return distributed is not None and isinstance(wrapped, distributed.Future)


def _is_ray_ref(wrapped: Any) -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and isinstance(wrapped, ray.ObjectRef)


def _keep(futures: list[Any], values: list[Any]) -> int:
    from prefect.client.schemas.objects import State

    kept = 0
    for future, value in zip(futures, values, strict=True):
        if isinstance(value, State) and value.is_final():
            keep_final_state(future, value)
            kept += 1
    return kept


def _fetch_dask(client: Any, futures: list[Any]) -> int:
    try:
        values = client.gather([future.wrapped_future for future in futures])
    except Exception:  # a key lost or failed meanwhile: each future's own result() reports it
        logger.debug("batched gather of %d Dask futures failed", len(futures), exc_info=True)
        return 0
    return _keep(futures, values)


def _fetch_ray(futures: list[Any]) -> int:
    import ray

    refs = [future.wrapped_future for future in futures]
    try:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        ready_ids = {ref.hex() for ref in ready}
        done = [future for future in futures if future.wrapped_future.hex() in ready_ids]
        if len(done) < 2:
            return 0
        values = ray.get([future.wrapped_future for future in done])
    except Exception:  # a task that raised, a lost object: each future's own result() reports it
        logger.debug("batched get of %d Ray futures failed", len(futures), exc_info=True)
        return 0
    return _keep(done, values)
