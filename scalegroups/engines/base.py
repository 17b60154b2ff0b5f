"""What every scalegroups runner adds to its Prefect runner: a shared API and a fast preflight."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

from prefect.context import TaskRunContext

from scalegroups import context_cache
from scalegroups.caching import prepared
from scalegroups.errors import OrchestrationError
from scalegroups.limits import acquire_rates
from scalegroups.resources import Resources
from scalegroups.server import shared_api

logger = logging.getLogger("scalegroups")


def refuse_inside_task(what: str) -> None:
    """Raise `OrchestrationError` when called from inside a running task."""
    task_run = TaskRunContext.get()
    if task_run is not None:
        raise OrchestrationError(
            f"{what} from inside task {task_run.task.name!r}: tasks must not submit tasks or "
            "call groups. Move the orchestration into the flow: have the task return its "
            "value and submit the next task (or call the group) from the flow body."
        )


class EngineRunnerMixin:
    """Mixed into a Prefect task runner; keep it first in the bases so its hooks run first."""

    #: True where tasks run in other processes that need to reach the flow's API server
    uses_worker_processes: ClassVar[bool] = True
    #: where the address came from, for error messages (set by the factory)
    address_source: str = "arguments"

    def duplicate(self) -> Any:
        """Prefect runs a copy of the runner per flow run: keep where the address came from."""
        runner = super().duplicate()  # type: ignore[misc]
        runner.address_source = self.address_source
        return runner

    def preflight(self) -> None:
        """Check, fast, that the runner can start (e.g. that a cluster address answers)."""

    def parallelism(self) -> int:
        """How many tasks the started runner can run at once (for automatic batch sizes)."""
        return max(1, int(getattr(self, "_max_workers", 0) or os.cpu_count() or 1))

    @contextmanager
    def resource_context(self, resources: Resources) -> Iterator[None]:
        """Ask the engine to place tasks submitted inside by `resources` (here: warn, run anyway)."""
        if not getattr(self, "_warned_resources", False):
            self._warned_resources = True
            logger.warning(
                "%s cannot place tasks by resources; %s ignored (use the dask or ray runner)",
                type(self).__name__,
                resources.model_dump(exclude_none=True),
            )
        yield

    def cancel_futures(self, futures: list[Any]) -> None:
        """Stop these tasks: here, cancel those that have not started (threads cannot be stopped)."""
        for future in futures:
            wrapped = getattr(future, "wrapped_future", None)
            if wrapped is not None and hasattr(wrapped, "cancel"):
                wrapped.cancel()

    def share(self, value: Any) -> Any:
        """Place `value` once where the engine's workers can read it; return what to pass to tasks."""
        return value

    def __enter__(self) -> Any:
        self.preflight()
        self._scalegroups_stack = ExitStack()
        if self.uses_worker_processes:
            context_cache.install()
            self._scalegroups_stack.enter_context(shared_api())
        try:
            return super().__enter__()  # type: ignore[misc]
        except BaseException:
            self._scalegroups_stack.close()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # type: ignore[misc]
        finally:
            stack = getattr(self, "_scalegroups_stack", None)
            if stack is not None:
                stack.close()

    def submit(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        refuse_inside_task(f"task {task.name!r} was submitted")
        from scalegroups.groups import current_group, current_rates

        if rates := current_rates.get():
            acquire_rates(rates)  # the flow waits for the rate, not an engine worker
        return super().submit(prepared(task, current_group.get()), *args, **kwargs)  # type: ignore[misc]
