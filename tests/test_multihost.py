"""Groups across several hosts: Dask scheduler and workers on different network namespaces.

The flow runs on host `flow` (which also serves the Prefect API), the scheduler on `sched`, one
worker each on `w1` and `w2`. Tasks report the address of the host they ran on. Mid-run, `w2` is
cut off the network; the run must still complete on `w1` with nothing lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import REPO, eventually
from netns import Hosts, unavailable_reason

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.resilience,
    pytest.mark.skipif(REASON is not None, reason=f"no test hosts: {REASON}"),
]

BIN = Path(sys.executable).parent
HOSTS = {"flow": 10, "sched": 1, "w1": 11, "w2": 12}


@pytest.fixture
def make_hosts():
    """Build this test's hosts; each test gives its own namespace prefix and subnet, so the tests
    can run side by side (pytest-xdist workers) without touching each other's hosts."""
    built: list[Hosts] = []

    def make(prefix: str, subnet: str) -> Hosts:
        built.append(Hosts(HOSTS, prefix=prefix, subnet=subnet).up())
        return built[-1]

    try:
        yield make
    finally:
        for topology in built:
            topology.down()


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALEGROUPS_", "PREFECT_", "DASK_"))}
    env.update(
        PYTHONPATH=str(REPO),
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        SCALEGROUPS_TEST_MARKER=uuid.uuid4().hex,
        **extra,
    )
    return env


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until `text` is in `log`; fail at once, with the log's end, if `process` exits first."""

    def seen() -> bool:
        output = log.read_text(errors="replace") if log.exists() else ""
        if text in output:
            return True
        if process.poll() is not None:
            pytest.fail(f"{log.name}: the process exited ({process.returncode}) before {text!r}:\n{output[-2000:]}")
        return False

    try:
        eventually(seen, f"{text!r} in {log.name}", timeout)
    except AssertionError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise AssertionError(f"{exc}\n{log.name} ends with:\n{tail}") from None


def test_dask_across_hosts_survives_a_host_cut_off(make_hosts, tmp_path):
    hosts = make_hosts("sgtd", "10.77.1")
    api, scheduler = f"http://{hosts.addresses['flow']}:4200/api", f"tcp://{hosts.addresses['sched']}:8786"
    env = clean_env(tmp_path)
    hosts.spawn(
        "flow",
        [sys.executable, "-m", "scalegroups.server", "--host", "0.0.0.0", "--port", "4200"],
        {**env, "PREFECT_UI_ENABLED": "false"},
        str(tmp_path / "server.log"),
    )
    hosts.spawn(
        "sched",
        [str(BIN / "dask"), "scheduler", "--host", hosts.addresses["sched"], "--port", "8786", "--no-dashboard"],
        {**env, "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "10s"},
        str(tmp_path / "scheduler.log"),
    )
    workers = {}
    for worker in ("w1", "w2"):
        workers[worker] = hosts.spawn(
            worker,
            [
                str(BIN / "dask"),
                "worker",
                scheduler,
                "--host",
                hosts.addresses[worker],
                "--name",
                worker,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
            ],
            {**env, "PREFECT_API_URL": api},
            str(tmp_path / f"{worker}.log"),
        )
    flow_env = {**env, "PREFECT_API_URL": api, "SCALEGROUPS_RUNNER": "dask", "SCALEGROUPS_ADDRESS": scheduler}
    ready = hosts.run("flow", [str(BIN / "scalegroups"), "wait", "--timeout", "180"], flow_env, timeout=200)
    assert ready.returncode == 0, ready.stderr + (tmp_path / "server.log").read_text()[-2000:]
    for worker, process in workers.items():
        wait_for_line(tmp_path / f"{worker}.log", "Registered to", process)

    run_cut_and_check(hosts, tmp_path, flow_env)


def finished_items(log: Path) -> dict[int, str]:
    """Items the flow reported finished so far (its `DONE <item> <host>` lines)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {
        int(item): host for _, item, host in (line.split() for line in text.splitlines() if line.startswith("DONE "))
    }


def run_cut_and_check(hosts: Hosts, tmp_path: Path, flow_env: dict[str, str], kill: bool = False) -> None:
    """Run 40 items from the flow host. Once each worker host has finished an item (the flow says
    so), cut w2 off the network (or kill everything on it); then every item must complete, the
    ones w2 had not finished on w1."""
    flow_log = tmp_path / "flow.log"
    flow = hosts.spawn(
        "flow", [sys.executable, str(REPO / "tests" / "multihost_flow.py"), "40", "0.4"], flow_env, str(flow_log)
    )
    workers = {hosts.addresses["w1"], hosts.addresses["w2"]}

    def each_host_finished_one() -> bool:
        if flow.poll() is not None:  # the flow ended early: its log says why, no need to wait
            early = flow_log.read_text(errors="replace")[-3000:]
            pytest.fail(f"the flow exited ({flow.returncode}) before both hosts worked:\n{early}")
        return set(finished_items(flow_log).values()) >= workers

    eventually(each_host_finished_one, "an item finished on each worker host", 300)
    if kill:
        assert hosts.kill_all("w2") > 0
    else:
        hosts.cut("w2")
    # taken once w2 is surely gone (the kill or the link deletion has returned; the hosts share this
    # machine's clock): an item w2 ended while `ip netns pids` was still listing its processes may
    # legitimately have reached the flow (CI saw one end 0.9 ms after a clock read taken before it)
    cut_at = time.time()
    flow.wait(timeout=600)
    output = flow_log.read_text(errors="replace")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert flow.returncode == 0 and lines, output[-3000:]
    outcome = json.loads(lines[-1][len("RESULT ") :])
    assert outcome["failures"] == {}
    results = {int(item): (host, ended) for item, (host, ended) in outcome["results"].items()}
    assert sorted(results) == list(range(40)), "items went missing"
    ran_on = {host for host, _ in results.values()}
    assert ran_on == workers, f"tasks ran on {ran_on}, not on both worker hosts"
    late = {
        i: ended - cut_at for i, (host, ended) in results.items() if host == hosts.addresses["w2"] and ended > cut_at
    }
    assert not late, f"results from w2 after it was cut off (its unfinished items must finish on w1): {late}"


@pytest.fixture
def ray_temp_dirs():
    """A fresh short folder per Ray host (a session's leftovers must not meet the next one)."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="sgt-", dir="/tmp")
    dirs = {host: f"{root}/{host}" for host in ("sched", "w1", "w2")}
    for folder in dirs.values():
        Path(folder).mkdir()
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


def test_ray_across_hosts_survives_a_host_cut_off(make_hosts, tmp_path, ray_temp_dirs):
    hosts = make_hosts("sgtr", "10.77.2")
    api, head = f"http://{hosts.addresses['flow']}:4200/api", hosts.addresses["sched"]
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    env = clean_env(tmp_path, **token)
    hosts.spawn(
        "flow",
        [sys.executable, "-m", "scalegroups.server", "--host", "0.0.0.0", "--port", "4200"],
        {**env, "PREFECT_UI_ENABLED": "false"},
        str(tmp_path / "server.log"),
    )
    # a node that stops answering health checks is declared dead after ~3 s instead of ~15 s
    temp = ray_temp_dirs  # short fresh folders: Ray keeps unix sockets there (108-byte paths)
    fast_failure = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    head_process = hosts.spawn(
        "sched",
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={head}",
            "--port=6379",
            "--ray-client-server-port=10001",
            "--num-cpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp['sched']}",
        ],
        {**env, **fast_failure, "TMPDIR": temp["sched"]},
        str(tmp_path / "head.log"),
    )
    # worker nodes join a head that is up: one racing the head's start-up on a loaded machine gave
    # up ("The current node timed out during startup ... the GCS has become overloaded")
    wait_for_line(tmp_path / "head.log", "Ray runtime started", head_process)
    for worker in ("w1", "w2"):
        start_ray_node(
            hosts,
            worker,
            [
                str(BIN / "ray"),
                "start",
                "--block",
                f"--address={head}:6379",
                f"--node-ip-address={hosts.addresses[worker]}",
                "--num-cpus=1",
                "--disable-usage-stats",
                f"--temp-dir={temp[worker]}",  # the hosts share this machine's disk: a folder each
            ],
            {**env, "PREFECT_API_URL": api, "TMPDIR": temp[worker]},
            tmp_path,
        )
    flow_env = {
        **env,
        "PREFECT_API_URL": api,
        "SCALEGROUPS_RUNNER": "ray",
        "SCALEGROUPS_ADDRESS": f"ray://{head}:10001",
    }
    ready = hosts.run("flow", [str(BIN / "scalegroups"), "wait", "--timeout", "180"], flow_env, timeout=200)
    assert ready.returncode == 0, ready.stderr + (tmp_path / "head.log").read_text()[-2000:]
    try:
        run_cut_and_check(hosts, tmp_path, flow_env, kill=True)
    except (AssertionError, pytest.fail.Exception) as exc:
        raise AssertionError(f"{exc}\n{ray_client_server_logs(temp['sched'])}") from None


def ray_client_server_logs(temp_dir: str) -> str:
    """The ends of the head's Ray Client server logs (the proxy's and each job's): why a job's
    server did not start is only written there."""
    logs = sorted(Path(temp_dir).glob("session_*/logs/ray_client_server*"))
    parts = [f"--- {log.name}:\n{log.read_text(errors='replace')[-1500:]}" for log in logs if log.stat().st_size]
    return "\n".join(parts) or f"(no Ray Client server logs under {temp_dir})"


def start_ray_node(hosts: Hosts, worker: str, command: list[str], env: dict[str, str], tmp_path: Path) -> None:
    """`ray start` on a worker host, awaited until Ray says it runs. `ray start` gives up by itself
    when the head answers too slowly (a busy machine); as a node's supervisor would, this starts it
    once more, and fails with both logs if that does not come up either."""
    logs = [tmp_path / f"{worker}.log", tmp_path / f"{worker}-again.log"]
    for log in logs:
        process = hosts.spawn(worker, command, env, str(log))
        eventually(
            lambda p=process, f=log: p.poll() is not None or "Ray runtime started" in f.read_text(errors="replace"),
            f"'Ray runtime started' in {log.name}",
            300,
        )
        if process.poll() is None:
            return
    pytest.fail(f"ray start failed twice on {worker}:\n" + "\n".join(log.read_text()[-1500:] for log in logs))
