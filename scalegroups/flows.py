"""`scalegroups.flow`: `prefect.flow` whose task runner is chosen when the flow is *called*."""

from __future__ import annotations

import os
from typing import Any

from prefect import Flow
from prefect import flow as prefect_flow

from scalegroups.errors import ScalegroupsError
from scalegroups.prefect_compat import as_flow_subclass
from scalegroups.runners import build_task_runner, resolve_runner
from scalegroups.server import ensure_api, start_local_server_now


def _scalegroups_env() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("SCALEGROUPS_")))


class CallTimeRunnerFlow(Flow):  # type: ignore[type-arg]
    """A Prefect flow that builds its task runner from `SCALEGROUPS_*` at each call.

    An explicit `task_runner=` (at decoration or via `with_options`) is kept as is.

    A deployment's flow run (a worker's or `flow.serve`'s process running `prefect.engine`) does
    not call the flow: Prefect's engine reads `flow.task_runner`. So that attribute, too, is built
    from `SCALEGROUPS_*` as they are when it is read (e.g. a work pool's `env` job variable), once
    per set of values.
    """

    _fixed_runner: bool = False

    @property  # type: ignore[override]
    def task_runner(self) -> Any:
        """The fixed runner, else the runner `SCALEGROUPS_*` choose now (preflight-checked)."""
        if self._fixed_runner:
            return self.__dict__["task_runner"]
        key = _scalegroups_env()
        cached = self.__dict__.get("_call_time_runner")
        if cached is None or cached[0] != key:
            runner = build_task_runner(resolve_runner())
            runner.preflight()  # a wrong address fails the flow run within seconds, not in the engine
            cached = self.__dict__["_call_time_runner"] = (key, runner)
        return cached[1]

    @task_runner.setter
    def task_runner(self, value: Any) -> None:
        self.__dict__["task_runner"] = value

    def with_options(self, **options: Any) -> CallTimeRunnerFlow:
        """`Flow.with_options`, keeping call-time runner selection unless a runner is given."""
        fixed = self._fixed_runner or options.get("task_runner") is not None
        if options.get("task_runner") is None:  # copy the stored default, do not build one now
            options["task_runner"] = self.__dict__.get("task_runner")
        new_flow = as_flow_subclass(super().with_options(**options), CallTimeRunnerFlow)
        new_flow._fixed_runner = fixed
        return new_flow  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            runner = None if self._fixed_runner else build_task_runner(resolve_runner())
            if runner is not None:
                runner.preflight()  # a wrong address fails here, before the API or a flow run is touched
            ensure_api()  # a bad SCALEGROUPS_SERVER_* or _GC_FREEZE value is bad input too
        except ScalegroupsError as exc:  # bad input: the message says it all; show the user's line, not ours
            raise exc.with_traceback(None) from None
        if runner is None:  # the flow was given its runner
            return super().__call__(*args, **kwargs)
        configured = Flow.with_options(self, task_runner=runner)
        self._starts_engine_early(runner)
        try:
            return configured(*args, **kwargs)
        finally:
            runner.close_if_unused()  # nothing to do unless it started early and no flow run took it

    def _starts_engine_early(self, runner: Any) -> bool:
        """Start the engine's worker processes while this process's local API server starts, not
        after it: a flow file's first run would otherwise wait for one, then the other. Only for a
        sync top-level call, where the flow runs (and ends the runner) before the call returns."""
        from prefect.context import FlowRunContext

        generator = getattr(self, "isgenerator", False)  # its body runs after the call returns
        if self.isasync or generator or FlowRunContext.get() is not None or not runner.starts_early:
            return False
        return start_local_server_now() and runner.start_early()


def flow(fn: Any = None, /, **options: Any) -> Any:
    """Drop-in for `prefect.flow`; the runner comes from `SCALEGROUPS_*` when the flow is called
    (or, in a deployment's flow run, when Prefect's engine reads its `task_runner`)."""

    def decorate(function: Any) -> CallTimeRunnerFlow:
        built = as_flow_subclass(prefect_flow(function, **options), CallTimeRunnerFlow)
        built._fixed_runner = options.get("task_runner") is not None
        return built  # type: ignore[no-any-return]

    return decorate if fn is None else decorate(fn)
