"""A local API server's thread yields the CPU to task runs once it answers; nothing else changes."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from helpers import run_python

from scalegroups.thread_priority import lower_this_thread

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def nice_of(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


@linux_only
def test_only_the_calling_thread_and_threads_it_starts_later_are_lowered():
    base = nice_of(threading.get_native_id())
    seen: dict[str, object] = {}

    def lowered() -> None:
        seen["returned"] = lower_this_thread(3)
        seen["self"] = nice_of(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.update(child=nice_of(threading.get_native_id())))
        child.start()
        child.join()

    worker = threading.Thread(target=lowered)
    worker.start()
    worker.join()

    expected = min(19, base + 3)
    assert seen == {"returned": expected, "self": expected, "child": expected}
    assert nice_of(threading.get_native_id()) == base, "the caller's own thread was lowered too"


@linux_only
def test_a_lowering_is_capped_at_19_and_zero_changes_nothing():
    seen = {}

    def lowered() -> None:
        seen["zero"] = lower_this_thread(0)
        seen["after_zero"] = nice_of(threading.get_native_id())
        seen["capped"] = lower_this_thread(40)

    base = nice_of(threading.get_native_id())
    worker = threading.Thread(target=lowered)
    worker.start()
    worker.join()
    assert seen == {"zero": None, "after_zero": base, "capped": 19}


SERVER_NICE = """
import os, threading
from scalegroups.server import InProcessServer

before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
server = InProcessServer()
server.wait_ready()
api = next(t for t in threading.enumerate() if t.name == "scalegroups-api")
print("NICE", before, os.getpriority(os.PRIO_PROCESS, api.native_id),
      os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
server.stop()
"""


@linux_only
@pytest.mark.parametrize("setting, lowered_by", [(None, 19), ("0", 0), ("5", 5)])
def test_an_in_process_server_runs_below_the_flow_once_it_answers(setting, lowered_by, tmp_path):
    env = {"PREFECT_HOME": str(tmp_path / "home")}
    if setting is not None:
        env["SCALEGROUPS_SERVER_NICE"] = setting
    out, _ = run_python(["-c", SERVER_NICE], env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("NICE "))
    before, server_thread, main_after = (int(v) for v in line.split()[1:])
    assert server_thread == min(19, before + lowered_by)
    assert main_after == before, "the flow's own thread must keep its priority"


@pytest.mark.parametrize("value", ["low", "20", "-1"])
def test_a_bad_scalegroups_server_nice_fails_in_the_caller_before_any_server_thread(value, monkeypatch):
    from scalegroups.errors import ConfigurationError
    from scalegroups.server import InProcessServer

    monkeypatch.setenv("SCALEGROUPS_SERVER_NICE", value)
    with pytest.raises(ConfigurationError, match=f"SCALEGROUPS_SERVER_NICE='{value}' is invalid"):
        InProcessServer()
