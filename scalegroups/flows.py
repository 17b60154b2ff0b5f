"""`scalegroups.flow`: `prefect.flow` whose task runner is chosen when the flow is *called*."""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect import flow as prefect_flow

from scalegroups.prefect_compat import as_flow_subclass
from scalegroups.runners import build_task_runner, resolve_runner
from scalegroups.server import ensure_api


class CallTimeRunnerFlow(Flow):  # type: ignore[type-arg]
    """A Prefect flow that builds its task runner from `SCALEGROUPS_*` at each call.

    An explicit `task_runner=` (at decoration or via `with_options`) is kept as is.
    """

    _fixed_runner: bool = False

    def with_options(self, **options: Any) -> CallTimeRunnerFlow:
        """`Flow.with_options`, keeping call-time runner selection unless a runner is given."""
        new_flow = as_flow_subclass(super().with_options(**options), CallTimeRunnerFlow)
        new_flow._fixed_runner = self._fixed_runner or options.get("task_runner") is not None
        return new_flow  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fixed_runner:
            ensure_api()
            return super().__call__(*args, **kwargs)
        runner = build_task_runner(resolve_runner())
        runner.preflight()  # a wrong address fails here, before the API or a flow run is touched
        ensure_api()
        configured = Flow.with_options(self, task_runner=runner)
        return configured(*args, **kwargs)


def flow(fn: Any = None, /, **options: Any) -> Any:
    """Drop-in for `prefect.flow`; the runner comes from `SCALEGROUPS_*` when the flow is called."""

    def decorate(function: Any) -> CallTimeRunnerFlow:
        built = as_flow_subclass(prefect_flow(function, **options), CallTimeRunnerFlow)
        built._fixed_runner = options.get("task_runner") is not None
        return built  # type: ignore[no-any-return]

    return decorate if fn is None else decorate(fn)
