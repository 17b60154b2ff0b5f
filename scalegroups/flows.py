"""`scalegroups.flow`: `prefect.flow` whose task runner is chosen when the flow is *called*."""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect import flow as prefect_flow

from scalegroups.runners import build_task_runner, resolve_runner


class CallTimeRunnerFlow(Flow):  # type: ignore[type-arg]
    """A Prefect flow that builds its task runner from `SCALEGROUPS_*` at each call.

    An explicit `task_runner=` (at decoration or via `with_options`) is kept as is.
    """

    _fixed_runner: bool = False

    def with_options(self, **options: Any) -> CallTimeRunnerFlow:
        """`Flow.with_options`, keeping call-time runner selection unless a runner is given."""
        new_flow = super().with_options(**options)
        new_flow.__class__ = CallTimeRunnerFlow
        new_flow._fixed_runner = self._fixed_runner or options.get("task_runner") is not None
        return new_flow  # type: ignore[return-value]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fixed_runner:
            return super().__call__(*args, **kwargs)
        runner = build_task_runner(resolve_runner())
        runner.preflight()  # a wrong address fails here, before a flow run is created
        configured = Flow.with_options(self, task_runner=runner)
        return configured(*args, **kwargs)


def flow(fn: Any = None, /, **options: Any) -> Any:
    """Drop-in for `prefect.flow`; the runner comes from `SCALEGROUPS_*` when the flow is called."""

    def decorate(function: Any) -> CallTimeRunnerFlow:
        built = prefect_flow(function, **options)
        built.__class__ = CallTimeRunnerFlow
        built._fixed_runner = options.get("task_runner") is not None
        return built

    return decorate if fn is None else decorate(fn)
