"""The Prefect API server on another host: trivial task runs with the server over loopback and over
a network interface, side by side (issue 14: ~0.7 s per item was seen with the server on another
host).

"Another host" is a Linux network namespace on a private bridge (`tests/netns.py`, as the
multi-host tests use): the flow (with its local engine) runs in one namespace, the lean API server
in another, and every API call crosses a veth pair and a bridge instead of loopback, optionally
with a fixed delay (`tc netem`) each way to stand for a LAN. Needs root and iproute2; without them
the section says why and is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBNET = "10.78.0"  # not the tests' 10.77.0: a benchmark may run while tests do
PREFIX = "sgb"
DELAY_MS = 0.5  # each way: a ~1 ms round trip, a quiet LAN


def _hosts_module():
    """`tests/netns.py`, the multi-host tests' namespaces, loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scalegroups_bench_netns", ROOT / "tests" / "netns.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unavailable_reason() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    return _hosts_module().unavailable_reason()


def _delay(hosts, host: str, milliseconds: float) -> bool:
    """Delay every packet leaving `host` (netem); False if the kernel has no netem."""
    device = f"{hosts.prefix}{host}e"
    command = ["ip", "netns", "exec", hosts.ns(host), "tc", "qdisc", "add", "dev", device, "root", "netem"]
    result = subprocess.run([*command, "delay", f"{milliseconds}ms"], capture_output=True, text=True)
    return result.returncode == 0


def measure_remote(engines: list[str], cfg: dict, env: dict[str, str]) -> dict:
    """{engine: {"loopback": result, "network": result}, "delay_ms": float | None} or {"skipped": why}."""
    why = unavailable_reason()
    if why:
        return {"skipped": why}
    netns = _hosts_module()
    hosts = netns.Hosts({"flow": 10, "api": 20}, prefix=PREFIX, subnet=SUBNET).up()
    results: dict = {}
    try:
        delayed = _delay(hosts, "flow", DELAY_MS) and _delay(hosts, "api", DELAY_MS)
        results["delay_ms"] = 2 * DELAY_MS if delayed else None
        with tempfile.TemporaryDirectory(prefix="sgbench-remote-") as tmp:
            work = Path(tmp)
            for place, host, address in (("loopback", "flow", "127.0.0.1"), ("network", "api", hosts.addresses["api"])):
                home = work / f"server-{place}"
                home.mkdir()
                server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
                command = [sys.executable, "-m", "scalegroups.server", "--host", "0.0.0.0", "--port", "4200"]
                server = hosts.spawn(host, command, server_env, str(work / f"server-{place}.log"))
                url = f"http://{address}:4200/api"
                try:
                    check = [sys.executable, "-c", f"import urllib.request as u; u.urlopen('{url}/health', timeout=5)"]
                    deadline = time.monotonic() + 300
                    while hosts.run("flow", check, env, timeout=30).returncode != 0:
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the {place} server did not start; see server-{place}.log")
                        time.sleep(0.5)
                    for engine in engines:
                        flow_env = {
                            **env,
                            "PREFECT_HOME": str(work / f"flow-{place}-{engine}"),
                            "PREFECT_API_URL": url,
                            "BENCH_SERVER_PID": str(server.pid),
                        }
                        measure = [sys.executable, "-m", "benchmarks.measure", engine, "scalegroups-trivial"]
                        out = hosts.run("flow", [*measure, json.dumps(cfg)], flow_env, timeout=3600)
                        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                        results.setdefault(engine, {})[place] = (
                            json.loads(lines[-1][len("RESULT ") :]) if lines else "failed: " + out.stderr[-500:]
                        )
                        print(f"{engine:8} server over {place:8} done", flush=True)
                finally:
                    hosts.stop(server)
    finally:
        hosts.down()
    return results
