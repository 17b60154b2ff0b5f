"""One Prefect API for a flow and every worker process it starts.

`ensure_api()` decides which API a flow uses, first match wins:

1. `PREFECT_API_URL`, when the user set it: used as is.
2. A server started with `scalegroups server start` (its URL and pid are kept in
   `$PREFECT_HOME/scalegroups-server.json`) that answers: used, and said in one line.
3. Otherwise a local server inside this process, listening on 127.0.0.1, started when the first
   request reaches it and stopped when the process exits (it cannot outlive its flow).

The chosen URL is exported (environment and Prefect's settings) so that worker processes started
afterwards use the same API. Without it, Prefect starts a temporary server in every process that
needs one: every Dask, Ray or process-pool worker would start its own.

Local servers scalegroups starts are *lean* (Prefect's own settings still win where the user set
them): the task-run recorder writes events in batches of 100 at least once a second instead of
one database transaction per event (it was 75% of the server's CPU per task run), and the event
persister and automation triggers are off (events are still streamed; they are not stored), and
so is the server's anonymous usage report to Prefect (a network call at every start, logged as an
ERROR on machines without internet access). A lean server also validates each event once and
inserts each batch of task-run states with one cached statement (`prefect_compat`, section 7).
Set `SCALEGROUPS_SERVER_SERVICES=full` for Prefect's defaults and code paths.

A fresh `PREFECT_HOME` starts from a template database: Prefect's migrations and block
registration take ~10 s on 2 cores, so the first server on a machine keeps a copy of the freshly
migrated database (per Prefect version) in scalegroups' cache folder and later fresh homes copy it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from scalegroups.errors import ConfigurationError, ScalegroupsError
from scalegroups.prefect_compat import (
    call_at_thread_shutdown,
    cancelled_flush_retried_quietly,
    flow_run_routes_first,
    lean_server_hot_paths,
)
from scalegroups.settings import server_nice, startup_gc_enabled
from scalegroups.startup_gc import collection_paused, freeze_once, long_lived_start_up
from scalegroups.thread_priority import lower_this_thread

STATE_FILE = "scalegroups-server.json"
READY_TIMEOUT_S = 180.0

#: Prefect settings of a lean local server (dotted names); values the user set still win.
LEAN_SERVER_DEFAULTS: dict[str, Any] = {
    "server.services.task_run_recorder.batch_size": 100,
    "server.services.task_run_recorder.flush_interval": 1,
    "server.services.event_persister.enabled": False,
    "server.services.triggers.enabled": False,
    "server.analytics_enabled": False,
}


def configured_api_url() -> str | None:
    """The API URL Prefect uses in this process, if one is configured."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def lean_services() -> bool:
    """False when `SCALEGROUPS_SERVER_SERVICES=full` asks for Prefect's own service defaults."""
    value = os.environ.get("SCALEGROUPS_SERVER_SERVICES", "lean").strip().lower()
    if value not in {"lean", "full"}:
        raise ConfigurationError(f"SCALEGROUPS_SERVER_SERVICES={value!r} is invalid: use lean or full")
    return value == "lean"


def server_setting_defaults() -> dict[str, Any]:
    """Setting defaults for a server scalegroups starts (empty when full services are asked for)."""
    return dict(LEAN_SERVER_DEFAULTS) if lean_services() else {}


# ------------------------------------------------------------------------------- database


def _hot_paths() -> Any:
    """The lean server's faster paths (`prefect_compat.lean_server_hot_paths`); none with full services."""
    return lean_server_hot_paths() if lean_services() else nullcontext()


def _routes_in_lean_order(app: Any) -> None:
    """A lean server tries the routes flow runs call first (`prefect_compat.flow_run_routes_first`)."""
    if lean_services():
        flow_run_routes_first(app)


def cache_dir() -> Path:
    """scalegroups' cache folder (`$SCALEGROUPS_CACHE_DIR`, else `$XDG_CACHE_HOME/scalegroups`)."""
    explicit = os.environ.get("SCALEGROUPS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scalegroups"


def sqlite_path(connection_url: str) -> Path | None:
    """The database file of a SQLite connection URL, or None for other databases."""
    prefix, sep, path = connection_url.partition(":///")
    if not sep or not prefix.startswith("sqlite") or path in ("", ":memory:"):
        return None
    return Path(path)


@functools.cache  # scanning every installed package's entry points takes ~60 ms; they do not change
def blocks_fingerprint() -> str:
    """What Prefect's block registration writes depends on: its version and the installed collections."""
    from importlib.metadata import entry_points

    collections = sorted(
        f"{ep.name}={ep.dist.version if ep.dist else '?'}" for ep in entry_points(group="prefect.collections")
    )
    return "\n".join([f"prefect={version('prefect')}", *collections])


def template_key() -> str:
    """What a template database depends on: Prefect's version, its SQLite migrations and the blocks
    registered in it (the installed Prefect collections)."""
    import prefect.server.database as database

    versions = Path(database.__file__).parent / "_migrations" / "versions" / "sqlite"
    names = sorted(p.name for p in versions.glob("*.py"))
    digest = hashlib.sha256("\n".join([*names, blocks_fingerprint()]).encode()).hexdigest()[:16]
    return f"prefect-{version('prefect')}-{digest}"


def template_path() -> Path:
    """Where this Prefect version's template database is kept."""
    return cache_dir() / "prefect-db" / f"{template_key()}.db"


async def _migrate_and_register_blocks() -> None:
    from prefect.plugins import load_prefect_collections
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    load_prefect_collections()  # their blocks too, as Prefect's registration at server start does
    db = provide_database_interface()
    await db.create_db()
    session = await db.session()
    async with session:
        await run_block_auto_registration(session=session)


def prepare_database() -> str:
    """Make sure the server's database exists, fast: "existing", "template" or "migrated".

    A missing SQLite database is copied from the template; without a template, Prefect's
    migrations and block registration run here and their result becomes the template.
    """
    import asyncio

    path = database_path()
    if path is None or (path.exists() and path.stat().st_size > 0):
        return "existing"
    path.parent.mkdir(parents=True, exist_ok=True)
    template = template_path()
    if template.exists():
        shutil.copyfile(template, path)
        outcome = "template"
    else:
        asyncio.run(_migrate_and_register_blocks())
        _keep_as_template(path, template)
        outcome = "migrated"
    _blocks_marker(path).write_text(blocks_fingerprint())
    return outcome


def database_path() -> Path | None:
    """The SQLite file of the server's database (current settings), or None for another database."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    return sqlite_path(url.get_secret_value() if url is not None else "")


def _blocks_marker(database: Path) -> Path:
    return database.with_name(database.name + ".scalegroups-blocks")


def startup_setting_defaults() -> dict[str, Any]:
    """Setting defaults for starting a server on the prepared database.

    Prefect registers every block type at each server start: it imports every installed Prefect
    collection (prefect-dask and prefect-ray import Dask and Ray: 0.5 s) to hash the block registry
    and compares the hash with a memo in `PREFECT_HOME`; on a new home it writes every block type
    again (0.4 s). A database scalegroups created (from the template or migrated here) has them
    registered already for this Prefect version and these collections (a marker file next to it
    says which): then both steps are skipped. Anything else, and a new Prefect or collection
    version, gets Prefect's own registration.
    """
    path = database_path()
    if path is None:
        return {}
    try:
        registered = _blocks_marker(path).read_text() == blocks_fingerprint()
    except OSError:
        return {}
    if not registered:
        return {}
    return {"server.register_blocks_on_start": False, "server.memoize_block_auto_registration": False}


def _keep_as_template(database: Path, template: Path) -> None:
    """Copy a freshly migrated database to the template (a consistent copy; atomic rename)."""
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_suffix(f".{os.getpid()}.tmp")
        with sqlite3.connect(database) as source, sqlite3.connect(partial) as target:
            source.backup(target)
        partial.replace(template)
    except OSError:
        return  # a read-only cache only costs the next fresh home the migrations


# ---------------------------------------------------------------------- in-process server


class InProcessServer:
    """A lean Prefect API server on a thread of this process, on 127.0.0.1.

    The listening socket is bound at once (so its URL can be handed out); the server itself is
    created when the first connection arrives, or by `start()`. It stops when the process exits,
    after Prefect has flushed its events and logs to it. Once it answers, its thread runs at a
    lower CPU priority (`SCALEGROUPS_SERVER_NICE`, `scalegroups.thread_priority`): a flow's
    workers compute first while they keep every core busy, and the server catches up when one frees.
    """

    def __init__(self) -> None:
        startup_gc_enabled()  # a bad SCALEGROUPS_GC_FREEZE fails here, in the caller, not in the server thread
        self._nice = server_nice()  # so does a bad SCALEGROUPS_SERVER_NICE
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(2048)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._ready = threading.Event()
        self._stop_asked = threading.Event()  # a stop can come while the server is still starting
        self._failed: BaseException | None = None
        self.database = "not prepared"
        self._settings_defaults = server_setting_defaults()
        from prefect.settings import get_current_settings

        self._settings = get_current_settings()
        call_at_thread_shutdown(self.stop)

    def start_on_first_connection(self) -> None:
        """Start the server in the background as soon as a client connects."""
        threading.Thread(target=self._wait_then_start, name="scalegroups-api-wait", daemon=True).start()

    def _wait_then_start(self) -> None:
        import select

        try:
            select.select([self._socket], [], [])
        except (OSError, ValueError):  # closed before anyone connected
            return
        self.start()

    def start(self) -> None:
        """Start serving (idempotent); returns at once, see `wait_ready`."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scalegroups-api", daemon=True)
                self._thread.start()

    def is_ready(self) -> bool:
        """True once the server answers (or failed to start)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the server answers requests (or raise why it could not start)."""
        self.start()
        if not self._ready.wait(timeout):
            raise ScalegroupsError(f"the local Prefect API at {self.url} did not start within {timeout:.0f} s")
        if self._failed is not None:
            raise ScalegroupsError(f"the local Prefect API could not start: {self._failed!r}") from self._failed

    def _run(self) -> None:
        import asyncio

        from prefect.context import SettingsContext
        from prefect.settings import temporary_settings

        start_up = ExitStack()  # closed once the server answers (or could not start)
        try:
            start_up.enter_context(collection_paused())  # `scalegroups.startup_gc`
            with (
                SettingsContext(profile=SettingsContext.get().profile, settings=self._settings),
                temporary_settings(set_defaults=self._settings_defaults),
            ):
                self.database = prepare_database()
                if self._stop_asked.is_set():  # stopped before it could serve: nothing to start
                    return
                with temporary_settings(set_defaults=startup_setting_defaults()), _hot_paths():
                    server = self._make_server()
                    asyncio.run(self._serve(server, start_up))
        except BaseException as exc:  # reported by wait_ready
            self._failed = exc
        finally:
            start_up.close()
            self._ready.set()

    def _make_server(self) -> Any:
        import uvicorn
        from prefect.server.api.server import create_app

        app = create_app(ephemeral=True, final=True)
        _routes_in_lean_order(app)
        config = uvicorn.Config(app, log_level="error", lifespan="on", access_log=False, timeout_keep_alive=60)
        self._server = uvicorn.Server(config)
        return self._server

    async def _serve(self, server: Any, start_up: ExitStack) -> None:
        import asyncio

        async def mark_ready() -> None:
            while not server.started and not server.should_exit:
                await asyncio.sleep(0.01)
            start_up.close()
            if server.started:
                freeze_once()  # the server's modules and app, and whatever the process had before
                # from now on its work (recording task runs, logs, artifacts) waits while every
                # core runs tasks; its start-up did not, since the flow's first requests wait on it
                lower_this_thread(self._nice)
            self._ready.set()

        watcher = asyncio.create_task(mark_ready())
        if self._stop_asked.is_set():  # stopped while starting: start, and end at once
            server.should_exit = True
        await server.serve(sockets=[self._socket])
        watcher.cancel()

    def stop(self) -> None:
        """Stop serving (after a graceful shutdown that lets the services flush)."""
        self._stop_asked.set()  # before reading _server: `_serve` sets it, then reads this
        server, thread = self._server, self._thread
        with cancelled_flush_retried_quietly():
            if server is not None:
                server.should_exit = True
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
        with suppress(OSError):
            self._socket.close()


# ---------------------------------------------------------------- background server (CLI)


@dataclass
class ServerState:
    """What `scalegroups server start` records about the server it started."""

    url: str
    pid: int
    home: str
    log: str
    started: float

    @classmethod
    def load(cls, path: Path) -> ServerState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _prefect_home() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home)


def state_path() -> Path:
    """The file that records the background server of this `PREFECT_HOME`."""
    return _prefect_home() / STATE_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError):
        return False


def running_server() -> ServerState | None:
    """The background server of this `PREFECT_HOME`, if it runs and answers."""
    state = ServerState.load(state_path())
    if state is None or not _alive(state.pid) or not _answers(state.url):
        return None
    return state


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def start_background_server(port: int = 4200, timeout: float = READY_TIMEOUT_S) -> tuple[ServerState, bool]:
    """Start `scalegroups server` in the background (or find it running); return it and whether it is new."""
    existing = running_server()
    if existing is not None:
        return existing, False
    home = _prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port(port)
    log = home / "scalegroups-server.log"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "scalegroups.server", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state = ServerState(
        url=f"http://127.0.0.1:{port}/api", pid=process.pid, home=str(home), log=str(log), started=time.time()
    )
    deadline = time.monotonic() + timeout
    while not _answers(state.url, timeout=1.0):
        if process.poll() is not None:
            raise ScalegroupsError(f"the Prefect server exited with code {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            _terminate(process.pid)
            raise ScalegroupsError(f"the Prefect server did not answer within {timeout:.0f} s; see {log}")
        time.sleep(0.2)
    state_path().write_text(json.dumps(asdict(state)))
    return state, True


def _terminate(pid: int, grace: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                finished = 0 if _alive(pid) else pid
            if finished or not _alive(pid):
                return
            time.sleep(0.1)


def stop_background_server() -> ServerState | None:
    """Stop the background server of this `PREFECT_HOME` (and what it started); None if none ran."""
    path = state_path()
    state = ServerState.load(path)
    if state is None:
        return None
    if _alive(state.pid):
        _terminate(state.pid)
    path.unlink(missing_ok=True)
    return state


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run a lean Prefect server with its UI in this process until SIGTERM (`python -m scalegroups.server`)."""
    import uvicorn
    from prefect.settings import temporary_settings

    with temporary_settings(set_defaults=server_setting_defaults()), ExitStack() as scopes:
        with long_lived_start_up():  # paused, then frozen: `scalegroups.startup_gc`
            print(f"database: {prepare_database()}", flush=True)
            from prefect.server.api.server import create_app

            scopes.enter_context(temporary_settings(set_defaults=startup_setting_defaults()))
            scopes.enter_context(_hot_paths())
            app = create_app(final=True)
            _routes_in_lean_order(app)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------- choosing


_lock = threading.Lock()
_in_process: InProcessServer | None = None


def _export(url: str) -> None:
    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()


def ensure_api(*, eager: bool = False) -> str:
    """Choose the Prefect API for this process and its future workers; return its URL.

    `eager=True` starts a local in-process server at once instead of on its first request. This
    is also where a flow process's Prefect clients are made lean for the rest of the process
    (`prefect_compat.lean_client_start_up`): it runs before Prefect's engine builds any.
    """
    global _in_process
    from scalegroups.prefect_compat import lean_client_start_up

    lean_client_start_up()
    configured = configured_api_url()
    if configured:
        return configured
    with _lock:
        configured = configured_api_url()
        if configured:
            return configured
        state = running_server()
        if state is not None:
            _export(state.url)
            print(f"scalegroups: using the Prefect server at {state.url} (`scalegroups server start`)", file=sys.stderr)
            return state.url
        if _in_process is None:
            _in_process = InProcessServer()
            _in_process.start_on_first_connection()
        _export(_in_process.url)
    if eager:
        _in_process.wait_ready()
    return _in_process.url


def start_local_server_now() -> bool:
    """If this process's API is its own in-process server and that has not started yet, start it
    now (in its thread) and return True; False for any other API."""
    server = _in_process
    if server is None or server.url != configured_api_url() or server.is_ready():
        return False
    server.start()
    return True


def planned_api() -> tuple[str | None, str]:
    """The API `ensure_api()` would choose now and why, without starting or exporting anything."""
    configured = configured_api_url()
    if configured:
        return configured, "PREFECT_API_URL"
    state = running_server()
    if state is not None:
        return state.url, f"`scalegroups server start` (pid {state.pid}, UI {state.url.removesuffix('/api')})"
    if _in_process is not None:
        return _in_process.url, "lean in-process server of this process"
    return None, "a lean in-process server, started by each flow process (no UI; `scalegroups server start` keeps one)"


def local_server() -> InProcessServer | None:
    """This process's in-process server, if `ensure_api()` started one."""
    return _in_process


@contextmanager
def shared_api() -> Iterator[str]:
    """`ensure_api()` as a context manager (the API lives until the process exits)."""
    yield ensure_api()


def main(argv: list[str] | None = None) -> int:
    """`python -m scalegroups.server --port N`: the process behind `scalegroups server start`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scalegroups.server")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (other hosts: 0.0.0.0)")
    args = parser.parse_args(argv)
    serve(args.port, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
