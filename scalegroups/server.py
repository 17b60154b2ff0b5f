"""One Prefect API for the flow and every worker process it starts.

Without `PREFECT_API_URL`, Prefect starts a temporary API server in each process that needs one:
every Dask, Ray or process-pool worker would start its own (13-32 s to a first result, and an
orphan server when a worker is killed). `shared_api()` starts (or reuses) the flow process's own
temporary server and exports its URL in `os.environ` and Prefect's settings, so worker processes
started afterwards talk to it. A user's `PREFECT_API_URL` is always used as is. Prefect stops the
temporary server when the Python process exits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import refresh_global_settings_context
from prefect.settings import get_current_settings

_lock = threading.Lock()
_depth = 0
_exported = False


def configured_api_url() -> str | None:
    """The API URL Prefect will use in this process, if one is configured."""
    return get_current_settings().api.url or None


def start_temporary_server() -> str:
    """Start (or reuse) this process's temporary Prefect server and return its API URL."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


@contextmanager
def shared_api() -> Iterator[str]:
    """Make sure one API URL is configured for this process and its future child processes."""
    global _depth, _exported
    with _lock:
        url = configured_api_url()
        if url is None:
            url = start_temporary_server()
            os.environ["PREFECT_API_URL"] = url
            refresh_global_settings_context()
            _exported = True
        _depth += 1
    try:
        yield url
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _exported:
                os.environ.pop("PREFECT_API_URL", None)
                refresh_global_settings_context()
                _exported = False
