"""What every scalegroups runner adds to the Prefect runner it extends.

- On start in the flow's process: a fast preflight of the cluster address, one Prefect API for the
  flow and every worker (`scalegroups.server`), the flow's context shipped to workers once per
  flow run instead of once per task (`prefect_compat.ship_context_once`), and a flow run that ends
  without waiting for its heartbeat thread (`prefect_compat.end_flow_runs_without_heartbeat_join`).
- In worker processes, a copy of the runner travels with every task (Prefect needs it for tasks
  that submit tasks). Such a copy starts its engine only when a task really submits one: entering
  it for every task run would build a process pool, a client or a cluster connection per task.
- Submitting: the group's run name and cache default (`caching.prepared`), its checkpoints
  (`checkpoints`) and its rate limits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, ClassVar

from scalegroups.api_clients import shared_api_clients
from scalegroups.artifacts import flush_all
from scalegroups.caching import prepared
from scalegroups.checkpoints import checkpointing
from scalegroups.context import current_checkpoint, current_group, current_rates
from scalegroups.limits import acquire_rates
from scalegroups.main_guard import refuse_unguarded_script
from scalegroups.prefect_compat import (
    end_flow_runs_without_heartbeat_join,
    known_blocks_without_collections,
    remembered_setting_values,
    ship_context_once,
    storage_paths_joined,
)
from scalegroups.process_exit import collect_once_then_freeze_at_exit
from scalegroups.resources import Resources
from scalegroups.startup_gc import freeze_once

logger = logging.getLogger("scalegroups")


class EngineRunnerMixin:
    """Mixed into a Prefect task runner; keep it first in the bases so its hooks run first."""

    #: True where tasks run in other processes (they need the flow's API and a shipped context)
    uses_worker_processes: ClassVar[bool] = True
    #: True where starting the runner early pays (`start_early`): it starts worker processes
    starts_early: ClassVar[bool] = True
    #: where the address came from, for error messages (set by the factory)
    address_source: str = "arguments"
    #: True for a copy that travelled to a worker with a task: it starts on first submit
    _deferred: bool = False
    _deferred_started: bool = False
    #: checkpoint the tasks of every group whose own `checkpoint` is None (set by the factory)
    checkpoint: bool = False
    #: where checkpointed results go (None: Prefect's default result storage)
    result_storage: str | None = None

    @classmethod
    def from_section(cls, section: Any) -> Any:
        """The runner a profile section describes (sections name the runner's own arguments)."""
        return cls(**section.model_dump())

    # ------------------------------------------------------------------ copies and pickling
    def duplicate(self) -> Any:
        """Prefect runs a copy of the runner per flow run (and per task run in workers); once a
        copy was started early (`start_early`), the next copy asked for is that one."""
        early = self.__dict__.pop("_early_copy", None)
        if early is not None:
            early._early = "handed over"
            self._early_handed = early
            return early
        runner = super().duplicate()  # type: ignore[misc]
        runner.address_source = self.address_source
        runner._deferred = self._deferred
        runner.checkpoint = self.checkpoint
        runner.result_storage = self.result_storage
        return runner

    def __getstate__(self) -> dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        state["_deferred"] = True  # only pickled copies travel to workers
        for local_only in ("_scalegroups_stack", "_early", "_early_runner", "_early_copy", "_early_handed"):
            state.pop(local_only, None)
        return state

    # ------------------------------------------------------------------------- engine hooks
    def preflight(self) -> None:
        """Check, fast, that the runner can start (e.g. that a cluster address answers); engines
        extend it. Here: a script that runs its flow when imported is refused on engines whose
        worker processes import the script again."""
        engine = self.script_importing_engine()
        if engine is not None:
            refuse_unguarded_script(engine)

    def script_importing_engine(self) -> str | None:
        """The engine's name if it starts local worker processes that import the flow's script
        again (Python's spawn), else None."""
        return None

    def parallelism(self) -> int:
        """How many tasks the started runner can run at once (for automatic batch sizes)."""
        return max(1, os.cpu_count() or 1)

    def quiet_logs(self) -> AbstractContextManager[None]:
        """While the runner runs, the engine's INFO chatter off (unless `SCALEGROUPS_ENGINE_LOGS=1`)."""
        return nullcontext()

    def spawn_workers_now(self) -> None:
        """Start the started runner's worker processes now if it would start them on demand."""

    def on_started(self, stack: ExitStack) -> None:
        """Engine-specific set-up after the engine started (e.g. worker plugins); undone by `stack`."""

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

    def dashboard_url(self) -> str | None:
        """The engine's dashboard for the started runner, if it has one (linked from the Prefect UI)."""
        return None

    # -------------------------------------------------------------------------- lifecycle
    def start_early(self) -> bool:
        """Start a copy's engine now, before Prefect creates the flow run, so that it starts while
        the local API server does (each waits for the other otherwise). Prefect's next
        `duplicate()` of this runner returns that started copy; `close_if_unused` ends it if no
        flow run entered it. A failure is left for the normal start inside the flow run to
        report: False."""
        copy = self.duplicate()
        try:
            copy._early_runner = copy._start()
            copy.spawn_workers_now()
        except Exception as exc:
            logger.debug("early engine start failed; the flow run starts it: %r", exc)
            return False
        copy._early = "started"
        self._early_copy = copy
        return True

    def close_if_unused(self) -> None:
        """End the engine `start_early` started if no flow run entered it (the call failed first)."""
        for name in ("_early_copy", "_early_handed"):
            early = self.__dict__.pop(name, None)
            if early is not None and early.__dict__.get("_early") in ("started", "handed over"):
                early._early = None
                early.__exit__(None, None, None)

    def __enter__(self) -> Any:
        if self.__dict__.get("_early") == "handed over":
            self._early = "entered"
            return self._early_runner
        if self._deferred:
            self._started = True  # Prefect's "started" flag; the engine starts on first submit
            return self
        return self._start()

    def _start(self) -> Any:
        self.preflight()
        collect_once_then_freeze_at_exit()
        stack = ExitStack()
        self._scalegroups_stack = stack
        try:
            stack.enter_context(self.quiet_logs())  # set as the engine starts, restored after it stops
            stack.enter_context(shared_api_clients())  # closed last: after the final progress artifacts
            stack.enter_context(end_flow_runs_without_heartbeat_join())
            stack.enter_context(known_blocks_without_collections())
            stack.enter_context(remembered_setting_values())
            stack.enter_context(storage_paths_joined())
            if self.uses_worker_processes:
                from scalegroups.server import ensure_api

                ensure_api()
                stack.enter_context(ship_context_once())
            runner = super().__enter__()  # type: ignore[misc]
            stack.callback(super().__exit__, None, None, None)  # type: ignore[misc]
            stack.callback(flush_all)  # progress artifacts at 100%, while the engine's futures can still be read
            self.on_started(stack)
            freeze_once()  # Prefect and the engine are loaded now: see `scalegroups.startup_gc`
        except BaseException:
            stack.close()
            raise
        return runner

    def _start_deferred(self) -> None:
        """Start the engine of a copy in a worker, for a task that submits tasks."""
        self._started = False
        self._start()
        self._deferred_started = True

    def __exit__(self, *exc_info: Any) -> None:
        if self._deferred and not self._deferred_started:
            self._started = False
            return
        stack = getattr(self, "_scalegroups_stack", None)
        if stack is None:
            return
        self._scalegroups_stack = None
        stack.close()  # the engine's own exit, then what `_start` set up, in reverse order

    # --------------------------------------------------------------------------- submitting
    def submit(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        if self._deferred and not self._deferred_started:
            self._start_deferred()
        if rates := current_rates.get():
            acquire_rates(rates)  # the flow waits for the rate, not an engine worker
        group = current_group.get()
        checkpoint = checkpointing(current_checkpoint.get(), self) if group is not None else None
        return super().submit(prepared(task, group, checkpoint), *args, **kwargs)  # type: ignore[misc]
