"""One open Prefect API client per process and API configuration, instead of one per call.

Every `get_client(sync_client=True)` builds a new client, and each new client loads the CA bundle
into a fresh TLS context (`ssl.create_default_context`, ~26 ms of CPU on a 2-core machine) and
opens a new connection. Progress artifacts published one every tick, and worker task runs, paid
that on a critical path: in a flow process it is CPU taken from the workers next to it.

While a scope is open (`shared_api_clients()`: a scalegroups runner, a worker set up by
scalegroups), `borrowed_client()` hands out one client per distinct Prefect settings
(`client_settings_key`), opened once and shared by threads; the last scope to close closes them.
Outside any scope it opens and closes a client of its own, as `get_client` does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scalegroups.per_object import BuiltPerObject

#: distinct settings (and so clients) kept open at once; the least recently used is closed
MAX_CLIENTS = 8


def client_settings_key(settings: Any) -> str:
    """What a client is built from: the `api` and `client` settings (secrets included) and whether
    an ephemeral server may be started. Equal keys may share one client. (`Settings.hash_key()`
    covers every setting but costs ~70 ms; a worker meets a new Settings object per flow run.)"""
    secrets = {"include_secrets": True}
    return "\n".join(
        (
            settings.api.model_dump_json(context=secrets),
            settings.client.model_dump_json(context=secrets),
            str(settings.server.ephemeral.enabled),
        )
    )


class ProcessClients:
    """Open sync API clients of this process, by settings, while at least one scope is open."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._users = 0
        self._keys = BuiltPerObject(limit=4 * limit)  # Settings object -> its client settings key
        self._clients: OrderedDict[str, Any] = OrderedDict()

    @property
    def active(self) -> bool:
        """True while at least one scope is open."""
        return self._users > 0

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Share clients while this is open (reference-counted, thread-safe)."""
        with self._lock:
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                closing = list(self._clients.values()) if self._users == 0 else []
                if closing:
                    self._clients.clear()
                    self._keys.clear()
            for client in closing:
                client.__exit__(None, None, None)

    def _key(self, settings: Any) -> str:
        return self._keys.get(settings, client_settings_key)

    def client(self) -> Any:
        """The open client for the current settings (created on first use); requires a scope."""
        from prefect.client.orchestration import get_client
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        key = self._key(settings)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
        client = get_client(sync_client=True)
        client.__enter__()
        if settings.client.server_version_check_enabled:
            client.raise_for_api_version_mismatch_once()
        evicted = []
        with self._lock:
            if key in self._clients:  # another thread won the race: keep one
                evicted.append(client)
                client = self._clients[key]
            else:
                self._clients[key] = client
                while len(self._clients) > self._limit:
                    evicted.append(self._clients.popitem(last=False)[1])
        for old in evicted:
            old.__exit__(None, None, None)
        return client


_process_clients = ProcessClients()


def shared_api_clients() -> Any:
    """Context manager: while it is open, `borrowed_client()` shares one client per settings."""
    return _process_clients.scope()


def shared_client() -> Any:
    """The shared client for the current settings; only inside `shared_api_clients()`."""
    if not _process_clients.active:
        raise RuntimeError("shared_client() needs an open shared_api_clients() scope")
    return _process_clients.client()


@contextmanager
def borrowed_client() -> Iterator[Any]:
    """A sync Prefect API client for the current settings: the shared one inside a scope, else a
    new one closed on exit."""
    if _process_clients.active:
        yield _process_clients.client()
        return
    from prefect import get_client

    with get_client(sync_client=True) as client:
        yield client
