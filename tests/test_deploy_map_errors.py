"""deploy_map when the Prefect API goes away (issue 13.3): retries within a budget, never a hang."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers import closed_port
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings

import scalegroups
from scalegroups.deployments import DeploymentAPIError, is_transient


def http_error(status: int) -> PrefectHTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/api/flow_runs/filter")
    response = httpx.Response(status, request=request)
    return PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError("error", request=request, response=response))


def test_errors_that_may_pass_are_transient():
    request = httpx.Request("GET", "http://127.0.0.1/api/health")
    assert is_transient(httpx.ConnectError("refused", request=request))
    assert is_transient(httpx.ReadTimeout("slow", request=request))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(http_error(503)) and is_transient(http_error(500)) and is_transient(http_error(429))
    assert not is_transient(http_error(404)) and not is_transient(http_error(422))
    assert not is_transient(ValueError("a bug"))


def test_an_api_that_never_answers_ends_every_item_within_the_budget():
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{closed_port()}/api"}):
        started = time.monotonic()
        runs = scalegroups.deploy_map("some-flow/some-deployment", ["a", "b", "c"], api_retry=2.0)
    outcomes = list(runs.as_completed())
    took = time.monotonic() - started
    assert sorted(run.key for run in outcomes) == ["a", "b", "c"]
    assert all(run.status == "api_error" and isinstance(run.error, DeploymentAPIError) for run in outcomes)
    assert all(repr(run.key) in str(run.error) for run in outcomes), [str(run.error) for run in outcomes]
    assert runs.api_failures >= 2, "the API was not retried"
    assert took < 2.0 + 10, f"took {took:.1f} s for a 2 s budget"
    with pytest.raises(scalegroups.ScalegroupsError, match="3 of 3 runs"):
        runs.results()
