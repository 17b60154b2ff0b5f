"""Every Prefect internal scalegroups relies on (scalegroups/prefect_compat.py), checked here.

A Prefect release that changes one of them fails one of these tests, named after the hook, instead
of slowing down or breaking a user's flow. Engine-free: threads of this process stand in for
worker processes, and pickling stands in for the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import inspect
import io
import json
import logging
import pathlib
import pickle
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import cloudpickle
import prefect.context
import prefect.task_engine
import prefect.task_runners
import pytest
from helpers import run_python
from prefect import flow, task
from prefect.context import EngineContext, FlowRunContext, SettingsContext, SyncClientContext, serialize_context
from prefect.settings import get_current_settings

from scalegroups import prefect_compat as compat


def in_fresh_thread(fn):
    """Run `fn` in a new thread (a fresh context, as in a worker) and return its result."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised below
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@flow
def capture_context() -> dict:
    """Serialize the flow's context twice under ship_context_once(), and once without it."""
    plain = serialize_context()
    with compat.ship_context_once():
        first, second = serialize_context(), serialize_context()
    return {"plain": plain, "first": first, "second": second, "flow_run_id": FlowRunContext.get().flow_run.id}


@pytest.fixture(scope="module")
def captured(scalegroups_prefect_api):
    return capture_context()


# ---------------------------------------------------------------- 1. shipping the context once


def test_serialize_methods_are_what_serialize_context_calls(captured):
    plain = captured["plain"]
    assert set(plain) >= {"settings_context", "flow_run_context", "task_run_context", "tags_context"}
    assert set(plain["settings_context"]) == {"profile", "settings"}
    assert {"flow_run", "flow", "parameters"} <= set(plain["flow_run_context"])
    params = inspect.signature(SettingsContext.serialize).parameters
    assert "include_secrets" in params and "include_secrets" in inspect.signature(EngineContext.serialize).parameters


def test_parts_are_serialized_once_and_restored_as_one_object(captured):
    first, second = captured["first"], captured["second"]
    for part in ("settings_context", "flow_run_context"):
        assert isinstance(first[part], compat.ShippedOnce)
        assert first[part]._shipment.key == second[part]._shipment.key, "serialized again for the same run"
        restored = pickle.loads(pickle.dumps(first[part]))
        assert pickle.loads(pickle.dumps(second[part])) is restored, "a worker would rebuild it per task"
        assert restored.keys() == first[part].keys()
        assert {k: v for k, v in restored.items() if k != "flow"} == {
            k: v for k, v in first[part].items() if k != "flow"
        }
        relayed = pickle.loads(cloudpickle.dumps(restored))  # e.g. Dask's scheduler relaying a task
        assert relayed is restored


def test_scope_is_undone(captured):
    assert not compat.shipping_context_once()
    assert SettingsContext.serialize.__qualname__ == "SettingsContext.serialize"
    assert EngineContext.serialize.__qualname__ == "EngineContext.serialize"


def test_prefect_hydrates_a_shipped_part(captured):
    """Prefect's own hydrated_context accepts the parts (mapping protocol: `**part`, `.get`)."""
    shipped = {k: pickle.loads(pickle.dumps(v)) for k, v in captured["first"].items()}

    def hydrate():
        with prefect.context.hydrated_context(shipped):
            return FlowRunContext.get().flow_run.id, get_current_settings().api.url

    run_id, api_url = in_fresh_thread(hydrate)
    assert run_id == captured["flow_run_id"]
    assert api_url == get_current_settings().api.url


# ------------------------------------------------------------------------- 2. worker hooks


def test_the_task_engine_and_the_process_pool_look_hydrated_context_up_by_name():
    assert prefect.task_engine.hydrated_context is prefect.context.hydrated_context
    # the process pool's task wrapper (its name differs between 3.9 releases) imports it when it
    # runs, so it sees the patched attribute; a module-level import would bind the original early
    assert "from prefect.context import hydrated_context" in inspect.getsource(prefect.task_runners)
    assert not hasattr(prefect.task_runners, "hydrated_context")
    assert list(inspect.signature(prefect.context.hydrated_context).parameters) == ["serialized_context", "client"]


def test_sync_client_context_is_found_in_its_context_variable(scalegroups_prefect_api):
    from prefect.client.orchestration import get_client

    client = get_client(sync_client=True)
    with compat._WorkerHooks._client_context(client), SyncClientContext.get_or_create() as found:
        assert found.client is client
        assert get_client(sync_client=True) is client
    assert SyncClientContext.get() is None


def test_worker_hooks_reuse_settings_and_client_and_hydrate_like_prefect(captured):
    shipped = {k: pickle.loads(pickle.dumps(v)) for k, v in captured["first"].items()}

    def hydrate():
        with prefect.context.hydrated_context(shipped):
            ctx = FlowRunContext.get()
            client_context = SyncClientContext.get()  # the engine's get_or_create() finds this one
            return (
                get_current_settings(),
                ctx.client,
                ctx.flow_run.id,
                client_context and client_context.client,
                ctx.flow_run,
                ctx.result_store,
                prefect.context.SettingsContext.get().profile,
            )

    stock = in_fresh_thread(hydrate)
    compat.install_worker_hooks()
    try:
        assert prefect.context.hydrated_context is prefect.task_engine.hydrated_context
        assert compat.worker_hooks_installed()
        one, two = in_fresh_thread(hydrate), in_fresh_thread(hydrate)
    finally:
        compat.uninstall_worker_hooks()
    assert not compat.worker_hooks_installed()
    assert prefect.context.hydrated_context.__qualname__ == "hydrated_context", "not restored"
    assert one[0] is two[0], "Settings rebuilt per task run"
    assert one[1] is two[1] is one[3], "a new API client per task run"
    assert one[2] == two[2] == stock[2] == captured["flow_run_id"]
    assert one[0].hash_key() == stock[0].hash_key(), "hooked settings differ from Prefect's"
    assert one[4] is two[4] and one[5] is two[5], "flow run or result store validated per task run"
    assert one[6] is two[6] and one[6] == stock[6], "hooked profile differs from Prefect's"
    assert one[4].model_dump() == stock[4].model_dump(), "hooked flow run differs from Prefect's"
    assert one[5].model_dump(serialize_as_any=True) == stock[5].model_dump(serialize_as_any=True)


def test_install_twice_and_uninstall_restores_the_original():
    original = prefect.context.hydrated_context
    compat.install_worker_hooks()
    compat.install_worker_hooks()
    compat.uninstall_worker_hooks()
    assert prefect.context.hydrated_context is original
    assert prefect.task_engine.hydrated_context is original


# ------------------------------------------------------- 1b. no join of the heartbeat thread


def heartbeat_threads() -> list[threading.Thread]:
    """Prefect's flow-run heartbeat threads (a copied context running `heartbeat_loop`)."""

    def runs_heartbeat_loop(thread: threading.Thread) -> bool:
        first_args = getattr(thread, "_args", ())[:1]
        return [getattr(arg, "__name__", None) for arg in first_args] == ["heartbeat_loop"]

    return [t for t in threading.enumerate() if runs_heartbeat_loop(t)]


def joins_of_the_heartbeat_thread(task_runner) -> list:
    """Run a flow on `task_runner`; return the calls its flow run made to its heartbeat thread's join."""
    before = set(heartbeat_threads())
    joins: list = []

    @flow(task_runner=task_runner)
    def counts_heartbeat_joins() -> None:
        (thread,) = [t for t in heartbeat_threads() if t not in before]
        join = thread.join

        def counted_join(timeout=None):
            joins.append(timeout)
            return join(timeout)

        thread.join = counted_join

    counts_heartbeat_joins()
    return joins


def test_a_flow_run_on_a_scalegroups_runner_does_not_join_its_heartbeat_thread(scalegroups_prefect_api):
    import prefect.flow_engine

    from scalegroups import make_task_runner

    original = prefect.flow_engine._send_heartbeats
    assert "join_on_exit" in inspect.signature(original).parameters
    assert "_send_heartbeats" in inspect.unwrap(prefect.flow_engine.FlowRunEngine.run_context).__code__.co_names
    assert len(joins_of_the_heartbeat_thread(prefect.task_runners.ThreadPoolTaskRunner(max_workers=1))) == 1
    assert joins_of_the_heartbeat_thread(make_task_runner("thread", max_workers=1)) == []
    assert prefect.flow_engine._send_heartbeats is original  # undone with the runner


# ------------------------------------------- 1c. known blocks without importing every collection

BLOCK_LOOKUP_CHILD = """
import json, sys
import prefect._internal.plugins.collections as collections
from prefect.blocks.core import Block
from scalegroups import prefect_compat as compat

with compat.known_blocks_without_collections():
    found = Block.get_block_class_from_key("local-file-system").__name__
    before = collections._collections is not None
    try:
        Block.get_block_class_from_key("no-such-block")
    except Exception as exc:  # UnknownBlockType, after loading the collections
        unknown = type(exc).__name__
print(json.dumps({"found": found, "loaded_before": before, "unknown": unknown,
                  "loaded_after": collections._collections is not None,
                  "restored": "get_block_class_from_key" in Block.__dict__
                  and Block.get_block_class_from_key.__func__.__module__ == "prefect.blocks.core"}))
"""

PROCESS_WORKER_CHILD = """
import json, sys
from prefect import flow, task
from scalegroups import make_task_runner

@task
def engine_modules() -> list:
    return sorted(m for m in ("distributed", "ray", "prefect_dask", "prefect_ray") if m in sys.modules)

@flow(task_runner=make_task_runner("process", max_workers=1))
def main() -> list:
    return engine_modules.submit().result()

print(json.dumps(main()))
"""


def test_a_known_block_is_found_without_loading_collections_an_unknown_one_loads_them():
    out, _ = run_python(["-c", BLOCK_LOOKUP_CHILD])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "found": "LocalFileSystem",
        "loaded_before": False,
        "unknown": "UnknownBlockType",
        "loaded_after": True,
        "restored": True,
    }


def test_process_pool_workers_run_tasks_without_importing_dask_or_ray(scalegroups_prefect_api):
    out, _ = run_python(["-c", PROCESS_WORKER_CHILD], env={"PREFECT_API_URL": scalegroups_prefect_api})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


TASK_ENVIRONMENT_CHILD = """
import json, os
import prefect.task_runners
from prefect import flow, task
from scalegroups import make_task_runner

@task
def first() -> dict:
    os.environ["SG_SET_BY_A_TASK"] = "1"
    entry = prefect.task_runners._run_task_in_subprocess
    return {"shipped": os.environ.get("SG_SHIPPED"), "pid": os.getpid(), "entry": entry.__module__}

@task
def second() -> dict:
    return {"left": os.environ.get("SG_SET_BY_A_TASK"), "shipped": os.environ.get("SG_SHIPPED"), "pid": os.getpid()}

@flow(task_runner=make_task_runner("process", max_workers=1))
def main() -> list:
    os.environ["SG_SHIPPED"] = "from the flow"
    a = first.submit()
    return [a.result(), second.submit(wait_for=[a]).result()]

print(json.dumps(main()))
"""


swaps_environment = pytest.mark.skipif(
    not compat.applies_environment_and_restores_it(),
    reason="this Prefect's process pool only sets the shipped environment: nothing is replaced",
)


@swaps_environment
def test_prefects_process_pool_entry_takes_the_environment_and_restores_it():
    original = compat._task_environment_by_difference.prefects()
    assert "env" in inspect.signature(original).parameters
    source = inspect.getsource(original)
    assert "_run_task_with_hydrated_context(*args, **kwargs)" in source
    assert "os.environ.clear()" in source and "os.environ.update(original_environ)" in source


def test_an_environment_applied_by_difference_is_restored_exactly(monkeypatch):
    import os

    monkeypatch.setenv("SG_KEPT", "same")
    monkeypatch.setenv("SG_CHANGED", "before")
    monkeypatch.delenv("SG_ADDED", raising=False)
    before = dict(os.environ)
    assert os.environ._data == {os.fsencode(k): os.fsencode(v) for k, v in before.items()}  # what we compare
    with compat.environment_applied({"SG_KEPT": "same", "SG_CHANGED": "during", "SG_ADDED": "new"}):
        assert (os.environ["SG_CHANGED"], os.environ["SG_ADDED"]) == ("during", "new")
        os.environ["SG_BY_THE_TASK"] = "x"
        del os.environ["SG_KEPT"]
    assert dict(os.environ) == before
    with pytest.raises(RuntimeError), compat.environment_applied({"SG_ADDED": "new"}):
        raise RuntimeError("a failing task run")
    assert dict(os.environ) == before


@swaps_environment
def test_process_pool_task_runs_apply_the_flows_environment_and_undo_their_own(scalegroups_prefect_api):
    out, _ = run_python(["-c", TASK_ENVIRONMENT_CHILD], env={"PREFECT_API_URL": scalegroups_prefect_api})
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["entry"] == "scalegroups.prefect_compat", "the worker runs task runs through our entry point"
    assert first["pid"] == second["pid"]
    assert first["shipped"] == second["shipped"] == "from the flow"
    assert second["left"] is None, "a task's own change to the environment does not reach the next task run"


def test_prefects_process_pool_initializer_sets_up_the_relay_we_turn_off(scalegroups_prefect_api):
    """Prefect's pool initializer points events and API logs at the queue; inside our scope the
    worker has Prefect's own clients (as without a queue), and the relay is back after it."""
    import queue

    import prefect.logging.handlers as handlers
    from prefect.events.worker import EventsWorker, ProcessPoolForwardingEventsClient

    assert "initializer" in inspect.signature(prefect.task_runners._initialize_process_pool_worker).parameters
    prefect.task_runners._initialize_process_pool_worker(queue.Queue())
    try:
        assert EventsWorker._client_override[0] is ProcessPoolForwardingEventsClient
        relay_sink = handlers._api_log_sink
        assert relay_sink is not None
        with compat.worker_talks_to_the_api():
            assert compat._worker_talks_to_the_api.talks_to_the_api
            assert EventsWorker._client_override is None
            assert handlers._api_log_sink is None
        assert EventsWorker._client_override[0] is ProcessPoolForwardingEventsClient
        assert handlers._api_log_sink is relay_sink
    finally:
        prefect.task_runners._initialize_process_pool_worker(None)  # Prefect's own "no relay"
    assert EventsWorker._client_override is None and handlers._api_log_sink is None


WORKER_RELAY_CHILD = """
import json, sys
import prefect.logging.handlers as handlers
from prefect import flow, task
from prefect.events.worker import EventsWorker
from scalegroups import make_task_runner

@task
def relay() -> dict:
    override = EventsWorker._client_override
    return {"events": override[0].__name__ if override else None, "logs": handlers._api_log_sink is not None}

def keep(message_type, payload):
    return message_type, payload

runner = make_task_runner("process", max_workers=1)
if sys.argv[1] == "processors":
    runner.subprocess_message_processor_factories = [lambda: keep]

@flow(task_runner=runner)
def main() -> dict:
    return relay.submit().result()

print(json.dumps(main()))
"""


@pytest.mark.parametrize("runner", ["plain", "processors"])
def test_process_pool_workers_send_events_and_logs_themselves_unless_processors_read_them(
    scalegroups_prefect_api, runner
):
    out, _ = run_python(["-c", WORKER_RELAY_CHILD, runner], env={"PREFECT_API_URL": scalegroups_prefect_api})
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    if runner == "plain":
        assert seen == {"events": None, "logs": False}, "the worker still relays through the flow process"
    else:
        assert seen == {"events": "ProcessPoolForwardingEventsClient", "logs": True}


def test_every_result_record_resolves_its_storage_key_through_the_block():
    from prefect.results import ResultStore

    assert "_resolve_path(key)" in inspect.getsource(ResultStore.create_result_record)


def test_storage_paths_joined_are_the_paths_prefect_resolves(tmp_path):
    from prefect.filesystems import LocalFileSystem

    prefects = compat._storage_paths_joined.prefects()
    real, outside = tmp_path / "real", tmp_path / "outside"
    real.mkdir(), outside.mkdir()
    (tmp_path / "via-link").symlink_to(real)
    (real / "escape").symlink_to(outside / "x")
    (real / "inner").symlink_to(real / "existing")
    (real / "existing").write_text("")
    blocks = [LocalFileSystem(basepath=str(tmp_path / "via-link")), LocalFileSystem(basepath=None)]  # None: the cwd
    keys = ["0f3a9c", "existing", "inner", "sub/dir", "../real/x", ".", "~x", "escape"]

    def answers(resolve: Callable[..., object]) -> list[object]:
        out = []
        for block in blocks:
            for key in keys:
                try:
                    out.append(resolve(block, key))
                except (ValueError, RuntimeError) as error:  # outside the base; an unknown ~user
                    out.append(type(error))
        return out

    with compat.storage_paths_joined():
        assert LocalFileSystem._resolve_path is not prefects
        ours = answers(LocalFileSystem._resolve_path)
        ours_again = answers(LocalFileSystem._resolve_path)  # the remembered bases
        stock = answers(prefects)
        (tmp_path / "via-link").unlink()
        (tmp_path / "via-link").symlink_to(outside)  # the base now names another directory
        retargeted = LocalFileSystem._resolve_path(blocks[0], "0f3a9c")
    assert LocalFileSystem._resolve_path is prefects
    assert ours == ours_again == stock
    assert ours[0] == real / "0f3a9c" and ours[len(keys) - 1] is ValueError  # "escape" leaves the base
    assert retargeted == prefects(blocks[0], "0f3a9c") == outside / "0f3a9c"


# ----------------------------------------------------------------------- 3. small reads


def test_cache_policy_was_chosen_reads_the_users_choice():
    from prefect.cache_policies import INPUTS

    assert compat.cache_policy_was_chosen(task(cache_policy=INPUTS)(lambda: 1))
    assert not compat.cache_policy_was_chosen(task(lambda: 1))


def _pid() -> int:
    import os

    return os.getpid()


def test_pool_processes_lists_a_process_pools_workers():
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pid = pool.submit(_pid).result()
        assert [p.pid for p in compat.pool_processes(pool)] == [pid]


def test_runner_executor_is_a_started_pools_executor():
    from concurrent.futures import ProcessPoolExecutor

    from prefect.task_runners import ProcessPoolTaskRunner

    runner = ProcessPoolTaskRunner(max_workers=1)
    assert compat.runner_executor(runner) is None
    with runner:
        assert isinstance(compat.runner_executor(runner), ProcessPoolExecutor)


def test_runner_pool_size_reads_prefects_pools():
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    assert compat.runner_pool_size(ThreadPoolTaskRunner(max_workers=3)) == 3
    assert compat.runner_pool_size(ProcessPoolTaskRunner(max_workers=2)) == 2


def test_call_at_thread_shutdown_runs_after_later_registrations():
    code = (
        "import threading\n"
        "from scalegroups.prefect_compat import call_at_thread_shutdown\n"
        "call_at_thread_shutdown(lambda: print('ours', flush=True))\n"
        "threading._register_atexit(lambda: print('prefect', flush=True))\n"
        "import atexit; atexit.register(lambda: print('atexit', flush=True))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["prefect", "ours", "atexit"]


def test_as_flow_subclass_takes_a_prefect_flow_over():
    from prefect import Flow

    class Sub(Flow):
        def hello(self) -> str:
            return f"hello {self.name}"

    built = flow(name="taken-over")(lambda: 1)
    assert "name" in vars(built), "Flow keeps its state in __dict__"
    taken = compat.as_flow_subclass(built.with_options(retries=1), Sub)
    assert isinstance(taken, Sub) and taken.hello() == "hello taken-over" and taken.retries == 1


def test_prefect_ray_runs_the_runners_own_task_function():
    prefect_ray = pytest.importorskip("prefect_ray")
    source = inspect.getsource(prefect_ray.RayTaskRunner.submit)
    assert "self._run_prefect_task" in source, "RayTaskRunner.submit no longer calls the runner's own function"
    assert isinstance(inspect.getattr_static(prefect_ray.RayTaskRunner, "_run_prefect_task"), staticmethod)


# ---------------------------------------------------------------- 4. submitting to the engines
RAY_SUBMIT_DIGEST = "fd5a1b4f775ef044"  # sha256 of RayTaskRunner.submit's source (prefect-ray 0.6.0)


@task
def double(x: int) -> int:
    return 2 * x


def test_prefect_ray_submit_is_the_one_we_mirror():
    import hashlib

    prefect_ray = pytest.importorskip("prefect_ray")
    digest = hashlib.sha256(inspect.getsource(prefect_ray.RayTaskRunner.submit).encode()).hexdigest()[:16]
    assert digest == RAY_SUBMIT_DIGEST, (
        "prefect-ray changed RayTaskRunner.submit: review prefect_compat.RayRemoteFunctions.submit, "
        "which mirrors it, then update RAY_SUBMIT_DIGEST"
    )


def test_prefect_dask_client_submit_takes_a_key():
    from prefect_dask.client import PrefectDaskClient

    parameters = inspect.signature(PrefectDaskClient.submit).parameters
    assert "key" in parameters and parameters["key"].default is None
    assert "__slots__" not in vars(PrefectDaskClient), "the client must keep its state in __dict__"


@pytest.mark.scalegroups_runners("thread", "dask")
def test_prefect_futures_keep_the_final_state_a_wait_fetched(scalegroups_task_runner, scalegroups_runner: str):
    """Progress counts read a state only when it costs no engine round trip: a thread future's
    state is local once done; a Dask future's only after something waited on it."""

    @flow(task_runner=scalegroups_task_runner)
    def reads_states() -> dict:
        future = double.submit(2)
        done = threading.Event()  # done as the engine sees it, without Prefect reading anything
        future.wrapped_future.add_done_callback(lambda _: done.set())
        assert done.wait(120), "the task did not finish"
        before = compat.final_state_if_local(future)
        future.wait()
        kept = compat.known_final_state(future)
        return {"before": before, "kept": kept, "is_prefects_own": kept is future.state}

    got = reads_states()
    if scalegroups_runner == "thread":
        assert got["before"] is not None and got["before"].is_completed()
    else:
        assert got["before"] is None, "a Dask state must not be fetched by a peek"
    assert got["kept"] is not None and got["kept"].is_completed() and got["is_prefects_own"]


@pytest.mark.scalegroups_runners("dask")
def test_a_kept_final_state_is_what_prefect_futures_answer_with(scalegroups_task_runner):
    """`batch_states` hands a state fetched with others to its future: Prefect's Dask future must
    then answer `state` and `result()` from it, without asking Dask."""
    from prefect.states import Completed

    @flow(task_runner=scalegroups_task_runner)
    def answers_from_kept_state() -> dict:
        future = double.submit(2)
        compat.keep_final_state(future, Completed(data=41))
        return {"state": future.state.data, "result": future.result(), "known": compat.known_final_state(future).data}

    assert answers_from_kept_state() == {"state": 41, "result": 41, "known": 41}


@pytest.mark.scalegroups_runners("ray")
def test_ray_submissions_share_one_remote_function(scalegroups_task_runner):
    @flow(task_runner=scalegroups_task_runner)
    def submits_four() -> tuple[list[int], int]:
        runner = FlowRunContext.get().task_runner
        futures = [double.submit(i) for i in range(4)]
        return [f.result() for f in futures], len(runner.__dict__["_remote_functions"]._remote)

    results, remote_functions = submits_four()
    assert results == [0, 2, 4, 6]
    assert remote_functions == 1


@pytest.mark.scalegroups_runners("dask")
def test_dask_submissions_are_keyed_without_tokenizing(scalegroups_task_runner):
    import re

    @flow(task_runner=scalegroups_task_runner)
    def submits_four() -> tuple[list[int], list[str], bool]:
        runner = FlowRunContext.get().task_runner
        futures = [double.submit(i) for i in range(4)]
        keyed = bool(type(runner.client).__dict__.get("_scalegroups_keyed"))
        return [f.result() for f in futures], [f.wrapped_future.key for f in futures], keyed

    results, keys, keyed = submits_four()
    assert results == [0, 2, 4, 6] and keyed
    assert all(re.fullmatch(r"double-[0-9a-f]{32}", key) for key in keys), keys
    assert len(set(keys)) == 4


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _printed(stream: io.StringIO, plain_scope: bool) -> tuple[str, bool | None]:
    from prefect.logging.handlers import PrefectConsoleHandler

    handler = PrefectConsoleHandler(stream=stream)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | Task run %(name)r - %(message)s"))
    record = logging.LogRecord("double-0a1", logging.INFO, __file__, 1, "Finished in state %s", ("Completed()",), None)
    record.created, record.msecs = 0.0, 0.0
    with compat.plain_console_lines_off_a_terminal() if plain_scope else contextlib.nullcontext():
        handler.handle(record)
        handler.handle(record)  # the second line takes the decision made for the first
    return stream.getvalue(), handler.__dict__.get("_scalegroups_plain")


def test_console_lines_off_a_terminal_are_the_text_prefect_prints():
    shipped, _ = _printed(io.StringIO(), plain_scope=False)
    plain, decided = _printed(io.StringIO(), plain_scope=True)
    assert decided is True and plain == shipped
    assert plain.count("Finished in state Completed()\n") == 2
    on_terminal, decided = _printed(_Terminal(), plain_scope=True)
    assert decided is False and on_terminal == _printed(_Terminal(), plain_scope=False)[0]


DASK_SUBMIT_DIGEST = "ca47dee6b94af8dd"  # sha256 of PrefectDaskClient.submit's source (prefect-dask 0.3.7)


def test_prefect_dask_submit_is_the_one_we_mirror():
    import hashlib

    from prefect_dask.client import PrefectDaskClient

    digest = hashlib.sha256(inspect.getsource(PrefectDaskClient.submit).encode()).hexdigest()[:16]
    assert digest == DASK_SUBMIT_DIGEST, (
        "prefect-dask changed PrefectDaskClient.submit: review prefect_compat._submit_prefect_task_to_dask, "
        "which mirrors it, then update DASK_SUBMIT_DIGEST"
    )


@task
async def async_double(x: int) -> int:
    return 2 * x


@pytest.mark.scalegroups_runners("dask")
def test_dask_runs_prefect_tasks_through_one_module_level_function(scalegroups_task_runner, monkeypatch):
    import pickle

    import distributed

    shipped = []
    real_submit = distributed.Client.submit

    def recording_submit(self, func, *args, **kwargs):
        shipped.append(func)
        return real_submit(self, func, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "submit", recording_submit)

    @flow(task_runner=scalegroups_task_runner)
    def sync_and_async() -> list:
        futures = [double.submit(1), async_double.submit(2), double.submit(3, wait_for=[double.submit(0)])]
        return [(f.result(), f.state.name) for f in futures]

    assert sync_and_async() == [(2, "Completed"), (4, "Completed"), (6, "Completed")]
    assert shipped and all(func is compat.run_prefect_task_on_dask for func in shipped)
    assert len(pickle.dumps(compat.run_prefect_task_on_dask)) < 100  # by reference, not by value


@task
def hooks_installed_here() -> bool:
    return compat.worker_hooks_installed()


@pytest.mark.scalegroups_runners("dask")
def test_dask_workers_run_task_runs_with_the_worker_hooks(scalegroups_task_runner):
    @flow(task_runner=scalegroups_task_runner)
    def asks_workers() -> list[bool]:
        return [f.result() for f in [hooks_installed_here.submit() for _ in range(4)]]

    assert asks_workers() == [True] * 4


def test_the_dask_worker_plugin_unpickles_without_importing_prefect():
    """A worker unpickles the plugin on its event loop: importing Prefect there (seconds on a busy
    machine) would stop its heartbeats, so Prefect is imported by `setup`, in a thread."""
    from scalegroups.engines.dask_worker import WorkerSetup

    script = (
        "import pickle, sys, distributed\n"
        f"plugin = pickle.loads({cloudpickle.dumps(WorkerSetup())!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_prefect_ray_keeps_what_ray_init_returned_with_its_dashboard_url():
    prefect_ray = pytest.importorskip("prefect_ray")
    import ray

    assert "self._ray_context = ray.init(" in inspect.getsource(prefect_ray.RayTaskRunner.__enter__)
    # what ray.init returns (RayContext locally, ClientContext for ray://) declares it in their base
    assert "dashboard_url" in ray._private.worker.BaseContext.__annotations__

    class Started:  # what the runner holds after `__enter__`, without starting a Ray
        def __init__(self, url):
            self._ray_context = type("Context", (), {"dashboard_url": url})()

    assert compat.ray_dashboard_url(Started("127.0.0.1:8265")) == "http://127.0.0.1:8265"
    assert compat.ray_dashboard_url(Started("https://ray.example/")) == "https://ray.example/"
    assert compat.ray_dashboard_url(Started("")) is None
    assert compat.ray_dashboard_url(object()) is None


# ------------------------------------------------------------- 5. behaviour checkpoints rely on


def test_a_half_written_result_file_counts_as_absent(tmp_path):
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)))
    store.write(key="whole", obj={"value": 1})
    assert store.exists("whole")
    whole = (tmp_path / "whole").read_bytes()
    (tmp_path / "half").write_bytes(whole[: len(whole) // 2])  # what a SIGKILL mid-write leaves
    assert not store.exists("half")


def test_task_source_key_survives_a_pickle_round_trip():
    from prefect.cache_policies import INPUTS, TASK_SOURCE
    from prefect.context import TaskRunContext

    @task
    def keyed(x: int) -> int:
        return x

    policy = INPUTS + TASK_SOURCE

    def key(t):
        context = TaskRunContext.model_construct(task=t)
        return policy.compute_key(task_ctx=context, inputs={"x": 1}, flow_parameters={})

    assert key(keyed) == key(cloudpickle.loads(cloudpickle.dumps(keyed)))
    assert key(keyed) == key(keyed.with_options(name="renamed"))  # a group renames its tasks' runs only


# ------------------------------------- 6. a local server stops without the cancelled flush's traceback


def _recorder_stopped_during_a_flush(*args: str) -> dict:
    """tests/recorder_flush_stop.py in a child process (it replaces the recorder's database write)."""
    out, _ = run_python(["tests/recorder_flush_stop.py", *args], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_prefect_reports_a_flush_its_stop_cancels_and_writes_the_batch_again():
    outcome = _recorder_stopped_during_a_flush()
    assert outcome["writes"] == [1, 1], "the final flush no longer writes the batch the stop cancelled"
    [report] = outcome["logged"]
    assert report["cancelled"] and compat._ALL_RETRIED.fullmatch(report["message"]), report


def test_a_stopping_server_drops_only_the_first_report_of_a_retried_flush():
    outcome = _recorder_stopped_during_a_flush("quiet")
    assert outcome["writes"] == [1, 1] and outcome["logged"] == [] and outcome["dropped"] == 1
    quiet = compat._FirstCancelledFlushRetried()
    again = []
    for _ in range(2):  # the final flush cancelled too: its report is shown
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 0, "Error flushing 3 events (3 to retry, 0 dropped)", None, None
        )
        try:
            raise asyncio.CancelledError
        except asyncio.CancelledError:
            record.exc_info = sys.exc_info()
        again.append(quiet.filter(record))
    assert again == [False, True]
    with compat.cancelled_flush_retried_quietly() as scoped:
        assert scoped in logging.getLogger(compat.TASK_RUN_RECORDER_LOGGER).filters
    assert scoped not in logging.getLogger(compat.TASK_RUN_RECORDER_LOGGER).filters


# --------------------------------------------------------------- 7. the lean server's hot paths


def a_server_event():
    """An event as the server's `/events/in` websocket validates it from a task run's client."""
    import uuid

    from prefect.server.events.schemas.events import Event

    run, flow_run = uuid.uuid4(), uuid.uuid4()
    return Event.model_validate(
        {
            "occurred": "2026-12-01T10:00:00.123456Z",
            "event": "prefect.task-run.Completed",
            "resource": {
                "prefect.resource.id": f"prefect.task-run.{run}",
                "prefect.resource.name": "group/step",
                "prefect.orchestration": "client",
            },
            "related": [
                {"prefect.resource.id": f"prefect.flow-run.{flow_run}", "prefect.resource.role": "flow-run"},
                {"prefect.resource.id": "prefect.tag.group", "prefect.resource.role": "tag"},
            ],
            "payload": {"intended": {"from": "RUNNING", "to": "COMPLETED"}, "task_run": {"name": "group/step"}},
            "id": str(uuid.uuid4()),
            "follows": str(uuid.uuid4()),
        }
    )


def test_a_received_event_is_the_one_prefect_builds():
    from prefect.server.events.schemas.events import Event, ReceivedEvent
    from prefect.types._datetime import now

    assert set(ReceivedEvent.model_fields) == set(Event.model_fields) | {"received"}
    before = Event.receive  # ours already, while this process's lean server runs
    event, received = a_server_event(), now("UTC")
    expected = compat._receive_once.prefects()(event, received)
    with compat.lean_server_hot_paths():
        assert Event.receive.__module__ == compat.__name__
        ours, stamped_now = event.receive(received), event.receive()
    assert Event.receive is before
    assert type(ours) is ReceivedEvent
    assert ours.model_dump() == expected.model_dump()
    assert ours.model_fields_set == expected.model_fields_set
    assert stamped_now.received >= received and stamped_now.received.tzinfo is not None


def test_the_recorder_inserts_states_through_the_function_we_replace():
    import prefect.server.services.task_run_recorder as recorder

    prefects, before = compat._states_in_one_statement.prefects(), recorder._insert_task_run_states
    assert inspect.unwrap(prefects).__module__ == recorder.__name__
    assert list(inspect.signature(inspect.unwrap(prefects)).parameters) == ["db", "session", "task_runs"]
    assert "_insert_task_run_states" in recorder._record_bulk_task_run_events.__code__.co_names
    assert "_insert_task_run_states(session, [" in inspect.getsource(recorder._record_bulk_task_run_events)
    with compat.lean_server_hot_paths():
        assert inspect.unwrap(recorder._insert_task_run_states).__module__ == compat.__name__
    assert recorder._insert_task_run_states is before


def test_a_published_event_reaches_the_recorders_parse_without_json():
    import prefect.server.services.task_run_recorder as recorder
    from prefect.server.events.messaging import EventPublisher
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.server.utilities.messaging import create_publisher

    assert "ReceivedEvent.model_validate_json(message.data)" in inspect.getsource(recorder.consumer)
    before = (EventPublisher.publish_event, EventPublisher.publish_data)  # ours already while a lean
    handed_before = "model_validate_json" in vars(ReceivedEvent)  # server of this process runs
    event = a_server_event().receive()
    encoded = event.model_dump_json().encode()  # what Prefect's publisher sends and the recorder parses

    async def publish() -> None:
        # Prefect's event publisher over a topic of its own: on the shared "events" topic, the
        # recorder of a server running in this process would consume (and take) this event
        async with EventPublisher(create_publisher(topic="scalegroups-handover-test")) as publisher:
            await publisher.publish_event(event)

    with compat.lean_server_hot_paths():
        assert ReceivedEvent.model_validate_json(encoded) is not event  # nothing published yet
        asyncio.run(publish())
        assert ReceivedEvent.model_validate_json(encoded) is event  # handed over, once
        again = ReceivedEvent.model_validate_json(encoded)  # parsed from the JSON again
        assert again is not event and again == event
    assert (EventPublisher.publish_event, EventPublisher.publish_data) == before
    assert ("model_validate_json" in vars(ReceivedEvent)) == handed_before == compat._events_handed_over.active
    assert ReceivedEvent.model_validate_json(encoded) == event


@task(persist_result=True)
def doubled_and_kept(value: int) -> int:
    return value * 2


def test_a_lean_servers_states_are_the_ones_the_task_run_set(scalegroups_prefect_api):
    """Pending, Running, Completed, as the task run set them, and the result readable from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    from scalegroups import make_task_runner
    from scalegroups.server import local_server

    if local_server() is not None:  # this process's own (lean) server: the replaced paths serve
        assert compat.lean_server_hot_paths_active()
    seen = {}

    @flow(task_runner=make_task_runner("thread", max_workers=1))
    def keeps_a_result() -> None:
        future = doubled_and_kept.submit(21)
        seen["task_run_id"], seen["state"] = future.task_run_id, future.wait() or future.state

    keeps_a_result()
    final = seen["state"]
    with get_client(sync_client=True) as client:
        states = wait_for_states(client, seen["task_run_id"], count=3)
    assert [state.type for state in states] == [StateType.PENDING, StateType.RUNNING, StateType.COMPLETED]
    recorded = states[-1]
    assert (recorded.id, recorded.name, recorded.timestamp) == (final.id, final.name, final.timestamp)
    assert recorded.state_details.task_run_id == seen["task_run_id"]
    assert recorded.data is not None and recorded.result() == 42


def wait_for_states(client, task_run_id, count: int, timeout: float = 60.0):
    """The task run's states once the recorder has written `count` of them (it writes in batches)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        states = sorted(client.read_task_run_states(task_run_id), key=lambda state: state.timestamp)
        if len(states) >= count or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


# ---------------------------------------------------------- 8. setting values remembered per object


def test_legacy_setting_value_is_value_from_the_current_settings():
    prefects = compat._setting_values.prefects()
    assert prefects.__module__ == "prefect.settings.legacy"
    assert "get_current_settings" in prefects.__code__.co_names
    assert "value_from" in prefects.__code__.co_names


def test_remembered_setting_values_are_prefects_and_follow_every_new_settings_object(monkeypatch):
    import prefect.settings as settings_module
    from prefect.settings import PREFECT_API_URL, PREFECT_TESTING_TEST_SETTING, temporary_settings
    from prefect.settings.legacy import Setting, _get_valid_setting_names

    names = sorted(_get_valid_setting_names(settings_module.Settings))
    every = [getattr(settings_module, name) for name in names if name.startswith("PREFECT_")]
    assert len(every) > 100
    prefects, before = compat._setting_values.prefects(), Setting.value
    expected = {setting.name: prefects(setting) for setting in every}
    with compat.remembered_setting_values():
        assert Setting.value.__module__ == compat.__name__
        assert {setting.name: setting.value() for setting in every} == expected
        assert {setting.name: setting.value() for setting in every} == expected  # from the dict
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"
        assert PREFECT_API_URL.value() == expected["PREFECT_API_URL"]
        monkeypatch.setenv("PREFECT_TESTING_TEST_MODE", "1")
        assert PREFECT_TESTING_TEST_SETTING.value() == get_current_settings().testing.test_setting
        monkeypatch.delenv("PREFECT_TESTING_TEST_MODE")
        monkeypatch.delenv("PREFECT_TEST_MODE", raising=False)
        assert PREFECT_TESTING_TEST_SETTING.value() is None
    assert Setting.value is before


def test_a_worker_and_a_lean_server_remember_setting_values():
    code = """
from prefect._internal._logging import SafeLogger
from prefect.settings.legacy import Setting
from scalegroups import prefect_compat as compat
prefects = Setting.value, SafeLogger.isEnabledFor
with compat.lean_server_hot_paths():
    assert Setting.value.__module__ == compat.__name__
    assert SafeLogger.isEnabledFor.__module__ == compat.__name__
compat.install_worker_hooks()
assert Setting.value.__module__ == compat.__name__
assert compat._tls_in_clients.active and compat._uncompressed_events.active and compat._internal_level.active
assert compat._related_per_flow_run.active
compat.uninstall_worker_hooks()
assert (Setting.value, SafeLogger.isEnabledFor) == prefects
assert not compat._tls_in_clients.active and not compat._uncompressed_events.active
assert not compat._related_per_flow_run.active
print("ok")
"""
    out, _ = run_python(["-c", code])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


# ------------------------------------------------ 9. TLS contexts shared, plain parameters copied


def _ssl_context_of(client):
    """The SSLContext a Prefect API client's httpx transport connects with."""
    return client._client._transport._pool._ssl_context


@pytest.fixture
def tls_contexts_built(monkeypatch):
    """The `cafile` of every TLS context `ssl.create_default_context` builds during the test."""
    import ssl

    built = []
    real = ssl.create_default_context

    def counted(*args, **kwargs):
        built.append(kwargs.get("cafile"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    return built


def test_prefect_clients_share_one_verified_tls_context_per_ca_file(tmp_path, tls_contexts_built):
    import shutil
    import ssl

    import certifi
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

    built = tls_contexts_built
    url = "http://127.0.0.1:9/api"
    with compat.shared_tls_contexts():
        first = _ssl_context_of(SyncPrefectClient(url))
        assert _ssl_context_of(SyncPrefectClient(url)) is first
        assert _ssl_context_of(PrefectClient(url)) is first
        assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
        assert len([cafile for cafile in built if cafile]) <= 1  # none if the session's clients built it

        bundle = tmp_path / "ca.pem"
        shutil.copyfile(certifi.where(), bundle)
        with temporary_settings(updates={PREFECT_API_SSL_CERT_FILE: str(bundle)}):
            own = _ssl_context_of(SyncPrefectClient(url))
            assert own is not first and _ssl_context_of(PrefectClient(url)) is own
            bundle.write_text(bundle.read_text() + "\n")  # a changed file is read again
            assert _ssl_context_of(SyncPrefectClient(url)) is not own
        with temporary_settings(updates={PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
            insecure = [_ssl_context_of(SyncPrefectClient(url)) for _ in range(2)]
            assert insecure[0] is not insecure[1]  # changed after it is built: never shared
            assert insecure[0].verify_mode == ssl.CERT_NONE
    assert _ssl_context_of(SyncPrefectClient(url)) is not first or compat._tls_in_clients.active


def test_the_version_check_builds_its_tls_context_through_the_shared_one(scalegroups_prefect_api, tls_contexts_built):
    from prefect._internal import version_checking

    with compat.shared_tls_contexts():
        compat._tls_contexts.clear()
        for _ in range(2):
            version_checking._clear_api_version_check_cache()
            asyncio.run(version_checking.check_server_version(scalegroups_prefect_api, logging.getLogger("test")))
    built = tls_contexts_built
    assert len(built) == 1 and built[0]  # both checks ran; one verified context (with its CA file) was built


class _Colour(enum.IntEnum):
    RED = 1


class _Text(str):
    pass


_PLAIN_VALUES = [
    None,
    True,
    3,
    2.5,
    float("nan"),
    "text",
    [],
    (),
    {},
    [1, "a", None, [2.0, (3, 4)]],
    (1, (2, 3)),
    {"a": {"b": [1, {"c": None}]}, 2: "two", None: 0, True: 1},
]
_OTHER_VALUES = [
    _Colour.RED,
    _Text("x"),
    {"_sa_instance": 1},
    {(1, 2): "tuple key"},
    {1, 2},
    frozenset({1}),
    datetime.date(2026, 12, 1),
    pathlib.Path("/tmp"),
    b"bytes",
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    {"inner": {3, 4}},
]


def test_plain_parameters_are_copied_as_jsonable_encoder_copies_them():
    from fastapi.encoders import jsonable_encoder

    def same(left, right):
        if isinstance(left, float) and left != left:
            return isinstance(right, float) and right != right
        if type(left) is not type(right):
            return False
        if isinstance(left, list):
            return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
        if isinstance(left, dict):
            return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
        return left == right

    for value in _PLAIN_VALUES:
        copied = compat.plain_json_copy(value)
        assert same(copied, jsonable_encoder(value)), value
        assert copied is value or type(value) in (list, tuple, dict) and copied is not value
    for value in _OTHER_VALUES:
        with pytest.raises(compat._NotPlainJson):
            compat.plain_json_copy(value)


def test_a_flow_serializes_plain_parameters_as_prefect_does_and_gives_it_the_rest():
    from prefect.flows import Flow

    @flow
    def takes(**kwargs):
        return kwargs

    prefects = compat._plain_parameters.prefects()
    with compat.plain_parameters_without_fastapi():
        assert Flow.serialize_parameters.__module__ == compat.__name__
        for value in _PLAIN_VALUES + _OTHER_VALUES:
            parameters = {"value": value, "n": 1}
            ours = takes.serialize_parameters(parameters)
            assert json.dumps(ours, default=str) == json.dumps(prefects(takes, parameters), default=str)
        a_future_is_prefects = {"state": prefect.states.Completed()}
        assert takes.serialize_parameters(a_future_is_prefects) == {"state": "<State>"}


def test_a_flow_file_that_asks_for_a_runner_starts_without_fastapi_and_with_one_tls_context(scalegroups_prefect_api):
    code = """
import sys, ssl
built = []
real = ssl.create_default_context
ssl.create_default_context = lambda *a, **k: built.append(k.get("cafile")) or real(*a, **k)
from prefect import flow, task
from scalegroups import make_task_runner, prefect_compat as compat

@task
def double(x):
    return 2 * x

@flow(task_runner=make_task_runner("thread"))
def main(items: list):
    return sum(f.result() for f in double.map(items))

assert compat.lean_client_start_up_active()
before = len([cafile for cafile in built if cafile])  # Prefect's own imports build two transports
assert main([1, 2, 3]) == 12
assert "fastapi" not in sys.modules, "a plain flow run imported FastAPI"
print("verified contexts built by the run:", len([cafile for cafile in built if cafile]) - before)
"""
    out, _ = run_python(["-c", code], env={"PREFECT_API_URL": scalegroups_prefect_api})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "verified contexts built by the run: 1" in out.stdout, out.stdout + out.stderr[-2000:]


# ------------------------------------------- 10. uncompressed local events, 11. the internal level


def test_loopback_urls_are_told_from_others():
    for url in ("ws://127.0.0.1:4200/api/events/in", "http://localhost:1/api", "ws://[::1]:9/x", "ws://127.8.0.1/"):
        assert compat.is_loopback_url(url), url
    for url in ("wss://api.prefect.cloud/api/events/in", "ws://10.0.0.5:4200/api", "ws://prefect-server:4200", "x"):
        assert not compat.is_loopback_url(url), url


def test_events_to_a_server_on_this_machine_go_uncompressed(scalegroups_prefect_api, monkeypatch):
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    monkeypatch.setenv("PREFECT_API_URL", scalegroups_prefect_api)

    async def extensions_of_a_client_that_emits() -> list:
        async with PrefectEventsClient() as client:
            await client.emit(Event(event="scalegroups.test", resource={"prefect.resource.id": "scalegroups.test"}))
            return client._websocket.protocol.extensions

    prefects = compat._uncompressed_events.prefects()
    if not compat._uncompressed_events.active:  # Prefect's own default: per-message deflate
        assert [type(e).__name__ for e in asyncio.run(extensions_of_a_client_that_emits())] == ["PerMessageDeflate"]
    with compat.uncompressed_events_on_loopback():
        import prefect.events.clients as clients

        assert clients.websocket_connect is not prefects
        assert asyncio.run(extensions_of_a_client_that_emits()) == []


def test_the_internal_logger_level_is_prefects_for_each_settings_object():
    from prefect._internal._logging import SafeLogger, logger
    from prefect.settings import PREFECT_LOGGING_INTERNAL_LEVEL, temporary_settings

    prefects = compat._internal_level.prefects()
    levels = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    with compat.internal_level_per_settings():
        assert SafeLogger.isEnabledFor.__module__ == compat.__name__
        for name in ("DEBUG", "WARNING", "CRITICAL", "ERROR"):
            with temporary_settings(updates={PREFECT_LOGGING_INTERNAL_LEVEL: name}):
                expected = [prefects(logger, level) for level in levels]
                assert [logger.isEnabledFor(level) for level in levels] == expected, name
                assert expected.count(True) == 5 - levels.index(logging.getLevelNamesMapping()[name])


# ------------------------------------------------------ 12. a flow run's routes tried first
@pytest.fixture(scope="module")
def prefect_app():
    """Prefect's API app as a local server builds it, and the order of its routes as built."""
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True, ignore_cache=True)
    return app, list(app.api_app.router.routes)


def sample_path(path: str) -> str:
    """`path` with each `{name}` / `{name:convertor}` replaced by a value its convertor accepts."""
    samples = {"uuid": "0b2d8c54-4c3c-4f2e-9a57-1d2a3e4f5a6b", "int": "1", "float": "1.5", "path": "a/b"}
    return re.sub(r"{([^}:]+)(?::([^}]+))?}", lambda m: samples.get(m.group(2) or "", "x"), path)


def first_match(routes, path: str, method: str):
    """The entry of `routes` that answers `method path` (Starlette tries them in order)."""
    from starlette.routing import Match

    partial = None
    for entry in routes:
        scope = {"type": "http", "path": path, "root_path": "", "method": method, "headers": []}
        match, _ = entry.matches(scope)
        if match == Match.FULL:
            return entry
        if match == Match.PARTIAL and partial is None:
            partial = entry
    return partial


def test_a_flow_runs_routes_come_first_and_every_request_finds_the_same_route(prefect_app):
    app, built = prefect_app
    assert compat.flow_run_routes_first(app), "Prefect's API app no longer has the routes we reorder"
    moved = app.api_app.router.routes
    assert sorted(map(id, moved)) == sorted(map(id, built))
    firsts = [compat._first_segments(entry) for entry in moved[:6]]
    assert firsts == [{"health"}, {"version"}, {"csrf-token"}, {"admin"}, {"flows"}, {"flow_runs"}]
    requests = [
        (sample_path(path), method)
        for entry in built
        for path, route in compat._entry_routes(entry)
        for method in sorted(getattr(route, "methods", None) or {"GET"})
    ]
    assert len(requests) > 150
    for path, method in requests:
        assert first_match(moved, path, method) is first_match(built, path, method), (method, path)


def routers_built(app) -> list[frozenset[str]]:
    """The first path segments of each included router of the API app that FastAPI has built."""
    routers = [e for e in app.api_app.router.routes if hasattr(e, "_effective_candidates_version")]
    assert routers, "FastAPI no longer keeps included routers as _IncludedRouter entries"
    return [frozenset(compat._first_segments(e)) for e in routers if e._effective_candidates_version is not None]


def test_a_flow_runs_first_requests_build_only_the_routers_they_reach():
    """FastAPI builds an included router's routes when a request is first matched against it; the
    version check and the CSRF token now reach only the small routers in front."""
    import httpx
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True, ignore_cache=True)
    assert compat.flow_run_routes_first(app)

    async def version_check() -> int:
        transport = httpx.ASGITransport(app=app.api_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/admin/version")).status_code

    assert asyncio.run(version_check()) == 200
    assert set(routers_built(app)) == {frozenset({"csrf-token"}), frozenset({"admin"})}


def test_a_maps_first_progress_artifact_builds_no_router_a_flow_run_does_not_call():
    """Every map publishes its progress to /artifacts: matching its first request builds only routers
    a flow run has called by then (not task runs, deployments, work pools, ...) and its own."""
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True, ignore_cache=True)
    assert compat.flow_run_routes_first(app)
    routes = app.api_app.router.routes
    assert first_match(routes, "/artifacts/", "POST") is not None
    built = set().union(*routers_built(app))
    # what a flow run has called by its first map's first progress update (the routers it builds anyway)
    called_before = {"health", "version", "csrf-token", "admin", "flows", "flow_runs", "logs", "events"}
    assert "artifacts" in built and built <= called_before | {"artifacts"}, built - called_before


def test_routes_stay_in_their_order_when_a_path_could_match_two_routers():
    from types import SimpleNamespace

    from fastapi import APIRouter, FastAPI

    def app_with(*routers: tuple[str, ...]):
        api_app = FastAPI()
        for prefix, *paths in routers:
            router = APIRouter(prefix=prefix)
            for path in paths:
                router.add_api_route(path, lambda item: item)
            api_app.include_router(router)
        return SimpleNamespace(api_app=api_app)

    catch_all = app_with(("/deployments", "/{item}"), ("/flows", "/{item}"), ("", "/{item}"))  # matches /flows too
    before = list(catch_all.api_app.router.routes)
    assert not compat.flow_run_routes_first(catch_all) and catch_all.api_app.router.routes == before
    mixed = app_with(("", "/deployments/{item}", "/flows/{item}"), ("/flows", "/{item}"))  # both answer /flows/x
    assert not compat.flow_run_routes_first(mixed)
    twice = app_with(("/deployments", "/{item}"), ("/flows", "/{item}"), ("/flows", "/{item}"))
    assert compat.flow_run_routes_first(twice)  # both "flows" routers move, in their order
    assert [compat._first_segments(e) for e in twice.api_app.router.routes[:2]] == [{"flows"}, {"flows"}]
    owned = app_with(("/deployments", "/{item}"), ("/flows", "/{item}"))
    before = list(owned.api_app.router.routes)
    assert compat.flow_run_routes_first(owned)
    after = owned.api_app.router.routes
    assert compat._first_segments(after[0]) == {"flows"} and after[1:] == [e for e in before if e is not after[0]]


def test_a_lean_server_orders_its_routes_and_a_full_one_keeps_prefects(monkeypatch):
    from prefect.server.api.server import create_app

    from scalegroups import server

    for services, moved in (("lean", True), ("full", False)):
        monkeypatch.setenv("SCALEGROUPS_SERVER_SERVICES", services)
        app = create_app(ephemeral=True, final=True, ignore_cache=True)
        built = list(app.api_app.router.routes)
        server._routes_in_lean_order(app)
        assert (app.api_app.router.routes != built) is moved, services


def test_the_in_process_server_tries_a_flow_runs_routes_first(monkeypatch):
    import prefect.server.api.server as prefect_server

    from scalegroups.server import InProcessServer

    monkeypatch.setattr(prefect_server, "API_APP_CACHE", {})  # an app of its own, not one a test reordered
    local = InProcessServer()
    try:
        app = local._make_server().config.app
    finally:
        local.stop()
    assert compat._first_segments(app.api_app.router.routes[0]) == {"health"}


# ---------------------------------------------------------------- 13. related resources per flow run
@task(tags=["task-tag"])
def related_resources_both_ways() -> list:
    """Inside a task run: each exclusion's related resources from Prefect's function and ours, and
    the related resources Prefect's events worker attaches to an event through either."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.events.worker import EventsWorker

    context = prefect.context.TaskRunContext.get()
    flow_run = prefect.context.FlowRunContext.get().flow_run
    task_run_id = f"prefect.task-run.{context.task_run.id}"
    exclusions = [set(), {task_run_id}, {f"prefect.flow-run.{flow_run.id}"}, {f"prefect.flow.{flow_run.flow_id}"}]
    exclusions += [{"prefect.tag.flow-tag", task_run_id}, {"prefect.tag.task-tag"}]

    async def answers() -> list:
        import prefect.events.worker as events_worker

        async with get_client() as client:
            worker = object.__new__(EventsWorker)  # only its client is used to attach
            worker._orchestration_client = client
            out = []
            for exclude in exclusions:
                found = await events_worker.related_resources_from_run_context(client, exclude=set(exclude))
                out.append([r.model_dump() for r in found])
            event = Event(event="scalegroups.test", resource={"prefect.resource.id": task_run_id})
            await worker.attach_related_resources_from_context(event)
            out.append([r.model_dump() for r in event.related])
            return out

    prefects = compat._related_per_flow_run.prefects()
    import prefect.events.worker as events_worker

    with compat.related_resources_per_flow_run():
        assert events_worker.related_resources_from_run_context is not prefects
        ours = [asyncio.run(answers()) for _ in range(2)]  # built, then kept
    held = events_worker.related_resources_from_run_context  # ours, if this process holds it
    events_worker.related_resources_from_run_context = prefects
    try:
        theirs = asyncio.run(answers())
    finally:
        events_worker.related_resources_from_run_context = held
    return [ours, theirs]


def test_an_events_related_resources_are_the_ones_prefect_attaches(scalegroups_prefect_api, monkeypatch):
    from prefect import tags
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.setenv("PREFECT_API_URL", scalegroups_prefect_api)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def tagged_flow() -> list:
        with tags("flow-tag"):
            return related_resources_both_ways.submit().result()

    (first, again), theirs = tagged_flow()
    assert first == again == theirs
    ids = [r["prefect.resource.id"] for r in theirs[0]]
    assert [i.split(".")[1] for i in ids] == ["flow-run", "task-run", "flow", "tag", "tag"], ids
    assert theirs[-1] == theirs[1]  # attached to a task run's event: all but the task run itself


def test_related_resources_outside_a_run_are_prefects_empty_answer():
    with compat.related_resources_per_flow_run():
        import prefect.events.worker as events_worker

        assert asyncio.run(events_worker.related_resources_from_run_context(client=None)) == []


# ------------------------------------------------- 14. events and log lines polled while they keep coming
def one_at_a_time(service, send, count: int, handler: str, taken, mine) -> tuple[int, int]:
    """Send `count` items to a running Prefect queue service, each once `taken(service)` says it
    has the one before (so the service finds its queue empty whenever it asks); return how many
    of them (`mine(item)`: the process may log or emit others meanwhile) its `handler` got and how
    many times it waited for an item in its queue thread."""
    from prefect._internal.concurrency.threads import WorkerThread

    handled, waits = [], []
    handle, submit = getattr(service, handler), WorkerThread.submit

    async def counted_handle(items):
        handled.extend(item for item in (items if isinstance(items, list) else [items]) if mine(item))
        return await handle(items)

    def counted_submit(thread, call):
        if thread is service._queue_get_thread:
            waits.append(call)
        return submit(thread, call)

    def until(probe) -> None:
        deadline = time.monotonic() + 30
        while not probe() and time.monotonic() < deadline:
            time.sleep(0.001)

    setattr(service, handler, counted_handle)
    WorkerThread.submit = counted_submit
    try:
        for i in range(count):
            send(i)
            until(lambda: taken(service))
        until(lambda: len(handled) >= count)  # a log batch goes when its interval ends
    finally:
        WorkerThread.submit = submit
        delattr(service, handler)
    return len(handled), len(waits)


def events_one_at_a_time(count: int) -> tuple[int, int]:
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    def send(i: int) -> None:
        emit_event(event="scalegroups.test.polled", resource={"prefect.resource.id": f"scalegroups.test.{i}"})

    # each event handled before the next: the service asks for the next one with its queue empty
    worker, mine = EventsWorker.instance(), lambda event: event.event == "scalegroups.test.polled"
    return one_at_a_time(worker, send, count, "_handle", lambda s: not s._queue.unfinished_tasks, mine)


def log_lines_one_at_a_time(count: int) -> tuple[int, int]:
    from prefect.logging.handlers import APILogWorker
    from prefect.types._datetime import now

    worker = APILogWorker.instance()

    def send(i: int) -> None:
        line = {"name": "scalegroups.test", "level": 20, "message": f"line {i}", "timestamp": now("UTC").isoformat()}
        worker.send(line)

    # a batch takes each line off the queue and asks for the next at once
    def mine(line: bytes) -> bool:
        return b'"name":"scalegroups.test"' in line

    return one_at_a_time(worker, send, count, "_handle_batch", lambda s: s._queue.empty(), mine)


@pytest.mark.parametrize(
    "service, items_one_at_a_time",
    [("prefect.events.worker.EventsWorker", events_one_at_a_time),
     ("prefect.logging.handlers.APILogWorker", log_lines_one_at_a_time)],
)  # fmt: skip
def test_items_that_keep_coming_are_taken_on_the_loop_not_in_the_queue_thread(
    service, items_one_at_a_time, scalegroups_prefect_api, monkeypatch
):
    import importlib

    from prefect._internal.concurrency.services import _QueueServiceBase

    monkeypatch.setenv("PREFECT_API_URL", scalegroups_prefect_api)
    module, name = service.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    prefects = _QueueServiceBase._get_item  # what both services inherit
    held = vars(cls).get("_get_item")  # ours, if this process holds it
    if held is not None:
        del cls._get_item
    try:
        handled, waits = items_one_at_a_time(30)
    finally:
        if held is not None:
            cls._get_item = held
    assert handled == 30 and waits >= 25, (handled, waits)  # Prefect's: one wait per item
    with compat.queues_polled_while_busy():
        assert cls._get_item is not prefects
        handled, waits = items_one_at_a_time(30)
    assert handled == 30 and waits <= 2, (handled, waits)  # the first may find the service idle
    if not compat._queues_polled.active:  # not held for this process: Prefect's own method again
        assert "_get_item" not in vars(cls)


# ------------------------------------------------------ 15. completed results read in place
@task(persist_result=True)
def answer(fail: bool = False) -> int:
    if fail:
        raise ValueError("no answer")
    return 42


@flow
def states_of_every_kind() -> dict:
    """Final states as a flow's futures see them: in memory, persisted, failed, and more."""
    from prefect.states import Completed

    completed = answer(return_state=True)
    return {
        "in memory": completed,
        "persisted": Completed(data=completed.data.metadata),  # as read back from the API
        "plain data": Completed(data={"a": 1}),
        "failed": answer(fail=True, return_state=True),
        "no data": Completed(),
    }


def results_and_hops(states: dict) -> dict:
    """Each state's `result()` (or the exception it raises) and the trips it made through
    Prefect's run-sync event loop thread; and, in an async context, what `result()` returns."""
    from prefect._internal.concurrency.threads import EventLoopThread

    hops = []
    submit = EventLoopThread.submit

    def counted_submit(thread, call):
        if thread.name == "RunSyncEventLoopThread":
            hops.append(call)
        return submit(thread, call)

    EventLoopThread.submit = counted_submit
    out = {}
    try:
        for kind, state in states.items():
            before = len(hops)
            try:
                value = state.result()
            except Exception as exc:
                value = f"{type(exc).__name__}: {exc}"
            out[kind] = (value, len(hops) - before)

        async def in_async_context():
            returned = states["in memory"].result()
            return type(returned).__name__, await returned

        out["async"] = asyncio.run(in_async_context())
    finally:
        EventLoopThread.submit = submit
    return out


def test_a_completed_states_result_in_memory_is_read_in_place_and_every_other_is_prefects(
    scalegroups_prefect_api, monkeypatch
):
    from prefect.client.schemas.objects import State

    monkeypatch.setenv("PREFECT_API_URL", scalegroups_prefect_api)
    states = states_of_every_kind()
    prefects = compat._completed_results.prefects()
    held = vars(State)["result"]  # ours, if this process holds it
    State.result = prefects
    try:
        theirs = results_and_hops(states)
    finally:
        State.result = held
    with compat.completed_results_in_place():
        assert vars(State)["result"] is not prefects and State.result.aio is prefects.aio
        ours = results_and_hops(states)
    assert [value for value, _ in theirs.values()] == [value for value, _ in ours.values()]
    assert theirs["in memory"] == theirs["persisted"] == (42, 1) and theirs["plain data"] == ({"a": 1}, 1)
    assert ours["in memory"] == (42, 0) and ours["plain data"] == ({"a": 1}, 0)  # no trip
    assert ours["persisted"] == (42, 1) and ours["failed"] == theirs["failed"] == ("ValueError: no answer", 1)
    assert ours["no data"][0].startswith("MissingResult") and ours["no data"][1] == 1
    assert ours["async"] == theirs["async"] == ("coroutine", 42)
    if not compat._completed_results.active:  # not held for this process: Prefect's own method again
        assert vars(State)["result"] is prefects
