"""Pass one large value to many tasks without a copy per task submission."""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext

from scalegroups.errors import OrchestrationError


def share(value: Any) -> Any:
    """Place `value` once where the flow's workers can read it; pass the result to tasks.

    Dask scatters it to the cluster (tasks receive the data), Ray puts it in the object store
    (prefect-ray resolves the reference in each task), threads pass it as is. A process pool has
    no shared store: the value is still pickled once per task.
    """
    context = FlowRunContext.get()
    if context is None:
        raise OrchestrationError("share() hands data to the flow's workers: call it inside a flow")
    runner = context.task_runner
    return runner.share(value) if hasattr(runner, "share") else value
