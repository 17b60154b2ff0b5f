"""Fan a group out as deployment flow runs: isolated processes/infrastructure, run in parallel.

Sub-flows called directly run inside the parent and block it. `deploy_map` instead creates one flow
run of a deployment per item (`run_deployment(..., as_subflow=False)`), keeps at most `limit` of
them active, and streams each run as it reaches a final state, with its item key, state and result.
Results need persisted results on the served flow (`@flow(persist_result=True)`) in storage both
sides can read: the local default (`$PREFECT_HOME/storage`) on one machine, shared storage (a
Prefect storage block, e.g. S3) across machines.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from scalegroups.errors import ScalegroupsError

POLL_S = 1.0


class DeploymentRunError(ScalegroupsError):
    """A deployment flow run ended without a result (failed, crashed, cancelled, timed out)."""


@dataclass
class DeploymentRun:
    """One item's flow run of a deployment."""

    key: Any
    parameters: dict[str, Any]
    flow_run_id: UUID | None = None
    state: Any = None
    error: BaseException | None = None
    _result: Any = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """completed, failed, crashed, cancelled, timed_out or not_started."""
        if isinstance(self.error, TimeoutError):
            return "timed_out"
        if self.state is None:
            return "not_started" if self.error is None else "failed"
        return self.state.type.value.lower()

    def result(self) -> Any:
        """The flow run's return value (from its persisted result); raises if it has none."""
        if self.error is not None:
            raise self.error
        if self.state is None or not self.state.is_completed():
            raise DeploymentRunError(f"item {self.key!r}: flow run {self.flow_run_id} is {self.status}")
        return self.state.result()


class _ReportingQueue(queue.SimpleQueue):  # type: ignore[type-arg]
    """The finished runs, each also counted by the map's progress artifacts (if any)."""

    progress: Any = None

    def put(self, item: DeploymentRun, block: bool = True, timeout: float | None = None) -> None:
        if self.progress is not None:  # counted (the last one published) before the caller sees it
            self.progress.source_done(item)
        super().put(item, block, timeout)


def deployment_rows(run: DeploymentRun) -> list[tuple[str, Any, str]]:
    """The (status, key, error) row of a finished deployment run, for progress counts."""
    if run.error is not None:
        error = repr(run.error)
    elif run.state is not None and not run.state.is_completed():
        error = run.state.message or run.state.name
    else:
        error = ""
    return [(run.status, run.key, error)]


def _track(deployment: str, runs: list[DeploymentRun], progress: bool | None) -> Any:
    from scalegroups.artifacts import track

    name = deployment.split("/")[-1]
    return track(name, runs, deployment_rows, progress=progress, subscribe=lambda *_: None, final_inline=True)


class DeploymentMap:
    """Drives the flow runs of one `deploy_map` call from a background thread."""

    def __init__(
        self,
        deployment: str,
        items: list[Any],
        keys: list[Any],
        parameters: Callable[[Any], dict[str, Any]],
        limit: int | None,
        timeout: float | None,
        tags: Iterable[str],
        job_variables: dict[str, Any] | None = None,
        progress: bool | None = None,
    ):
        self.deployment = deployment
        self.runs = [DeploymentRun(key, parameters(item)) for key, item in zip(keys, items, strict=True)]
        self._limit = limit or len(self.runs) or 1
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self._tags = list(tags)
        self._job_variables = dict(job_variables) if job_variables else None
        self._finished: queue.SimpleQueue[DeploymentRun] = _ReportingQueue()
        self._finished.progress = _track(deployment, self.runs, progress)
        self._thread = threading.Thread(target=self._drive, name="scalegroups-deploy-map", daemon=True)
        self._thread.start()

    def _drive(self) -> None:
        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.deployments import run_deployment

        waiting = list(self.runs)
        active: dict[UUID, DeploymentRun] = {}
        with get_client(sync_client=True) as client:
            while waiting or active:
                while waiting and len(active) < self._limit and not self._expired():
                    run = waiting.pop(0)
                    try:
                        flow_run = run_deployment(
                            self.deployment,
                            parameters=run.parameters,
                            timeout=0,
                            as_subflow=False,
                            tags=self._tags,
                            flow_run_name=f"{self.deployment.split('/')[-1]}[{run.key}]",
                            job_variables=self._job_variables,
                        )
                    except Exception as exc:
                        run.error = exc
                        self._finished.put(run)
                        continue
                    run.flow_run_id = flow_run.id
                    active[flow_run.id] = run
                if self._expired():
                    self._give_up(client, waiting, active)
                    return
                if active:
                    flow_runs = client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(active)))
                    )
                    for flow_run in flow_runs:
                        if flow_run.state is not None and flow_run.state.is_final():
                            run = active.pop(flow_run.id)
                            run.state = flow_run.state
                            self._finished.put(run)
                time.sleep(POLL_S)

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _give_up(self, client: Any, waiting: list[DeploymentRun], active: dict[UUID, DeploymentRun]) -> None:
        from prefect.states import Cancelling

        for flow_run_id, run in active.items():
            client.set_flow_run_state(flow_run_id, Cancelling(message="deploy_map timeout"), force=True)
            run.error = TimeoutError(f"item {run.key!r}: flow run {flow_run_id} not finished after {self._timeout} s")
            self._finished.put(run)
        for run in waiting:
            run.error = TimeoutError(f"item {run.key!r}: not started within {self._timeout} s")
            self._finished.put(run)

    def as_completed(self) -> Iterator[DeploymentRun]:
        """Yield each item's run as it reaches a final state (or fails to start, or times out)."""
        for _ in range(len(self.runs)):
            yield self._finished.get()

    def wait(self) -> list[DeploymentRun]:
        """Wait for every run; return them in item order."""
        for _ in self.as_completed():
            pass
        return list(self.runs)

    def results(self) -> dict[Any, Any]:
        """{key: result} for every item; raises `DeploymentRunError` naming every item without one."""
        runs = self.wait()
        problems = []
        values = {}
        for run in runs:
            try:
                values[run.key] = run.result()
            except Exception as exc:
                problems.append(f"{run.key!r}: {exc}")
        if problems:
            raise DeploymentRunError(
                f"{len(problems)} of {len(runs)} runs of {self.deployment} failed: " + "; ".join(problems)
            )
        return values


def deploy_map(
    deployment: str,
    items: Iterable[Any],
    *,
    parameter: str = "item",
    params: dict[str, Any] | None = None,
    key: Callable[[Any], Hashable] | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    tags: Iterable[str] = (),
    job_variables: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> DeploymentMap:
    """One flow run of `deployment` ("flow-name/deployment-name") per item, at most `limit` at once.

    Each run gets `{parameter: item, **params}`. Returns at once; iterate `as_completed()`, or call
    `wait()` / `results()`. Runs not final after `timeout` seconds are cancelled and reported.
    `job_variables` go to every run's work pool job (e.g. `{"env": {"SCALEGROUPS_RUNNER": "ray"}}`);
    `progress=False`: no progress artifacts in the calling flow run.
    """
    item_list = list(items)
    keys = [key(item) if key else item for item in item_list]
    extra = dict(params or {})
    return DeploymentMap(
        deployment,
        item_list,
        keys,
        lambda item: {parameter: item, **extra},
        limit,
        timeout,
        tags,
        job_variables=job_variables,
        progress=progress,
    )
