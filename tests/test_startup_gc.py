"""The cyclic collector around start-up (`scalegroups.startup_gc`): paused while a server or a
worker process imports Prefect, and what those imports made frozen once, in that process."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from prefect import flow, task

from scalegroups import startup_gc


def run_python(script: str, **env: str) -> list[str]:
    """Run a script in a fresh interpreter (freezing is for the life of a process); its output's words."""
    full_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | env
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=240, env=full_env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_collection_is_paused_inside_and_restored_after():
    assert gc.isenabled()
    with startup_gc.collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_the_user_turned_off_stays_off():
    gc.disable()
    try:
        with startup_gc.collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_turn_the_collector_back_on_when_the_last_ends():
    first_inside, first_may_end, first_ended = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with startup_gc.collection_paused():
            first_inside.set()
            first_may_end.wait(30)
        first_ended.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_inside.wait(30)
    with startup_gc.collection_paused():
        first_may_end.set()
        assert first_ended.wait(30)
        assert not gc.isenabled()  # the other pause ended, this one still runs
    thread.join(30)
    assert gc.isenabled()


def test_freeze_once_freezes_what_is_alive_the_first_time_only():
    lines = run_python(
        """
        import gc
        from scalegroups import startup_gc
        import prefect
        print(gc.get_freeze_count())
        print(startup_gc.freeze_once(), gc.get_freeze_count())
        print(startup_gc.freeze_once())
        """
    )
    before, first, frozen, second = lines
    assert int(before) == 0
    assert first == "True" and int(frozen) > 50_000  # Prefect's modules, classes and schemas
    assert second == "False"


def test_scalegroups_gc_freeze_0_leaves_the_collector_alone():
    lines = run_python(
        """
        import gc
        from scalegroups import startup_gc
        with startup_gc.collection_paused():
            print(gc.isenabled())
        print(startup_gc.freeze_once(), gc.get_freeze_count())
        """,
        SCALEGROUPS_GC_FREEZE="0",
    )
    assert lines == ["True", "False", "0"]


def test_the_in_process_server_starts_with_the_collector_paused_then_freezes(tmp_path):
    lines = run_python(
        """
        import gc
        from scalegroups import startup_gc
        from scalegroups.server import InProcessServer

        paused_during_start = []
        original = InProcessServer._make_server

        def recording(self):
            paused_during_start.append(not gc.isenabled())
            return original(self)

        InProcessServer._make_server = recording
        server = InProcessServer()
        server.wait_ready()
        print(paused_during_start == [True], gc.isenabled(), gc.get_freeze_count())
        server.stop()
        """,
        PREFECT_HOME=str(tmp_path),
    )
    paused, enabled_after, frozen = lines
    assert paused == "True", "the collector ran while the server imported and built its app"
    assert enabled_after == "True"
    assert int(frozen) > 100_000  # the server's app and modules


@task
def collector_here() -> tuple[int, bool, int]:
    return os.getpid(), gc.isenabled(), gc.get_freeze_count()


@pytest.mark.scalegroups_runners("process", "dask", "ray")
def test_worker_processes_freeze_their_start_up_and_keep_collecting(scalegroups_task_runner):
    @flow(task_runner=scalegroups_task_runner)
    def ask_workers() -> list[tuple[int, bool, int]]:
        return [f.result() for f in [collector_here.submit() for _ in range(4)]]

    answers = ask_workers()
    assert all(pid != os.getpid() for pid, _, _ in answers)
    assert all(enabled for _, enabled, _ in answers), "a worker's collector was left off"
    assert all(frozen > 50_000 for _, _, frozen in answers), answers  # Prefect's task engine and more


def test_a_bad_scalegroups_gc_freeze_fails_in_the_caller_before_any_server_thread(monkeypatch):
    from scalegroups.errors import ConfigurationError
    from scalegroups.server import InProcessServer

    monkeypatch.setenv("SCALEGROUPS_GC_FREEZE", "maybe")
    with pytest.raises(ConfigurationError, match="SCALEGROUPS_GC_FREEZE='maybe' is invalid"):
        InProcessServer()
