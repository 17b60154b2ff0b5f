"""Test hosts as Linux network namespaces: one switch namespace with a bridge, one namespace per host.

Every address lives inside namespaces this module creates (a /24 per topology on its private bridge);
nothing is routed to or from the machine's own network. `Hosts.cut(name)` deletes a host's link:
the host keeps running but can no longer reach or be reached by the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping

SUBNET = "10.77.0"
PREFIX = "sgt"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=30)


@contextlib.contextmanager
def _one_change_at_a_time() -> Iterator[None]:
    """Serialise namespace changes across processes (pytest-xdist workers, a benchmark): concurrent
    `ip netns add`/`del` race on /run/netns."""
    with open("/tmp/scalegroups-netns.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _add_namespace(name: str, attempts: int = 5) -> None:
    """`ip netns add NAME`; a leftover of that name (a delete that had not finished) is deleted first."""
    for attempt in range(attempts):
        result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if result.returncode == 0:
            return
        if "File exists" not in result.stderr or attempt == attempts - 1:
            raise RuntimeError(f"ip netns add {name}: {result.stderr.strip()}")
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        time.sleep(0.2 * (attempt + 1))


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    with _one_change_at_a_time():
        result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if result.returncode != 0:
            return f"`ip netns add` failed: {result.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Hosts:
    """Named hosts (namespaces) on one private bridge; processes started in them are tracked."""

    def __init__(self, hosts: Mapping[str, int], prefix: str = PREFIX, subnet: str = SUBNET):
        self.prefix = prefix
        self.addresses = {name: f"{subnet}.{last}" for name, last in hosts.items()}
        self.switch = f"{prefix}-sw"
        self.processes: list[subprocess.Popen[str]] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def up(self) -> Hosts:
        self.down()  # leftovers of an interrupted run
        with _one_change_at_a_time():
            self._build()
        return self

    def _build(self) -> None:
        _add_namespace(self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)
        for host, address in self.addresses.items():
            ns, inner, outer = self.ns(host), f"{self.prefix}{host}e", f"{self.prefix}{host}b"
            _add_namespace(ns)
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", self.switch)
            _ip("link", "set", outer, "master", "br0", "up", ns=self.switch)
            _ip("addr", "add", f"{address}/24", "dev", inner, ns=ns)
            _ip("link", "set", inner, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)

    def spawn(self, host: str, command: list[str], env: Mapping[str, str], log: str) -> subprocess.Popen[str]:
        """Start `command` inside the host's namespace, in its own process group."""
        handle = open(log, "w")  # noqa: SIM115 - kept open for the process's lifetime
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *command],
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def run(
        self, host: str, command: list[str], env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` inside the host's namespace and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *command],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cut(self, host: str) -> None:
        """Take the host off the network (delete its link on the switch)."""
        _ip("link", "del", f"{self.prefix}{host}b", ns=self.switch)

    def kill_all(self, host: str) -> int:
        """Kill every process running in the host's namespace (the host dies); return how many."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        return len(pids)

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """Kill a started process group at once: test hosts need no graceful shutdown."""
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def down(self) -> None:
        """Stop every process started here, then delete this topology's namespaces (and leftovers
        of the same names from an interrupted run)."""
        for proc in self.processes:
            self.stop(proc)
        self.processes.clear()
        with _one_change_at_a_time():
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            ours = {self.switch, *(self.ns(host) for host in self.addresses)}
            for ns in [name for name in listed if name in ours]:
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
