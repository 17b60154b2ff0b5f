"""Fan a group out as deployment flow runs: isolated processes/infrastructure, run in parallel.

Sub-flows called directly run inside the parent and block it. `deploy_map` instead creates one flow
run of a deployment per item (`run_deployment(..., as_subflow=False)`), keeps at most `limit` of
them active, and streams each run as it reaches a final state, with its item key, state and result.
Results need persisted results on the served flow (`@flow(persist_result=True)`) in storage both
sides can read: the local default (`$PREFECT_HOME/storage`) on one machine, shared storage (a
Prefect storage block, e.g. S3) across machines.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from scalegroups.errors import ScalegroupsError

POLL_S = 1.0
#: seconds `deploy_map` retries an unanswering Prefect API (from the first failure) before giving up
API_RETRY_S = 120.0
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 10.0
logger = logging.getLogger("scalegroups")


class DeploymentRunError(ScalegroupsError):
    """A deployment flow run ended without a result (failed, crashed, cancelled, timed out)."""


class DeploymentAPIError(DeploymentRunError):
    """The Prefect API did not answer within the retry budget: the item's outcome is unknown."""


def is_transient(exc: BaseException) -> bool:
    """True for API errors that may pass: no connection, a network error, a timeout, 408/429/5xx."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError | httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or code in (408, 429)
    return isinstance(exc, httpx.TransportError | OSError | TimeoutError)


def _for_item(error: BaseException, run: DeploymentRun) -> BaseException:
    """`error` restated for one item: its key, its flow run and its last known state."""
    state = run.state.type.value.lower() if run.state is not None else "not started"
    flow_run = f"flow run {run.flow_run_id}" if run.flow_run_id else "no flow run"
    item_error = type(error)(f"item {run.key!r} ({flow_run}, last seen {state}): {error}")
    item_error.__cause__ = error
    return item_error


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
        """completed, failed, crashed, cancelled, timed_out, api_error or not_started."""
        if isinstance(self.error, TimeoutError):
            return "timed_out"
        if isinstance(self.error, DeploymentAPIError):
            return "api_error"
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
    """Drives the flow runs of one `deploy_map` call from a background thread.

    API calls that fail for a reason that may pass (the server restarting, a network error, a 5xx
    answer) are retried with exponential backoff for at most `api_retry` seconds from the first
    failure of an outage; then every unfinished item ends with `DeploymentAPIError` (status
    `api_error`). Any other error in the driver ends the unfinished items with it: `as_completed()`
    never waits for a driver that has stopped.
    """

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
        api_retry: float = API_RETRY_S,
    ):
        from prefect.context import SettingsContext

        self.deployment = deployment
        self.runs = [DeploymentRun(key, parameters(item)) for key, item in zip(keys, items, strict=True)]
        self._limit = limit or len(self.runs) or 1
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self._tags = list(tags)
        self._job_variables = dict(job_variables) if job_variables else None
        self.api_retry = api_retry
        #: API calls that failed and were retried (or gave up), for progress displays and tests
        self.api_failures = 0
        self._outage_since: float | None = None
        self._id = uuid.uuid4().hex
        self._settings = SettingsContext.get()  # the caller's Prefect settings, for the driver thread
        self._finished: queue.SimpleQueue[DeploymentRun] = _ReportingQueue()
        self._finished.progress = _track(deployment, self.runs, progress)
        self._reported: set[int] = set()
        self._all_reported = threading.Event()
        if not self.runs:
            self._all_reported.set()
        self._thread = threading.Thread(target=self._drive, name="scalegroups-deploy-map", daemon=True)
        self._thread.start()

    def _report(self, run: DeploymentRun) -> None:
        if id(run) not in self._reported:
            self._reported.add(id(run))
            self._finished.put(run)
            if len(self._reported) == len(self.runs):
                self._all_reported.set()

    def _drive(self) -> None:
        from prefect.context import SettingsContext
        from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        # The client's own retries would block one call for up to a minute: the driver retries
        # instead, within its budget (settings of this thread only).
        try:
            with SettingsContext(profile=self._settings.profile, settings=self._settings.settings):
                updates: dict[Any, Any] = {PREFECT_CLIENT_MAX_RETRIES: 0}
                if self.api_retry > 0:
                    timeout = min(PREFECT_API_REQUEST_TIMEOUT.value(), max(self.api_retry, 5.0))
                    updates[PREFECT_API_REQUEST_TIMEOUT] = timeout
                with temporary_settings(updates=updates):
                    self._loop()
        except BaseException as exc:  # never leave an item unreported
            error = exc if isinstance(exc, DeploymentAPIError) else DeploymentRunError(f"deploy_map stopped: {exc!r}")
            for run in self.runs:
                if id(run) not in self._reported:
                    if run.error is None:
                        run.error = _for_item(error, run)
                    self._report(run)

    def _api(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()`, retried with backoff while the API may come back, within `api_retry` seconds."""
        delay = RETRY_FIRST_DELAY_S
        while True:
            try:
                result = call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.api_failures += 1
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                waited = now - self._outage_since
                if waited + delay > self.api_retry:
                    raise DeploymentAPIError(
                        f"the Prefect API did not answer for {waited:.1f} s (retry budget {self.api_retry} s) "
                        f"while {what}: {exc!r}"
                    ) from exc
                logger.warning("deploy_map: %s failed (%r); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY_S)
            else:
                self._outage_since = None
                return result

    def _loop(self) -> None:
        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.deployments import run_deployment

        waiting = list(enumerate(self.runs))
        active: dict[UUID, DeploymentRun] = {}
        with get_client(sync_client=True) as client:
            while waiting or active:
                while waiting and len(active) < self._limit and not self._expired():
                    index, run = waiting[0]
                    try:
                        flow_run = self._api(
                            f"starting item {run.key!r}",
                            lambda run=run, index=index: run_deployment(
                                self.deployment,
                                parameters=run.parameters,
                                timeout=0,
                                as_subflow=False,
                                tags=self._tags,
                                flow_run_name=f"{self.deployment.split('/')[-1]}[{run.key}]",
                                job_variables=self._job_variables,
                                idempotency_key=f"scalegroups-deploy-map-{self._id}-{index}",  # a retry is the same run
                            ),
                        )
                    except DeploymentAPIError:
                        raise
                    except Exception as exc:  # this item cannot start (e.g. no such deployment)
                        waiting.pop(0)
                        run.error = exc
                        self._report(run)
                        continue
                    waiting.pop(0)
                    run.flow_run_id = flow_run.id
                    active[flow_run.id] = run
                if self._expired():
                    self._give_up(client, [run for _, run in waiting], active)
                    return
                if active:
                    flow_runs = self._api(
                        "reading flow run states",
                        lambda: client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(active)))
                        ),
                    )
                    for flow_run in flow_runs:
                        run = active.get(flow_run.id)
                        if run is not None:
                            run.state = flow_run.state
                        if run is not None and flow_run.state is not None and flow_run.state.is_final():
                            del active[flow_run.id]
                            self._report(run)
                time.sleep(POLL_S)

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _give_up(self, client: Any, waiting: list[DeploymentRun], active: dict[UUID, DeploymentRun]) -> None:
        from prefect.states import Cancelling

        for flow_run_id, run in active.items():
            run.error = TimeoutError(f"item {run.key!r}: flow run {flow_run_id} not finished after {self._timeout} s")
            try:
                self._api(
                    "cancelling a timed-out flow run",
                    lambda flow_run_id=flow_run_id: client.set_flow_run_state(
                        flow_run_id, Cancelling(message="deploy_map timeout"), force=True
                    ),
                )
            except Exception as exc:  # the timeout is reported all the same
                run.error.add_note(f"cancelling flow run {flow_run_id} failed: {exc!r}")
            self._report(run)
        for run in waiting:
            run.error = TimeoutError(f"item {run.key!r}: not started within {self._timeout} s")
            self._report(run)

    def as_completed(self) -> Iterator[DeploymentRun]:
        """Yield each item's run as it reaches a final state (or fails to start, or times out)."""
        for _ in range(len(self.runs)):
            yield self._finished.get()

    def wait(self, timeout: float | None = None) -> list[DeploymentRun]:
        """Wait for every run; return them in item order (also after `as_completed()` consumed them).

        Raises `TimeoutError` if some run is still unfinished after `timeout` seconds.
        """
        if not self._all_reported.wait(timeout):
            left = len(self.runs) - len(self._reported)
            raise TimeoutError(f"{left} of {len(self.runs)} runs of {self.deployment} unfinished after {timeout} s")
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
    api_retry: float = API_RETRY_S,
) -> DeploymentMap:
    """One flow run of `deployment` ("flow-name/deployment-name") per item, at most `limit` at once.

    Each run gets `{parameter: item, **params}`. Returns at once; iterate `as_completed()`, or call
    `wait()` / `results()`. Runs not final after `timeout` seconds are cancelled and reported.
    `job_variables` go to every run's work pool job (e.g. `{"env": {"SCALEGROUPS_RUNNER": "ray"}}`);
    `progress=False`: no progress artifacts in the calling flow run.
    An unanswering Prefect API is retried for `api_retry` seconds per outage; then every
    unfinished item ends with status `api_error`.
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
        api_retry=api_retry,
    )
