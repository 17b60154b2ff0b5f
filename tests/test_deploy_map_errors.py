"""deploy_map when the Prefect API goes away (issue 13.3): retries within a budget, never a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from helpers import REPO, closed_port, eventually, kill_marked, marked_env
from prefect import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed

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
    outcomes = runs.wait(timeout=120)
    took = time.monotonic() - started
    assert [run.key for run in outcomes] == ["a", "b", "c"]
    assert all(run.status == "api_error" and isinstance(run.error, DeploymentAPIError) for run in outcomes)
    assert all(repr(run.key) in str(run.error) for run in outcomes), [str(run.error) for run in outcomes]
    assert runs.api_failures >= 2, "the API was not retried"
    assert took < 2.0 + 10, f"took {took:.1f} s for a 2 s budget"
    with pytest.raises(scalegroups.ScalegroupsError, match="3 of 3 runs"):
        runs.results()


# ------------------------------------------------------------- a real server that goes away


class ServerProcess:
    """`python -m scalegroups.server` on a fixed port and Prefect home: started, killed, restarted."""

    def __init__(self, home: Path):
        self.home = home
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env, self.marker = marked_env(PREFECT_HOME=str(home))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scalegroups.server", "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        eventually(lambda: answers(self.url) or self.process.poll() is not None, "the server answering", 120)
        assert self.process.poll() is None, "the server exited"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        kill_marked(self.marker)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def server(tmp_path):
    served = ServerProcess(tmp_path / "home")
    served.start()
    with temporary_settings(updates={PREFECT_API_URL: served.url}), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("outage-flow")
        client.create_deployment(flow_id=flow_id, name="outage")  # no worker: the test ends its runs
    try:
        yield served
    finally:
        served.close()


def started_map(server: ServerProcess, api_retry: float) -> scalegroups.DeploymentMap:
    """A deploy_map of three items whose flow runs all exist (scheduled) on `server`."""
    with temporary_settings(updates={PREFECT_API_URL: server.url}):
        runs = scalegroups.deploy_map("outage-flow/outage", [1, 2, 3], api_retry=api_retry)
    eventually(lambda: all(run.flow_run_id for run in runs.runs), "the three flow runs created")
    return runs


def test_a_map_goes_on_when_its_server_comes_back(server):
    runs = started_map(server, api_retry=120)
    server.kill()
    eventually(lambda: runs.api_failures > 0, "the map meeting the dead server", 30)
    assert not any(run.status in {"api_error", "failed"} for run in runs.runs)
    server.start()  # same port, same database
    with temporary_settings(updates={PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
        for run in runs.runs:
            client.set_flow_run_state(run.flow_run_id, Completed(), force=True)
    finished = runs.wait(timeout=120)  # a guard: without retries the map would wait forever
    assert [run.status for run in finished] == ["completed"] * 3, [(run.status, run.error) for run in finished]


def test_a_map_whose_server_stays_away_ends_every_item_within_the_budget(server):
    budget = 4.0
    runs = started_map(server, api_retry=budget)
    with temporary_settings(updates={PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
        client.set_flow_run_state(runs.runs[0].flow_run_id, Completed(), force=True)
    eventually(lambda: runs.runs[0].status == "completed", "item 1 completed")
    server.kill()
    killed = time.monotonic()
    finished = runs.wait(timeout=120)
    took = time.monotonic() - killed
    print(f"unfinished items ended {took:.1f} s after the server died (budget {budget} s)")
    assert finished[0].status == "completed"
    for run in finished[1:]:
        assert run.status == "api_error", (run.status, run.error)
        assert repr(run.key) in str(run.error) and str(run.flow_run_id) in str(run.error)
    assert took < budget + 10, f"took {took:.1f} s for a {budget} s budget"
