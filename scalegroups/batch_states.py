"""The final states of many finished Dask futures in one round trip.

A Dask future's `result()` (or `wait()`) asks the scheduler for its one key, which asks the worker:
two messages each way and a serialization at every hop, per future. For 1,000 finished trivial
tasks that was 4.5 ms of the flow's CPU and 3.5 ms of the workers' per task, against 2.6 and 2.2
ms when the same results were gathered in one call (raw Dask, 2 worker processes, this repo's
2-core machine class).

`fetch_final_states(futures)` gathers, in one call per Dask client, the states of those futures
that have finished on their engine and whose state this process does not hold yet, and hands each
to its Prefect future (which then answers `result()` and `state` without a round trip). It is an
optimisation only: whatever it cannot fetch (an engine error, a lost key) is left to the future's
own `result()`, which reports it as Prefect does. Ray is left alone: a `ray.get` of one finished
ref cost 0.02-0.06 ms of CPU, the same as its share of a batched get.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from scalegroups.prefect_compat import keep_final_state, known_final_state

logger = logging.getLogger(__name__)


def fetch_final_states(futures: Iterable[Any]) -> int:
    """Fetch the final states of the finished, not yet fetched Dask `futures` in one round trip per
    client; return how many states were kept. Never raises: a failed fetch changes nothing."""
    batches: dict[int, tuple[Any, list[Any]]] = {}
    for future in futures:
        if known_final_state(future) is not None:
            continue
        wrapped = getattr(future, "wrapped_future", None)
        if _is_dask_future(wrapped) and wrapped.status == "finished":
            batches.setdefault(id(wrapped.client), (wrapped.client, []))[1].append(future)
    return sum(_fetch_dask(client, batch) for client, batch in batches.values() if len(batch) > 1)


def _is_dask_future(wrapped: Any) -> bool:
    distributed = sys.modules.get("distributed")  # not loaded: no Dask future can exist here
    return distributed is not None and isinstance(wrapped, distributed.Future)


def _fetch_dask(client: Any, futures: list[Any]) -> int:
    from prefect.client.schemas.objects import State

    try:
        values = client.gather([future.wrapped_future for future in futures])
    except Exception:  # a key lost or failed meanwhile: each future's own result() reports it
        logger.debug("batched gather of %d Dask futures failed", len(futures), exc_info=True)
        return 0
    kept = 0
    for future, value in zip(futures, values, strict=True):
        if isinstance(value, State) and value.is_final():
            keep_final_state(future, value)
            kept += 1
    return kept
