"""Concurrency limits per group, enforced by the Prefect server across processes and nodes.

`@group(limits={"db": 4})` tags every task the group submits with `db`. Prefect's task engine
acquires a slot of the global concurrency limit `tag:db` around each tagged task run (in whichever
worker runs it) and the server keeps the count, so at most 4 such tasks run at once on any runner,
across every process and node that talks to that server. Prefect skips a limit that does not
exist; scalegroups does not: before a limited group submits anything, each limit must exist on the
server (strict), else the group fails with a message naming the limit — unless
`SCALEGROUPS_SYNC_LIMITS=1`, which creates the declared limits at flow time. `scalegroups limits
sync` creates or updates them from the groups in a file and the profile's `limits:` section.

A task waiting for a slot holds its engine worker (Prefect acquires inside the worker); the flow
is not blocked and other groups' tasks keep every other worker busy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping

from scalegroups.errors import ConfigurationError, OrchestrationError

#: limit name -> slots, from every @group(limits=...) imported so far
DECLARED: dict[str, int] = {}
_verified: set[tuple[str, str]] = set()
_lock = threading.Lock()


def gcl_name(limit: str) -> str:
    """The Prefect global concurrency limit that guards tasks tagged `limit`."""
    return f"tag:{limit}"


def declare(limits: Mapping[str, int], owner: str) -> dict[str, int]:
    """Validate and register a group's limits; the same name must always mean the same size."""
    checked: dict[str, int] = {}
    for name, slots in limits.items():
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ConfigurationError(f"group {owner!r}: limit {name!r} must be a positive integer, got {slots!r}")
        if DECLARED.get(name, slots) != slots:
            raise ConfigurationError(
                f"group {owner!r}: limit {name!r} = {slots} conflicts with {DECLARED[name]} declared elsewhere"
            )
        checked[name] = slots
    DECLARED.update(checked)
    return checked


def sync(limits: Mapping[str, int]) -> list[str]:
    """Create or update the server's global concurrency limits; return what was written."""
    from prefect import get_client

    written = []
    with get_client(sync_client=True) as client:
        for name, slots in sorted(limits.items()):
            client.upsert_global_concurrency_limit_by_name(gcl_name(name), slots)
            written.append(f"{gcl_name(name)} = {slots}")
    return written


def _auto_sync() -> bool:
    return os.environ.get("SCALEGROUPS_SYNC_LIMITS", "").lower() in {"1", "true", "yes"}


def require(limits: Mapping[str, int], owner: str) -> None:
    """Make sure each limit exists on the server (strict), creating it if auto-sync is on."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from scalegroups.server import configured_api_url

    api = configured_api_url() or "(temporary server)"
    pending = [name for name in limits if (api, name) not in _verified]
    if not pending:
        return
    with get_client(sync_client=True) as client:
        for name in pending:
            try:
                current = client.read_global_concurrency_limit_by_name(gcl_name(name))
            except ObjectNotFound:
                if not _auto_sync():
                    raise OrchestrationError(
                        f"group {owner!r} needs concurrency limit {gcl_name(name)!r}, which does not exist on "
                        f"the Prefect server at {api}; Prefect would run the tasks unthrottled. Create it with "
                        f"`scalegroups limits sync` (or `prefect gcl create {gcl_name(name)} --limit {limits[name]}`),"
                        " or set SCALEGROUPS_SYNC_LIMITS=1 to create declared limits when flows run."
                    ) from None
                client.upsert_global_concurrency_limit_by_name(gcl_name(name), limits[name])
            else:
                if not current.active:
                    raise OrchestrationError(f"concurrency limit {gcl_name(name)!r} is inactive: activate it")
            with _lock:
                _verified.add((api, name))


def forget_verified(names: Iterable[str] | None = None) -> None:
    """Check these limits (default: all) on the server again at their next use."""
    with _lock:
        if names is None:
            _verified.clear()
        else:
            _verified.difference_update({key for key in _verified if key[1] in set(names)})
