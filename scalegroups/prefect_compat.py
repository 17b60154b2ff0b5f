"""Every place scalegroups relies on Prefect (or Python) internals, and nothing else.

Each hook below says what it relies on. `tests/test_prefect_compat.py` checks every one of those
assumptions against the installed Prefect, so a release that changes one fails a test instead of
a user's flow. Patches are scoped: the flow-side ones live while a scalegroups runner runs
(reference-counted), the worker-side ones while a worker process is set up by scalegroups, and
both are undone when their scope ends.

Why the patches exist (profiles on 2 cores, 200 trivial task runs in worker processes):

- **Shipping the context once.** Prefect serializes the flow's whole context for every task it
  ships to another process: every setting (a pydantic dump), the flow run, the flow object (its
  function pickled by value when defined in a script) and the flow's parameters. The worker then
  rebuilds a `Settings` object from it, which re-reads the environment, `.env` files and the
  profiles file: 35% of the worker's CPU per task run. `ship_context_once()` serializes the
  settings and flow-run parts once per flow run and pickles them once; workers unpickle each once
  per process (`restore_shipped`).
- **One API client per worker process.** Every task run in a worker built two new Prefect API
  clients, each loading the CA bundle into a fresh TLS context (`ssl.create_default_context`):
  51% of the worker's CPU per task run. `install_worker_hooks()` gives each worker process one
  client and one `Settings` object per distinct shipped context.
- **No import of every collection for a block Prefect defines.** Rebuilding the result storage
  block made each worker process import prefect-dask's and prefect-ray's collections (Dask and
  Ray) on its first task run: 1.8 s per worker. `known_blocks_without_collections()`.
- **No wait for the heartbeat thread.** A synchronous flow run joined its heartbeat thread, which
  wakes once a second: ~0.5 s per flow run. `end_flow_runs_without_heartbeat_join()`.
- **A lean start for every client** (sections 9-11 and 13-15, held for the rest of a flow process by
  `lean_client_start_up()`, installed in workers): one verified TLS context per CA file instead of
  one per client, plain flow parameters copied without importing FastAPI, events to a server on
  this machine without compression, Prefect's internal log level read once per settings object.
- **An event's related resources per flow run** (section 13, flow processes and workers): every
  event (three per task run) looked up its flow run's flow, deployment, work queue and pool and
  validated each resource again: 0.33 -> 0.06 ms per event.
- **No relay of a process-pool worker's events and logs** (section 1g): Prefect pickled each
  worker's events and log lines to the flow process, which handled and sent them again; workers
  with an API URL now send their own, as Dask and Ray workers do (flow process 7.8 -> 3.55 ms per
  task run).
- **Events and log lines taken on the loop while they keep coming** (section 14, flow processes
  and workers): each event woke the events service's queue thread, which handed it to the event
  loop; now the loop looks at the queue every 10 ms while events keep coming: worker threads 7.4
  -> 6.9 ms (process pool), 9.8 -> 9.0 (Dask), 8.9 -> 8.2 (Ray) per task run; the API log
  worker's lines the same way: 6.8 -> 6.7, 9.1 -> 8.7, 8.3 -> 7.6.
- **A completed result read in place** (section 15, flow processes and workers): each
  `future.result()` took a trip through Prefect's run-sync event loop thread to read a result in
  memory: flow process 2.1 -> 1.4 ms (process pool), 5.0 -> 4.5 (Dask), 3.3 -> 2.6 (Ray) per task run.
- **A flow run's routes first** (section 12, servers scalegroups starts): FastAPI builds an
  included router's routes when a request first reaches it; Prefect's order made a flow's first
  calls build all 184 routes (0.5 s of a server's start), now the 51 it calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import cloudpickle

from scalegroups.api_clients import shared_api_clients, shared_client
from scalegroups.per_object import BuiltPerObject

# ------------------------------------------------------------------------------------------------
# 1. Shipping the flow's context once per flow run (flow side)
#
# Relies on: `prefect.context.SettingsContext.serialize(include_secrets)` and
# `prefect.context.EngineContext.serialize(include_secrets)` (= FlowRunContext) being what
# `prefect.context.serialize_context()` calls, and on workers passing the parts back unchanged to
# `SettingsContext(**part)` / `FlowRunContext(**part)` in `prefect.context.hydrated_context`.
# ------------------------------------------------------------------------------------------------

_RESTORED_MAX = 64
_restored: OrderedDict[str, ShippedOnce] = OrderedDict()
_restored_lock = threading.Lock()


def restore_shipped(key: str, payload: bytes) -> ShippedOnce:
    """The shipped context part `key`: one object per process, unpickled on first use.

    Processes that only relay a task (Dask's scheduler unpickles and re-pickles every task) never
    unpickle the payload and send it on as it came.
    """
    with _restored_lock:
        shipped = _restored.get(key)
        if shipped is None:
            shipped = _restored[key] = ShippedOnce(_Shipment(key=key, payload=payload))
            while len(_restored) > _RESTORED_MAX:
                _restored.popitem(last=False)
        else:
            _restored.move_to_end(key)
        return shipped


class _Shipment:
    """One serialized context part: its items and their pickle, each made at most once."""

    def __init__(self, items: dict[str, Any] | None = None, key: str | None = None, payload: bytes | None = None):
        self._items = items
        self.key = key or uuid.uuid4().hex
        self._payload = payload
        self._lock = threading.Lock()

    def items(self) -> dict[str, Any]:
        if self._items is None:
            with self._lock:
                if self._items is None:
                    self._items = cloudpickle.loads(self._payload)
        return self._items

    def payload(self) -> bytes:
        if self._payload is None:
            with self._lock:
                if self._payload is None:
                    self._payload = cloudpickle.dumps(self._items)
        return self._payload


class ShippedOnce:
    """A serialized context part: read-only mapping methods here, a cached pickle on the wire.

    Unpickling gives every task of a process the *same* object (see `restore_shipped`), so
    workers can cache what they build from it. It is neither a `dict` nor a registered `Mapping`
    on purpose: Dask rebuilds (and serializes item by item) the mappings it finds in a task's
    arguments, which would skip this pickle and give each task a new object. `**part` and `.get`
    work, which is all Prefect's `hydrated_context` asks of it.
    """

    __slots__ = ("_shipment",)

    def __init__(self, shipment: _Shipment):
        self._shipment = shipment

    def __getitem__(self, key: str) -> Any:
        return self._shipment.items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._shipment.items())

    def __len__(self) -> int:
        return len(self._shipment.items())

    def keys(self) -> Any:
        return self._shipment.items().keys()

    def items(self) -> Any:
        return self._shipment.items().items()

    def values(self) -> Any:
        return self._shipment.items().values()

    def get(self, key: str, default: Any = None) -> Any:
        return self._shipment.items().get(key, default)

    def __repr__(self) -> str:
        return f"ShippedOnce({self._shipment.key})"

    def __copy__(self) -> ShippedOnce:
        return self  # read-only: a copy is itself

    def __deepcopy__(self, memo: dict[int, Any]) -> ShippedOnce:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (restore_shipped, (self._shipment.key, self._shipment.payload()))


class _SerializeCache:
    """Per-owner cache of `serialize()` results, as `_Shipment`s."""

    def __init__(self, size: int = 16):
        self._size = size
        self._entries: OrderedDict[tuple[int, bool], tuple[Any, tuple[Any, ...], _Shipment]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, owner: Any, include_secrets: bool, fingerprint: tuple[Any, ...], build: Any) -> ShippedOnce:
        key = (id(owner), include_secrets)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            ref, seen, shipment = entry
            if ref() is owner and seen == fingerprint:
                return ShippedOnce(shipment)
        shipment = _Shipment(items=build())
        with self._lock:
            self._entries[key] = (_reference(owner), fingerprint, shipment)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return ShippedOnce(shipment)


def _reference(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:  # not weak-referenceable: hold it (the cache is small and bounded)
        return lambda: obj


class _KeptFew:
    """A small thread-safe memo that forgets its oldest entry beyond `size` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def find(self, key: Any) -> Any:
        with self._lock:
            return self._entries.get(key)

    def take(self, key: Any) -> Any:
        """The value kept for `key`, forgotten (None if there is none)."""
        with self._lock:
            return self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key: Any, build: Any) -> Any:
        """The value kept for `key`, else `build()` kept (built outside the lock)."""
        found = self.find(key)
        if found is not None:
            return found
        value = build()
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            return self._entries.setdefault(key, value)


class _ScopedPatch:
    """A patch installed while at least one scope is open (reference-counted, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def _install(self) -> None:
        raise NotImplementedError

    def _uninstall(self) -> None:
        raise NotImplementedError

    @contextmanager
    def scope(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._uninstall()

    def hold_for_process(self) -> None:
        """Install for the rest of the process, as an open scope that is never closed (no
        generator is left to be finalized at interpreter shutdown)."""
        self._acquire()

    def _acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._install()

    @property
    def active(self) -> bool:
        return self._users > 0


class _FlowSidePatches(_ScopedPatch):
    """Reference-counted replacement of the two `serialize` methods."""

    def __init__(self) -> None:
        super().__init__()
        self._originals: dict[type, Any] = {}
        self._settings_cache = _SerializeCache()
        self._run_cache = _SerializeCache(size=8)

    def _install(self) -> None:
        from prefect.context import EngineContext, SettingsContext

        settings_serialize = SettingsContext.serialize
        run_serialize = EngineContext.serialize
        settings_cache, run_cache = self._settings_cache, self._run_cache

        def serialize_settings(ctx: Any, include_secrets: bool = True) -> dict[str, Any]:
            return settings_cache.get(
                ctx.settings, include_secrets, (id(ctx.profile),), lambda: settings_serialize(ctx, include_secrets)
            )

        def serialize_run(ctx: Any, include_secrets: bool = True) -> dict[str, Any]:
            # A flow run context's shipped part does not change while the flow run runs; a new
            # flow run (or subflow) is a new context object.
            fingerprint = (id(ctx.flow_run), id(ctx.flow), id(ctx.parameters), id(ctx.result_store))
            return run_cache.get(ctx, include_secrets, fingerprint, lambda: run_serialize(ctx, include_secrets))

        self._originals = {SettingsContext: settings_serialize, EngineContext: run_serialize}
        SettingsContext.serialize = serialize_settings  # type: ignore[method-assign]
        EngineContext.serialize = serialize_run  # type: ignore[method-assign]

    def _uninstall(self) -> None:
        for cls, original in self._originals.items():  # no import here: this may run at shutdown
            cls.serialize = original
        self._originals = {}


_flow_side = _FlowSidePatches()


def ship_context_once() -> Any:
    """Context manager: while it is open, task contexts are serialized and pickled once per flow run."""
    return _flow_side.scope()


def shipping_context_once() -> bool:
    """True while `ship_context_once()` is in effect in this process."""
    return _flow_side.active


# ------------------------------------------------------------------------------------------------
# 1b. A flow run ends without waiting for its heartbeat thread's next wake-up (flow side)
#
# Relies on: `prefect.flow_engine._send_heartbeats(engine, join_on_exit=True)` being the context
# manager that `FlowRunEngine.run_context` looks up by that module-level name and enters around the
# flow's body, after the flow's task runner was entered (`setup_run_context`); on `join_on_exit`
# only deciding whether its exit joins the heartbeat thread.
#
# Why: the heartbeat thread sleeps in steps of one second and checks its stop event between them,
# and the synchronous engine joins it when the flow ends: every flow run waited ~0.5 s on average
# (up to 1 s) after its last task, which was 15% of a small flow file's run. The thread needs no
# join: the flow's final state is set before it is stopped, it emits nothing once stopped or once
# the state is final, and it is a daemon. Prefect's own async engine passes `join_on_exit=False`.
# ------------------------------------------------------------------------------------------------


class _ReplacedAttribute(_ScopedPatch):
    """Replaces one attribute (of a module, or of a class in it) while a scope is open."""

    module: str
    owner: str | None = None  # a class in `module` whose attribute is replaced; None: the module's own
    name: str

    def __init__(self) -> None:
        super().__init__()
        self._original: Any = None

    def _replacement(self, original: Any) -> Any:
        raise NotImplementedError

    def _target(self, module: Any) -> Any:
        return getattr(module, self.owner) if self.owner else module

    def prefects(self) -> Any:
        """Prefect's own attribute, whether or not this patch is installed now (for tests)."""
        import importlib

        if self._original is not None:
            return self._original
        return vars(self._target(importlib.import_module(self.module)))[self.name]

    def _install(self) -> None:
        import importlib

        target = self._target(importlib.import_module(self.module))
        self._original = vars(target)[self.name]  # as stored (a classmethod stays one)
        setattr(target, self.name, self._replacement(self._original))

    def _uninstall(self) -> None:
        import sys

        module = sys.modules.get(self.module)  # no import here: this may run at shutdown
        if module is not None and self._original is not None:
            setattr(self._target(module), self.name, self._original)
        self._original = None


class _HeartbeatsWithoutJoin(_ReplacedAttribute):
    """`prefect.flow_engine._send_heartbeats`, always with `join_on_exit=False`."""

    module, name = "prefect.flow_engine", "_send_heartbeats"

    def _replacement(self, original: Any) -> Any:
        @contextmanager
        def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
            with original(engine, join_on_exit=False):
                yield

        return send_heartbeats


_heartbeats = _HeartbeatsWithoutJoin()


def end_flow_runs_without_heartbeat_join() -> Any:
    """Context manager: while it is open, a synchronous flow run does not wait for its heartbeat
    thread to wake up when it ends."""
    return _heartbeats.scope()


# ------------------------------------------------------------------------------------------------
# 1c. A block class already imported is found without importing every Prefect collection
#
# Relies on: `prefect.blocks.core.Block.get_block_class_from_key` being the classmethod that
# `Block.__new__` (a block rebuilt from data carrying its `block_type_slug`, e.g. the result
# storage in a shipped context) calls; on it calling `load_prefect_collections()` and then
# `prefect.utilities.dispatch.lookup_type(cls, key)`, which raises `KeyError` for an unknown key.
#
# Why: `load_prefect_collections()` imports every installed Prefect collection. With prefect-dask
# and prefect-ray installed, each process-pool, Dask or Ray worker imported Dask's `distributed`
# and Ray on its first task run, to rebuild a `LocalFileSystem` block Prefect itself defines:
# 1.8 s of CPU per worker process, paid by the first round of a flow. Looking the key up first and
# loading the collections only for a key not found gives the same class: a collection cannot take
# a key that is already registered.
# ------------------------------------------------------------------------------------------------


class _KnownBlocksFirst(_ReplacedAttribute):
    """`Block.get_block_class_from_key`, looking the key up before loading every collection."""

    module, owner, name = "prefect.blocks.core", "Block", "get_block_class_from_key"

    def _replacement(self, original: Any) -> Any:
        from prefect.utilities.dispatch import lookup_type

        load_and_look_up = original.__func__

        def get_block_class_from_key(cls: Any, key: str) -> Any:
            try:
                return lookup_type(cls, key)
            except KeyError:
                pass  # not imported yet: Prefect's own lookup (outside this handler: its error unchained)
            return load_and_look_up(cls, key)

        return classmethod(get_block_class_from_key)


_known_blocks = _KnownBlocksFirst()


def known_blocks_without_collections() -> Any:
    """Context manager: while it is open, a block class already imported is found without importing
    every installed Prefect collection first."""
    return _known_blocks.scope()


# ------------------------------------------------------------------------------------------------
# 1d. Worker processes write Prefect's console log lines as plain text when no terminal reads them
#
# Relies on: `prefect.logging.handlers.PrefectConsoleHandler.emit(record)` being
# `self.console.print(self.format(record), soft_wrap=True)` on a rich `Console` over `self.stream`,
# and on rich adding nothing to a line printed to a console that is not a terminal, without
# markup (`PREFECT_LOGGING_MARKUP`, off by default): no colour, no wrapping (soft wrap).
#
# Why: a task run logs at least one line ("Finished in state Completed()"); rendering it through
# rich took 13% of a Ray worker's CPU per task run (profile of 400 trivial task runs). A Ray
# worker's output goes to a log file, a process pool's or Dask worker's often to a pipe. The line
# written is the same text (rich would also have replaced `:emoji:` codes); on a terminal, and
# with markup on, Prefect's handler runs as it ships.
# ------------------------------------------------------------------------------------------------


class _PlainLinesOffATerminal(_ReplacedAttribute):
    """`PrefectConsoleHandler.emit`, writing the formatted line directly when no terminal reads it."""

    module, owner, name = "prefect.logging.handlers", "PrefectConsoleHandler", "emit"

    def _replacement(self, original: Any) -> Any:
        import logging

        from prefect.settings import PREFECT_LOGGING_MARKUP

        def emit(handler: Any, record: Any) -> None:
            plain = handler.__dict__.get("_scalegroups_plain")
            if plain is None:  # decided once per handler: is_terminal itself costs a few checks
                plain = not handler.console.is_terminal and not PREFECT_LOGGING_MARKUP.value()
                handler.__dict__["_scalegroups_plain"] = plain
            if plain:
                logging.StreamHandler.emit(handler, record)  # format, write, flush, handleError
            else:
                original(handler, record)

        return emit


_plain_lines = _PlainLinesOffATerminal()


def plain_console_lines_off_a_terminal() -> Any:
    """Context manager: while it is open, Prefect's console handler writes log lines as plain text
    to a stream that is not a terminal (the same text, without rich's rendering)."""
    return _plain_lines.scope()


# ------------------------------------------------------------------------------------------------
# 1e. A process-pool task's environment applied and undone by difference (worker side)
#
# Relies on (Prefect 3.9.1 on; 3.9.0 only sets the environment and is left alone):
# `prefect.task_runners._run_task_in_subprocess(*args, env=None, **kwargs)` being the
# module-level function a process-pool worker unpickles by name and calls for every task run, which
# applies `env` over `os.environ`, calls `_run_task_with_hydrated_context(*args, **kwargs)` (looked
# up by that module-level name) and then restores the worker's environment exactly as it was
# (undoing changes the task made too); and on CPython's `os.environ._data`, the dict of encoded
# names and values behind `os.environ`, kept equal to the process's environment.
#
# Why: Prefect ships the flow process's whole environment with every task (~40-60 variables) and
# the worker copied its environment, set every shipped variable, cleared every variable and set
# them all again, each through `putenv`/`unsetenv` and an encode/decode in Python: ~0.3 ms of CPU
# per task run for an environment of 35 variables. Here only the variables whose value differs are
# set, and the environment is compared after the task run (a dict comparison) and restored only
# where it changed: the same environment before, during and after every task run.
# ------------------------------------------------------------------------------------------------


@contextmanager
def environment_applied(env: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `env` set over it for the block, and afterwards exactly as it was before
    the block (changes made inside it undone too), touching only variables that differ."""
    import os

    before = os.environ._data.copy()  # type: ignore[attr-defined]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    try:
        yield
    finally:
        if os.environ._data != before:  # type: ignore[attr-defined]
            _restore_environment(before)


def _restore_environment(before: dict[bytes, bytes]) -> None:
    import os

    current = os.environ._data  # type: ignore[attr-defined]
    for key in [key for key in current if key not in before]:
        del os.environ[os.fsdecode(key)]
    for key, value in before.items():
        if current.get(key) != value:
            os.environ[os.fsdecode(key)] = os.fsdecode(value)


class _TaskEnvironmentByDifference(_ReplacedAttribute):
    """Prefect's process-pool entry point with the task's environment applied by difference."""

    module, name = "prefect.task_runners", "_run_task_in_subprocess"

    def _install(self) -> None:
        if applies_environment_and_restores_it():
            super()._install()

    def _replacement(self, original: Any) -> Any:
        import prefect.task_runners

        def run_task_in_subprocess(*args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
            with environment_applied(env or {}):
                return prefect.task_runners._run_task_with_hydrated_context(*args, **kwargs)

        return run_task_in_subprocess


def applies_environment_and_restores_it() -> bool:
    """True where Prefect's process-pool entry point swaps the task's environment in and out around
    `_run_task_with_hydrated_context` (Prefect 3.9.1 on); Prefect 3.9.0 only sets it, which is
    left as it is."""
    import prefect.task_runners

    return hasattr(prefect.task_runners, "_run_task_with_hydrated_context")


_task_environment_by_difference = _TaskEnvironmentByDifference()


def task_environment_by_difference() -> Any:
    """Context manager: while open, process-pool task runs in this process apply their shipped
    environment by difference (see above)."""
    return _task_environment_by_difference.scope()


# ------------------------------------------------------------------------------------------------
# 1f. A result's storage path found without walking the file system twice per task run
#
# Relies on: `prefect.filesystems.LocalFileSystem._resolve_path(path)` returning
# `(base / path).resolve()` for a relative `path`, `base` being `Path(basepath).expanduser().resolve()`
# (the current directory's when `basepath` is empty), and refusing a result outside `base`; on
# `ResultStore.create_result_record` calling it (twice) for the storage key of every result, kept
# in memory or not.
#
# Why: `Path.resolve()` runs `os.path.realpath` in Python, one `lstat` per path component, for the
# base and for the key: 0.33 ms of CPU per task run, in the worker of every engine (and in the flow
# process on threads), for a path that is `base / key` whenever the key is one plain file name
# that is not a symbolic link. Here the base's resolution is remembered per base path, current
# directory and home, while the directory it names is the same one (`os.stat`: device and inode),
# and such a key is joined to it (one `lstat` checks it is no link); any other path goes to Prefect.
# ------------------------------------------------------------------------------------------------


class _ResolvedBases:
    """`Path(basepath).expanduser().resolve()`, remembered while it names the same directory."""

    def __init__(self, size: int = 32) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._known: OrderedDict[tuple[str, str, str], tuple[Any, tuple[int, int]]] = OrderedDict()

    def get(self, basepath: str | None) -> Any:
        import os
        from pathlib import Path

        key = (basepath or ".", os.getcwd(), os.environ.get("HOME", ""))
        try:
            stat = os.stat(os.path.expanduser(key[0]))
        except OSError:  # not there yet: nothing to remember
            return Path(key[0]).expanduser().resolve()
        identity = (stat.st_dev, stat.st_ino)
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[1] == identity:
            return known[0]
        resolved = Path(key[0]).expanduser().resolve()
        with self._lock:
            self._known[key] = (resolved, identity)
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return resolved


def _plain_file_name(path: Any) -> bool:
    import os

    return (
        isinstance(path, str)
        and path not in ("", ".", "..")
        and "/" not in path
        and (os.altsep is None or os.altsep not in path)
        and not path.startswith("~")
    )


class _StoragePathsJoined(_ReplacedAttribute):
    """`LocalFileSystem._resolve_path` joining a plain key to its remembered, resolved base."""

    module, owner, name = "prefect.filesystems", "LocalFileSystem", "_resolve_path"

    def __init__(self) -> None:
        super().__init__()
        self.bases = _ResolvedBases()

    def _replacement(self, original: Any) -> Any:
        import os

        bases = self.bases

        def _resolve_path(block: Any, path: Any) -> Any:
            if not _plain_file_name(path):
                return original(block, path)
            joined = bases.get(block.basepath) / path
            if os.path.islink(joined):
                return original(block, path)
            return joined

        return _resolve_path


_storage_paths_joined = _StoragePathsJoined()


def storage_paths_joined() -> Any:
    """Context manager: while open, a result's storage path is joined to its remembered base
    instead of resolved on the file system for every task run (see above)."""
    return _storage_paths_joined.scope()


# ------------------------------------------------------------------------------------------------
# 1g. A process-pool worker sends its events and API logs to the API itself (worker side)
#
# Relies on: `prefect.task_runners._initialize_process_pool_worker(message_queue, initializer,
# initargs)` being the pool's initializer, which points `EventsWorker.set_client_override` at
# `ProcessPoolForwardingEventsClient` and `prefect.logging.handlers.set_api_log_sink` at the
# queue before it calls the runner's own initializer; on `EventsWorker._client_override` and
# `prefect.logging.handlers._api_log_sink` being where those two are kept, and on
# `set_client_override(None)` / `set_api_log_sink(None)` giving the worker Prefect's own clients
# (what Prefect itself does in a worker without a queue); and on a spawned worker draining its
# events and log workers at a normal exit (`threading._register_atexit`, as Dask and Ray workers do).
#
# Why: Prefect's process pool sends every event and API log line of a worker to the flow process
# through a multiprocessing queue: the worker's feeder thread pickles each validated `Event`
# (0.7 ms of CPU per task run), the flow process's forwarding thread unpickles it (0.85 ms) and the
# flow process's events worker handles it a second time (attaching related resources, encoding it,
# sending it over its own websocket), so every worker's events cost the one flow process too. With
# the API on a real server (an API URL in the worker's settings), each worker sends its own over
# its own connection, as Dask and Ray workers do; the flow process keeps only its own. A runner
# with subprocess message processors keeps the relay (the processors see the forwarded messages),
# and so does a worker without an API URL (Prefect's ephemeral mode).
# ------------------------------------------------------------------------------------------------


class _WorkerTalksToTheApi(_ScopedPatch):
    """Prefect's own events client and API log worker in a process-pool worker, not the relay."""

    def __init__(self) -> None:
        super().__init__()
        self._relay: tuple[Any, Any] | None = None

    def _install(self) -> None:
        import prefect.logging.handlers as handlers
        from prefect.events.worker import EventsWorker
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            return
        self._relay = (EventsWorker._client_override, handlers._api_log_sink)
        EventsWorker.set_client_override(None)
        handlers.set_api_log_sink(None)

    def _uninstall(self) -> None:
        import sys

        relay, self._relay = self._relay, None
        handlers = sys.modules.get("prefect.logging.handlers")
        worker = sys.modules.get("prefect.events.worker")
        if relay is None or handlers is None or worker is None:
            return
        worker.EventsWorker._client_override, sink = relay
        handlers.set_api_log_sink(sink)

    @property
    def talks_to_the_api(self) -> bool:
        """True while this process's events and API logs go to the API directly."""
        return self._relay is not None


_worker_talks_to_the_api = _WorkerTalksToTheApi()


def process_pool_worker_talks_to_the_api() -> bool:
    """In a process-pool worker set up by Prefect: send this process's events and API logs to the
    API itself, for the rest of the process (see above). True if it does (the worker has an API URL)."""
    _worker_talks_to_the_api.hold_for_process()
    return _worker_talks_to_the_api.talks_to_the_api


def worker_talks_to_the_api() -> Any:
    """Context manager: `process_pool_worker_talks_to_the_api()` while open (for tests)."""
    return _worker_talks_to_the_api.scope()


# ------------------------------------------------------------------------------------------------
# 2. Worker processes: one Settings object per shipped context, one API client per process
#
# Relies on: `prefect.context.hydrated_context(serialized_context, client)` being looked up as
# `prefect.context.hydrated_context` (process pool wrapper) and as the name `hydrated_context` in
# `prefect.task_engine` (the task engine), entering `SettingsContext(**settings_context)` only when
# that part is non-empty and using the `client` it is given; the task engine taking its client from
# `SyncClientContext.get_or_create()`, which returns the context found in `SyncClientContext.__var__`
# (a `ContextVar`) when there is one; `SyncClientContext` being a model with a `client` field;
# `FlowRunContext` keeping a `FlowRun` and a `ResultStore` it is given as objects (pydantic does not
# validate a model instance again), so the shipped flow-run part's `flow_run` and `result_store`
# dicts are validated once per part instead of for every task run (~0.5 ms of a worker's CPU each).
# ------------------------------------------------------------------------------------------------


class _WorkerHooks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._original: Any = None
        self._installed: Any = None
        self._settings = BuiltPerObject()  # shipped settings part -> (profile, Settings)
        self._run_parts = BuiltPerObject()  # shipped flow-run part -> the part, validated
        self._scopes = ExitStack()

    @property
    def installed(self) -> bool:
        return self._original is not None

    def install(self) -> None:
        import prefect.context
        import prefect.task_engine

        with self._lock:
            if self._original is not None:
                return
            self._original = prefect.context.hydrated_context
            self._installed = self.hydrated_context  # one bound method, so uninstall can recognise it
            prefect.context.hydrated_context = self._installed  # type: ignore[assignment]
            prefect.task_engine.hydrated_context = self._installed  # type: ignore[assignment]
            self._scopes.enter_context(known_blocks_without_collections())
            self._scopes.enter_context(remembered_setting_values())
            self._scopes.enter_context(shared_api_clients())
            self._scopes.enter_context(plain_console_lines_off_a_terminal())
            self._scopes.enter_context(shared_tls_contexts())
            self._scopes.enter_context(uncompressed_events_on_loopback())
            self._scopes.enter_context(internal_level_per_settings())
            self._scopes.enter_context(related_resources_per_flow_run())
            self._scopes.enter_context(queues_polled_while_busy())
            self._scopes.enter_context(completed_results_in_place())
            self._scopes.enter_context(task_environment_by_difference())
            self._scopes.enter_context(storage_paths_joined())

    def uninstall(self) -> None:
        import prefect.context
        import prefect.task_engine

        with self._lock:
            if self._original is None:
                return
            for module in (prefect.context, prefect.task_engine):
                if getattr(module, "hydrated_context", None) is self._installed:
                    module.hydrated_context = self._original
            self._original = None
            self._scopes.close()  # closes this process's shared clients unless a runner still uses them
            self._settings.clear()
            self._run_parts.clear()

    def _settings_context(self, part: dict[str, Any]) -> Any:
        """A new `SettingsContext` around the Settings built once for this shipped part, made
        without validating that profile and Settings again (validating a `SettingsContext` runs
        every `Settings` validator: ~0.17 ms per task run; the validated one holds the same objects)."""
        from prefect.context import SettingsContext

        def build(part: dict[str, Any]) -> tuple[Any, Any]:
            built = SettingsContext(**part)
            return built.profile, built.settings

        profile, settings = self._settings.get(part, build)
        return SettingsContext.model_construct(profile=profile, settings=settings)

    def _validated_run_part(self, part: Any) -> dict[str, Any]:
        """The shipped flow-run part with its flow run and result store validated once: the same
        `FlowRun` and `ResultStore` objects for every task run of this worker in that flow run, as
        every task run of a thread runner shares its flow's."""
        return self._run_parts.get(part, _validated_flow_run_and_result_store)

    @staticmethod
    @contextmanager
    def _client_context(client: Any) -> Iterator[None]:
        """Make `client` the one `SyncClientContext.get_or_create()` finds, without entering or
        closing it (entering counts without a lock; the client is shared by a worker's threads)."""
        from prefect.context import SyncClientContext

        token = SyncClientContext.__var__.set(SyncClientContext.model_construct(client=client))
        try:
            yield
        finally:
            SyncClientContext.__var__.reset(token)

    @contextmanager
    def hydrated_context(self, serialized_context: dict[str, Any] | None = None, client: Any = None) -> Iterator[None]:
        original = self._original
        if original is None or not serialized_context:
            with (original or _prefect_hydrated_context())(serialized_context, client):
                yield
            return
        with ExitStack() as stack:
            part = serialized_context.get("settings_context")
            if part:
                stack.enter_context(self._settings_context(part))
                serialized_context = {**serialized_context, "settings_context": {}}
            run_part = serialized_context.get("flow_run_context")
            if run_part:  # validated once per shipped part, inside its settings
                serialized_context = {**serialized_context, "flow_run_context": self._validated_run_part(run_part)}
            if client is None:
                client = shared_client()  # this process's, for these settings (opened once)
                stack.enter_context(self._client_context(client))
            stack.enter_context(original(serialized_context, client))
            yield


def _validated_flow_run_and_result_store(part: Any) -> dict[str, Any]:
    from prefect.client.schemas.objects import FlowRun
    from prefect.results import ResultStore

    validated = dict(part)
    if isinstance(validated.get("flow_run"), dict):
        validated["flow_run"] = FlowRun.model_validate(validated["flow_run"])
    if isinstance(validated.get("result_store"), dict):
        validated["result_store"] = ResultStore.model_validate(validated["result_store"])
    return validated


def _prefect_hydrated_context() -> Any:
    import prefect.context

    return prefect.context.hydrated_context


_worker_hooks = _WorkerHooks()


def install_worker_hooks() -> None:
    """Set this worker process up: cached settings and one API client for every task run."""
    _worker_hooks.install()


def uninstall_worker_hooks() -> None:
    """Undo `install_worker_hooks()` (and close the process's clients)."""
    _worker_hooks.uninstall()


def worker_hooks_installed() -> bool:
    """True if this process runs task runs with the worker hooks."""
    return _worker_hooks.installed


# ------------------------------------------------------------------------------------------------
# 3. Small reads of private attributes
# ------------------------------------------------------------------------------------------------


def cache_policy_was_chosen(task: Any) -> bool:
    """True if the user gave the task a cache policy. Relies on `Task._user_cache_policy`."""
    from prefect.utilities.annotations import NotSet

    return getattr(task, "_user_cache_policy", NotSet) is not NotSet


def known_final_state(future: Any) -> Any:
    """The final state a Prefect future already holds, or None.

    Relies on `PrefectFuture._final_state` (set by `wait()`/`result()` of Prefect's concurrent,
    Dask and Ray futures).

    A Dask future's `wait()` gathers the state from its worker on every call; a caller that only
    needs the state (progress counts) reads the one a previous `wait()`/`result()` kept instead.
    """
    return getattr(future, "_final_state", None)


def keep_final_state(future: Any, state: Any) -> None:
    """Give a Prefect future the final state fetched for it elsewhere (`scalegroups.batch_states`).

    Relies on `PrefectFuture._final_state` being what `result()` and `state` of Prefect's Dask
    future read first, so they return it without asking Dask again (its `wait()` asks again;
    scalegroups reads `known_final_state` before it waits).
    """
    future._final_state = state


def final_state_if_local(future: Any) -> Any:
    """The final state of a done future if reading it needs no engine round trip, else None.

    Thread and process pool futures (`PrefectConcurrentFuture`) hold their result in this process:
    their `wait(0)` is a local read. Other futures (Dask gathers from a worker, Ray from the object
    store) only give the state a previous `wait()`/`result()` kept.
    """
    from prefect.futures import PrefectConcurrentFuture

    state = known_final_state(future)
    if state is None and isinstance(future, PrefectConcurrentFuture) and future.wrapped_future.done():
        future.wait(0)
        state = known_final_state(future)
    return state


def pool_processes(executor: Any) -> list[Any]:
    """The worker processes of a `ProcessPoolExecutor`. Relies on `ProcessPoolExecutor._processes`."""
    return list((getattr(executor, "_processes", None) or {}).values())


def runner_executor(runner: Any) -> Any:
    """The executor of a started Prefect thread or process pool runner (None before it starts).
    Relies on `_executor`."""
    return getattr(runner, "_executor", None)


def runner_pool_size(runner: Any) -> int:
    """Pool size of a Prefect thread or process pool runner. Relies on `_max_workers`."""
    return int(runner._max_workers)


def run_prefect_task_on_ray(*upstream_refs: Any, **kwargs: Any) -> Any:
    """prefect-ray's function that runs a task in a Ray worker. Relies on the private static
    method `RayTaskRunner._run_prefect_task`, which `RayTaskRunner.submit` looks up on the runner
    (so a subclass's own runs instead)."""
    from prefect_ray import RayTaskRunner

    return RayTaskRunner._run_prefect_task(*upstream_refs, **kwargs)


def ray_dashboard_url(runner: Any) -> str | None:
    """The dashboard URL `ray.init` returned to a started prefect-ray runner, with a scheme.

    Relies on `RayTaskRunner._ray_context` (what `ray.init` returned in `__enter__`) and on its
    `dashboard_url` attribute (Ray's `RayContext` / `ClientContext`); None when Ray has no dashboard.
    """
    url = getattr(getattr(runner, "_ray_context", None), "dashboard_url", None)
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def call_at_thread_shutdown(callback: Any) -> None:
    """Call `callback()` when the main thread ends, before `concurrent.futures` stops its pools.

    Relies on `threading._register_atexit` (what `concurrent.futures` and Prefect's own queue
    services use): callbacks run in reverse order of registration, so one registered before a
    flow runs runs after Prefect has flushed that flow's events and logs, and before executors
    refuse new work (after which an asyncio server on a thread could no longer shut down cleanly).
    """
    threading._register_atexit(callback)  # type: ignore[attr-defined]


def as_flow_subclass(flow: Any, cls: type) -> Any:
    """Make a flow built by Prefect (`prefect.flow`, `Flow.with_options`) an instance of `cls`.

    Relies on `prefect.Flow` keeping its state in `__dict__` (no `__slots__`), so that a subclass
    adding only methods can take an instance over.
    """
    flow.__class__ = cls
    return flow


# ------------------------------------------------------------------------------------------------
# 4. Submitting to the engines without per-task set-up
#
# Profiles of 300 trivial task runs on Dask: `distributed.Client.submit` tokenized every Prefect
# submission (a cloudpickle of prefect-dask's per-call wrapper function and of the task, twice,
# to check it pickles deterministically) to name its key; the key is unique anyway, because every
# submission carries a fresh task run id. On Ray, prefect-ray wraps its task function in a new
# `ray.remote(...)` on every submit, and Ray exports every new remote function to the cluster's
# GCS, where each worker fetches and unpickles it again before running the task.
# ------------------------------------------------------------------------------------------------


def dask_client_with_keys(client: Any) -> Any:
    """Make prefect-dask's client name each Prefect submission's Dask key itself (no tokenize) and
    run it through one module-level function (`_submit_prefect_task_to_dask`).

    Relies on `PrefectDaskClient.submit(func, ..., key=None, ...)` accepting a `key` and passing it
    on to `distributed.Client.submit`, and on the client keeping its state in `__dict__` so that a
    subclass adding one method can take the instance over.
    """
    client.__class__ = _keyed_client_class(type(client))
    return client


_keyed_classes: dict[type, type] = {}


def _keyed_client_class(base: type) -> type:
    if base.__dict__.get("_scalegroups_keyed"):
        return base
    if base not in _keyed_classes:
        from prefect.tasks import Task

        def submit(self: Any, func: Any, *args: Any, key: Any = None, **kwargs: Any) -> Any:
            if not isinstance(func, Task):
                return base.submit(self, func, *args, key=key, **kwargs)
            if key is None:
                key = f"{getattr(func.fn, '__name__', 'task')}-{uuid.uuid4().hex}"
            return _submit_prefect_task_to_dask(self, func, args, key=key, **kwargs)

        _keyed_classes[base] = type(base.__name__, (base,), {"submit": submit, "_scalegroups_keyed": True})
    return _keyed_classes[base]


def _submit_prefect_task_to_dask(client: Any, task: Any, args: tuple[Any, ...], *, key: Any, **kwargs: Any) -> Any:
    """What `PrefectDaskClient.submit` does for a Prefect task (prefect-dask 0.3), except that Dask
    is given the module-level `run_prefect_task_on_dask` instead of a new closure per call.

    The closure (`functools.wraps(task)` around the task) was pickled by value on every submit,
    with the task in its cell, in its `__dict__` (copied there by `wraps`) and in the keyword
    arguments: three copies of the task and a code object per task run, and the worker rebuilt
    the function each time. `tests/test_prefect_compat.py` pins the source mirrored here.
    """
    from distributed import Client, Future
    from prefect.context import serialize_context
    from prefect.utilities.callables import get_call_parameters
    from prefect.utilities.engine import collect_task_run_inputs_sync

    task_run_id = uuid.uuid4()
    passed_dependencies = kwargs.pop("dependencies", None)
    wait_for = kwargs.pop("wait_for", None)
    return_type = kwargs.pop("return_type", "result")
    parameters = kwargs.get("parameters")
    if parameters is None:
        parameters = get_call_parameters(task, args, kwargs)  # the client used without the task runner
    dependencies = {k: collect_task_run_inputs_sync(v, future_cls=Future) for k, v in parameters.items()}
    if passed_dependencies:
        dependencies = {k: v.union(passed_dependencies.get(k, set())) for k, v in dependencies.items()}
    context = serialize_context(
        asset_ctx_kwargs={
            "task": task,
            "task_run_id": task_run_id,
            "task_inputs": dependencies,
            "copy_to_child_ctx": True,
        }
    )
    dask_options = {name: kwargs[name] for name in _DASK_SUBMIT_OPTIONS if name in kwargs}
    future = Client.submit(
        client,
        run_prefect_task_on_dask,
        key=key,
        **dask_options,
        task=task,
        task_run_id=task_run_id,
        wait_for=wait_for,
        return_type=return_type,
        parameters=parameters,
        dependencies=dependencies,
        context=context,
    )
    future.task_run_id = task_run_id
    return future


#: the keyword arguments of `distributed.Client.submit` that `PrefectDaskClient.submit` passes on
_DASK_SUBMIT_OPTIONS = (
    "workers",
    "resources",
    "retries",
    "priority",
    "fifo_timeout",
    "allow_other_workers",
    "actor",
    "actors",
    "pure",
)


def run_prefect_task_on_dask(*, task: Any, **run_task_kwargs: Any) -> Any:
    """On a Dask worker: run one Prefect task run (what prefect-dask's per-call closure did)."""
    from prefect.task_engine import run_task_async, run_task_sync

    if task.isasync:
        import asyncio

        return asyncio.run(run_task_async(task=task, **run_task_kwargs))
    return run_task_sync(task=task, **run_task_kwargs)


class RayRemoteFunctions:
    """One Ray remote function per set of remote options, made once and reused for every submit.

    Relies on what `RayTaskRunner.submit` does (prefect-ray 0.6): a fresh task run id, the task's
    upstream inputs, `serialize_context(asset_ctx_kwargs=...)`, its private
    `_exchange_prefect_for_ray_futures(parameters)`, the `remote_options` context, and the keyword
    arguments its `_run_prefect_task` takes. `tests/test_prefect_compat.py` pins the source of that
    method, so a prefect-ray release that changes it fails a test until this is reviewed.
    """

    def __init__(self, function: Any):
        self._function = function
        self._remote: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _for_options(self, options: dict[str, Any]) -> Any:
        import ray

        key = repr(sorted(options.items(), key=lambda item: item[0]))  # values may be dicts
        with self._lock:
            remote = self._remote.get(key)
            if remote is None:
                decorator = ray.remote(**options) if options else ray.remote
                remote = self._remote[key] = decorator(self._function)
            return remote

    def submit(self, runner: Any, task: Any, parameters: dict[str, Any], wait_for: Any, dependencies: Any) -> Any:
        """Submit `task` as `RayTaskRunner.submit` does, through a cached remote function."""
        from prefect.context import serialize_context
        from prefect.utilities.engine import collect_task_run_inputs_sync
        from prefect_ray.context import RemoteOptionsContext
        from prefect_ray.task_runners import PrefectRayFuture

        if not runner._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        task_run_id = uuid.uuid4()
        task_inputs = {k: collect_task_run_inputs_sync(v, future_cls=PrefectRayFuture) for k, v in parameters.items()}
        context = serialize_context(
            asset_ctx_kwargs={
                "task": task,
                "task_run_id": task_run_id,
                "task_inputs": task_inputs,
                "copy_to_child_ctx": True,
            }
        )
        parameters, upstream_refs = runner._exchange_prefect_for_ray_futures(parameters)
        remote = self._for_options(RemoteOptionsContext.get().current_remote_options or {})
        object_ref = remote.options(name=task.name).remote(
            *upstream_refs,
            task=task,
            task_run_id=task_run_id,
            parameters=parameters,
            wait_for=wait_for,
            dependencies=dependencies,
            context=context,
        )
        return PrefectRayFuture(task_run_id=task_run_id, wrapped_future=object_ref)


# ------------------------------------------------------------------------------------------------
# 5. Behaviour checkpoints rely on (scalegroups.checkpoints; no code here, checked by tests)
#
# - A result file left half-written by a killed worker is treated as absent: `ResultStore.exists`
#   returns False when the record at a key does not deserialize, so the task runs again and
#   overwrites it (Prefect writes result files in place, not atomically).
# - `TASK_SOURCE` gives the same key for a task before and after a cloudpickle round trip (the
#   key computed in a worker process matches the one of the run before the crash).
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# 6. A local API server stops without a traceback for the flush Prefect cancels and retries
#
# Relies on: the task-run recorder's consumer (`prefect.server.services.task_run_recorder.consumer`)
# cancelling its periodic flush when the service stops, its `flush()` logging
# "Error flushing N events (N to retry, 0 dropped)" with the `CancelledError` on the module's logger
# (`prefect.server.services.task_run_recorder`), putting the batch back on its queue, and the
# consumer then flushing that queue once more before it returns.
#
# Why: when a flow file's process exits, the server it ran on stops within a second of the flow's
# last events; in ~1 of 4 cold runs of `examples/seed.py` the recorder was writing its periodic
# batch at that moment, and the user saw an ERROR with a 60-line traceback after a successful run.
# Every task run and state was in the database afterwards: the final flush wrote the batch. Only
# the first such report while the server stops is dropped; a second one (the final flush failing
# too) is shown as Prefect logs it.
# ------------------------------------------------------------------------------------------------

TASK_RUN_RECORDER_LOGGER = "prefect.server.services.task_run_recorder"
_ALL_RETRIED = re.compile(r"Error flushing (\d+) events \(\1 to retry, 0 dropped\)")


class _FirstCancelledFlushRetried(logging.Filter):
    """Drops the first report of a cancelled flush whose events were all put back to retry."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if self.dropped or not isinstance(error, asyncio.CancelledError):
            return True
        if not _ALL_RETRIED.fullmatch(record.getMessage()):
            return True
        self.dropped.append(record)
        return False


@contextmanager
def cancelled_flush_retried_quietly() -> Iterator[_FirstCancelledFlushRetried]:
    """While a local server stops: no ERROR for the recorder batch Prefect cancels and retries."""
    quiet = _FirstCancelledFlushRetried()
    recorder_logger = logging.getLogger(TASK_RUN_RECORDER_LOGGER)
    recorder_logger.addFilter(quiet)
    try:
        yield quiet
    finally:
        recorder_logger.removeFilter(quiet)


# ------------------------------------------------------------------------------------------------
# 7. The lean local server: each event validated once and handed to the recorder without a JSON
#    round trip, each batch of states inserted without compiling a new statement (server side)
#
# Relies on:
# - `prefect.server.events.schemas.events.Event.receive(received=None)` returning a
#   `ReceivedEvent` (a subclass of `Event` that adds only `received`) with the event's fields,
#   called on every event the server accepts (the `/events/in` websocket, `POST /events`).
# - `prefect.server.services.task_run_recorder._insert_task_run_states(session, task_runs)` being
#   the `db_injector`-wrapped function, looked up by that module-level name, that the task-run
#   recorder calls once per batch to insert one `task_run_state` row per task run (its state's
#   fields, `task_run_id`, `created`; a row whose `id` exists is skipped).
#
# Why (py-spy of a lean server recording process-pool task runs, 2026-12-01): `receive()` dumped
# every validated event to a dict and validated it again as a `ReceivedEvent` (every validator,
# each reading three Prefect settings: 21% of the server's CPU with the websocket's own parse),
# and every batch of states was one multi-row ORM `INSERT ... VALUES (...), (...)` compiled anew
# for each batch (a batch's row count varies, so SQLAlchemy's statement cache misses): 17.5%. Here
# `receive()` builds the `ReceivedEvent` from the fields already validated, and the states go in as
# one cached statement executed for many rows (SQLite `executemany`): same rows, same values.
# Installed only by a server scalegroups starts with its lean services (`scalegroups.server`).
#
# Also relies on: `prefect.server.events.messaging.EventPublisher.publish_event(event)` publishing
# `event.model_dump_json().encode()` through `self.publish_data(data, {"id": str(event.id), ...})`
# in the same task; the in-memory broker handing that `data` object to each consumer; the task-run
# recorder's handler (the only consumer of the events topic a lean server runs) parsing it with
# `ReceivedEvent.model_validate_json(message.data)`, an attribute `ReceivedEvent` inherits from
# pydantic's `BaseModel`.
#
# Why (2026-12-02): the recorder parsed every event back from the JSON the publisher had just
# encoded from the validated event: 0.26 ms of the server's CPU per event, 0.8 ms per task run.
# Here the published event is handed to the first parse of its encoded bytes (a bounded map; a
# message parsed again, e.g. redelivered, or by a second consumer is parsed from JSON as before).
# ------------------------------------------------------------------------------------------------


class _ReceiveWithoutRevalidation(_ReplacedAttribute):
    """`Event.receive` building its `ReceivedEvent` from the fields already validated."""

    module, owner, name = "prefect.server.events.schemas.events", "Event", "receive"

    def _replacement(self, original: Any) -> Any:
        from prefect.server.events.schemas.events import ReceivedEvent
        from prefect.types._datetime import now

        def receive(event: Any, received: Any = None) -> Any:
            fields = {name: getattr(event, name) for name in type(event).model_fields}
            fields["received"] = received if received is not None else now("UTC")
            return ReceivedEvent.model_construct(**fields)

        return receive


class _StatesInsertedAsOneStatement(_ReplacedAttribute):
    """The task-run recorder's state rows inserted by one cached statement, many parameter sets."""

    module, name = "prefect.server.services.task_run_recorder", "_insert_task_run_states"

    def _replacement(self, original: Any) -> Any:
        from prefect.server.database import db_injector
        from prefect.types._datetime import now

        @db_injector
        async def insert_task_run_states(db: Any, session: Any, task_runs: list[Any]) -> None:
            created = now("UTC")
            rows = [{"created": created, "task_run_id": run.id, **run.state.model_dump()} for run in task_runs]
            if rows:
                table = db.TaskRunState.__table__
                statement = db.queries.insert(table).on_conflict_do_nothing(index_elements=["id"])
                await session.execute(statement, rows)

        return insert_task_run_states


class _EventsHandedToTheRecorder(_ScopedPatch):
    """An event published in this process is handed to the consumer that parses its JSON back."""

    def __init__(self, size: int = 4096) -> None:
        super().__init__()
        self._events = _KeptFew(size)  # encoded event -> the event it was encoded from
        self._originals: dict[str, Any] = {}

    def take(self, data: Any) -> Any:
        return self._events.take(data)

    def _install(self) -> None:
        from prefect.server.events.messaging import EventPublisher
        from prefect.server.events.schemas.events import ReceivedEvent

        publish_event, publish_data = EventPublisher.publish_event, EventPublisher.publish_data
        parse = ReceivedEvent.model_validate_json.__func__  # pydantic's, inherited
        publishing: contextvars.ContextVar[Any] = contextvars.ContextVar("scalegroups_publishing", default=None)

        async def publish_event_remembered(publisher: Any, event: Any) -> None:
            token = publishing.set(event)
            try:
                await publish_event(publisher, event)
            finally:
                publishing.reset(token)

        async def publish_data_handed_over(publisher: Any, data: bytes, attributes: Any) -> None:
            event = publishing.get()
            if event is not None and attributes.get("id") == str(event.id):
                self._events.get(data, lambda: event)  # the oldest, never taken, is forgotten
            await publish_data(publisher, data, attributes)

        def model_validate_json(cls: Any, json_data: Any, **kwargs: Any) -> Any:
            if cls is ReceivedEvent and not kwargs:
                event = self.take(json_data)
                if event is not None:
                    return event
            return parse(cls, json_data, **kwargs)

        self._originals = {"publish_event": publish_event, "publish_data": publish_data}
        EventPublisher.publish_event = publish_event_remembered  # type: ignore[method-assign]
        EventPublisher.publish_data = publish_data_handed_over  # type: ignore[method-assign]
        ReceivedEvent.model_validate_json = classmethod(model_validate_json)  # type: ignore[method-assign,assignment]

    def _uninstall(self) -> None:
        import sys

        messaging = sys.modules.get("prefect.server.events.messaging")  # no import: maybe at shutdown
        schemas = sys.modules.get("prefect.server.events.schemas.events")
        if messaging is not None:
            for name, original in self._originals.items():
                setattr(messaging.EventPublisher, name, original)
        if schemas is not None and "model_validate_json" in vars(schemas.ReceivedEvent):
            del schemas.ReceivedEvent.model_validate_json
        self._originals = {}
        self._events.clear()


_receive_once = _ReceiveWithoutRevalidation()
_states_in_one_statement = _StatesInsertedAsOneStatement()
_events_handed_over = _EventsHandedToTheRecorder()


@contextmanager
def lean_server_hot_paths() -> Iterator[None]:
    """Context manager: while it is open, this process's Prefect server validates each event once,
    hands it to the task-run recorder without parsing it back from JSON and inserts each batch of
    task-run states with one cached statement (see above)."""
    with ExitStack() as scopes:
        for patch in (_receive_once, _states_in_one_statement, _events_handed_over, _setting_values, _internal_level):
            scopes.enter_context(patch.scope())
        yield


def lean_server_hot_paths_active() -> bool:
    """True while `lean_server_hot_paths()` is in effect in this process."""
    return _receive_once.active and _states_in_one_statement.active and _events_handed_over.active


# ------------------------------------------------------------------------------------------------
# 8. A Prefect setting read through `PREFECT_*.value()` is looked up once per settings object
#
# Relies on: `prefect.settings.legacy.Setting.value()` returning
# `setting.value_from(get_current_settings())` (except for Prefect's two test settings, left to
# it), and a `Settings` object not being changed in place once built: Prefect builds a new one for
# every change (`temporary_settings`, `Settings.copy_with_update`, a new profile), and enters it in
# a new `SettingsContext`.
#
# Why: Prefect's engine, its clients, its event models' validators and its server read settings
# through the legacy `PREFECT_*` objects: 62 reads per task run on a thread runner (the API URL 13
# times, the logging level 16, the event label limit 12), each ~15 us (`get_current_settings()`,
# then `Settings.__getattribute__`, which runs an import statement, for every step of the path):
# ~1 ms of CPU per task run, spread over the flow, its workers and the server. Here each setting's
# value is looked up once per `Settings` object (held, so its id cannot be reused) and then read
# from a dict. Scoped like the other patches: a scalegroups runner, a worker it set up, a lean
# server.
# ------------------------------------------------------------------------------------------------

#: Prefect's test settings, whose value depends on the environment, not on the settings object
_SETTINGS_READ_EVERY_TIME = frozenset({"PREFECT_TEST_SETTING", "PREFECT_TESTING_TEST_SETTING"})


class _SettingValuesRemembered(_ReplacedAttribute):
    """`Setting.value()` answered from a dict per `Settings` object after its first lookup."""

    module, owner, name = "prefect.settings.legacy", "Setting", "value"

    def __init__(self) -> None:
        super().__init__()
        self._values = BuiltPerObject(limit=32)  # Settings object -> {setting name: value}

    def _replacement(self, original: Any) -> Any:
        from prefect.settings.context import get_current_settings

        def value(setting: Any) -> Any:
            if setting.name in _SETTINGS_READ_EVERY_TIME:
                return original(setting)
            settings = get_current_settings()
            values = self._values.get(settings, _new_dict)
            try:
                return values[setting.name]
            except KeyError:
                found = values[setting.name] = setting.value_from(settings)
                return found

        return value

    def _uninstall(self) -> None:
        super()._uninstall()
        self._values.clear()


def _new_dict(_: Any) -> dict[str, Any]:
    return {}


_setting_values = _SettingValuesRemembered()


def remembered_setting_values() -> Any:
    """Context manager: while it is open, `PREFECT_*.value()` is a dict lookup after its first read
    per settings object (see above)."""
    return _setting_values.scope()


# ------------------------------------------------------------------------------------------------
# 9. A process starts its Prefect clients without repeated TLS set-up, and its flow runs without
#    importing FastAPI for plain parameters
#
# Relies on: `prefect.client.orchestration` (`PrefectClient` and `SyncPrefectClient.__init__`) and
# `prefect._internal.version_checking` (`check_server_version`) building a verified TLS context with
# `ssl.create_default_context(cafile=...)`, looked up through their module's name `ssl`, and not
# changing it afterwards (their unverified one is built without `cafile` and is changed: not
# shared); httpx using an `SSLContext` it is given as it is. And on
# `prefect.flows.Flow.serialize_parameters(parameters)` giving each parameter that is not a
# method's bound `self`/`cls`, a `PrefectFuture` or a `State` to FastAPI's `jsonable_encoder`,
# which returns plain JSON data (exact `str`, `int`, `float`, `bool`, `None`, lists, tuples and
# dicts of them) as an equal copy, with tuples as lists, dropping only dict keys starting `_sa`.
#
# Why: each Prefect API client, and the events client's version check, loads the CA bundle into
# a new TLS context (~45-85 ms of CPU each on this machine class): a flow process built four
# (its own client, the log and event workers' clients, the version check), a worker process as
# many. Here a verified context is built once per CA file (its path, size and modification time)
# and shared, while HTTP/2 is off (Prefect's default: every connection then asks for HTTP/1.1 and
# a shared context is never changed differently by two of them). And creating a flow run imported
# FastAPI (0.2-0.33 s) only to copy parameters such as `items=[1, 2, 3]`: plain JSON parameters
# are copied here as `jsonable_encoder` would; any other value goes to Prefect's method.
# ------------------------------------------------------------------------------------------------


class _TlsContextsPerCaFile:
    """What a Prefect module sees as `ssl`: the real module, except that a verified context for a
    CA file is built once and shared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[tuple[str, int, int], Any] = {}

    def __getattr__(self, name: str) -> Any:
        import ssl

        return getattr(ssl, name)

    def create_default_context(
        self, purpose: Any = None, *, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> Any:
        """`ssl.create_default_context`; a verified context for a CA file is built once, shared."""
        import os
        import ssl

        purpose = ssl.Purpose.SERVER_AUTH if purpose is None else purpose
        shareable = cafile is not None and capath is None and cadata is None and purpose == ssl.Purpose.SERVER_AUTH
        if not shareable or _http2_enabled():
            return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
        try:
            found = os.stat(cafile)
        except OSError:  # let ssl say what is wrong with it
            return ssl.create_default_context(purpose, cafile=cafile)
        key = (os.fspath(cafile), found.st_size, found.st_mtime_ns)
        with self._lock:
            context = self._built.get(key)
            if context is None:
                context = self._built[key] = ssl.create_default_context(cafile=cafile)
        return context

    def clear(self) -> None:
        with self._lock:
            self._built.clear()


def _http2_enabled() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.enable_http2)


_tls_contexts = _TlsContextsPerCaFile()


class _SharedTlsIn(_ReplacedAttribute):
    """A Prefect module's `ssl`, replaced by `_tls_contexts`."""

    owner, name = None, "ssl"

    def _replacement(self, original: Any) -> Any:
        return _tls_contexts

    def _uninstall(self) -> None:
        super()._uninstall()
        _tls_contexts.clear()


class _SharedTlsInClients(_SharedTlsIn):
    module = "prefect.client.orchestration"


class _SharedTlsInVersionCheck(_SharedTlsIn):
    module = "prefect._internal.version_checking"


_tls_in_clients = _SharedTlsInClients()
_tls_in_version_check = _SharedTlsInVersionCheck()


@contextmanager
def shared_tls_contexts() -> Iterator[None]:
    """Context manager: while it is open, Prefect's API clients share one verified TLS context per
    CA file (see above)."""
    with _tls_in_clients.scope(), _tls_in_version_check.scope():
        yield


class _NotPlainJson(Exception):
    pass


_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
_PLAIN_DEPTH = 32


def plain_json_copy(value: Any, depth: int = 0) -> Any:
    """What `jsonable_encoder(value)` returns for plain JSON data; `_NotPlainJson` for anything else."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if depth >= _PLAIN_DEPTH:
        raise _NotPlainJson
    if kind is list or kind is tuple:
        return [plain_json_copy(item, depth + 1) for item in value]
    if kind is dict:
        copied = {}
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS or (type(key) is str and key.startswith("_sa")):
                raise _NotPlainJson
            copied[key] = plain_json_copy(item, depth + 1)
        return copied
    raise _NotPlainJson


class _PlainParametersWithoutFastApi(_ReplacedAttribute):
    """`Flow.serialize_parameters`, copying plain JSON parameters itself."""

    module, owner, name = "prefect.flows", "Flow", "serialize_parameters"

    def _replacement(self, original: Any) -> Any:
        def serialize_parameters(flow: Any, parameters: dict[str, Any]) -> dict[str, Any]:
            if getattr(flow, "ismethod", False) or getattr(flow, "isclassmethod", False):
                return original(flow, parameters)  # type: ignore[no-any-return]
            try:
                return {key: plain_json_copy(value) for key, value in parameters.items()}
            except _NotPlainJson:
                return original(flow, parameters)  # type: ignore[no-any-return]

        return serialize_parameters


_plain_parameters = _PlainParametersWithoutFastApi()


def plain_parameters_without_fastapi() -> Any:
    """Context manager: while it is open, a flow run's plain JSON parameters are copied without
    importing FastAPI (see above)."""
    return _plain_parameters.scope()


# ------------------------------------------------------------------------------------------------
# 10. Events go to a server on this machine without per-message compression
#
# Relies on: `prefect.events.clients` opening its event websockets through its module-level name
# `websocket_connect(uri, **kwargs)` (Prefect's wrapper of `websockets.asyncio.client.connect`),
# passing other keyword arguments through to `connect`, whose `compression=None` offers no
# permessage-deflate extension (the server then neither compresses nor decompresses).
#
# Why: every event a flow or a worker emits (four or more per task run) is a JSON message that
# the websocket compresses with zlib, and the server decompresses: on a loopback connection,
# CPU spent on both ends to save nothing. Over a real network (a server on another host)
# Prefect's default stays.
# ------------------------------------------------------------------------------------------------


def is_loopback_url(url: str) -> bool:
    """True for a URL whose host is this machine (`localhost` or a loopback address)."""
    from urllib.parse import urlparse

    from scalegroups.network import is_loopback_host

    return is_loopback_host(urlparse(url).hostname)


class _UncompressedEventsOnLoopback(_ReplacedAttribute):
    """`prefect.events.clients.websocket_connect`, without compression to a loopback host."""

    module, name = "prefect.events.clients", "websocket_connect"

    def _replacement(self, original: Any) -> Any:
        def websocket_connect(uri: str, **kwargs: Any) -> Any:
            if is_loopback_url(uri):
                kwargs.setdefault("compression", None)
            return original(uri, **kwargs)

        return websocket_connect


_uncompressed_events = _UncompressedEventsOnLoopback()


def uncompressed_events_on_loopback() -> Any:
    """Context manager: while it is open, event websockets to this machine are not compressed."""
    return _uncompressed_events.scope()


# ------------------------------------------------------------------------------------------------
# 11. Prefect's internal logger finds its level once per settings object
#
# Relies on: `prefect._internal._logging.SafeLogger.isEnabledFor(level)` answering
# `level >= getLevelNamesMapping()[PREFECT_LOGGING_INTERNAL_LEVEL.value()]`, and on a `Settings`
# object not being changed in place (as section 8).
#
# Why: Prefect's concurrency internals (its queue services, calls, cancel scopes) log at debug
# level 16 times per task run on a thread runner, more in a flow process that relays a process
# pool's events; each check ran an import of a name `prefect.settings` serves through its
# module `__getattr__`, read the setting, and copied the level-name table: ~10 us each, in every
# process. Here the level is looked up when the current settings object changes; no lock is
# taken (Prefect's reason for overriding the method holds).
# ------------------------------------------------------------------------------------------------


class _InternalLevelPerSettings(_ReplacedAttribute):
    """`SafeLogger.isEnabledFor`, with the internal level remembered for the last settings object."""

    module, owner, name = "prefect._internal._logging", "SafeLogger", "isEnabledFor"

    def _replacement(self, original: Any) -> Any:
        from prefect.settings import PREFECT_LOGGING_INTERNAL_LEVEL
        from prefect.settings.context import get_current_settings

        last: list[tuple[Any, int]] = [(None, 0)]  # (settings object, its level): held, so its id stays its own

        def isEnabledFor(logger: Any, level: int) -> bool:  # noqa: N802 (logging's name)
            settings = get_current_settings()
            seen, internal = last[0]
            if seen is not settings:
                internal = logging.getLevelNamesMapping()[PREFECT_LOGGING_INTERNAL_LEVEL.value_from(settings)]
                last[0] = (settings, internal)
            return level >= internal

        return isEnabledFor


_internal_level = _InternalLevelPerSettings()


def internal_level_per_settings() -> Any:
    """Context manager: while it is open, Prefect's internal logger reads its level once per
    settings object."""
    return _internal_level.scope()


# ------------------------------------------------------------------------------------------------
# 12. A local server tries the routes a flow run uses first (server side)
#
# Relies on:
# - `prefect.server.api.server.create_app` setting `app.api_app` to the API app, whose router's
#   `routes` (Starlette's public list, tried in order for each request) hold one entry per router
#   Prefect includes.
# - FastAPI >= 0.137 keeping an included router as an `_IncludedRouter` entry with
#   `original_router.routes` and `include_context.path_for(route)`; older FastAPI copies the
#   routes into the list (each with its `path`). Either is read here; anything else (a nested
#   router, a route without a path) leaves the order as it is.
#
# Why (a cold flow file's server thread, 2026-12-01): FastAPI 0.137+ builds an included router's
# request-time route state (dependencies, response models) the first time a request is matched
# against that router: 184 routes, 0.48-0.56 s of CPU on the server thread, on every start.
# Requests try routers in Prefect's order, and a flow run's first calls go to `/csrf-token`
# (24th of 31) and `/admin` (30th), so the first requests built nearly all of them. Here the
# routers a flow run calls are tried first, the others keep their order after them and are built
# only if a request reaches them. `artifacts` comes right after the calls every flow run makes:
# every map publishes its progress there, and behind the other routers its first request (in a
# user's first measured round of CPU tasks, 2026-12-03) built 118 routes of 15 routers, ~0.3 s of
# the flow process's CPU while the workers computed. Only when every entry's paths start with
# literal segments and entries that share a first segment keep their order among themselves: a
# path can only match entries with its first segment, so no request finds another route than
# before.
# ------------------------------------------------------------------------------------------------

#: first path segments (under /api) that flow runs, task runs and their clients call, in the order
#: they are tried: the first calls a flow makes (version check, CSRF token) first, so that they
#: build only the small routers they need
FLOW_RUN_ROUTES = (
    "health", "version", "csrf-token", "admin", "flows", "flow_runs", "logs", "events", "artifacts",
    "task_runs", "flow_run_states", "task_run_states", "v2", "concurrency_limits", "variables",
    "block_documents",
)  # fmt: skip


def _entry_routes(entry: Any) -> list[tuple[str, Any]] | None:
    """The full path and route of each route an entry of a router's `routes` serves (an included
    router: each of its routes; else the entry itself), or None if they cannot be read."""
    original, context = getattr(entry, "original_router", None), getattr(entry, "include_context", None)
    if original is None or context is None:
        path = getattr(entry, "path", None)
        return [(path, entry)] if isinstance(path, str) else None
    routes = []
    for route in original.routes:
        if getattr(route, "original_router", None) is not None or not isinstance(getattr(route, "path", None), str):
            return None
        routes.append((context.path_for(route), route))
    return routes


def _first_segments(entry: Any) -> set[str] | None:
    """The literal first path segments of an entry's paths; None if one is a parameter or unknown."""
    routes = _entry_routes(entry)
    if routes is None:
        return None
    segments = {path.lstrip("/").split("/", 1)[0] for path, _ in routes}
    return None if any("{" in segment for segment in segments) else segments


def flow_run_routes_first(app: Any) -> bool:
    """Move the API app's routers that flow runs call to the front of its routes, in the order of
    `FLOW_RUN_ROUTES`, the others after them in their order; True if the order could be proven not to
    matter (see above) and was changed."""
    api_app = getattr(app, "api_app", None)
    routes = getattr(getattr(api_app, "router", None), "routes", None)
    if not isinstance(routes, list):
        return False
    segments = [found for found in map(_first_segments, routes) if found is not None]
    if len(segments) != len(routes):
        return False

    def rank(index: int) -> int:
        """Where an entry flow runs call goes (its first segment's place), else after all of them."""
        found = segments[index]
        if found and found.issubset(FLOW_RUN_ROUTES):
            return min(FLOW_RUN_ROUTES.index(s) for s in found)
        return len(FLOW_RUN_ROUTES)

    order = sorted(range(len(routes)), key=lambda i: (rank(i), i))
    for segment in set().union(*segments):
        sharing = [i for i in order if segment in segments[i]]
        if sharing != sorted(sharing):  # two entries that could answer one path would swap
            return False
    reordered = [routes[i] for i in order]
    if reordered == routes:
        return False
    routes[:] = reordered
    return True


# ------------------------------------------------------------------------------------------------
# 13. An event's related resources: the flow run's part built once per flow run (client side)
#
# Relies on: `prefect.events.worker.EventsWorker.attach_related_resources_from_context` calling
# `related_resources_from_run_context(client=..., exclude=...)` by that module-level name in
# `prefect.events.worker` for every event it sends; on that function building, from the current
# `FlowRunContext.flow_run` (a `FlowRun`) and `TaskRunContext.task_run`, the related resources of
# the flow run, the task run, and the flow, deployment, work queue and work pool read through
# `prefect.events.related._get_and_cache_related_object(kind, role, client_method, obj_id, cache)`
# (entries `{"kind", "object", "role"}`, cached in `RESOURCE_CACHE` with no expiry), each made by
# `object_as_related_resource(kind, role=kind, object)`, skipping a resource whose id is in
# `exclude` (and that object's tags), then one `tags_as_related_resources` resource per tag of the
# objects kept, sorted, also filtered by `exclude`.
#
# Why: every event goes through it (three per task run, and again in the flow process for each
# event a process-pool worker forwards): ~0.31 ms of CPU per call, an `asyncio.gather` of four
# lookups, a time-stamp per cached object and a validated model per resource, for the same answer
# every time within one flow run. Here the flow run's part (flow run, flow, deployment, work queue,
# work pool and their tags) is kept per flow run, keyed by every field of the `FlowRun` the lookup
# reads, the task run's resource per task run and each tag's per tag (a bounded memo), and the same
# exclusion and tag rules are applied per call to fresh resource objects. Without a `FlowRun` in
# the context (a task run on its own), Prefect's function runs as it ships.
# ------------------------------------------------------------------------------------------------

_RELATED_PARTS_KEPT = 256


class _RelatedResourcesPerFlowRun(_ReplacedAttribute):
    """`related_resources_from_run_context` with the flow run's part built once per flow run."""

    module, name = "prefect.events.worker", "related_resources_from_run_context"

    def _replacement(self, original: Any) -> Any:
        from prefect.client.schemas.objects import FlowRun
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.events.related import object_as_related_resource, tags_as_related_resources
        from prefect.events.schemas.events import RelatedResource

        kept = _KeptFew(_RELATED_PARTS_KEPT)  # flow run / task run / tag -> its resources' data

        def resource_and_tags(kind: str, obj: Any) -> tuple[dict[str, str], frozenset[str]]:
            resource = object_as_related_resource(kind=kind, role=kind, object=obj)
            return dict(resource.root), frozenset(getattr(obj, "tags", None) or ())

        def task_run_entry(task_run: Any) -> tuple[dict[str, str], frozenset[str]]:
            key = ("task-run", task_run.id, task_run.name, tuple(task_run.tags or ()))
            return kept.get(key, lambda: resource_and_tags("task-run", task_run))

        def tag_data(tag: str) -> dict[str, str]:
            return kept.get(("tag", tag), lambda: dict(tags_as_related_resources([tag])[0].root))

        async def flow_run_part(client: Any, flow_run: Any) -> list[tuple[dict[str, str], frozenset[str]]]:
            from prefect.events.related import RESOURCE_CACHE, _get_and_cache_related_object

            key = ("flow-run", flow_run.id, flow_run.name, tuple(flow_run.tags or ()), flow_run.flow_id,
                   flow_run.deployment_id, flow_run.work_queue_id, flow_run.work_pool_name)  # fmt: skip
            found = kept.find(key)
            if found is not None:
                return found
            lookups = (
                ("flow", client.read_flow, flow_run.flow_id),
                ("deployment", client.read_deployment, flow_run.deployment_id),
                ("work-queue", client.read_work_queue, flow_run.work_queue_id),
                ("work-pool", client.read_work_pool, flow_run.work_pool_name),
            )
            part = [resource_and_tags("flow-run", flow_run)]
            for kind, read, obj_id in lookups:
                if not obj_id and kind != "flow":
                    continue
                entry = await _get_and_cache_related_object(
                    kind=kind, role=kind, client_method=read, obj_id=obj_id, cache=RESOURCE_CACHE
                )
                if entry.get("object") is not None:
                    part.append(resource_and_tags(kind, entry["object"]))
            return kept.get(key, lambda: part)

        async def related_resources_from_run_context(client: Any, exclude: set[str] | None = None) -> list[Any]:
            flow_run = getattr(FlowRunContext.get(), "flow_run", None)
            if not isinstance(flow_run, FlowRun):
                return await original(client, exclude=exclude)
            exclude = exclude or set()
            part = await flow_run_part(client, flow_run)
            task_run = getattr(TaskRunContext.get(), "task_run", None)
            entries = part[:1] + ([task_run_entry(task_run)] if task_run is not None else []) + part[1:]
            data, tags = [], set()
            for resource, object_tags in entries:
                if resource["prefect.resource.id"] not in exclude:
                    data.append(resource)
                    tags |= object_tags
            data += [tag for tag in map(tag_data, sorted(tags)) if tag["prefect.resource.id"] not in exclude]
            return [RelatedResource.model_construct(root=dict(resource)) for resource in data]

        return related_resources_from_run_context


_related_per_flow_run = _RelatedResourcesPerFlowRun()


def related_resources_per_flow_run() -> Any:
    """Context manager: while it is open, an event's related resources reuse its flow run's part."""
    return _related_per_flow_run.scope()


# ------------------------------------------------------------------------------------------------
# 14. Events and log lines taken off their queues on the event loop while they keep coming
#     (client side)
#
# Relies on: `prefect.events.worker.EventsWorker` and `prefect.logging.handlers.APILogWorker`
# inheriting `_get_item(self, timeout=None)` from
# `prefect._internal.concurrency.services._QueueServiceBase`, and their main loops awaiting
# `self._get_item()` (events) or `self._get_item(timeout=...)` (log batches, `queue.Empty` when the
# timeout passes) for every item, `None` being the stop signal `_stop` puts on the queue; on that
# method taking an item already in `self._queue` (a `queue.Queue` that `send` fills with
# `put_nowait`) at once and otherwise waiting for one in the service's queue thread.
#
# Why: events come one at a time, three per task run a few milliseconds apart, and a "Finished"
# log line with each, so the queues are empty nearly every time their services ask. Each item then
# woke its service's queue thread, which handed it to the global event loop through a future and
# the loop's self-pipe: ~0.7 ms of CPU per task run for events in a process-pool worker (the queue
# thread alone 0.23 ms per event), ~0.2 ms for the log line. Here, within `_QUEUE_BUSY_S` of its
# last item, each of these two services looks at its queue on its loop every `_QUEUE_POLL_S`
# instead; idle for longer, it waits in its thread as Prefect's does, so an idle process pays
# nothing. An item waits at most `_QUEUE_POLL_S` longer; order, batches, timeouts, handling and
# the stop signal are Prefect's.
# ------------------------------------------------------------------------------------------------

_QUEUE_POLL_S = 0.01
_QUEUE_BUSY_S = 0.25
_POLLED_SERVICES = (("prefect.events.worker", "EventsWorker"), ("prefect.logging.handlers", "APILogWorker"))


class _QueuesPolledWhileBusy(_ScopedPatch):
    """`_get_item` of the events and API log services, polling the queue on the loop while items
    keep coming."""

    def __init__(self) -> None:
        super().__init__()
        self._installed: dict[tuple[str, str], Any] = {}

    @staticmethod
    def _replacement(waiting_get: Any) -> Any:
        import queue

        async def get_item(service: Any, timeout: float | None = None) -> Any:
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while service._queue.empty() and loop.time() < getattr(service, "_scalegroups_busy_until", 0.0):
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise queue.Empty  # as Prefect's wait when its timeout passes
                await asyncio.sleep(_QUEUE_POLL_S if left is None else min(_QUEUE_POLL_S, left))
            left = None if deadline is None else max(0.0, deadline - loop.time())
            item = await waiting_get(service, left)  # at once if queued, else waits in its thread
            service._scalegroups_busy_until = loop.time() + _QUEUE_BUSY_S
            return item

        return get_item

    def _install(self) -> None:
        import importlib

        for module, name in _POLLED_SERVICES:
            service = getattr(importlib.import_module(module), name)
            self._installed[module, name] = service._get_item = self._replacement(service._get_item)

    def _uninstall(self) -> None:
        import sys

        for (module, name), installed in self._installed.items():
            service = getattr(sys.modules.get(module), name, None)  # no import here: this may run at shutdown
            if service is not None and vars(service).get("_get_item") is installed:
                del service._get_item  # Prefect's inherited method again
        self._installed = {}


_queues_polled = _QueuesPolledWhileBusy()


def queues_polled_while_busy() -> Any:
    """Context manager: while it is open, the events and API log services take items that keep
    coming on their event loop instead of waking their queue thread for each one."""
    return _queues_polled.scope()


# ------------------------------------------------------------------------------------------------
# 15. A completed state's result, when it is in memory, read in the caller's thread (client side)
#
# Relies on: `prefect.client.schemas.objects.State.result` being an `async_dispatch` wrapper that
# runs its synchronous body when called with `_sync=True`, or without `_sync` outside an async
# context (`prefect._internal.compatibility.async_dispatch.is_in_async_context()`), and returns
# the coroutine of `aresult` otherwise; on that synchronous body being
# `run_coro_as_sync(get_state_result(...))`, and `prefect.states._get_state_result` answering, for
# a COMPLETED state, `state.data.result` when the data is a `ResultRecord`, the data itself when
# it is neither a `ResultRecordMetadata` (read from storage) nor `None` (`MissingResult`).
#
# Why: every `future.result()` of a task run (Prefect's futures, prefect-dask's and prefect-ray's)
# ends in `state.result()`, which handed a coroutine to Prefect's run-sync event loop thread and
# waited for it, to read an attribute: ~0.7 ms of the flow process's CPU per task run (that thread
# alone ~0.5 ms), on every engine. Here a completed state whose result is in memory answers in
# the caller's thread; every other state (failed, persisted, missing, in an async context) goes
# through Prefect's method as it ships.
# ------------------------------------------------------------------------------------------------


class _CompletedResultsInPlace(_ReplacedAttribute):
    """`State.result`, answering at once for a completed state whose result is in memory."""

    module, owner, name = "prefect.client.schemas.objects", "State", "result"

    def _replacement(self, original: Any) -> Any:
        from prefect._internal.compatibility.async_dispatch import is_in_async_context
        from prefect.client.schemas.objects import StateType
        from prefect.results import ResultRecord, ResultRecordMetadata

        def result(state: Any, *args: Any, **kwargs: Any) -> Any:
            if state.type == StateType.COMPLETED:
                data, sync = state.data, kwargs.get("_sync")
                in_memory = not isinstance(data, ResultRecordMetadata) and data is not None
                if in_memory and (sync if sync is not None else not is_in_async_context()):
                    return data.result if isinstance(data, ResultRecord) else data
            return original(state, *args, **kwargs)

        return functools.wraps(original)(result)  # with Prefect's `.aio` too


_completed_results = _CompletedResultsInPlace()


def completed_results_in_place() -> Any:
    """Context manager: while it is open, a completed state's in-memory result is read without
    a trip through Prefect's run-sync event loop thread."""
    return _completed_results.scope()


# ------------------------------------------------------------------------------------------------
# Flow processes: the client-side patches above, for the rest of the process
# ------------------------------------------------------------------------------------------------

_start_up_lock = threading.Lock()
_started_up = False
_CLIENT_SIDE = (
    _tls_in_clients,
    _tls_in_version_check,
    _plain_parameters,
    _uncompressed_events,
    _internal_level,
    _related_per_flow_run,
    _queues_polled,
    _completed_results,
)


def lean_client_start_up() -> None:
    """Keep sections 9-11 and 13-15 (shared TLS contexts, plain parameters without FastAPI,
    uncompressed local events, the internal log level per settings, related resources per flow
    run, events and log lines polled while busy, completed results read in place) in effect for
    the rest of this process (idempotent): called when a flow file asks scalegroups for a runner
    or an API, before Prefect's engine builds its first client and flow run."""
    global _started_up
    with _start_up_lock:
        if not _started_up:
            for patch in _CLIENT_SIDE:
                patch.hold_for_process()
            _started_up = True


def lean_client_start_up_active() -> bool:
    """True while every client-side patch is in effect in this process."""
    return all(patch.active for patch in _CLIENT_SIDE)
